//! Whether another process has exited, without being its parent: a pidfd (`pidfd_open`,
//! Linux 5.3) becomes readable when its process exits. Where pidfds are unavailable,
//! `kill(pid, 0)` failing with `ESRCH` says the same (a recycled pid can hide an exit).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A process being watched.
pub struct Process {
    pid: u32,
    /// `None` where `pidfd_open` failed: then `kill(pid, 0)` is asked.
    pidfd: Option<OwnedFd>,
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

impl Process {
    /// Starts watching process `pid`.
    pub fn watch(pid: u32) -> Process {
        Process { pid, pidfd: pidfd_open(pid) }
    }

    /// Whether it has exited.
    pub fn exited(&self) -> bool {
        Self::first_exited(std::iter::once(self)).is_some()
    }

    /// The position, in `procs`, of one that has exited, if any: one `poll` for all.
    pub fn first_exited<'a>(procs: impl IntoIterator<Item = &'a Process>) -> Option<usize> {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut who = Vec::new();
        for (i, p) in procs.into_iter().enumerate() {
            match &p.pidfd {
                Some(fd) => {
                    fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                    who.push(i);
                }
                None if gone_by_kill(p.pid) => return Some(i),
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
        fds.iter().zip(who).find(|(f, _)| f.revents != 0).map(|(_, i)| i)
    }
}
