//! Thin safe wrappers over the operating system: shared-memory segments, network
//! interfaces, futexes, memory barriers, eventfds, epoll, watching other processes, random
//! bytes, the host's name. Each `unsafe` call into libc for these lives here, with the
//! reason it is sound; the layers above see safe functions and types.
//!
//! Sockets and their options stay with the transports that own them, as InfiniBand
//! verbs and CUDA stay behind `transport::ib` and `cuda`.

pub mod epoll;
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

/// Faults in the pages of `len` bytes at `ptr` for writing, now (`MADV_POPULATE_WRITE`,
/// Linux 5.14+; on older kernels nothing happens and the pages fault on first use).
pub fn populate(ptr: *mut u8, len: usize) {
    let page = 4096;
    let start = (ptr as usize) / page * page;
    let end = (ptr as usize + len).div_ceil(page) * page;
    // SAFETY: madvise only changes how pages of the caller's mapping are faulted in; a
    // range that is not mapped makes it fail with ENOMEM, which is ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, 23 /* MADV_POPULATE_WRITE */)
    };
}

/// Private, zero-filled memory from the kernel (an anonymous mapping): page-aligned, and
/// its pages are allocated only when first touched.
pub struct Anon {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: owned memory, unmapped once in Drop; who writes it when is its user's business,
// as for a Vec.
unsafe impl Send for Anon {}
// SAFETY: `&Anon` only hands out the address.
unsafe impl Sync for Anon {}

impl Anon {
    /// `len` bytes (at least one page).
    pub fn new(len: usize) -> Result<Anon> {
        let len = len.max(1).next_multiple_of(4096);
        // SAFETY: a new private anonymous mapping; no existing memory is involved.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::system(format!("mapping {len} bytes of memory"), std::io::Error::last_os_error()));
        }
        Ok(Anon { ptr: p.cast(), len })
    }

    /// The start of the memory.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `new` made, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The CPU time the calling thread has used so far (user and system): init reports it
/// beside its wall time, which on an oversubscribed host mostly measures waiting.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a live local.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
