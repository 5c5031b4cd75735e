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
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fifo::{Fifo, FifoRx, FifoShape, FifoTx, Region};
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

pub(crate) const FRAME_HEADER: usize = 24;
/// Messages from this size are striped across a link's sockets.
pub(crate) const STRIPE_MIN: usize = 64 << 10;
/// Accepted connections waiting for `connect` to claim them, at most (a link has
/// `OXCCL_NSOCKS` per peer and channel; this is far above what a job opens).
pub(crate) const MAX_UNCLAIMED: usize = 4096;
/// Read-ahead buffer per socket.
const READ_AHEAD: usize = 64 << 10;
/// Socket buffer size to force, if any: `None` leaves the kernel's autotuning alone,
/// which measured faster than a fixed 1 or 4 MiB on loopback (and setting a size turns
/// autotuning off, capped at net.core.wmem_max).
const SOCKET_BUFFER: Option<i32> = None;

/// The `(offset, length)` of the part of a `total`-byte message each socket carries:
/// everything on socket 0, or near-equal page-aligned stripes on all `nsocks`.
pub(crate) fn stripes(total: usize, nsocks: usize) -> impl Iterator<Item = (usize, usize)> {
    let (n, part) = if nsocks <= 1 || total < STRIPE_MIN {
        (1, total)
    } else {
        (nsocks, total.div_ceil(nsocks).div_ceil(4096) * 4096)
    };
    (0..n).map(move |i| {
        let off = (i * part).min(total);
        (off, part.min(total - off))
    })
}

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

fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let fd = s.as_raw_fd();
    let Some(size) = SOCKET_BUFFER else { return };
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setting an integer socket option on an open socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &size as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

/// `sendmsg` of two buffers with `MSG_NOSIGNAL`: a peer that went away is an error to
/// report, never a SIGPIPE that kills a host program which did not ignore it.
fn send_nosignal(sock: &TcpStream, a: &[u8], b: &[u8]) -> std::io::Result<usize> {
    let mut iov = [
        libc::iovec { iov_base: a.as_ptr() as *mut libc::c_void, iov_len: a.len() },
        libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() },
    ];
    // SAFETY: a zeroed msghdr is valid; we point it at two iovecs that describe live
    // slices for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if b.is_empty() { 1 } else { 2 };
    // SAFETY: the socket is open; sendmsg only reads the buffers.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
}

pub(crate) fn frame_header(part: usize, total: usize, desc: [u64; 2]) -> [u8; FRAME_HEADER] {
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&(part as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(total as u32).to_le_bytes());
    h[8..16].copy_from_slice(&desc[0].to_le_bytes());
    h[16..24].copy_from_slice(&desc[1].to_le_bytes());
    h
}

pub(crate) fn parse_header(h: &[u8; FRAME_HEADER]) -> (usize, usize, [u64; 2]) {
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes")) as usize;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    (u32_at(0), u32_at(4), [u64_at(8), u64_at(16)])
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
    fn pump_send(&self, c: &mut SendConn) -> Result<bool> {
        let mut moved = false;
        loop {
            if !c.busy {
                if !c.fifo.can_recv() {
                    return Ok(moved);
                }
                let m = c.fifo.message();
                for (s, (off, len)) in c.socks.iter_mut().zip(stripes(m.bytes, self.nsocks)) {
                    s.header = frame_header(len, m.bytes, m.desc);
                    s.left = FRAME_HEADER + len;
                    s.off = off;
                    s.len = len;
                }
                c.busy = true;
            }
            let m = c.fifo.message();
            let mut done = true;
            for s in c.socks.iter_mut().filter(|s| s.left > 0) {
                while s.left > 0 {
                    let sent = FRAME_HEADER + s.len - s.left;
                    // SAFETY: the message is ours until released, and holds m.bytes bytes,
                    // of which this socket's part is [off, off + len).
                    let part = unsafe { std::slice::from_raw_parts(m.ptr.add(s.off), s.len) };
                    let r = if sent < FRAME_HEADER {
                        send_nosignal(&s.sock, &s.header[sent..], part)
                    } else {
                        send_nosignal(&s.sock, &part[sent - FRAME_HEADER..], &[])
                    };
                    match r {
                        Ok(0) => return Err(self.closed(c.peer, "sending")),
                        Ok(k) => {
                            s.left -= k;
                            moved = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(self.broken(c.peer, "sending to", e)),
                    }
                }
                done &= s.left == 0;
            }
            if !done {
                return Ok(moved);
            }
            c.busy = false;
            c.fifo.release();
        }
    }

    /// Reads from socket `s` into its read-ahead buffer; `Ok(false)` when it has nothing
    /// now. A clean end of stream between messages marks the link closed (a peer that
    /// finished); mid-message it is an error.
    fn fill(&self, peer: usize, s: &mut RxSock, closed: &mut bool) -> Result<bool> {
        if s.rstart == s.rend {
            s.rstart = 0;
            s.rend = 0;
        }
        loop {
            match s.sock.read(&mut s.rbuf[s.rend..]) {
                Ok(0) if s.have_header == 0 && s.rstart == s.rend => {
                    *closed = true;
                    return Ok(false);
                }
                Ok(0) => return Err(self.closed(peer, "receiving")),
                Ok(k) => {
                    s.drained = s.rend + k < s.rbuf.len();
                    s.rend += k;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    s.drained = true;
                    return Ok(false);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broken(peer, "receiving from", e)),
            }
        }
    }

    /// Completes socket `s`'s frame header from read-ahead or the socket; whether done.
    fn read_header(&self, peer: usize, s: &mut RxSock, closed: &mut bool) -> Result<bool> {
        while s.have_header < FRAME_HEADER {
            if s.rstart == s.rend && (s.drained || !self.fill(peer, s, closed)?) {
                return Ok(false);
            }
            let k = (FRAME_HEADER - s.have_header).min(s.rend - s.rstart);
            s.header[s.have_header..s.have_header + k].copy_from_slice(&s.rbuf[s.rstart..s.rstart + k]);
            s.have_header += k;
            s.rstart += k;
        }
        Ok(true)
    }

    /// Reads socket `s`'s part into `dst` (its `len` bytes); whether complete. Large parts
    /// are read straight into the slot, small ones through the read-ahead buffer.
    fn read_part(&self, peer: usize, s: &mut RxSock, dst: *mut u8, len: usize, closed: &mut bool) -> Result<bool> {
        while s.have_part < len {
            let need = len - s.have_part;
            if s.rstart < s.rend {
                let k = need.min(s.rend - s.rstart);
                // SAFETY: `dst` holds `len` bytes (a slot the caller owns); the staging
                // range holds `k` bytes.
                unsafe { std::ptr::copy_nonoverlapping(s.rbuf.as_ptr().add(s.rstart), dst.add(s.have_part), k) };
                s.rstart += k;
                s.have_part += k;
            } else if need >= READ_AHEAD / 2 {
                // SAFETY: as above: `need` bytes of the part remain.
                let buf = unsafe { std::slice::from_raw_parts_mut(dst.add(s.have_part), need) };
                match s.sock.read(buf) {
                    Ok(0) => return Err(self.closed(peer, "receiving")),
                    Ok(k) => s.have_part += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.broken(peer, "receiving from", e)),
                }
            } else if s.drained || !self.fill(peer, s, closed)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Moves complete messages from the sockets into the receive FIFO while it has room;
    /// returns whether a message was posted or bytes moved.
    fn pump_recv(&self, c: &mut RecvConn) -> Result<bool> {
        let mut moved = false;
        c.socks.iter_mut().for_each(|s| s.drained = false);
        loop {
            if c.closed {
                return Ok(moved);
            }
            let RecvConn { peer, socks, fifo, closed } = c;
            let peer = *peer;
            // The first socket's header says how large the message is, hence how it is
            // striped.
            if !self.read_header(peer, &mut socks[0], closed)? {
                return Ok(moved);
            }
            let (_, total, desc) = parse_header(&socks[0].header);
            if total > self.shape.slot_bytes {
                return Err(Error::remote(format!(
                    "{} sent a malformed message ({total} bytes, more than a slot of {}): different OXCCL_SLOT_BYTES on the two ranks?",
                    self.who(peer),
                    self.shape.slot_bytes
                )));
            }
            if !fifo.can_send() {
                return Ok(moved); // the executor has not consumed earlier messages yet
            }
            let dst = fifo.buffer(total);
            let mut complete = true;
            for (i, (off, len)) in stripes(total, self.nsocks).enumerate() {
                let s = &mut socks[i];
                if !self.read_header(peer, s, closed)? {
                    complete = false;
                    continue;
                }
                let (part, t, _) = parse_header(&s.header);
                if part != len || t != total {
                    return Err(Error::remote(format!(
                        "{} sent a malformed message: socket {i} carries {part} of {t} bytes, expected {len} of {total} (different OXCCL_NSOCKS on the two ranks?)",
                        self.who(peer)
                    )));
                }
                // SAFETY: the slot holds `total` bytes and [off, off + len) lies within.
                complete &= self.read_part(peer, s, unsafe { dst.add(off) }, len, closed)?;
            }
            if !complete {
                return Ok(moved);
            }
            fifo.post(total, desc);
            moved = true;
            for s in socks.iter_mut() {
                s.have_header = 0;
                s.have_part = 0;
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_cover_messages_exactly() {
        for nsocks in [1usize, 2, 3, 4, 8] {
            for total in [0usize, 1, 100, STRIPE_MIN - 1, STRIPE_MIN, STRIPE_MIN + 1, 1 << 20, (1 << 20) + 12345] {
                let v: Vec<(usize, usize)> = stripes(total, nsocks).collect();
                assert_eq!(v.len(), if nsocks > 1 && total >= STRIPE_MIN { nsocks } else { 1 });
                let mut at = 0;
                for (off, len) in v {
                    assert_eq!(off, at.min(total));
                    at = off + len;
                }
                assert_eq!(at, total, "nsocks {nsocks} total {total}");
            }
        }
        let h = frame_header(5, 9, [1, 2]);
        assert_eq!(parse_header(&h), (5, 9, [1, 2]));
    }
}

/// Setting up TCP with the ranks of other hosts (see [`super::setup`]): this rank's data
/// listener is bound at once and its address is the rank's address.
pub(crate) struct TcpSetup {
    peers: Vec<usize>,
    listener: Option<TcpListener>,
    addr: SocketAddr,
}

impl TcpSetup {
    /// This rank's side, if it has peers on other hosts (or every peer, when shared
    /// memory is disabled).
    pub(crate) fn new(env: &super::setup::Env<'_>) -> Result<Option<TcpSetup>> {
        let peers = env.peers_by(crate::topology::Link::Tcp);
        if peers.is_empty() {
            return Ok(None);
        }
        let l = Tcp::listen(env.ip)?;
        let addr = l.local_addr().map_err(|e| Error::system("reading the TCP listener address", e))?;
        Ok(Some(TcpSetup { peers, listener: Some(l), addr }))
    }
}

/// Every rank's listener, from the addresses they published (a rank without one gets
/// an address nobody listens on: it has no peer that would connect to it).
pub(crate) fn listener_addrs(addrs: &[&[u8]]) -> Result<Vec<SocketAddr>> {
    addrs
        .iter()
        .map(|a| {
            if a.is_empty() {
                return Ok(SocketAddr::from(([0, 0, 0, 0], 0)));
            }
            let mut d = crate::wire::Dec::new(a, "TCP listener address");
            let addr = d.addr()?;
            d.end()?;
            Ok(addr)
        })
        .collect()
}

impl super::setup::Setup for TcpSetup {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn peers(&self) -> &[usize] {
        &self.peers
    }

    fn address(&self) -> Vec<u8> {
        let mut e = crate::wire::Enc::new();
        e.addr(&self.addr);
        e.0
    }

    fn connect(
        &mut self,
        env: &super::setup::Env<'_>,
        addrs: &[&[u8]],
        shared: &super::setup::Shared,
    ) -> Result<Box<dyn Transport>> {
        let l = self.listener.take().ok_or_else(|| Error::internal("the TCP listener was taken twice"))?;
        let s = env.settings;
        let t = Tcp::new(
            env.rank,
            *env.secret,
            env.shape,
            s.nsocks,
            l,
            listener_addrs(addrs)?,
            env.topology.peers.clone(),
            shared.bell.clone(),
            s.timeout,
        )?;
        Ok(Box::new(t.with_watch(shared.watch.clone()).with_fault(shared.fault.clone())))
    }
}
