//! Knowing that a peer process died, without waiting for a timeout.
//!
//! Peers on this host are watched through pidfds (`pidfd_open`, Linux 5.3): a pidfd
//! becomes readable when its process exits, so one `poll` with a zero timeout tells
//! whether any watched peer is gone. Where pidfds are unavailable, `kill(pid, 0)` failing
//! with `ESRCH` says the same (a recycled pid can hide a death; the timeout still
//! catches it). Peers on other hosts are the transports' business (end of stream or
//! reset on their sockets).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::topology::PeerInfo;

/// One watched peer.
struct Watched {
    rank: usize,
    info: PeerInfo,
    /// `None` where `pidfd_open` failed: then `kill(pid, 0)` is asked.
    pidfd: Option<OwnedFd>,
}

/// The processes of this host's peers, watched for exit.
pub struct PeerWatch {
    peers: Vec<Watched>,
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn gone_by_kill(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl PeerWatch {
    /// Watches `peers` (rank and identity), skipping this process itself.
    pub fn new(peers: impl IntoIterator<Item = (usize, PeerInfo)>) -> PeerWatch {
        let me = std::process::id();
        let peers = peers
            .into_iter()
            .filter(|(_, info)| info.pid != me)
            .map(|(rank, info)| Watched { rank, pidfd: pidfd_open(info.pid), info })
            .collect();
        PeerWatch { peers }
    }

    /// Whether no peer is watched.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether `rank` is a watched peer whose process has exited.
    pub fn is_dead(&self, rank: usize) -> bool {
        self.dead_peer(rank).is_some()
    }

    /// `rank`'s identity, if it is a watched peer whose process has exited.
    pub fn dead_peer(&self, rank: usize) -> Option<&PeerInfo> {
        let p = self.peers.iter().find(|p| p.rank == rank)?;
        let gone = match &p.pidfd {
            Some(fd) => {
                let mut f = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                // SAFETY: one valid pollfd for the duration of the call; timeout 0.
                unsafe { libc::poll(f.as_mut_ptr(), 1, 0) > 0 }
            }
            None => gone_by_kill(p.info.pid),
        };
        gone.then_some(&p.info)
    }

    /// The first watched peer whose process has exited, as (rank, identity).
    pub fn dead(&self) -> Option<(usize, &PeerInfo)> {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.peers.len());
        let mut who = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            match &p.pidfd {
                Some(fd) => {
                    fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                    who.push(i);
                }
                None if gone_by_kill(p.info.pid) => return Some((p.rank, &p.info)),
                None => {}
            }
        }
        if fds.is_empty() {
            return None;
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the
        // call; timeout 0 makes it return at once.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n <= 0 {
            return None;
        }
        fds.iter().zip(who).find(|(f, _)| f.revents != 0).map(|(_, i)| (self.peers[i].rank, &self.peers[i].info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32) -> PeerInfo {
        PeerInfo { host_id: "h".into(), hostname: "h".into(), pid }
    }

    #[test]
    fn a_child_that_exits_is_seen_dead() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().expect("sleep");
        let w = PeerWatch::new([(3, info(child.id()))]);
        assert!(w.dead().is_none(), "alive at first");
        child.wait().unwrap();
        let (rank, who) = w.dead().expect("dead after exit");
        assert_eq!((rank, who.pid), (3, child.id()));
    }

    #[test]
    fn this_process_is_not_watched() {
        let w = PeerWatch::new([(0, info(std::process::id()))]);
        assert!(w.is_empty() && w.dead().is_none());
    }
}
