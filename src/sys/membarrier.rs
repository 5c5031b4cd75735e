//! Asymmetric fences with Linux `membarrier(2)`.
//!
//! A producer that publishes data and then checks whether the consumer sleeps needs a
//! full fence between the two (store-load ordering), on every message. `membarrier` moves
//! that cost to the rare side: the consumer, about to sleep, issues a system-wide barrier
//! that forces every thread of the registered processes through a full fence, so
//! producers need only a compiler fence. Where the call is unavailable (old kernels,
//! seccomp), both sides fall back to ordinary fences.

use std::sync::OnceLock;
use std::sync::atomic::{Ordering, compiler_fence, fence};

const CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
const CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;
const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> bool {
    // SAFETY: membarrier takes integer arguments only and touches no user memory.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0u32, 0i32) == 0 }
}

/// Whether the asymmetric scheme is in use in this process (registered once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        !crate::settings::process().no_membarrier
            && membarrier(CMD_REGISTER_PRIVATE_EXPEDITED)
            && membarrier(CMD_REGISTER_GLOBAL_EXPEDITED)
    })
}

/// The producer's fence between publishing data and reading a sleep flag.
#[inline]
pub fn light() {
    if available() {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The sleeper's fence between announcing sleep and re-checking its condition. `shared`
/// covers producers in other processes (which must have called [`available`] too).
pub fn heavy(shared: bool) {
    if available() {
        let cmd = if shared { CMD_GLOBAL_EXPEDITED } else { CMD_PRIVATE_EXPEDITED };
        if membarrier(cmd) {
            return;
        }
    }
    fence(Ordering::SeqCst);
}
