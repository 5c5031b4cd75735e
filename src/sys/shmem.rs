//! POSIX shared-memory segments: create, open, map, prefault, unlink. The only place that
//! calls `shm_open` and `mmap`.
//!
//! A segment is created by one process, opened by its peers, and unlinked by its creator
//! as soon as every peer has mapped it: from then on it lives only as long as the
//! mappings, so a crash leaves nothing in `/dev/shm`.
//!
//! Segments are created with `O_CREAT | O_EXCL` and mode 0600 under a random name
//! ([`random_name`]): a name cannot be guessed in advance, an existing file is never
//! reused, and only this user can open it. A peer's segment is opened only if this user
//! owns it and nobody else may access it, and mapped only after the caller has checked
//! the identity header its creator wrote ([`Segment::open_checked`], read with `pread`
//! before any mapping).

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
    CString::new(format!("/{name}")).map_err(|_| Error::invalid_argument(format!("segment name {name:?} contains NUL")))
}

/// A fresh segment name, `oxccl-` and 32 hexadecimal digits from the kernel's random
/// source (128 bits): unpredictable, so nobody can create or squat it in advance.
pub fn random_name() -> Result<String> {
    let r = {
        let mut b = [0u8; 16];
        crate::sys::random_bytes(&mut b, "a shared-memory segment name")?;
        b
    };
    Ok(format!("oxccl-{}", r[..16].iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Whether `name` could be one of [`random_name`]'s (a name from a peer is checked before
/// Removes the segment name `name` from /dev/shm (mappings of it stay). Removing a name
/// that is gone already is harmless.
pub fn unlink(name: &str) {
    if let Ok(c) = cname(name) {
        // SAFETY: `c` is a valid C string; unlinking only touches the name.
        unsafe { libc::shm_unlink(c.as_ptr()) };
    }
}

/// it reaches `shm_open`).
pub fn valid_name(name: &str) -> bool {
    name.len() == 38
        && name.starts_with("oxccl-")
        && name[6..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
        Self::open_checked(name, len, 0, &|_| Ok(()))
    }

    /// Opens a segment another process created and, before mapping it, reads its first
    /// `header` bytes and passes them to `check`, which refuses a segment that is not
    /// the one expected. Refuses a segment of another user or one that others may
    /// access.
    pub fn open_checked(name: &str, len: usize, header: usize, check: &dyn Fn(&[u8]) -> Result<()>) -> Result<Segment> {
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
        let refuse = |e: Error| {
            // SAFETY: closing the descriptor we opened.
            unsafe { libc::close(fd) };
            Err(e)
        };
        if !ok {
            return refuse(Error::system(
                format!("reading the status of /dev/shm/{name}"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fstat succeeded, so `st` is initialised.
        let st = unsafe { st.assume_init() };
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != me || st.st_mode & 0o077 != 0 {
            return refuse(Error::invalid_usage(format!(
                "shared memory /dev/shm/{name} belongs to uid {} with mode {:o} (expected uid {me}, mode 0600): refusing to map it",
                st.st_uid,
                st.st_mode & 0o777
            )));
        }
        if (st.st_size as usize) < len.max(header) {
            return refuse(Error::remote(format!("shared memory /dev/shm/{name} is smaller than {len} bytes")));
        }
        if header > 0 {
            let mut h = vec![0u8; header];
            // SAFETY: `fd` is open and `h` holds `header` writable bytes.
            let r = unsafe { libc::pread(fd, h.as_mut_ptr() as *mut libc::c_void, header, 0) };
            if r != header as isize {
                return refuse(Error::system(
                    format!("reading the header of /dev/shm/{name}"),
                    std::io::Error::last_os_error(),
                ));
            }
            if let Err(e) = check(&h) {
                return refuse(e);
            }
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
            unlink(&self.name);
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

    #[test]
    fn segments_are_private_random_and_checked_before_mapping() {
        use std::os::unix::fs::PermissionsExt;
        let (n1, n2) = (random_name().unwrap(), random_name().unwrap());
        assert_ne!(n1, n2);
        assert!(valid_name(&n1) && valid_name(&n2), "{n1}");
        for bad in ["oxccl-../../etc/passwd", "oxccl-", "x", &n1.to_uppercase(), &format!("{n1}0")] {
            assert!(!valid_name(bad), "{bad}");
        }
        let a = Segment::create(&n1, 1 << 16).unwrap();
        let mode = std::fs::metadata(format!("/dev/shm/{n1}")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "created with mode {mode:o}");
        assert!(Segment::create(&n1, 1 << 16).is_err(), "O_EXCL: an existing name is never reused");
        // SAFETY: the mapping holds 64 KiB; nobody else uses it.
        unsafe { a.as_ptr().write_bytes(7, 8) };
        let e = Segment::open_checked(&n1, 1 << 16, 8, &|h| {
            assert_eq!(h, [7u8; 8]);
            Err(Error::invalid_usage("not ours"))
        });
        assert!(e.is_err_and(|e| e.to_string().contains("not ours")));
        assert!(Segment::open_checked(&n1, 1 << 16, 8, &|h| if h == [7u8; 8] { Ok(()) } else { panic!() }).is_ok());
        // A segment others may read is refused.
        std::fs::set_permissions(format!("/dev/shm/{n1}"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Segment::open(&n1, 1 << 16).err().expect("a segment with mode 0644 is refused").to_string();
        assert!(e.contains("mode 644") && e.contains("refusing"), "{e}");
        drop(a);
        assert!(!std::path::Path::new(&format!("/dev/shm/{n1}")).exists());
    }
}
