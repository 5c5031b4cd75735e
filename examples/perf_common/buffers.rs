//! Buffers: each rank's send and receive buffers, allocated once at the largest size,
//! page-aligned and touched up front (so no timed call pays first-touch faults), viewed as
//! elements of any type ([`Buf`]); how large they must be for a sweep ([`caps`]), and the
//! smaller largest size that fits this host's available memory ([`fit_memory`]).

use std::alloc::{self, Layout as AllocLayout};

use oxccl::{DataType, Element};

use super::args::Opts;
use super::collective::Collective;

/// Elements after each output checked to be left alone (out-of-bounds writes).
pub(super) const GUARD_ELEMS: usize = 64;

/// Byte written into outputs before a check run, so a missing write shows.
pub(super) const POISON: u8 = 0xff;

/// The bytes of a slice of elements.
pub fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: `Element` is sealed to plain-old-data types (integers, floats, fp8 bytes)
    // with no padding, so every byte of the slice is initialized; the length in bytes is
    // exactly the slice's size.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

/// A page-aligned byte buffer viewed as elements of any type.
pub struct Buf {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: Buf owns its allocation exclusively (like a Vec<u8>); it is moved to and used
// by one rank thread.
unsafe impl Send for Buf {}

pub(super) const BUF_ALIGN: usize = 4096;

impl Buf {
    /// `bytes` bytes, every page written (so timing never pays first-touch faults).
    pub fn new(bytes: usize) -> Buf {
        let bytes = bytes.max(1);
        let layout = AllocLayout::from_size_align(bytes, BUF_ALIGN).expect("buffer too large");
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { alloc::alloc(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: ptr is valid for `bytes` writes; this also faults every page in.
        unsafe { std::ptr::write_bytes(ptr, POISON, bytes) };
        Buf { ptr, bytes }
    }

    /// Elements `off..off + len` as `&[T]`.
    pub fn view<T: Element>(&self, off: usize, len: usize) -> &[T] {
        let sz = std::mem::size_of::<T>();
        assert!((off + len) * sz <= self.bytes, "view past the end of the buffer");
        // SAFETY: in bounds (checked above); BUF_ALIGN is a multiple of T's alignment
        // (<= 8) and offsets are whole elements, so the pointer is aligned; the bytes are
        // initialized (written at allocation) and every bit pattern is a valid `Element`.
        unsafe { std::slice::from_raw_parts((self.ptr as *const T).add(off), len) }
    }

    /// Elements `off..off + len` as `&mut [T]`.
    pub fn view_mut<T: Element>(&mut self, off: usize, len: usize) -> &mut [T] {
        let sz = std::mem::size_of::<T>();
        assert!((off + len) * sz <= self.bytes, "view past the end of the buffer");
        // SAFETY: as in `view`, and `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut T).add(off), len) }
    }

    /// Capacity in elements of `T`.
    pub fn cap<T: Element>(&self) -> usize {
        self.bytes / std::mem::size_of::<T>()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let layout = AllocLayout::from_size_align(self.bytes, BUF_ALIGN).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, layout) };
    }
}

/// This host's available memory in bytes (`MemAvailable` of `/proc/meminfo`).
pub(super) fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Buffer capacity in bytes per rank (send, receive) for sizes up to `max_bytes`, over
/// the types swept.
pub(super) fn caps<C: Collective>(
    coll: &C,
    opts: &Opts,
    types: &[DataType],
    n: usize,
    max_bytes: usize,
) -> (usize, usize) {
    let (mut s, mut r) = (0, 0);
    for t in types {
        let es = t.size();
        let lay = coll.layout(max_bytes / es, n, es);
        let extra = (opts.unalign + GUARD_ELEMS) * es;
        s = s.max(lay.send * es + extra);
        r = r.max(lay.recv.max(lay.in_place) * es + extra);
    }
    (s, r)
}

/// A smaller largest size (`-e`) when the buffers of the `local` ranks of this host (of
/// `n` in all) would not fit in its available memory; `None` when they do.
pub(super) fn fit_memory<C: Collective>(
    coll: &C,
    opts: &Opts,
    types: &[DataType],
    n: usize,
    local: usize,
) -> Option<usize> {
    let avail = mem_available()?;
    let (s, r) = caps(coll, opts, types, n, opts.max_bytes);
    let need = (s + r) as u128 * local as u128;
    let budget = ((avail as f64 * 0.9) as u128).saturating_sub(256 << 20);
    (need > budget).then(|| {
        let per_byte = need as f64 / opts.max_bytes.max(1) as f64;
        ((budget as f64 / per_byte) as usize) & !4095
    })
}

/// Makes `max` the largest size.
pub(super) fn reduce_max_bytes(opts: &mut Opts, max: usize) {
    opts.max_bytes = max;
    opts.min_bytes = opts.min_bytes.min(max);
}
