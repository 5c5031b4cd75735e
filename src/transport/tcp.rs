//! The TCP link, between hosts (or between processes of a host with `OXCCL_SHM_DISABLE=1`).
//!
//! Each rank listens on one socket; a connection per (peer, channel, direction) is opened
//! the first time a collective needs it and introduces itself with the job's secret.
//! The executor still sees FIFOs: a send link is a local FIFO that [`Tcp::progress`]
//! drains into the socket, a receive link a local FIFO it fills from the socket, message
//! by message (`bytes u32 | descriptor 2 x u64 | payload`). Progress runs inline on the
//! executor's thread with non-blocking sockets, so there is no proxy thread to hand off
//! to, and the send of one chunk overlaps the reduction of the previous one through the
//! kernel's socket buffers.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fifo::{Fifo, FifoRx, FifoShape, FifoTx, Region};
use super::{Dir, Endpoint, LinkKey, Transport};
use crate::bootstrap::connect_retry;
use crate::bootstrap::id::{Secret, same_secret};
use crate::bootstrap::wire::{self, Dec, Enc, Kind};
use crate::error::{Error, Result};
use crate::log;
use crate::sync::Doorbell;
use crate::topology::PeerInfo;

const FRAME_HEADER: usize = 20;
/// Socket buffer size to force, if any: `None` leaves the kernel's autotuning alone,
/// which measured faster than a fixed 1 or 4 MiB on loopback (and setting a size turns
/// autotuning off, capped at net.core.wmem_max).
const SOCKET_BUFFER: Option<i32> = None;

/// A send link: the executor posts into `fifo`'s other end; we drain it to `sock`.
struct SendConn {
    peer: usize,
    sock: TcpStream,
    fifo: FifoRx,
    /// Bytes of the current message (header + payload) already written.
    sent: usize,
    header: [u8; FRAME_HEADER],
    busy: bool,
}

/// A receive link: we fill `fifo` from `sock`; the executor reads the other end.
struct RecvConn {
    peer: usize,
    sock: TcpStream,
    /// The peer closed the connection between two messages (a normal exit).
    closed: bool,
    /// Bytes read ahead from the socket: `rbuf[rstart..rend]`.
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// The last read found the socket empty (do not try again in this pump).
    drained: bool,
    fifo: FifoTx,
    header: [u8; FRAME_HEADER],
    have_header: usize,
    have_payload: usize,
}

#[derive(Default)]
struct Conns {
    sends: Vec<SendConn>,
    recvs: Vec<RecvConn>,
    /// Accepted connections not yet claimed by `connect`, by (peer, channel).
    accepted: HashMap<(usize, u8), TcpStream>,
    /// Reused by `progress`.
    pollfds: Vec<libc::pollfd>,
}

/// The TCP transport of one rank.
pub struct Tcp {
    me: usize,
    secret: Secret,
    shape: FifoShape,
    listener: TcpListener,
    /// Every rank's data listener.
    addrs: Vec<SocketAddr>,
    peers: Vec<PeerInfo>,
    /// The executor's doorbell (rung when progress frees or fills a slot).
    bell: Doorbell,
    timeout: Option<Duration>,
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

impl Tcp {
    /// Binds this rank's data listener on `ip` (its address goes to the peers through
    /// the bootstrap before [`Tcp::new`]).
    pub fn listen(ip: std::net::IpAddr) -> Result<TcpListener> {
        let l = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| Error::system(format!("binding a TCP listener on {ip}"), e))?;
        l.set_nonblocking(true).map_err(|e| Error::system("setting a listener non-blocking", e))?;
        Ok(l)
    }

    /// The transport, once every rank's listener address is known.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: usize,
        secret: Secret,
        shape: FifoShape,
        listener: TcpListener,
        addrs: Vec<SocketAddr>,
        peers: Vec<PeerInfo>,
        bell: Doorbell,
        timeout: Option<Duration>,
    ) -> Tcp {
        Tcp { me, secret, shape, listener, addrs, peers, bell, timeout, conns: Mutex::new(Conns::default()) }
    }

    fn who(&self, r: usize) -> String {
        match self.peers.get(r) {
            Some(p) => format!("rank {r} ({})", p.describe()),
            None => format!("rank {r}"),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Conns>> {
        self.conns.lock().map_err(|_| Error::Internal("TCP transport state poisoned".into()))
    }

    /// Accepts pending connections (non-blocking), checks their introductions and files
    /// them by (peer, channel).
    fn accept_pending(&self, conns: &mut Conns) -> Result<()> {
        loop {
            let (mut s, from) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::system("accepting a TCP connection", e)),
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let hello = match wire::recv(&mut s, 256) {
                Ok((Kind::ConnHello, p)) => p,
                _ => {
                    log::warn(&format!("rank {}: refused a data connection from {from}: not an oxccl peer", self.me));
                    continue;
                }
            };
            let mut d = Dec::new(&hello, "connection hello");
            let ok = d.raw(32).is_ok_and(|x| same_secret(&self.secret, x));
            let (peer, ch) = (d.u32().unwrap_or(u32::MAX) as usize, d.u32().unwrap_or(u32::MAX));
            if !ok || peer >= self.addrs.len() || ch > u8::MAX as u32 {
                log::warn(&format!("rank {}: refused a data connection from {from}: wrong secret or rank", self.me));
                continue;
            }
            tune(&s);
            s.set_nonblocking(true).map_err(|e| Error::system("setting a socket non-blocking", e))?;
            conns.accepted.insert((peer, ch as u8), s);
        }
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
                c.header[..4].copy_from_slice(&(m.bytes as u32).to_le_bytes());
                c.header[4..12].copy_from_slice(&m.desc[0].to_le_bytes());
                c.header[12..20].copy_from_slice(&m.desc[1].to_le_bytes());
                c.busy = true;
                c.sent = 0;
            }
            let m = c.fifo.message();
            let total = FRAME_HEADER + m.bytes;
            while c.sent < total {
                // SAFETY: the message is ours until released, and holds m.bytes bytes.
                let payload = unsafe { std::slice::from_raw_parts(m.ptr, m.bytes) };
                let r = if c.sent < FRAME_HEADER {
                    send_nosignal(&c.sock, &c.header[c.sent..], payload)
                } else {
                    send_nosignal(&c.sock, &payload[c.sent - FRAME_HEADER..], &[])
                };
                match r {
                    Ok(0) => return Err(self.closed(c.peer, "sending")),
                    Ok(k) => {
                        c.sent += k;
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(moved),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.broken(c.peer, "sending to", e)),
                }
            }
            c.busy = false;
            c.fifo.release();
        }
    }

    /// Reads from the socket into the connection's staging buffer; `Ok(false)` when the
    /// socket has nothing now. A clean end of stream between messages marks the link
    /// closed (a peer that finished); mid-message it is an error.
    fn fill(&self, c: &mut RecvConn) -> Result<bool> {
        if c.rstart == c.rend {
            c.rstart = 0;
            c.rend = 0;
        }
        loop {
            match c.sock.read(&mut c.rbuf[c.rend..]) {
                Ok(0) if c.have_header == 0 && c.rstart == c.rend => {
                    c.closed = true;
                    return Ok(false);
                }
                Ok(0) => return Err(self.closed(c.peer, "receiving")),
                Ok(k) => {
                    c.drained = c.rend + k < c.rbuf.len();
                    c.rend += k;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.drained = true;
                    return Ok(false);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broken(c.peer, "receiving from", e)),
            }
        }
    }

    /// Moves complete messages from the socket into the receive FIFO while it has room;
    /// returns whether bytes moved. Small messages arrive several per read through a
    /// staging buffer; large payloads are read straight into their slot.
    fn pump_recv(&self, c: &mut RecvConn) -> Result<bool> {
        let mut moved = false;
        c.drained = false;
        loop {
            if c.closed {
                return Ok(moved);
            }
            while c.have_header < FRAME_HEADER {
                if c.rstart == c.rend {
                    if c.drained || !self.fill(c)? {
                        return Ok(moved);
                    }
                    moved = true;
                }
                let k = (FRAME_HEADER - c.have_header).min(c.rend - c.rstart);
                c.header[c.have_header..c.have_header + k].copy_from_slice(&c.rbuf[c.rstart..c.rstart + k]);
                c.have_header += k;
                c.rstart += k;
            }
            let bytes = u32::from_le_bytes(c.header[..4].try_into().expect("4 bytes")) as usize;
            if bytes > self.shape.slot_bytes {
                return Err(Error::Remote(format!(
                    "{} sent a malformed message ({bytes} bytes, more than a slot of {}): different OXCCL_SLOT_BYTES on the two ranks?",
                    self.who(c.peer),
                    self.shape.slot_bytes
                )));
            }
            if !c.fifo.can_send() {
                return Ok(moved); // the executor has not consumed earlier messages yet
            }
            let dst = c.fifo.buffer(bytes);
            while c.have_payload < bytes {
                let need = bytes - c.have_payload;
                if c.rstart < c.rend {
                    let k = need.min(c.rend - c.rstart);
                    // SAFETY: the slot is ours (can_send) and holds `bytes` bytes; the
                    // staging range holds `k` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(c.rbuf.as_ptr().add(c.rstart), dst.add(c.have_payload), k) };
                    c.rstart += k;
                    c.have_payload += k;
                } else if need >= c.rbuf.len() / 2 {
                    // SAFETY: as above: `need` bytes of the slot remain.
                    let buf = unsafe { std::slice::from_raw_parts_mut(dst.add(c.have_payload), need) };
                    match c.sock.read(buf) {
                        Ok(0) => return Err(self.closed(c.peer, "receiving")),
                        Ok(k) => {
                            c.have_payload += k;
                            moved = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(moved),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(self.broken(c.peer, "receiving from", e)),
                    }
                } else {
                    if c.drained || !self.fill(c)? {
                        return Ok(moved);
                    }
                    moved = true;
                }
            }
            let desc = [
                u64::from_le_bytes(c.header[4..12].try_into().expect("8 bytes")),
                u64::from_le_bytes(c.header[12..20].try_into().expect("8 bytes")),
            ];
            c.fifo.post(bytes, desc);
            c.have_header = 0;
            c.have_payload = 0;
        }
    }

    fn closed(&self, peer: usize, what: &str) -> Error {
        Error::Remote(format!("{} closed its connection while {what}", self.who(peer)))
    }

    fn broken(&self, peer: usize, what: &str, e: std::io::Error) -> Error {
        Error::Remote(format!("connection error {what} {}: {e}", self.who(peer)))
    }
}

impl Transport for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn connect(&self, me: usize, keys: &[LinkKey]) -> Result<Vec<Endpoint>> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut out: Vec<Option<Endpoint>> = keys.iter().map(|_| None).collect();
        // Outgoing connections first: the peers' kernels complete them without waiting
        // for the peers, so two ranks connecting to each other cannot deadlock.
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.dir == Dir::Send) {
            let addr =
                *self.addrs.get(k.peer).ok_or_else(|| Error::Internal(format!("no address for rank {}", k.peer)))?;
            let mut s = connect_retry(addr, deadline, &format!("rank {me}: connecting to {}", self.who(k.peer)))?;
            let mut e = Enc::new();
            e.raw(&self.secret).u32(me as u32).u32(k.channel as u32);
            wire::send(&mut s, Kind::ConnHello, &e.0).map_err(|e| self.broken(k.peer, "introducing to", e))?;
            tune(&s);
            s.set_nonblocking(true).map_err(|e| Error::system("setting a socket non-blocking", e))?;
            let region = Arc::new(Region::heap(self.shape.region_bytes())?);
            let fifo = Fifo::init(region, 0, self.shape)?;
            let local = Doorbell::new_private();
            self.lock()?.sends.push(SendConn {
                peer: k.peer,
                sock: s,
                fifo: fifo.receiver(self.bell.clone()),
                sent: 0,
                header: [0; FRAME_HEADER],
                busy: false,
            });
            out[i] = Some(Endpoint::Tx(fifo.sender(local)));
        }
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.dir == Dir::Recv) {
            let s = loop {
                let mut c = self.lock()?;
                self.accept_pending(&mut c)?;
                if let Some(s) = c.accepted.remove(&(k.peer, k.channel)) {
                    break s;
                }
                drop(c);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Timeout {
                        op: format!("rank {me}: waiting for {} to connect (channel {})", self.who(k.peer), k.channel),
                        waited: self.timeout.unwrap_or_default(),
                        peers: vec![k.peer],
                    });
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            let region = Arc::new(Region::heap(self.shape.region_bytes())?);
            let fifo = Fifo::init(region, 0, self.shape)?;
            self.lock()?.recvs.push(RecvConn {
                peer: k.peer,
                sock: s,
                fifo: fifo.sender(self.bell.clone()),
                header: [0; FRAME_HEADER],
                have_header: 0,
                have_payload: 0,
                closed: false,
                rbuf: vec![0u8; 64 << 10].into_boxed_slice(),
                rstart: 0,
                rend: 0,
                drained: false,
            });
            out[i] = Some(Endpoint::Rx(fifo.receiver(Doorbell::new_private())));
        }
        out.into_iter().map(|e| e.ok_or_else(|| Error::Internal("unconnected TCP key".into()))).collect()
    }

    fn progress(&self) -> Result<bool> {
        let mut c = self.lock()?;
        let mut moved = false;
        let Conns { sends, recvs, pollfds, .. } = &mut *c;
        for s in sends.iter_mut() {
            moved |= self.pump_send(s)?;
        }
        // One poll finds the sockets with data, instead of a failed read per socket: on an
        // oversubscribed host those syscalls burn the core a peer needs.
        let active =
            |r: &RecvConn| !r.closed && r.rstart == r.rend && (r.have_header < FRAME_HEADER || r.fifo.can_send());
        pollfds.clear();
        pollfds.extend(recvs.iter().map(|r| libc::pollfd {
            fd: if active(r) { r.sock.as_raw_fd() } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        }));
        if recvs.len() > 1 {
            // SAFETY: `pollfds` is a valid array for the call (negative fds are ignored);
            // a zero timeout makes it a non-blocking check.
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 0) };
        } else {
            pollfds.iter_mut().for_each(|p| p.revents = libc::POLLIN);
        }
        for (r, p) in recvs.iter_mut().zip(pollfds.iter()) {
            // Read-ahead bytes, and a parsed header waiting for a free slot (a message
            // without payload needs no further byte from the socket), are processed
            // without asking the socket.
            let pending = !r.closed && (r.rstart < r.rend || r.have_header == FRAME_HEADER);
            if (p.fd >= 0 && p.revents != 0) || pending {
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
                fds.push(libc::pollfd { fd: r.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            for s in c.sends.iter().filter(|s| s.busy) {
                fds.push(libc::pollfd { fd: s.sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 });
            }
        }
        fds.push(libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of pollfd for the call; the sockets stay open
        // (the lock was released, but only this thread closes or adds connections).
        unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
    }
}
