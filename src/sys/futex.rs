//! Thin safe wrappers over the Linux futex system call.
//!
//! Only 32-bit words are futex words. `shared` selects a process-shared futex (the word
//! lives in memory mapped by several processes); otherwise the private, cheaper variant
//! is used.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout`. Returns on wake-up, timeout,
/// signal or a changed value; callers re-check their condition.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration, shared: bool) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    let op = if shared { libc::FUTEX_WAIT } else { libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG };
    // SAFETY: `word` is a valid, aligned 32-bit atomic for the duration of the call and
    // `ts` a valid timespec; FUTEX_WAIT only reads them. Errors (EAGAIN when the value
    // already changed, EINTR, ETIMEDOUT) are all "return and re-check".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every thread sleeping on `word`.
pub fn wake_all(word: &AtomicU32, shared: bool) {
    let op = if shared { libc::FUTEX_WAKE } else { libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG };
    // SAFETY: `word` is a valid aligned 32-bit atomic; FUTEX_WAKE does not access memory
    // beyond using its address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            i32::MAX,
            std::ptr::null::<u8>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}
