//! The TCP link, between hosts (or between processes of a host with `OXCCL_SHM_DISABLE=1`).
//!
//! Each rank listens on one socket; a link per (peer, channel, direction) is opened the
//! first time a collective needs it, as `OXCCL_NSOCKS` connections that each introduce
//! themselves with the job's secret. The executor still sees FIFOs: a send link is a
//! local FIFO that [`Tcp::progress`] drains into the sockets, a receive link a local FIFO
//! it fills from them. A message (`part u32 | total u32 | descriptor 2 x u64 | bytes`)
//! travels on the first socket, or, from 64 KiB, striped across all of them. Progress runs
//! inline on the executor's thread with non-blocking sockets, so there is no proxy thread
//! to hand off to, and the send of one chunk overlaps the reduction of the previous one
//! through the kernel's socket buffers.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fifo::{Fifo, FifoRx, FifoShape, FifoTx, Region};
pub(crate) mod frame;
mod pump;
pub(crate) mod setup;

use frame::{FRAME_HEADER, tune};
pub(crate) use setup::TcpSetup;

use super::hello::ConnHello;
use super::peers::{ConnWait, NetPeers};
use super::{Dir, Endpoint, LinkKey, Transport};
use crate::bootstrap::connect_retry_with;
use crate::bootstrap::gate::Gate;
use crate::bootstrap::id::Secret;
use crate::error::{Error, Result};
use crate::liveness::PeerWatch;
use crate::sync::Doorbell;
use crate::topology::PeerInfo;
use crate::wire::{self, Kind};

/// Accepted connections waiting for `connect` to claim them, at most (a link has
/// `OXCCL_NSOCKS` per peer and channel; this is far above what a job opens).
pub(crate) const MAX_UNCLAIMED: usize = 4096;
/// Read-ahead buffer per socket.
pub(super) const READ_AHEAD: usize = 64 << 10;

/// One socket of a send link and what it has written of the current message.
struct TxSock {
    sock: TcpStream,
    header: [u8; FRAME_HEADER],
    /// Bytes of this socket's frame (header + part) still to write; 0 when idle.
    left: usize,
    off: usize,
    len: usize,
}

/// A send link: the executor posts into `fifo`'s other end; we drain it to the sockets.
struct SendConn {
    peer: usize,
    socks: Vec<TxSock>,
    fifo: FifoRx,
    busy: bool,
}

/// One socket of a receive link, with read-ahead and its part of the current message.
struct RxSock {
    sock: TcpStream,
    /// Bytes read ahead: `rbuf[rstart..rend]`.
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// The last read found the socket empty (do not try again in this pump).
    drained: bool,
    header: [u8; FRAME_HEADER],
    have_header: usize,
    have_part: usize,
}

/// A receive link: we fill `fifo` from the sockets; the executor reads the other end.
struct RecvConn {
    peer: usize,
    socks: Vec<RxSock>,
    fifo: FifoTx,
    /// The peer closed the link between two messages (a normal exit).
    closed: bool,
}

struct Conns {
    /// The listener, behind which connections introduce themselves.
    gate: Gate,
    /// `wait_io` saw the listener readable: accept in the next `progress`.
    arrivals: bool,
    sends: Vec<SendConn>,
    recvs: Vec<RecvConn>,
    /// Accepted connections not yet claimed by `connect`, by (peer, channel, socket),
    /// with the descriptor of the call that opened them.
    accepted: HashMap<(usize, u8, u32), (TcpStream, crate::call::Desc)>,
    /// Reused by `progress`: (receive link, its socket) of each poll entry.
    pollfds: Vec<libc::pollfd>,
    pollmap: Vec<usize>,
}

/// The TCP transport of one rank.
pub struct Tcp {
    secret: Secret,
    shape: FifoShape,
    nsocks: usize,
    /// The listener's descriptor (owned by the gate in `conns`), for `wait_io`.
    listener_fd: i32,
    /// Every rank's data listener.
    addrs: Vec<SocketAddr>,
    /// Names, liveness and the timeout, for errors and connection waits.
    peers: NetPeers,
    /// The executor's doorbell (rung when progress frees or fills a slot).
    bell: Doorbell,
    conns: Mutex<Conns>,
}

impl Tcp {
    /// Binds this rank's data listener on `ip` (its address goes to the peers through
    /// the bootstrap before [`Tcp::new`]).
    pub fn listen(ip: std::net::IpAddr) -> Result<TcpListener> {
        let l = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| Error::system(format!("binding a TCP listener on {ip}"), e))?;
        l.set_nonblocking(true).map_err(|e| Error::system("setting a listener non-blocking", e))?;
        Ok(l)
    }

    /// The transport, once every rank's listener address is known; every link uses
    /// `nsocks` connections.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: usize,
        secret: Secret,
        shape: FifoShape,
        nsocks: usize,
        listener: TcpListener,
        addrs: Vec<SocketAddr>,
        peers: Vec<PeerInfo>,
        bell: Doorbell,
        timeout: Option<Duration>,
    ) -> Result<Tcp> {
        let nsocks = nsocks.clamp(1, 64);
        // Introductions: secret + rank, channel, socket.
        let gate = Gate::new(listener, secret, Kind::ConnHello, 64, format!("rank {me}: TCP data listener"))?;
        let listener_fd = gate.listener_fd();
        let conns = Conns {
            gate,
            arrivals: false,
            sends: Vec::new(),
            recvs: Vec::new(),
            accepted: HashMap::new(),
            pollfds: Vec::new(),
            pollmap: Vec::new(),
        };
        Ok(Tcp {
            secret,
            shape,
            nsocks,
            listener_fd,
            addrs,
            peers: NetPeers::new(peers, timeout),
            bell,
            conns: Mutex::new(conns),
        })
    }

    /// Watches this host's peer processes while waiting for connections.
    pub fn with_watch(mut self, watch: Arc<PeerWatch>) -> Tcp {
        self.peers.watch = Some(watch);
        self
    }

    /// Ends waits for connections when the communicator breaks (an abort, or a fault
    /// announced by another rank).
    pub fn with_fault(mut self, fault: Arc<crate::fault::Fault>) -> Tcp {
        self.peers.fault = Some(fault);
        self
    }

    fn who(&self, r: usize) -> String {
        self.peers.who(r)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Conns>> {
        self.conns.lock().map_err(|_| Error::internal("TCP transport state poisoned"))
    }

    /// Accepts pending connections and reads their introductions (never blocking: see
    /// [`Gate`]), and files those that introduced themselves by (peer, channel, socket).
    fn accept_pending(&self, conns: &mut Conns) -> Result<()> {
        while let Some(h) = conns.gate.poll()? {
            let parsed = ConnHello::decode(&h.body);
            let (peer, ch, idx, opener) = match parsed {
                Ok(v) => (v.peer, v.channel, v.socket, v.opener),
                Err(e) => {
                    conns.gate.refuse(h.from, &e.to_string());
                    continue;
                }
            };
            if peer >= self.addrs.len() || ch > u8::MAX as u32 || idx as usize >= self.nsocks {
                conns.gate.refuse(
                    h.from,
                    &format!(
                        "rank {peer}, channel {ch}, socket {idx} is out of range (OXCCL_NSOCKS must match on every rank)"
                    ),
                );
                continue;
            }
            if conns.accepted.len() >= MAX_UNCLAIMED {
                conns.gate.refuse(h.from, &format!("{MAX_UNCLAIMED} connections are waiting to be claimed already"));
                continue;
            }
            tune(&h.sock);
            conns.accepted.insert((peer, ch as u8, idx), (h.sock, opener));
        }
        Ok(())
    }

    /// Writes what the executor posted; returns whether bytes moved.
    fn closed(&self, peer: usize, what: &str) -> Error {
        self.peers.closed(peer, "connection", what)
    }

    fn broken(&self, peer: usize, what: &str, e: std::io::Error) -> Error {
        match self.peers.died(peer) {
            Some(m) => Error::remote(format!("{m} (connection error {what} it: {e})")),
            None => Error::remote(format!("connection error {what} {}: {e}", self.who(peer))),
        }
    }
}

impl Transport for Tcp {
    fn mem(&self) -> crate::transport::MemStats {
        let Ok(c) = self.conns.lock() else { return Default::default() };
        // Every link has its FIFO in private memory; each receiving socket reads ahead.
        let fifos = (c.sends.len() + c.recvs.len()) * self.shape.region_bytes();
        let ahead = c.recvs.iter().map(|r| r.socks.len()).sum::<usize>() * READ_AHEAD;
        crate::transport::MemStats { heap_bytes: (fifos + ahead) as u64, ..Default::default() }
    }

    fn name(&self) -> &'static str {
        "tcp"
    }

    fn unclaimed(&self, f: &mut dyn FnMut(usize, crate::call::Desc)) {
        let Ok(mut c) = self.lock() else { return };
        // Connections may wait behind the gate: introduce them first.
        let _ = self.accept_pending(&mut c);
        for (&(peer, _, _), &(_, opener)) in &c.accepted {
            f(peer, opener);
        }
    }

    fn peer_gone(&self, peer: usize) -> Option<String> {
        let closed = self.lock().is_ok_and(|c| c.recvs.iter().any(|r| r.peer == peer && r.closed));
        closed.then(|| self.peers.gone(peer))
    }

    fn connect(&self, me: usize, keys: &[LinkKey], opener: crate::call::Desc) -> Result<Vec<Endpoint>> {
        let deadline = self.peers.deadline();
        let mut out: Vec<Option<Endpoint>> = keys.iter().map(|_| None).collect();
        // Outgoing connections first: the peers' kernels complete them without waiting
        // for the peers, so two ranks connecting to each other cannot deadlock.
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.dir == Dir::Send) {
            let addr =
                *self.addrs.get(k.peer).ok_or_else(|| Error::internal(format!("no address for rank {}", k.peer)))?;
            let mut socks = Vec::with_capacity(self.nsocks);
            for idx in 0..self.nsocks {
                // Keep accepting while connecting: peers connecting to us may be all
                // that stands between them and accepting our connection.
                let mut s = connect_retry_with(
                    addr,
                    deadline,
                    &format!("rank {me}: connecting to {}", self.who(k.peer)),
                    Duration::from_millis(200),
                    &mut || {
                        self.peers.broken_comm()?;
                        self.accept_pending(&mut *self.lock()?)
                    },
                )?;
                let hello = ConnHello { peer: me, channel: k.channel as u32, socket: idx as u32, opener };
                wire::send(&mut s, Kind::ConnHello, &hello.encode(&self.secret))
                    .map_err(|e| self.broken(k.peer, "introducing to", e))?;
                tune(&s);
                s.set_nonblocking(true).map_err(|e| Error::system("setting a socket non-blocking", e))?;
                socks.push(TxSock { sock: s, header: [0; FRAME_HEADER], left: 0, off: 0, len: 0 });
            }
            let region = Arc::new(Region::heap(self.shape.region_bytes())?);
            let fifo = Fifo::init(region, 0, self.shape)?;
            self.lock()?.sends.push(SendConn {
                peer: k.peer,
                socks,
                fifo: fifo.receiver(self.bell.clone()),
                busy: false,
            });
            out[i] = Some(Endpoint::Tx(fifo.sender_by_reference(Doorbell::new_private())));
        }
        let mut wait = ConnWait::new();
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.dir == Dir::Recv) {
            let mut socks = Vec::with_capacity(self.nsocks);
            for idx in 0..self.nsocks as u32 {
                let s = loop {
                    let mut c = self.lock()?;
                    self.accept_pending(&mut c)?;
                    if let Some((s, _)) = c.accepted.remove(&(k.peer, k.channel, idx)) {
                        break s;
                    }
                    drop(c);
                    self.peers.keep_waiting(me, k, &mut wait, deadline)?;
                    std::thread::sleep(Duration::from_micros(200));
                };
                socks.push(RxSock {
                    sock: s,
                    rbuf: vec![0u8; READ_AHEAD].into_boxed_slice(),
                    rstart: 0,
                    rend: 0,
                    drained: false,
                    header: [0; FRAME_HEADER],
                    have_header: 0,
                    have_part: 0,
                });
            }
            let region = Arc::new(Region::heap(self.shape.region_bytes())?);
            let fifo = Fifo::init(region, 0, self.shape)?;
            self.lock()?.recvs.push(RecvConn {
                peer: k.peer,
                socks,
                fifo: fifo.sender(self.bell.clone()),
                closed: false,
            });
            out[i] = Some(Endpoint::Rx(fifo.receiver(Doorbell::new_private())));
        }
        out.into_iter().map(|e| e.ok_or_else(|| Error::internal("unconnected TCP key"))).collect()
    }

    fn progress(&self) -> Result<bool> {
        let mut c = self.lock()?;
        let mut moved = false;
        if c.arrivals {
            // Someone connected outside `connect` (a stray client, or a peer early): take
            // the connection off the listener's queue, or it stays readable and every
            // wait returns at once.
            c.arrivals = false;
            self.accept_pending(&mut c)?;
        }
        let Conns { sends, recvs, pollfds, pollmap, .. } = &mut *c;
        for s in sends.iter_mut() {
            moved |= self.pump_send(s)?;
        }
        // One poll finds the links with data, instead of a failed read per socket: on an
        // oversubscribed host those syscalls burn the core a peer needs. Read-ahead bytes,
        // and a parsed header waiting for a free slot (a message without payload needs no
        // further byte), are processed without asking the sockets.
        pollfds.clear();
        pollmap.clear();
        let mut pending = vec![false; 0];
        for (i, r) in recvs.iter().enumerate() {
            let buffered = r.socks.iter().any(|s| s.rstart < s.rend || s.have_header == FRAME_HEADER);
            pending.push(!r.closed && buffered);
            if r.closed {
                continue;
            }
            for s in r.socks.iter().filter(|s| s.rstart == s.rend) {
                pollfds.push(libc::pollfd { fd: s.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                pollmap.push(i);
            }
        }
        if !pollfds.is_empty() {
            // SAFETY: `pollfds` is a valid array for the call; a zero timeout makes it a
            // non-blocking check.
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 0) };
        }
        for (p, &i) in pollfds.iter().zip(pollmap.iter()) {
            if p.revents != 0 {
                pending[i] = true;
            }
        }
        for (r, go) in recvs.iter_mut().zip(pending) {
            if go {
                moved |= self.pump_recv(r)?;
            }
        }
        Ok(moved)
    }

    fn flushed(&self) -> bool {
        self.conns.lock().is_ok_and(|c| c.sends.iter().all(|s| !s.busy && !s.fifo.can_recv()))
    }

    fn has_sockets(&self) -> bool {
        true
    }

    fn wait_io(&self, timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        if let Ok(c) = self.conns.lock() {
            for r in c.recvs.iter().filter(|r| !r.closed) {
                for s in &r.socks {
                    fds.push(libc::pollfd { fd: s.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                }
            }
            for s in c.sends.iter().filter(|s| s.busy) {
                for t in s.socks.iter().filter(|t| t.left > 0) {
                    fds.push(libc::pollfd { fd: t.sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 });
                }
            }
        }
        fds.push(libc::pollfd { fd: self.listener_fd, events: libc::POLLIN, revents: 0 });
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of pollfd for the call; the sockets stay open
        // (the lock was released, but only this thread closes or adds connections).
        unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
        if fds.last().is_some_and(|p| p.revents != 0)
            && let Ok(mut c) = self.conns.lock()
        {
            c.arrivals = true;
        }
    }
}
