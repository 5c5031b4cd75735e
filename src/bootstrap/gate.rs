//! The listening side of every oxccl connection: the bootstrap root, each rank's ring
//! listener and the TCP transport's data listener all take their connections through a
//! [`Gate`].
//!
//! Anything can connect to a listening socket, so a gate assumes nothing of a new
//! connection until it has introduced itself with one complete frame of the expected
//! kind whose payload starts with the job's secret. It never blocks on one connection:
//! connections are accepted and read without blocking, each with its own buffer, so a
//! client that sends nothing, or one byte at a time (slowloris), cannot hold up the
//! others. Its bounds:
//!
//! - a connection must complete its introduction within [`HELLO_TIMEOUT`] of being
//!   accepted, else it is dropped;
//! - the frame header is checked (magic at the first byte, then version, kind and
//!   length against the gate's limit) before the payload is allocated;
//! - at most [`MAX_PENDING`] connections wait to introduce themselves; beyond that the
//!   one idle the longest is dropped (a real peer writes its introduction as soon as it
//!   has connected, so it is never the idlest for long);
//! - refusals are logged, the first few in full and then at most one line per
//!   [`LOG_EVERY`] with a count, so a flood cannot flood the log either; they never fail
//!   the job;
//! - running out of file descriptors while accepting backs off and retries;
//! - the listen queue is made long (4096, as the kernel allows), and callers keep
//!   accepting while they connect elsewhere, so a flood cannot fill it for long.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::id::{self, Secret};
use crate::error::{Error, Result};
use crate::log;
use crate::wire::{self, Kind};

/// How long an accepted connection may take to introduce itself.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting to introduce themselves, at most, per gate.
pub const MAX_PENDING: usize = 256;
/// The listen queue asked for, so that a flood of connections between two of the gate's
/// rounds does not push real peers out.
const BACKLOG: libc::c_int = 4096;
/// Refusals logged in full before rate limiting starts.
const LOG_FIRST: u64 = 3;
/// After the first few, at most one refusal line per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(5);
/// Connections accepted per step, so that reading those already accepted is not starved.
const ACCEPT_BATCH: usize = 64;

/// A connection that introduced itself correctly.
pub struct Hello {
    /// The connection, non-blocking, positioned just after the introduction.
    pub sock: TcpStream,
    /// Where it came from.
    pub from: SocketAddr,
    /// The introduction's payload after the secret.
    pub body: Vec<u8>,
}

struct Pending {
    sock: TcpStream,
    from: SocketAddr,
    since: Instant,
    last: Instant,
    intro: Intro,
}

/// What [`Intro::read`] found.
pub(crate) enum Step {
    /// More bytes are needed (the source would block).
    Waiting,
    /// The introduction's payload, secret included (not yet checked).
    Done(Vec<u8>),
    /// Not an introduction: why.
    Refused(String),
}

/// One connection's introduction, read incrementally from a non-blocking source.
#[derive(Default)]
pub(crate) struct Intro {
    head: [u8; wire::HEADER],
    got: usize,
    /// The payload, allocated once the header has been checked.
    payload: Option<Vec<u8>>,
}

impl Intro {
    /// Bytes read so far.
    pub(crate) fn got(&self) -> usize {
        self.got
    }

    /// Reads what `r` has, never past the end of the introduction (the peer may send
    /// more right after it), checking the header before allocating the payload.
    pub(crate) fn read(&mut self, r: &mut impl Read, kind: Kind, limit: usize) -> Step {
        loop {
            let res = match &mut self.payload {
                None => r.read(&mut self.head[self.got..]),
                Some(p) => {
                    let at = self.got - wire::HEADER;
                    if at == p.len() {
                        return Step::Done(std::mem::take(p));
                    }
                    r.read(&mut p[at..])
                }
            };
            match res {
                Ok(0) => return Step::Refused("it closed the connection without introducing itself".into()),
                Ok(k) => self.got += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Step::Refused(format!("reading its introduction: {e}")),
            }
            if self.payload.is_none() {
                if !wire::plausible_prefix(&self.head[..self.got]) {
                    return Step::Refused("not an oxccl peer (bad magic)".into());
                }
                if self.got == wire::HEADER {
                    match wire::parse_head(&self.head, limit) {
                        Ok((k, _)) if k != kind => return Step::Refused(format!("{k:?} where {kind:?} was expected")),
                        Ok((_, len)) if len < id::SECRET_BYTES => {
                            return Step::Refused(format!("a {len} byte introduction is too short to hold the secret"));
                        }
                        Ok((_, len)) => self.payload = Some(vec![0u8; len]),
                        Err(e) => return Step::Refused(e.to_string()),
                    }
                }
            }
        }
    }
}

/// Logs refusals: the first few in full, then at most one line per [`LOG_EVERY`].
struct Refusals {
    what: String,
    count: u64,
    suppressed: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, from: SocketAddr, why: &str) {
        self.count += 1;
        let due = self.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if self.count <= LOG_FIRST || due {
            let more = if self.suppressed > 0 {
                format!(" ({} more refused since the last message)", self.suppressed)
            } else {
                String::new()
            };
            log::warn(&format!("{}: refused a connection from {from}: {why}{more}", self.what));
            self.suppressed = 0;
            self.logged = Some(Instant::now());
        } else {
            self.suppressed += 1;
        }
    }
}

impl Drop for Refusals {
    fn drop(&mut self) {
        if self.suppressed > 0 {
            log::warn(&format!("{}: refused {} more connections (not shown)", self.what, self.suppressed));
        }
    }
}

/// A listener that hands out only connections that introduced themselves with the job's
/// secret (see the module documentation).
pub struct Gate {
    listener: TcpListener,
    secret: Secret,
    kind: Kind,
    limit: usize,
    pending: Vec<Pending>,
    ready: VecDeque<Hello>,
    refusals: Refusals,
    /// Accepting failed for lack of descriptors or memory: back off before retrying.
    starved: bool,
}

impl Gate {
    /// A gate on `listener` for introductions of `kind` with payloads of at most `limit`
    /// bytes (secret included); `what` names the listener in log lines.
    pub fn new(
        listener: TcpListener,
        secret: Secret,
        kind: Kind,
        limit: usize,
        what: impl Into<String>,
    ) -> Result<Gate> {
        listener.set_nonblocking(true).map_err(|e| Error::system("setting a listener non-blocking", e))?;
        // SAFETY: listen() again on a listening socket only changes its backlog (std
        // binds with 128; the kernel clamps to net.core.somaxconn).
        unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
        Ok(Gate {
            listener,
            secret,
            kind,
            limit,
            pending: Vec::new(),
            ready: VecDeque::new(),
            refusals: Refusals { what: what.into(), count: 0, suppressed: 0, logged: None },
            starved: false,
        })
    }

    /// The listener's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| Error::system("reading a listener address", e))
    }

    /// The listener's descriptor, to poll for arrivals.
    pub fn listener_fd(&self) -> i32 {
        self.listener.as_raw_fd()
    }

    /// Connections waiting to introduce themselves now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Refusals so far.
    #[cfg(test)]
    pub fn refused(&self) -> u64 {
        self.refusals.count
    }

    /// Logs (rate-limited) that the caller refused a connection that passed the gate, for
    /// example one naming the wrong rank.
    pub fn refuse(&mut self, from: SocketAddr, why: &str) {
        self.refusals.note(from, why);
    }

    /// Accepts and reads without blocking; returns the next connection that has
    /// introduced itself, if any.
    pub fn poll(&mut self) -> Result<Option<Hello>> {
        if self.ready.is_empty() {
            self.step()?;
        }
        Ok(self.ready.pop_front())
    }

    /// Waits until a connection has introduced itself, or until `deadline` (`None`
    /// then).
    pub fn wait(&mut self, deadline: Option<Instant>) -> Result<Option<Hello>> {
        loop {
            if let Some(h) = self.poll()? {
                return Ok(Some(h));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            // Sleep until something arrives, the next pending connection expires, or the
            // deadline; 100 ms at most.
            let mut nap = Duration::from_millis(100);
            if let Some(d) = deadline {
                nap = nap.min(d - now);
            }
            if let Some(p) = self.pending.iter().map(|p| p.since).min() {
                nap = nap.min((p + HELLO_TIMEOUT).saturating_duration_since(now));
            }
            if self.starved {
                std::thread::sleep(nap.min(Duration::from_millis(10)));
                continue;
            }
            let mut fds: Vec<libc::pollfd> = std::iter::once(self.listener.as_raw_fd())
                .chain(self.pending.iter().map(|p| p.sock.as_raw_fd()))
                .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
                .collect();
            let ms = nap.as_millis().clamp(1, 100) as libc::c_int;
            // SAFETY: `fds` is a valid array of pollfd for the call, and every descriptor
            // in it is open (owned by `self`).
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        }
    }

    /// One round: accept what is waiting, read every pending connection, drop the
    /// expired.
    fn step(&mut self) -> Result<()> {
        self.starved = false;
        for _ in 0..ACCEPT_BATCH {
            let (sock, from) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO)
                    ) =>
                {
                    let from = SocketAddr::from(([0, 0, 0, 0], 0));
                    self.refusals.note(from, &format!("could not accept it ({e}); retrying"));
                    self.starved = true;
                    break;
                }
                Err(e) => return Err(Error::system(format!("{}: accepting a connection", self.refusals.what), e)),
            };
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = sock.set_nodelay(true);
            if self.pending.len() >= MAX_PENDING
                && let Some(i) = (0..self.pending.len()).min_by_key(|&i| self.pending[i].last)
            {
                let p = self.pending.swap_remove(i);
                self.refusals.note(
                    p.from,
                    &format!("{MAX_PENDING} connections were waiting to introduce themselves; dropped the idlest"),
                );
            }
            let now = Instant::now();
            self.pending.push(Pending { sock, from, since: now, last: now, intro: Intro::default() });
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let before = p.intro.got();
            let outcome = p.intro.read(&mut p.sock, self.kind, self.limit);
            if p.intro.got() != before {
                p.last = now;
            }
            let outcome = match outcome {
                Step::Waiting if now.duration_since(p.since) >= HELLO_TIMEOUT => {
                    Step::Refused(format!("it did not introduce itself within {HELLO_TIMEOUT:?}"))
                }
                s => s,
            };
            match outcome {
                Step::Waiting => i += 1,
                Step::Refused(why) => {
                    let p = self.pending.swap_remove(i);
                    self.refusals.note(p.from, &why);
                }
                Step::Done(payload) => {
                    let p = self.pending.swap_remove(i);
                    if id::same_secret(&self.secret, &payload[..id::SECRET_BYTES]) {
                        self.ready.push_back(Hello {
                            sock: p.sock,
                            from: p.from,
                            body: payload[id::SECRET_BYTES..].to_vec(),
                        });
                    } else {
                        self.refusals.note(p.from, "it does not know the job's secret");
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hello(secret: &Secret, kind: Kind, body: &[u8]) -> Vec<u8> {
        let mut p = secret.to_vec();
        p.extend_from_slice(body);
        let mut out = Vec::new();
        wire::send(&mut out, kind, &p).unwrap();
        out
    }

    fn gate(secret: Secret) -> (Gate, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let g = Gate::new(l, secret, Kind::RingHello, 64, "test gate").unwrap();
        let a = g.local_addr().unwrap();
        (g, a)
    }

    #[test]
    fn a_stalled_client_does_not_hold_up_a_real_one() {
        let secret = [3u8; 32];
        let (mut g, addr) = gate(secret);
        // Silent, slow, garbage, wrong secret, wrong kind, huge length, truncated.
        let _silent = TcpStream::connect(addr).unwrap();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(&hello(&secret, Kind::RingHello, b"body")[..5]).unwrap();
        let mut bad: Vec<TcpStream> = Vec::new();
        let mut huge = hello(&secret, Kind::RingHello, b"x");
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let truncated = hello(&secret, Kind::RingHello, b"body");
        for bytes in [
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            hello(&[9u8; 32], Kind::RingHello, b"body"),
            hello(&secret, Kind::Hello, b"body"),
            huge,
            truncated[..truncated.len() - 2].to_vec(),
        ] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&bytes).unwrap();
            bad.push(s);
        }
        let mut real = TcpStream::connect(addr).unwrap();
        real.write_all(&hello(&secret, Kind::RingHello, b"body")).unwrap();
        real.write_all(b"next frame").unwrap();
        let t = Instant::now();
        let h = g.wait(Some(Instant::now() + Duration::from_secs(5))).unwrap().expect("the real client gets in");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(h.body, b"body");
        // Nothing past the introduction was consumed.
        let mut rest = [0u8; 10];
        h.sock.set_nonblocking(false).unwrap();
        (&h.sock).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"next frame");
        // Garbage, wrong secret, wrong kind and the huge length were refused at once; the
        // silent, slow and truncated ones wait for their deadline.
        let _ = g.poll().unwrap();
        assert_eq!(g.refused(), 4);
        assert_eq!(g.pending(), 3);
        assert!(g.poll().unwrap().is_none());
    }

    #[test]
    fn pending_connections_are_bounded() {
        let secret = [4u8; 32];
        let (mut g, addr) = gate(secret);
        // Connect from another thread: the listen backlog is shorter than the flood.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let flood = std::thread::spawn(move || {
            let idle: Vec<TcpStream> = (0..MAX_PENDING + 20).map(|_| TcpStream::connect(addr).unwrap()).collect();
            let _ = rx.recv();
            drop(idle);
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while g.refused() < 20 && Instant::now() < deadline {
            assert!(g.wait(Some(Instant::now() + Duration::from_millis(50))).unwrap().is_none());
        }
        assert_eq!(g.pending(), MAX_PENDING);
        let mut real = TcpStream::connect(addr).unwrap();
        real.write_all(&hello(&secret, Kind::RingHello, b"ok")).unwrap();
        let h = g.wait(Some(Instant::now() + Duration::from_secs(5))).unwrap().expect("the real client gets in");
        assert_eq!(h.body, b"ok");
        tx.send(()).unwrap();
        flood.join().unwrap();
    }
}
