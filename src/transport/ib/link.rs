//! The InfiniBand / RoCE link between hosts (feature `ib`), in the spirit of NCCL's
//! net_ib, but built on the same slot FIFOs as every other link. This file holds the
//! transport's state (its links, each a socket plus verbs objects, and the connections
//! waiting to be claimed) and answers the [`Transport`] calls; meeting a peer is
//! `handshake.rs`'s, moving messages `data.rs`'s.
//!
//! **Memory registration.** Only the FIFOs are registered, once per link. User buffers
//! are staged through the sender's FIFO (one copy, as on TCP), so there is no
//! registration cache to invalidate when the user frees and reuses memory. Registering
//! user buffers (and GPU memory through dma-buf with `cuda`) would save that copy; it is
//! to be measured on a real adapter first.
//!
//! **Failures.** An error completion (retry exceeded, remote access error, a flush after
//! an error), a socket that ends with a message half-delivered, or a peer that stays
//! gone with messages still unacknowledged becomes an error naming the peer, which the
//! executor turns into a communicator fault. Progress runs on the executor's thread
//! (polling the completion queues); [`Transport::wait_io`] arms them and sleeps on their
//! completion channels and the link sockets. Dropping the transport waits for the peers'
//! acknowledgements.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::conn;
use super::device::Device;
use super::verbs::{CompChannel, Completion, Cq, Mr, Qp};
use crate::bootstrap::gate::Gate;
use crate::bootstrap::id::Secret;
use crate::call::Desc;
use crate::error::{Error, Result};
use crate::liveness::PeerWatch;
use crate::settings::{IbSettings, QpTuning};
use crate::sync::Doorbell;
use crate::topology::PeerInfo;
use crate::transport::fifo::{FifoRx, FifoShape, FifoTx, Region};
use crate::transport::peers::NetPeers;
use crate::transport::{Endpoint, LinkKey, Transport};
use crate::wire::Kind;

/// How often progress looks at the link sockets for a peer that went away.
const SOCKET_CHECK: Duration = Duration::from_millis(2);

/// What every link holds: its socket and its verbs objects. Field order is drop order:
/// queue pairs, then the completion queue and channel, then the registration, then the
/// memory it registered.
pub(super) struct Wire {
    pub(super) peer: usize,
    pub(super) sock: TcpStream,
    pub(super) qps: Vec<Qp>,
    pub(super) cq: Arc<Cq>,
    pub(super) chan: Arc<CompChannel>,
    /// The queue is armed (its next completion raises an event); cleared when one does.
    pub(super) armed: Arc<AtomicBool>,
    pub(super) mr: Mr,
    pub(super) region: Arc<Region>,
}

/// A send link: the executor posts into `fifo`'s other end; we write it to the peer.
pub(super) struct SendLink {
    pub(super) w: Wire,
    pub(super) fifo: FifoRx,
    /// The peer's FIFO: address and remote key.
    pub(super) remote: (u64, u32),
    /// Messages written and not yet acknowledged: (message number, parts left).
    pub(super) pending: VecDeque<(u64, u32)>,
    /// Messages written so far.
    pub(super) posted: u64,
    /// The peer's consumed counter, as last credited.
    pub(super) credited: u64,
    /// When the peer's socket ended.
    pub(super) closed_at: Option<Instant>,
}

/// A receive link: the peer writes into our registered FIFO; we publish its messages.
pub(super) struct RecvLink {
    pub(super) w: Wire,
    pub(super) fifo: FifoTx,
    /// Write completions seen per slot, and how many the message needs.
    pub(super) arrived: Vec<u32>,
    pub(super) parts: Vec<u32>,
    /// The next message to publish.
    pub(super) next: u64,
    /// The consumed count last returned to the peer, and credit sends in flight.
    pub(super) credited: u64,
    pub(super) credits_in_flight: u32,
    /// The peer closed the link between two messages (a normal exit).
    pub(super) closed: bool,
    /// Since when the next message's record has not matched its completions.
    pub(super) stale_since: Option<Instant>,
}

/// The links and the introductions waiting to be claimed, behind the transport's lock.
pub(super) struct Conns {
    pub(super) gate: Gate,
    pub(super) arrivals: bool,
    pub(super) sends: Vec<SendLink>,
    pub(super) recvs: Vec<RecvLink>,
    pub(super) accepted: HashMap<(usize, u8), (TcpStream, Desc)>,
    pub(super) socket_check: Instant,
    /// An error found by `wait_io`, returned by the next `progress`.
    pub(super) error: Option<Error>,
}

/// The InfiniBand transport of one rank.
pub struct Ib {
    pub(super) secret: Secret,
    pub(super) shape: FifoShape,
    pub(super) nqps: usize,
    pub(super) tuning: QpTuning,
    pub(super) dev: Device,
    listener_fd: i32,
    pub(super) addrs: Vec<SocketAddr>,
    /// Names, liveness and the timeout, for errors and connection waits.
    pub(super) peers: NetPeers,
    pub(super) bell: Doorbell,
    conns: Mutex<Conns>,
}

impl Ib {
    /// The transport, once every rank's listener address is known (`listener` from
    /// [`Tcp::listen`](crate::transport::tcp::Tcp::listen)); links use the queue pairs
    /// and tuning of `settings`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: usize,
        secret: Secret,
        shape: FifoShape,
        settings: &IbSettings,
        dev: Device,
        listener: TcpListener,
        addrs: Vec<SocketAddr>,
        peers: Vec<PeerInfo>,
        bell: Doorbell,
        timeout: Option<Duration>,
    ) -> Result<Ib> {
        if shape.nslots as usize > 0xffff {
            return Err(Error::invalid_argument("InfiniBand links carry at most 65535 slots"));
        }
        let gate = Gate::new(listener, secret, Kind::ConnHello, 64, format!("rank {me}: IB connection listener"))?;
        let listener_fd = gate.listener_fd();
        let conns = Conns {
            gate,
            arrivals: false,
            sends: Vec::new(),
            recvs: Vec::new(),
            accepted: HashMap::new(),
            socket_check: Instant::now(),
            error: None,
        };
        Ok(Ib {
            secret,
            shape,
            nqps: settings.qps_per_connection.clamp(1, conn::MAX_QPS),
            tuning: settings.tuning,
            dev,
            listener_fd,
            addrs,
            peers: NetPeers::new(peers, timeout),
            bell,
            conns: Mutex::new(conns),
        })
    }

    /// Watches this host's peer processes while waiting for connections.
    pub fn with_watch(mut self, watch: Arc<PeerWatch>) -> Ib {
        self.peers.watch = Some(watch);
        self
    }

    /// Ends waits for connections when the communicator breaks.
    pub fn with_fault(mut self, fault: Arc<crate::fault::Fault>) -> Ib {
        self.peers.fault = Some(fault);
        self
    }

    pub(super) fn who(&self, r: usize) -> String {
        self.peers.who(r)
    }

    pub(super) fn closed(&self, peer: usize, what: &str) -> Error {
        self.peers.closed(peer, "InfiniBand link", what)
    }

    pub(super) fn wc_error(&self, peer: usize, what: &str, wc: &Completion) -> Error {
        let base = format!(
            "RDMA {what} {} failed on {}: {} (status {})",
            self.who(peer),
            self.dev.ctx.name(),
            wc.status_text(),
            wc.status
        );
        match self.peers.died(peer) {
            Some(m) => Error::remote(format!("{m} ({base})")),
            None => Error::remote(base),
        }
    }

    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, Conns>> {
        self.conns.lock().map_err(|_| Error::internal("IB transport state poisoned"))
    }
}

impl Drop for Ib {
    /// Waits (a few seconds at most) until the peers acknowledged what this rank wrote:
    /// destroying a queue pair drops the writes still in flight, where a closed TCP
    /// socket would still deliver its data.
    fn drop(&mut self) {
        let t0 = Instant::now();
        let limit = self.peers.timeout.unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(5));
        while t0.elapsed() < limit {
            let Ok(mut c) = self.conns.lock() else { return };
            if c.sends.iter().all(|s| s.pending.is_empty()) || self.pump_all(&mut c).is_err() {
                return;
            }
            drop(c);
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

impl Transport for Ib {
    fn mem(&self) -> crate::transport::MemStats {
        let Ok(c) = self.conns.lock() else { return Default::default() };
        // Each link's FIFO is registered with the adapter (page-locked).
        let pinned = (c.sends.len() + c.recvs.len()) * super::data::region_bytes(self.shape);
        crate::transport::MemStats { pinned_bytes: pinned as u64, ..Default::default() }
    }

    fn name(&self) -> &'static str {
        "ib"
    }

    fn unclaimed(&self, f: &mut dyn FnMut(usize, Desc)) {
        let Ok(mut c) = self.lock() else { return };
        let _ = self.accept_pending(&mut c);
        for (&(peer, _), &(_, opener)) in &c.accepted {
            f(peer, opener);
        }
    }

    fn peer_gone(&self, peer: usize) -> Option<String> {
        let closed = self.lock().is_ok_and(|c| c.recvs.iter().any(|r| r.w.peer == peer && r.closed));
        closed.then(|| self.peers.gone(peer))
    }

    fn connect(&self, me: usize, keys: &[LinkKey], opener: Desc) -> Result<Vec<Endpoint>> {
        self.connect_links(me, keys, opener)
    }

    fn progress(&self) -> Result<bool> {
        let mut c = self.lock()?;
        if let Some(e) = c.error.take() {
            return Err(e);
        }
        if c.arrivals {
            c.arrivals = false;
            self.accept_pending(&mut c)?;
        }
        let moved = self.pump_all(&mut c)?;
        if c.socket_check.elapsed() >= SOCKET_CHECK {
            self.check_sockets(&mut c)?;
        }
        Ok(moved)
    }

    /// Every message the executor posted is in the adapter's hands: the payloads sit in
    /// our registered FIFO, whose slots are released only at their completions, so a
    /// call may return before the peer acknowledges (dropping the transport waits for
    /// the acknowledgements).
    fn flushed(&self) -> bool {
        self.conns.lock().is_ok_and(|c| c.sends.iter().all(|s| s.fifo.peek(s.pending.len() as u64).is_none()))
    }

    fn has_sockets(&self) -> bool {
        true
    }

    fn wait_io(&self, timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut cqs: Vec<(Arc<Cq>, Arc<AtomicBool>)> = Vec::new();
        {
            let Ok(mut c) = self.conns.lock() else { return };
            if c.error.is_some() {
                return;
            }
            let mut armed = Ok(());
            for w in c.sends.iter().map(|s| &s.w).chain(c.recvs.iter().filter(|r| !r.closed).map(|r| &r.w)) {
                // Arming is a system call on some providers: only when not armed yet.
                if !w.armed.load(Ordering::Relaxed) {
                    armed = armed.and(w.cq.req_notify(false));
                    w.armed.store(true, Ordering::Relaxed);
                }
                cqs.push((w.cq.clone(), w.armed.clone()));
                fds.push(libc::pollfd { fd: w.chan.fd(), events: libc::POLLIN, revents: 0 });
                fds.push(libc::pollfd { fd: w.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            // Completions that came before the queues were armed raise no event: look.
            match armed.and_then(|_| self.pump_all(&mut c)) {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => {
                    c.error = Some(e);
                    return;
                }
            }
        }
        fds.push(libc::pollfd { fd: self.listener_fd, events: libc::POLLIN, revents: 0 });
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array for the call; the descriptors stay open (only
        // this thread adds or drops links, and `cqs` holds the queues and their channels).
        unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
        // Take (and acknowledge) the events, so that the channels are quiet again.
        for ((cq, armed), p) in cqs.iter().zip(fds.iter().step_by(2)) {
            if p.revents != 0 {
                while cq.wait_event(Duration::ZERO).unwrap_or(false) {}
                armed.store(false, Ordering::Relaxed);
            }
        }
        if fds.last().is_some_and(|p| p.revents != 0)
            && let Ok(mut c) = self.conns.lock()
        {
            c.arrivals = true;
        }
        if fds.iter().rev().skip(1).step_by(2).any(|p| p.revents != 0)
            && let Ok(mut c) = self.conns.lock()
        {
            // A socket spoke (or ended): look at it in the next progress.
            c.socket_check = Instant::now().checked_sub(SOCKET_CHECK).unwrap_or(c.socket_check);
        }
    }
}
