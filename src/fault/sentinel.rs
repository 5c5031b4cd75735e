//! The thread that carries faults around the bootstrap ring of a process communicator.
//!
//! Ranks that are processes keep the bootstrap ring's two sockets after init; the
//! sentinel (blocked in `poll`, so it costs no CPU) floods a fault frame both ways
//! around the ring. A neighbour whose socket closes without a goodbye frame crashed or
//! was killed: that is a fault too, so a death is seen by the ring even where no data
//! link watches it. A communicator that is dropped says goodbye, so leaving is never
//! mistaken for dying.

use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::msg::{Culprit, FAULT_TEXT, Notice, Where};
use super::{Class, Fault, Herald};
use crate::error::{Error, Result};
use crate::sys::eventfd::EventFd;
use crate::topology::PeerInfo;
use crate::wire::{self, Kind};

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
            && let Some(w) = fault.position()
        {
            let body = w.encode();
            for s in &mut sides {
                let _ = wire::send(&mut s.sock, Kind::Where, &body);
            }
        }
        if let Some(notice) = fault.to_announce() {
            let body = notice.encode();
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
    let (done, heard) = match wire::recv(&mut side.sock, FAULT_TEXT + 64) {
        Ok((Kind::Where, p)) => {
            let pass = match Where::decode(&p) {
                Ok(w) if w.origin as usize != fault.rank && !fault.tripped() => {
                    let found = fault.check_where(&w);
                    let hops = w.hops.saturating_add(1);
                    (!found && (hops as usize) < nranks).then(|| Where { hops, ..w }.encode())
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

/// A failure this rank saw of neighbour `side` (the culprit when `its_fault`: it died,
/// rather than sent something wrong).
fn failed(side: &Neighbour, text: String, its_fault: bool) -> Notice {
    let culprit = Culprit { rank: side.rank, host: Some(side.info.hostname.to_string()), pid: Some(side.info.pid) };
    Notice { class: Class::Failed as u8, origin: side.rank, text, culprit: its_fault.then_some(culprit) }
}

/// What a frame other than a position report means.
fn heard(fault: &Fault, side: &mut Neighbour, spoke: bool, frame: Frame) -> (bool, bool) {
    let who = format!("rank {} ({})", side.rank, side.info.describe());
    match frame {
        Ok((Kind::Fault, p)) => {
            let notice = Notice::decode(&p)
                .unwrap_or_else(|e| failed(side, format!("{who} sent a malformed fault message: {e}"), false));
            // Passing it on happens at the top of the loop (to_announce).
            fault.receive(notice);
            (false, true)
        }
        Ok((Kind::Bye, _)) => (true, false),
        Ok((k, _)) => {
            fault.receive(failed(side, format!("{who} sent an unexpected {k:?} on the bootstrap ring"), false));
            (true, true)
        }
        Err(Err(e)) => {
            fault.receive(failed(side, format!("{who} sent a malformed message: {e}"), false));
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
                fault.receive(failed(side, format!("{who} {how}"), true));
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
    use crate::error::Error;
    use crate::error::ErrorKind;
    use crate::sync::Doorbell;

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
        f[2].fail(&Error::timeout("x", Duration::ZERO, vec![0]));
        for x in &f[..2] {
            wait(x);
            assert_eq!(x.origin(), Some(2));
            assert!(
                matches!(x.error(), Some(e) if e.kind() == ErrorKind::Remote && { let m = e.message(); m.contains("timeout") })
            );
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
        assert!(
            matches!(f[1].error(), Some(e) if e.kind() == ErrorKind::Remote && { let m = e.message(); m.contains("rank 2") && m.contains("killed") })
        );
    }
}
