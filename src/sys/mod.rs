//! Thin safe wrappers over the operating system: shared-memory segments, network
//! interfaces, futexes, memory barriers, eventfds, watching other processes, random
//! bytes, the host's name. Each `unsafe` call into libc for these lives here, with the
//! reason it is sound; the layers above see safe functions and types.
//!
//! Sockets and their options stay with the transports that own them, as InfiniBand
//! verbs and CUDA stay behind `transport::ib` and `cuda`.

pub mod eventfd;
pub mod futex;
pub mod membarrier;
pub mod netif;
pub mod process;
pub mod shmem;

use crate::error::{Error, Result};

/// This machine's hostname.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The kernel's boot id: tells two machines (or containers) with one hostname apart.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

/// Fills `buf` from the kernel's random source; `what` says what the bytes are for.
pub fn random_bytes(buf: &mut [u8], what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination range lies inside `buf`.
        let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr() as *mut libc::c_void, buf.len() - got, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::system(format!("reading random bytes for {what}"), e));
        }
        got += r as usize;
    }
    Ok(())
}
