//! The few operating-system calls std does not offer: catching the signals that stop a job,
//! signalling a rank's process group, the host name, and tying a rank's life to the
//! launcher's. Every `unsafe` block of the launcher lives here, each behind a safe function.

use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// Signals that stop the job when the launcher receives them: forwarded to every rank, after
/// which the job ends as a failure. SIGHUP is among them so that closing the terminal does
/// not leave ranks running (they are in their own process groups and would not get it).
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The first stop signal the launcher received; 0 while none has arrived.
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// How many stop signals the launcher has received (a second one hurries the shutdown).
static SIGNAL_COUNT: AtomicU32 = AtomicU32::new(0);

/// The handler of [`STOP_SIGNALS`]: records the signal and returns. It touches only atomics,
/// which are async-signal-safe; the main loop polls them.
extern "C" fn on_stop_signal(sig: libc::c_int) {
    let _ = FIRST_SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    SIGNAL_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Catches [`STOP_SIGNALS`] with [`on_stop_signal`], except those the launcher was started
/// with ignored (`nohup`, background jobs of a non-interactive shell): those stay ignored,
/// as the one who started the launcher asked.
pub fn catch_stop_signals() -> io::Result<()> {
    for sig in STOP_SIGNALS {
        // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are a valid value
        // (handler SIG_DFL, no flags, empty mask); the call only writes the current action
        // into that live local.
        let old = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                return Err(io::Error::last_os_error());
            }
            old
        };
        if old.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: as above for the zeroed struct; the calls get pointers to a live local. The
        // handler is an `extern "C" fn(c_int)`, the type the kernel calls without SA_SIGINFO,
        // and it only touches atomics, which is async-signal-safe.
        let rc = unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            new.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(sig, &new, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The first stop signal received so far, if any.
pub fn received_signal() -> Option<libc::c_int> {
    match FIRST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// How many stop signals have been received so far.
pub fn signal_count() -> u32 {
    SIGNAL_COUNT.load(Ordering::SeqCst)
}

/// Sends `sig` to the process group `pgid` (a rank's pid: each rank leads its own group), or,
/// with `sig` 0, only checks that the group exists. Refuses pgid 0 and 1, which `kill` would
/// read as "our own group" and "every process".
pub fn signal_group(pgid: u32, sig: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: `kill` takes no pointers and has no memory-safety preconditions; the argument
    // is negative and below -1, so it addresses exactly the process group `pgid`.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether the process group `pgid` still has members (zombies count until reaped).
pub fn group_exists(pgid: u32) -> bool {
    match signal_group(pgid, 0) {
        Ok(()) => true,
        // It exists but belongs to someone else: not ours to clean up, but not gone.
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// This machine's host name, if the system tells it.
pub fn hostname() -> Option<String> {
    Some(oxccl::internals::hostname()).filter(|h| !h.is_empty() && h != "unknown-host")
}

/// Makes the rank started by `cmd` receive SIGKILL if the launcher dies without stopping it
/// (for instance, killed with SIGKILL itself), so that ranks never outlive their launcher.
/// Linux only; elsewhere the launcher's own shutdown is the only guard.
///
/// The kernel sends the signal when the *thread* that spawned the child exits: spawn from the
/// main thread, which lives as long as the launcher.
#[cfg(target_os = "linux")]
pub fn die_with_launcher(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let launcher = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is allowed: it makes two system calls (prctl, getppid), does not allocate (errors
    // from raw OS codes are stored inline) and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The launcher may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != launcher {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere than Linux there is no parent-death signal: nothing to set up.
#[cfg(not(target_os = "linux"))]
pub fn die_with_launcher(_cmd: &mut Command) {}

/// Makes the launcher the reaper of the ranks' orphans: what a rank started and left behind
/// when it exited becomes the launcher's child rather than pid 1's, so [`reap_any`] collects
/// it when it dies. Otherwise, under an init that does not reap (common in containers), dead
/// orphans would stay zombies and their groups would look alive until the grace ran out.
#[cfg(target_os = "linux")]
pub fn adopt_orphans() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag, no pointers. Failure
    // (an old kernel) only costs the early reaping, so its result is ignored.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Elsewhere than Linux there is no child subreaper: orphans go to init, which reaps them.
#[cfg(not(target_os = "linux"))]
pub fn adopt_orphans() {}

/// Reaps one exited child of the launcher, whichever it is, without blocking: its pid and
/// raw wait status, or `None` when no child has exited (or none is left).
pub fn reap_any() -> io::Result<Option<(u32, libc::c_int)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a live local the call may write; WNOHANG keeps it from blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return Ok(None),
            p if p > 0 => return Ok(Some((p.unsigned_abs(), status))),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
                e => return Err(e),
            },
        }
    }
}

/// The conventional name of a signal (`SIGKILL`), if it has one.
pub fn signal_name(sig: libc::c_int) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}
