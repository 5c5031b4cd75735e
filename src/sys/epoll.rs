//! epoll: waiting on many descriptors at a cost per ready one, not per watched one, for
//! the bootstrap root, which holds a connection to every rank of the job.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

/// An epoll instance; each watched descriptor carries a caller's token.
pub struct Epoll(OwnedFd);

impl Epoll {
    /// A new, empty epoll instance.
    pub fn new() -> Result<Epoll> {
        // SAFETY: epoll_create1 takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::system("creating an epoll instance", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input (or its peer's hang-up), reported as `token`. The kernel
    /// forgets `fd` when it is closed.
    pub fn add(&self, fd: RawFd, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: token };
        // SAFETY: `ev` is a live epoll_event for the call; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r != 0 {
            return Err(Error::system("watching a descriptor with epoll", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and replaces `ready` with the tokens of the
    /// descriptors that have input, at most `ready`'s capacity (at least one) at a time.
    pub fn wait(&self, ready: &mut Vec<u64>, timeout_ms: i32) -> Result<()> {
        let max = ready.capacity().max(1);
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; max];
        // SAFETY: `evs` holds `max` writable epoll_events for the call.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), max as i32, timeout_ms) };
        ready.clear();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(Error::system("waiting on epoll", e));
        }
        ready.extend(evs[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_the_tokens_of_ready_descriptors_only() {
        let ep = Epoll::new().unwrap();
        let pairs: Vec<(UnixStream, UnixStream)> = (0..5).map(|_| UnixStream::pair().unwrap()).collect();
        for (i, (a, _)) in pairs.iter().enumerate() {
            ep.add(a.as_raw_fd(), 100 + i as u64).unwrap();
        }
        let mut ready = Vec::with_capacity(8);
        ep.wait(&mut ready, 0).unwrap();
        assert!(ready.is_empty());
        (&pairs[3].1).write_all(b"x").unwrap();
        ep.wait(&mut ready, 1000).unwrap();
        assert_eq!(ready, vec![103]);
        drop(pairs);
    }
}
