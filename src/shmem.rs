//! POSIX shared-memory segments: create, open, map, prefault, unlink. The only place that
//! calls `shm_open` and `mmap`.
//!
//! A segment is created by one process, opened by its peers, and unlinked by its creator
//! as soon as every peer has mapped it: from then on it lives only as long as the
//! mappings, so a crash leaves nothing in `/dev/shm`.

use std::ffi::CString;

use crate::error::{Error, Result};

/// A mapped segment; unmapped on drop.
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    name: String,
    owner: bool,
}

// SAFETY: the mapping is plain shared memory; users synchronise through atomics in it.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

fn cname(name: &str) -> Result<CString> {
    CString::new(format!("/{name}")).map_err(|_| Error::InvalidArgument(format!("segment name {name:?} contains NUL")))
}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes named `name` (no leading slash),
    /// readable and writable by this user only.
    pub fn create(name: &str, len: usize) -> Result<Segment> {
        let c = cname(name)?;
        // SAFETY: `c` is a valid C string; the returned descriptor is closed below.
        let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
        if fd < 0 {
            return Err(Error::system(
                format!("creating shared memory /dev/shm/{name}"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` is the descriptor just opened.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing and unlinking what we created.
            unsafe {
                libc::close(fd);
                libc::shm_unlink(c.as_ptr());
            }
            return Err(Error::system(
                format!("sizing shared memory /dev/shm/{name} to {len} bytes (is /dev/shm large enough?)"),
                e,
            ));
        }
        let r = Self::map(fd, len, name, true);
        if r.is_err() {
            // SAFETY: removing the name we created.
            unsafe { libc::shm_unlink(c.as_ptr()) };
        }
        r
    }

    /// Opens and maps a segment another process created.
    pub fn open(name: &str, len: usize) -> Result<Segment> {
        let c = cname(name)?;
        // SAFETY: `c` is a valid C string; the descriptor is closed in `map`.
        let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR, 0) };
        if fd < 0 {
            return Err(Error::system(
                format!("opening shared memory /dev/shm/{name}"),
                std::io::Error::last_os_error(),
            ));
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `fd` is open and `st` is a valid out-pointer.
        let ok = unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0;
        // SAFETY: fstat succeeded, so `st` is initialised.
        if !ok || (unsafe { st.assume_init() }.st_size as usize) < len {
            // SAFETY: closing the descriptor we opened.
            unsafe { libc::close(fd) };
            return Err(Error::Remote(format!("shared memory /dev/shm/{name} is smaller than {len} bytes")));
        }
        Self::map(fd, len, name, false)
    }

    fn map(fd: i32, len: usize, name: &str, owner: bool) -> Result<Segment> {
        // SAFETY: mapping `len` bytes of an open shm object shared; the descriptor can be
        // closed afterwards (the mapping keeps the object alive).
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        // SAFETY: `fd` is ours to close.
        unsafe { libc::close(fd) };
        if p == libc::MAP_FAILED {
            return Err(Error::system(
                format!("mapping shared memory /dev/shm/{name}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Segment { ptr: p as *mut u8, len, name: name.to_string(), owner })
    }

    /// Removes the name (the memory stays while mapped). Idempotent.
    pub fn unlink(&mut self) {
        if self.owner {
            if let Ok(c) = cname(&self.name) {
                // SAFETY: `c` is a valid C string.
                unsafe { libc::shm_unlink(c.as_ptr()) };
            }
            self.owner = false;
        }
    }

    /// Makes this process's page tables cover `[off, off + len)` now, so the first
    /// collective does not take hundreds of page faults.
    pub fn prefault(&self, off: usize, len: usize) {
        let page = 4096;
        let start = off / page * page;
        let end = (off + len).min(self.len).div_ceil(page) * page;
        // SAFETY: the range lies inside our mapping (page aligned). MADV_POPULATE_WRITE
        // (Linux 5.14+) only faults pages in; on older kernels it fails harmlessly and
        // the pages fault on first use instead.
        unsafe {
            libc::madvise(
                self.ptr.add(start) as *mut libc::c_void,
                end.min(self.len) - start,
                23, /* MADV_POPULATE_WRITE */
            );
        }
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment's name (without the leading slash).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.unlink();
        // SAFETY: unmapping exactly the mapping we made, once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_share_unlink() {
        let name = format!("oxccl-test-{}-{}", std::process::id(), line!());
        let mut a = Segment::create(&name, 1 << 16).unwrap();
        assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists());
        let b = Segment::open(&name, 1 << 16).unwrap();
        assert!(Segment::open(&name, 1 << 20).is_err(), "larger than the segment");
        // SAFETY: both map the same 64 KiB; single-threaded test.
        unsafe {
            *a.as_ptr().add(100) = 42;
            assert_eq!(*b.as_ptr().add(100), 42);
        }
        a.prefault(0, 1 << 16);
        a.unlink();
        assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
        // SAFETY: still mapped after unlink.
        unsafe { assert_eq!(*b.as_ptr().add(100), 42) };
    }
}
