//! How a failure reaches every rank: the communicator's fault state and the messengers
//! that carry it.
//!
//! A rank's [`Fault`] records the first thing that broke its communicator: an abort on
//! this rank, an error this rank hit (a dead peer, a timeout, a mismatched call), or a
//! fault another rank announced. Every wait polls [`Fault::tripped`] (one relaxed load)
//! and ends with [`Fault::error`]; every later call fails with the same error at once.
//!
//! A fault is announced to the other ranks of the communicator as soon as it is recorded,
//! so that ranks which are not waiting for the failed one (or are not in a call at all)
//! learn of it within milliseconds instead of at their timeout:
//! - ranks that are threads of one process share a [`Board`];
//! - ranks that are processes keep the bootstrap ring's two sockets after init, and a
//!   [`Sentinel`] thread per communicator (blocked in `poll`, so it costs no CPU) floods
//!   a fault frame both ways around the ring. A neighbour whose socket closes without a
//!   goodbye frame crashed or was killed: that is a fault too, so a death is seen by the
//!   ring even where no data link watches it. A communicator that is dropped says
//!   goodbye, so leaving is never mistaken for dying.

pub mod msg;

use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::call::{Desc, desc};
use crate::error::{Error, Result};
use crate::sync::Doorbell;
use crate::sys::eventfd::EventFd;
use crate::topology::PeerInfo;
use crate::wire::{self, Kind};

/// What kind of failure a fault is; it decides the error class other ranks report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    /// A rank aborted its communicator.
    Aborted = 1,
    /// A rank saw a mismatched call: the others report `InvalidUsage` too.
    Mismatch = 2,
    /// A rank timed out waiting for a peer.
    Timeout = 3,
    /// Anything else: a dead peer, a broken connection, a system error.
    Failed = 4,
}

impl Class {
    fn of(e: &Error) -> Class {
        match e {
            Error::Aborted(_) => Class::Aborted,
            Error::InvalidUsage(_) => Class::Mismatch,
            Error::Timeout { .. } => Class::Timeout,
            _ => Class::Failed,
        }
    }

    fn from_u8(v: u8) -> Class {
        match v {
            1 => Class::Aborted,
            2 => Class::Mismatch,
            3 => Class::Timeout,
            _ => Class::Failed,
        }
    }
}

/// The first failure of a communicator.
struct Reason {
    class: Class,
    /// The rank where it happened.
    origin: usize,
    /// What the user reads.
    text: String,
    /// The error itself, where it happened on this rank.
    local: Option<Error>,
}

#[derive(Default)]
struct Inner {
    /// `abort` was called on this rank.
    aborted_here: bool,
    reason: Option<Reason>,
    /// The sentinel has sent this rank's own fault to its neighbours.
    announced: bool,
    /// Where to announce faults recorded here.
    herald: Option<Herald>,
}

/// Who carries a fault recorded on this rank to the others.
enum Herald {
    /// Thread ranks of one process.
    Board(Arc<Board>),
    /// The sentinel thread of a process rank (woken through an eventfd).
    Sentinel(Arc<EventFd>),
}

/// An error's message without the class prefix its display adds (the receiving rank
/// adds its own).
fn plain(e: &Error) -> String {
    match e {
        Error::InvalidUsage(m) | Error::Remote(m) | Error::Aborted(m) => m.clone(),
        e => e.to_string(),
    }
}

/// One rank's view of whether its communicator is broken, shared by the communicator,
/// its engine, its abort handles and its sentinel.
pub struct Fault {
    rank: usize,
    /// This process's identity, named when this rank aborts.
    who: String,
    tripped: AtomicBool,
    /// The recent collectives of this rank, by tag modulo [`RECENT`]: tag, descriptor
    /// words, operation number (the tag is cleared first, written last, and read first
    /// and last, so readers never take a torn record).
    recent: [[AtomicU64; 4]; RECENT],
    /// The tag of the collective this rank is in or last ran.
    latest: AtomicU64,
    /// A wait is stuck: the sentinel tells the ring where this rank is.
    stalled: AtomicBool,
    inner: Mutex<Inner>,
    /// Woken when a fault is recorded, so sleeping waits notice at once.
    bell: Doorbell,
}

impl Fault {
    /// A healthy fault state for `rank`, whose waits sleep on `bell`.
    pub fn new(rank: usize, bell: Doorbell) -> Arc<Fault> {
        let me = PeerInfo::local();
        Arc::new(Fault {
            rank,
            who: me.describe(),
            tripped: AtomicBool::new(false),
            recent: Default::default(),
            latest: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            bell,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the communicator is broken (aborted, failed here, or failed elsewhere).
    #[inline]
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    /// The error a call on this rank returns now, if the communicator is broken.
    pub fn error(&self) -> Option<Error> {
        if !self.tripped() {
            return None;
        }
        let g = self.lock();
        if g.aborted_here {
            return Some(Error::Aborted(format!("rank {}: the communicator was aborted", self.rank)));
        }
        let r = g.reason.as_ref()?;
        Some(match (&r.local, r.class) {
            (Some(e), _) => e.duplicate(),
            (None, Class::Mismatch) => Error::InvalidUsage(r.text.clone()),
            (None, _) => Error::Remote(r.text.clone()),
        })
    }

    /// Records that this rank entered collective number `tag` (operation `seq`) described
    /// by `d`. Four relaxed-ish stores per call: free next to the call itself.
    #[inline]
    pub fn enter(&self, tag: u64, d: Desc, seq: u64) {
        let r = &self.recent[tag as usize % RECENT];
        r[0].store(0, Ordering::Relaxed);
        r[1].store(d[0], Ordering::Relaxed);
        r[2].store(d[1], Ordering::Relaxed);
        r[3].store(seq, Ordering::Relaxed);
        r[0].store(tag, Ordering::Release);
        self.latest.store(tag, Ordering::Release);
    }

    /// The collective this rank is in or last ran.
    fn current(&self) -> Option<msg::Where> {
        self.at(self.latest.load(Ordering::Acquire))
    }

    /// This rank's collective with tag `tag`, if it is recent: (tag, descriptor,
    /// operation number).
    fn at(&self, tag: u64) -> Option<msg::Where> {
        let r = &self.recent[tag as usize % RECENT];
        for _ in 0..100 {
            let t = r[0].load(Ordering::Acquire);
            if t != tag || tag == 0 {
                return None;
            }
            let d = [r[1].load(Ordering::Relaxed), r[2].load(Ordering::Relaxed)];
            let seq = r[3].load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if r[0].load(Ordering::Relaxed) == tag {
                return Some(msg::Where { origin: self.rank as u32, hops: 0, tag, desc: d, seq });
            }
        }
        None
    }

    /// A wait of this rank's current collective has been stuck for a while: ask the
    /// other ranks whether they are in a different collective at this position (a
    /// mismatch where no message flows, so no receiver can see it).
    pub fn stalled(&self) {
        let herald = self.lock().herald.as_ref().map(Herald::handle);
        match herald {
            Some(Herald::Board(b)) => {
                if let Some(w) = self.current() {
                    b.compare(self, w);
                }
            }
            Some(Herald::Sentinel(e)) => {
                self.stalled.store(true, Ordering::SeqCst);
                e.notify();
            }
            None => {}
        }
    }

    /// Compares a stuck rank's position with this rank's; on a mismatch, records it
    /// (and so announces it). Returns whether it did.
    fn check_where(&self, w: &msg::Where) -> bool {
        // This rank may have moved on (a call with nothing to send, say): compare what
        // it called at that position.
        let Some(mine) = self.at(w.tag) else { return false };
        if mine.desc == w.desc || self.tripped() {
            return false;
        }
        self.fail(&Error::InvalidUsage(format!(
            "mismatched collective calls: rank {} called {} as op #{}, but rank {} called {} as that op (its op #{}); every rank must make the same calls in the same order",
            self.rank,
            desc::describe(mine.desc),
            mine.seq,
            w.origin,
            desc::describe(w.desc),
            w.seq
        )));
        true
    }

    /// The rank where the first failure happened, if any.
    pub fn origin(&self) -> Option<usize> {
        self.lock().reason.as_ref().map(|r| r.origin)
    }

    /// Aborts the communicator on this rank: every pending and later call fails with
    /// `Aborted`, and the other ranks learn that this rank aborted.
    pub fn abort(&self) {
        self.stop(format!("rank {} ({}) aborted its communicator", self.rank, self.who));
    }

    /// Aborts the communicator because this rank's thread panicked while it was open (it
    /// is being dropped during unwinding): the other ranks learn that rather than take
    /// the drop for an orderly goodbye and wait for calls that will never come.
    pub fn abandon(&self) {
        self.stop(format!(
            "rank {} ({}) panicked with the communicator open (it was dropped while unwinding)",
            self.rank, self.who
        ));
    }

    /// Trips the fault as an abort with `text` as the announced reason (unless another
    /// failure came first).
    fn stop(&self, text: String) {
        let herald = {
            let mut g = self.lock();
            g.aborted_here = true;
            if g.reason.is_none() {
                g.reason = Some(Reason { class: Class::Aborted, origin: self.rank, text, local: None });
            }
            self.tripped.store(true, Ordering::SeqCst);
            g.herald.as_ref().map(Herald::handle)
        };
        self.bell.wake();
        if let Some(h) = herald {
            h.announce(self);
        }
    }

    /// Records an error this rank hit that leaves the links in an unknown state, and
    /// announces it, unless the communicator already failed. Where the failure came from
    /// elsewhere, `e` (how this rank's call reported it, naming the call) becomes the
    /// error every later call returns.
    pub fn fail(&self, e: &Error) {
        let herald = {
            let mut g = self.lock();
            if let Some(r) = &mut g.reason {
                if r.local.is_none() {
                    r.local = Some(e.duplicate());
                }
                return;
            }
            g.reason =
                Some(Reason { class: Class::of(e), origin: self.rank, text: plain(e), local: Some(e.duplicate()) });
            self.tripped.store(true, Ordering::SeqCst);
            g.herald.as_ref().map(Herald::handle)
        };
        self.bell.wake();
        if let Some(h) = herald {
            h.announce(self);
        }
    }

    /// Records a fault another rank announced; returns whether it is the first (the
    /// sentinel then passes it on).
    fn receive(&self, class: Class, origin: usize, text: &str) -> bool {
        {
            let mut g = self.lock();
            if g.reason.is_some() {
                return false;
            }
            g.reason = Some(Reason { class, origin, text: text.to_string(), local: None });
            self.tripped.store(true, Ordering::SeqCst);
        }
        self.bell.wake();
        true
    }

    /// The fault to send to the neighbours: (class, origin, text), once.
    fn to_announce(&self) -> Option<(u8, usize, String)> {
        let mut g = self.lock();
        if g.announced {
            return None;
        }
        let r = g.reason.as_ref()?;
        let out = (r.class as u8, r.origin, r.text.clone());
        g.announced = true;
        Some(out)
    }

    fn set_herald(&self, h: Herald) {
        self.lock().herald = Some(h);
    }
}

impl Herald {
    fn handle(&self) -> Herald {
        match self {
            Herald::Board(b) => Herald::Board(b.clone()),
            Herald::Sentinel(e) => Herald::Sentinel(e.clone()),
        }
    }

    fn announce(&self, from: &Fault) {
        match self {
            Herald::Board(b) => b.announce(from),
            Herald::Sentinel(e) => e.notify(),
        }
    }
}

/// The fault states of the thread ranks of one in-process communicator.
#[derive(Default)]
pub struct Board {
    members: Mutex<Vec<Weak<Fault>>>,
}

impl Board {
    /// An empty board.
    pub fn new() -> Arc<Board> {
        Arc::new(Board::default())
    }

    /// Adds a rank: faults it records reach the other members, and theirs reach it.
    pub fn join(self: &Arc<Board>, f: &Arc<Fault>) {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(f));
        f.set_herald(Herald::Board(self.clone()));
    }

    /// A stuck member's position, compared with every other member's.
    fn compare(&self, from: &Fault, w: msg::Where) {
        let members: Vec<Arc<Fault>> =
            self.members.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
        for m in members.iter().filter(|m| !std::ptr::eq(&***m, from)) {
            if m.check_where(&w) {
                return;
            }
        }
    }

    fn announce(&self, from: &Fault) {
        let Some((class, origin, text)) = from.to_announce() else { return };
        let members: Vec<Arc<Fault>> =
            self.members.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
        for m in members.iter().filter(|m| !std::ptr::eq(&***m, from)) {
            m.receive(Class::from_u8(class), origin, &text);
        }
    }
}

/// A ring neighbour, as the sentinel sees it.
pub struct Neighbour {
    /// Its rank.
    pub rank: usize,
    /// Its process, named when it dies.
    pub info: PeerInfo,
    /// The bootstrap ring socket to it.
    pub sock: TcpStream,
}

/// The thread that carries faults around the bootstrap ring of a process communicator.
pub struct Sentinel {
    wake: Arc<EventFd>,
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How many recent collectives a rank remembers for position reports.
const RECENT: usize = 16;

/// How long a wait is stuck before the rank asks the others where they are (see
/// [`Fault::stalled`]). Harmless when the calls match, so it can be short.
pub const STALL: Duration = Duration::from_millis(500);

/// How long the sentinel waits on a neighbour's socket for the rest of a frame, or for
/// the kernel to take one.
const SOCKET_PATIENCE: Duration = Duration::from_secs(2);

impl Sentinel {
    /// Starts watching `neighbours` (the predecessor and successor on the bootstrap
    /// ring; one socket each) for `fault`.
    pub fn start(fault: Arc<Fault>, nranks: usize, neighbours: Vec<Neighbour>) -> Result<Sentinel> {
        for n in &neighbours {
            let s = &n.sock;
            s.set_nonblocking(false).map_err(|e| Error::system("setting a socket blocking", e))?;
            s.set_read_timeout(Some(SOCKET_PATIENCE)).map_err(|e| Error::system("setting a socket timeout", e))?;
            s.set_write_timeout(Some(SOCKET_PATIENCE)).map_err(|e| Error::system("setting a socket timeout", e))?;
        }
        let wake = Arc::new(EventFd::new()?);
        let closing = Arc::new(AtomicBool::new(false));
        fault.set_herald(Herald::Sentinel(wake.clone()));
        let (w, c) = (wake.clone(), closing.clone());
        let thread = std::thread::Builder::new()
            .name(format!("oxccl-sentinel-{}", fault.rank))
            .spawn(move || watch(&fault, nranks, neighbours, &w, &c))
            .map_err(|e| Error::system("starting the sentinel thread", e))?;
        Ok(Sentinel { wake, closing, thread: Some(thread) })
    }

    /// Says goodbye to the neighbours (or passes on the fault that broke the
    /// communicator) and ends the thread. Bounded by the socket timeouts.
    pub fn leave(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The sentinel's loop.
fn watch(fault: &Fault, nranks: usize, mut sides: Vec<Neighbour>, wake: &EventFd, closing: &AtomicBool) {
    // Neighbours that ended (goodbye, fault, or closed) are removed.
    let mut spoke = vec![false; sides.len()];
    loop {
        if fault.stalled.swap(false, Ordering::SeqCst)
            && !fault.tripped()
            && let Some(w) = fault.current()
        {
            let body = w.encode();
            for s in &mut sides {
                let _ = wire::send(&mut s.sock, Kind::Where, &body);
            }
        }
        if let Some((class, origin, text)) = fault.to_announce() {
            let body = msg::encode_fault(class, origin, &text);
            for s in &mut sides {
                let _ = wire::send(&mut s.sock, Kind::Fault, &body);
            }
        }
        if closing.load(Ordering::SeqCst) {
            if !fault.tripped() {
                for s in &mut sides {
                    let _ = wire::send(&mut s.sock, Kind::Bye, &[]);
                }
            }
            for s in &sides {
                let _ = s.sock.shutdown(std::net::Shutdown::Write);
            }
            return;
        }
        let mut fds: Vec<libc::pollfd> = sides
            .iter()
            .map(|s| libc::pollfd { fd: s.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .chain(std::iter::once(libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 }))
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Nothing sensible is left to do but wait for the communicator to go.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if fds[sides.len()].revents != 0 {
            wake.drain();
        }
        let mut i = sides.len();
        while i > 0 {
            i -= 1;
            if fds[i].revents == 0 {
                continue;
            }
            let (done, heard, pass) = hear(fault, nranks, &mut sides[i], spoke[i]);
            spoke[i] |= heard;
            if let Some(body) = pass {
                for (_, s) in sides.iter_mut().enumerate().filter(|(j, _)| *j != i) {
                    let _ = wire::send(&mut s.sock, Kind::Where, &body);
                }
            }
            if done {
                sides.remove(i);
                spoke.remove(i);
            }
        }
    }
}

/// Reads one frame from a neighbour: returns (whether the neighbour is done, whether it
/// announced a fault, a stuck rank's position to pass on).
fn hear(fault: &Fault, nranks: usize, side: &mut Neighbour, spoke: bool) -> (bool, bool, Option<Vec<u8>>) {
    let (done, heard) = match wire::recv(&mut side.sock, msg::FAULT_TEXT + 64) {
        Ok((Kind::Where, p)) => {
            let pass = match msg::Where::decode(&p) {
                Ok(w) if w.origin as usize != fault.rank && !fault.tripped() => {
                    let found = fault.check_where(&w);
                    let hops = w.hops.saturating_add(1);
                    (!found && (hops as usize) < nranks).then(|| msg::Where { hops, ..w }.encode())
                }
                _ => None,
            };
            return (false, false, pass);
        }
        frame => heard(fault, side, spoke, frame),
    };
    (done, heard, None)
}

type Frame = std::result::Result<(Kind, Vec<u8>), std::result::Result<std::io::Error, Error>>;

/// What a frame other than a position report means.
fn heard(fault: &Fault, side: &mut Neighbour, spoke: bool, frame: Frame) -> (bool, bool) {
    let who = format!("rank {} ({})", side.rank, side.info.describe());
    match frame {
        Ok((Kind::Fault, p)) => {
            let (class, origin, text) = msg::decode_fault(&p).unwrap_or_else(|e| {
                (Class::Failed as u8, side.rank, format!("{who} sent a malformed fault message: {e}"))
            });
            // Passing it on happens at the top of the loop (to_announce).
            fault.receive(Class::from_u8(class), origin, &text);
            (false, true)
        }
        Ok((Kind::Bye, _)) => (true, false),
        Ok((k, _)) => {
            fault.receive(Class::Failed, side.rank, &format!("{who} sent an unexpected {k:?} on the bootstrap ring"));
            (true, true)
        }
        Err(Err(e)) => {
            fault.receive(Class::Failed, side.rank, &format!("{who} sent a malformed message: {e}"));
            (true, true)
        }
        Err(Ok(e)) => {
            if !spoke {
                let how = match e.kind() {
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                        "died (its process ended without leaving the communicator: killed or crashed)".to_string()
                    }
                    _ => format!("stopped answering on the bootstrap ring ({e})"),
                };
                fault.receive(Class::Failed, side.rank, &format!("{who} {how}"));
            }
            // Drain whatever else is queued; the socket is done either way.
            let mut sink = [0u8; 256];
            let _ = side.sock.set_nonblocking(true);
            while matches!(side.sock.read(&mut sink), Ok(n) if n > 0) {}
            (true, !spoke)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_on_one_thread_rank_reaches_the_others_once() {
        let board = Board::new();
        let f: Vec<Arc<Fault>> = (0..3).map(|r| Fault::new(r, Doorbell::new_private())).collect();
        for x in &f {
            board.join(x);
        }
        assert!(f.iter().all(|x| !x.tripped() && x.error().is_none()));
        f[1].fail(&Error::InvalidUsage("rank 1 called a; rank 0 called b".into()));
        // Rank 2's call reports the fault its own way, naming its call; that report is what
        // its later calls return. The fault stays rank 1's.
        f[2].fail(&Error::Remote("rank 2: barrier #3: the fault".into()));
        assert!(matches!(f[2].error(), Some(Error::Remote(m)) if m == "rank 2: barrier #3: the fault"));
        for x in &f[..2] {
            assert!(x.tripped());
            assert_eq!(x.origin(), Some(1));
            match x.error() {
                Some(Error::InvalidUsage(m)) => assert!(m.contains("rank 1 called a"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        f[0].abort();
        assert!(matches!(f[0].error(), Some(Error::Aborted(_))));
    }

    #[test]
    fn an_abort_reads_as_a_remote_error_elsewhere() {
        let board = Board::new();
        let f: Vec<Arc<Fault>> = (0..2).map(|r| Fault::new(r, Doorbell::new_private())).collect();
        for x in &f {
            board.join(x);
        }
        f[0].abort();
        match f[1].error() {
            Some(Error::Remote(m)) => assert!(m.contains("rank 0") && m.contains("aborted"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn info() -> PeerInfo {
        PeerInfo { host_id: "h".into(), hostname: "h".into(), pid: 1 }
    }

    /// Three sentinels on a ring 0 -> 1 -> 2 -> 0: a fault on one reaches both others; a
    /// goodbye is not a fault; a socket closed without one is.
    #[test]
    fn sentinels_flood_faults_and_tell_leaving_from_dying() {
        let ring = |n: usize| -> Vec<Vec<Neighbour>> {
            let links: Vec<(TcpStream, TcpStream)> = (0..n).map(|_| pair()).collect(); // i -> i+1
            let mut sides: Vec<Vec<Neighbour>> = (0..n).map(|_| Vec::new()).collect();
            for (i, (a, b)) in links.into_iter().enumerate() {
                sides[i].push(Neighbour { rank: (i + 1) % n, info: info(), sock: a });
                sides[(i + 1) % n].push(Neighbour { rank: i, info: info(), sock: b });
            }
            sides
        };
        let wait = |f: &Fault| {
            let t = std::time::Instant::now();
            while !f.tripped() {
                assert!(t.elapsed() < Duration::from_secs(5), "fault never arrived");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // A fault floods.
        let f: Vec<Arc<Fault>> = (0..3).map(|r| Fault::new(r, Doorbell::new_private())).collect();
        let mut s: Vec<Sentinel> =
            ring(3).into_iter().enumerate().map(|(r, n)| Sentinel::start(f[r].clone(), 3, n).unwrap()).collect();
        f[2].fail(&Error::Timeout { op: "x".into(), waited: Duration::ZERO, peers: vec![0] });
        for x in &f[..2] {
            wait(x);
            assert_eq!(x.origin(), Some(2));
            assert!(matches!(x.error(), Some(Error::Remote(m)) if m.contains("timeout")));
        }
        s.clear();

        // Leaving is not dying; dying (closing without goodbye) is.
        let f: Vec<Arc<Fault>> = (0..3).map(|r| Fault::new(r, Doorbell::new_private())).collect();
        let mut sides = ring(3);
        let dying = sides.pop().unwrap();
        let mut s: Vec<Sentinel> =
            sides.into_iter().enumerate().map(|(r, n)| Sentinel::start(f[r].clone(), 3, n).unwrap()).collect();
        s[0].leave();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!f[1].tripped(), "a goodbye is not a fault: {:?}", f[1].error());
        drop(dying);
        wait(&f[1]);
        assert!(matches!(f[1].error(), Some(Error::Remote(m)) if m.contains("rank 2") && m.contains("killed")));
    }
}
