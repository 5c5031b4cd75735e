//! The slot FIFO every link is built on: a ring of slots in memory, written by exactly one
//! sender and read by exactly one receiver, with per-slot sequence numbers (the "head")
//! and a consumed counter (the "tail") as credits.
//!
//! This module owns the layout and the memory-ordering protocol of that ring. The memory
//! itself comes from a [`Region`]: ordinary heap memory for ranks that are threads, a
//! shared mapping for ranks that are processes. The same code serves both, because the
//! layout is `#[repr(C)]`, position-independent and made only of atomics and bytes.
//!
//! Layout (all offsets 64-byte aligned):
//! ```text
//! [ctrl: magic, shape | tail (own cache line)]
//! [slot 0 header: seq, desc[2], bytes, 32 inline bytes][slot 0 data: slot_bytes]
//! [slot 1 header ...][slot 1 data] ...
//! ```
//! Message `k` goes to slot `k % nslots` (a power of two). The sender writes the payload (into the header's
//! inline bytes when it fits, so a small message is a single cache line), the descriptor
//! and the size, then publishes with `seq = k + 1` (release). The receiver polls that
//! slot's `seq` (acquire), reads, then publishes `tail = k + 1` (release), which returns
//! the slot to the sender. Both sides ring the other's doorbell after publishing, which
//! costs a fence and a load unless the other side sleeps.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::sync::Doorbell;

/// Messages from this size fault in their FIFO's pages at once (see `Fifo::populate`).
pub const POPULATE_MIN: usize = 64 << 10;

/// Bytes of payload that travel inside the slot header's cache line.
pub const INLINE_BYTES: usize = 32;
const CTRL_BYTES: usize = 128;
const HEADER_BYTES: usize = 64;
const MAGIC: u64 = 0x6f78_6363_6c46_4946; // "oxcclFIF"

use crate::call::Desc;

/// Geometry of a FIFO; sender and receiver must agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FifoShape {
    /// Number of slots (messages in flight).
    pub nslots: u32,
    /// Payload capacity of one slot in bytes (a multiple of 64).
    pub slot_bytes: usize,
}

impl FifoShape {
    /// Bytes of memory a FIFO of this shape occupies.
    pub fn region_bytes(&self) -> usize {
        CTRL_BYTES + self.nslots as usize * (HEADER_BYTES + self.slot_bytes)
    }

    /// Offset, from the FIFO's start, of the data area of `slot` (where a payload of more
    /// than [`INLINE_BYTES`] lies). For transports that write a peer's FIFO remotely
    /// (InfiniBand): both ends compute the same layout from the same shape.
    pub fn data_offset(&self, slot: usize) -> usize {
        CTRL_BYTES + slot * (HEADER_BYTES + self.slot_bytes) + HEADER_BYTES
    }

    /// Checks the shape is usable.
    pub fn validate(&self) -> Result<()> {
        if self.nslots < 2 || self.nslots > 1024 || !self.nslots.is_power_of_two() {
            return Err(Error::invalid_argument(format!(
                "FIFO needs a power of two between 2 and 1024 slots, got {}",
                self.nslots
            )));
        }
        if self.slot_bytes < 64 || !self.slot_bytes.is_multiple_of(64) || self.slot_bytes > (1 << 30) {
            return Err(Error::invalid_argument(format!(
                "FIFO slot size must be a multiple of 64 bytes between 64 B and 1 GiB, got {}",
                self.slot_bytes
            )));
        }
        Ok(())
    }
}

/// Memory that holds one or more FIFOs and stays valid while any handle to it lives.
pub struct Region {
    ptr: *mut u8,
    len: usize,
    _owner: Box<dyn Send + Sync>,
}

// SAFETY: the region is plain memory; all cross-thread access to it goes through the
// FIFO protocol (atomics with acquire/release ordering).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Zeroed, page-aligned private memory of `len` bytes, whose pages cost nothing
    /// until they are touched (an anonymous mapping: a zeroing allocator would touch them
    /// all).
    pub fn heap(len: usize) -> Result<Region> {
        let m = crate::sys::Anon::new(len.max(64))?;
        Ok(Region { ptr: m.as_ptr(), len, _owner: Box::new(m) })
    }

    /// Wraps memory owned by `owner` (e.g. a shared mapping).
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid, zero-initialised or laid out by [`Fifo::init`], and
    /// stay mapped while `owner` lives.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize, owner: Box<dyn Send + Sync>) -> Region {
        Region { ptr, len, _owner: owner }
    }

    /// Start of the memory.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[repr(C, align(64))]
struct Ctrl {
    magic: AtomicU64,
    nslots: AtomicU64,
    slot_bytes: AtomicU64,
    _pad: [u64; 5],
    tail: AtomicU64,
}

#[repr(C, align(64))]
struct Header {
    seq: AtomicU64,
    desc: [AtomicU64; 2],
    bytes: AtomicU64,
    inline: [u8; INLINE_BYTES],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<Ctrl>() == CTRL_BYTES);

/// A FIFO laid out at an offset of a [`Region`].
#[derive(Clone)]
pub struct Fifo {
    region: Arc<Region>,
    base: *mut u8,
    shape: FifoShape,
}

// SAFETY: `base` points into `region`, which the Arc keeps alive; shared access follows
// the FIFO protocol.
unsafe impl Send for Fifo {}

impl Fifo {
    /// Lays out a new FIFO at `offset` of `region` (memory must be zeroed).
    pub fn init(region: Arc<Region>, offset: usize, shape: FifoShape) -> Result<Fifo> {
        let f = Self::at(region, offset, shape)?;
        let c = f.ctrl();
        c.nslots.store(shape.nslots as u64, Ordering::Relaxed);
        c.slot_bytes.store(shape.slot_bytes as u64, Ordering::Relaxed);
        c.magic.store(MAGIC, Ordering::Release);
        Ok(f)
    }

    /// The FIFO at `offset` of zeroed (or already laid out) shared memory, laid out by
    /// whichever end comes first: both ends write the same shape, and neither writes a
    /// counter, so they may attach in any order, even at once. Zeroed memory is an empty
    /// FIFO, so a link's memory costs nothing until it is used.
    pub fn attach(region: Arc<Region>, offset: usize, shape: FifoShape) -> Result<Fifo> {
        let f = Self::at(region.clone(), offset, shape)?;
        let c = f.ctrl();
        if c.magic.load(Ordering::Acquire) == 0 {
            c.nslots.store(shape.nslots as u64, Ordering::Relaxed);
            c.slot_bytes.store(shape.slot_bytes as u64, Ordering::Relaxed);
            let _ = c.magic.compare_exchange(0, MAGIC, Ordering::Release, Ordering::Relaxed);
        }
        Self::open(region, offset, shape)
    }

    /// Opens a FIFO that [`Fifo::init`] or [`Fifo::attach`] laid out (possibly in another
    /// process), checking its shape.
    pub fn open(region: Arc<Region>, offset: usize, shape: FifoShape) -> Result<Fifo> {
        let f = Self::at(region, offset, shape)?;
        let c = f.ctrl();
        let (m, n, s) =
            (c.magic.load(Ordering::Acquire), c.nslots.load(Ordering::Relaxed), c.slot_bytes.load(Ordering::Relaxed));
        if m != MAGIC || n != shape.nslots as u64 || s != shape.slot_bytes as u64 {
            return Err(Error::internal(format!(
                "FIFO at offset {offset} is not initialised as expected (magic {m:#x}, {n} slots of {s} B; expected {} of {} B)",
                shape.nslots, shape.slot_bytes
            )));
        }
        Ok(f)
    }

    fn at(region: Arc<Region>, offset: usize, shape: FifoShape) -> Result<Fifo> {
        shape.validate()?;
        if !offset.is_multiple_of(64) || offset.checked_add(shape.region_bytes()).is_none_or(|e| e > region.len()) {
            return Err(Error::internal(format!(
                "FIFO of {} B at offset {offset} does not fit a region of {} B",
                shape.region_bytes(),
                region.len()
            )));
        }
        // SAFETY: offset + region_bytes <= region.len(), checked above.
        let base = unsafe { region.as_ptr().add(offset) };
        Ok(Fifo { region, base, shape })
    }

    fn ctrl(&self) -> &Ctrl {
        // SAFETY: `base` is 64-byte aligned (regions are page aligned, offset % 64 == 0)
        // and CTRL_BYTES of it lie inside the live region; Ctrl is made of atomics.
        unsafe { &*(self.base as *const Ctrl) }
    }

    /// The slot of message `k` (`nslots` is a power of two).
    #[inline]
    fn slot_of(&self, k: u64) -> usize {
        (k & (self.shape.nslots as u64 - 1)) as usize
    }

    #[inline]
    fn header(&self, slot: usize) -> *mut Header {
        // SAFETY: slot < nslots, so the header lies inside the FIFO's bytes.
        unsafe { self.base.add(CTRL_BYTES + slot * (HEADER_BYTES + self.shape.slot_bytes)) as *mut Header }
    }

    #[inline]
    fn data(&self, slot: usize, bytes: usize) -> *mut u8 {
        let h = self.header(slot);
        if bytes <= INLINE_BYTES {
            // SAFETY: the inline bytes are part of the header, inside the region.
            unsafe { (*h).inline.as_mut_ptr() }
        } else {
            // SAFETY: the data area follows the header and holds slot_bytes bytes.
            unsafe { (h as *mut u8).add(HEADER_BYTES) }
        }
    }

    /// The sending end. Exactly one may exist per FIFO.
    pub fn sender(&self, peer_bell: Doorbell) -> FifoTx {
        FifoTx {
            fifo: self.clone(),
            head: 0,
            tail_seen: Cell::new(0),
            bell: peer_bell,
            by_reference: false,
            populated: Cell::new(false),
        }
    }

    /// A sending end whose messages may also be references to the sender's memory
    /// ([`FifoTx::post_ref`]): only for a consumer in the sender's process that is done
    /// with a message before the sender's call returns (the TCP transport's drain).
    pub fn sender_by_reference(&self, peer_bell: Doorbell) -> FifoTx {
        FifoTx { by_reference: true, ..self.sender(peer_bell) }
    }

    /// The receiving end. Exactly one may exist per FIFO.
    pub fn receiver(&self, peer_bell: Doorbell) -> FifoRx {
        FifoRx { fifo: self.clone(), tail: 0, bell: peer_bell, populated: Cell::new(false) }
    }

    /// Faults in this end's pages of the whole FIFO, once, when a large message (from
    /// [`POPULATE_MIN`] bytes) first uses it: a link used for small messages touches a
    /// page or two per slot, and a large message does not take hundreds of page faults
    /// one by one.
    #[inline]
    fn populate(&self, done: &Cell<bool>, bytes: usize) {
        if bytes >= POPULATE_MIN && !done.get() {
            done.set(true);
            crate::sys::populate(self.base, self.shape.region_bytes());
        }
    }

    /// The shape.
    pub fn shape(&self) -> FifoShape {
        self.shape
    }

    /// The region holding this FIFO.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }
}

/// The sending end of a FIFO.
pub struct FifoTx {
    fifo: Fifo,
    head: u64,
    tail_seen: Cell<u64>,
    bell: Doorbell,
    by_reference: bool,
    /// The FIFO's pages are faulted in here.
    populated: Cell<bool>,
}

impl FifoTx {
    /// Largest payload of one message.
    pub fn max_bytes(&self) -> usize {
        self.fifo.shape.slot_bytes
    }

    /// True when a slot is free for the next message.
    #[inline]
    pub fn can_send(&self) -> bool {
        let n = self.fifo.shape.nslots as u64;
        if self.head - self.tail_seen.get() < n {
            return true;
        }
        self.tail_seen.set(self.fifo.ctrl().tail.load(Ordering::Acquire));
        self.head - self.tail_seen.get() < n
    }

    /// Where to write the payload of the next message of `bytes` bytes. Valid once
    /// [`FifoTx::can_send`] returned true, until [`FifoTx::post`].
    #[inline]
    pub fn buffer(&self, bytes: usize) -> *mut u8 {
        debug_assert!(bytes <= self.max_bytes());
        self.fifo.populate(&self.populated, bytes);
        self.fifo.data(self.fifo.slot_of(self.head), bytes)
    }

    /// Publishes the next message: `bytes` of payload already written to
    /// [`FifoTx::buffer`], described by `desc`.
    #[inline]
    pub fn post(&mut self, bytes: usize, desc: Desc) {
        let h = self.fifo.header(self.fifo.slot_of(self.head));
        // SAFETY: the header lies in the live region; the receiver reads these fields only
        // after observing the release store of `seq` below.
        unsafe {
            (*h).desc[0].store(desc[0], Ordering::Relaxed);
            (*h).desc[1].store(desc[1], Ordering::Relaxed);
            (*h).bytes.store(bytes as u64, Ordering::Relaxed);
            self.head += 1;
            (*h).seq.store(self.head, Ordering::Release);
        }
        self.bell.ring();
    }

    /// Whether [`FifoTx::post_ref`] is allowed.
    #[inline]
    pub fn by_reference(&self) -> bool {
        self.by_reference
    }

    /// Publishes the next message as a reference to `bytes` bytes at `ptr`, which must
    /// stay valid and unchanged until the consumer releases the message (the executor
    /// flushes before a call returns). Only where [`FifoTx::by_reference`].
    #[inline]
    pub fn post_ref(&mut self, ptr: *const u8, bytes: usize, desc: Desc) {
        debug_assert!(self.by_reference && bytes <= self.max_bytes());
        let inline = self.buffer(0) as *mut u64;
        // SAFETY: the slot is ours (can_send was checked); its inline bytes hold 8 bytes.
        unsafe { inline.write_unaligned(ptr as u64) };
        self.post(bytes | REFERENCE, desc);
    }

    /// Messages posted so far.
    pub fn posted(&self) -> u64 {
        self.head
    }

    /// Messages the receiver has released so far (its consumed counter, read now).
    #[inline]
    pub fn released(&self) -> u64 {
        let t = self.fifo.ctrl().tail.load(Ordering::Acquire);
        self.tail_seen.set(t);
        t
    }
}

/// Flag in a slot's size: the payload is elsewhere, its address in the inline bytes.
const REFERENCE: usize = 1 << 62;

/// A received message, valid until [`FifoRx::release`].
#[derive(Clone, Copy, Debug)]
pub struct Msg {
    /// Start of the payload.
    pub ptr: *const u8,
    /// Payload size.
    pub bytes: usize,
    /// The sender's call descriptor.
    pub desc: Desc,
}

/// The receiving end of a FIFO.
pub struct FifoRx {
    fifo: Fifo,
    tail: u64,
    bell: Doorbell,
    /// The FIFO's pages are faulted in here.
    populated: Cell<bool>,
}

impl FifoRx {
    /// True when the next message has arrived.
    #[inline]
    pub fn can_recv(&self) -> bool {
        let h = self.fifo.header(self.fifo.slot_of(self.tail));
        // SAFETY: the header lies in the live region; seq is atomic.
        unsafe { (*h).seq.load(Ordering::Acquire) == self.tail + 1 }
    }

    /// The next message. Call only after [`FifoRx::can_recv`] returned true.
    #[inline]
    pub fn message(&self) -> Msg {
        let slot = self.fifo.slot_of(self.tail);
        let h = self.fifo.header(slot);
        // SAFETY: the acquire load in can_recv synchronised with the sender's release of
        // seq, so these fields are complete; they are atomics in the live region.
        let (bytes, desc) = unsafe {
            (
                (*h).bytes.load(Ordering::Relaxed) as usize,
                [(*h).desc[0].load(Ordering::Relaxed), (*h).desc[1].load(Ordering::Relaxed)],
            )
        };
        if bytes & REFERENCE != 0 {
            let bytes = (bytes & !REFERENCE).min(self.fifo.shape.slot_bytes);
            // SAFETY: a reference message keeps the address in its inline bytes.
            let ptr = unsafe { (self.fifo.data(slot, 0) as *const u64).read_unaligned() } as *const u8;
            return Msg { ptr, bytes, desc };
        }
        // A corrupt size must not make us read outside the slot.
        let bytes = bytes.min(self.fifo.shape.slot_bytes);
        self.fifo.populate(&self.populated, bytes);
        Msg { ptr: self.fifo.data(slot, bytes), bytes, desc }
    }

    /// The message `ahead` places after the next one, if it has arrived (`peek(0)` is the
    /// next message): a consumer that forwards messages (the InfiniBand transport) starts
    /// on later ones before it releases earlier ones. Releases stay in order.
    #[inline]
    pub fn peek(&self, ahead: u64) -> Option<Msg> {
        let k = self.tail + ahead;
        if ahead >= self.fifo.shape.nslots as u64 {
            return None;
        }
        let slot = self.fifo.slot_of(k);
        let h = self.fifo.header(slot);
        // SAFETY: the header lies in the live region; seq is atomic.
        if unsafe { (*h).seq.load(Ordering::Acquire) } != k + 1 {
            return None;
        }
        // SAFETY: the acquire load above synchronised with the sender's release of seq.
        let (bytes, desc) = unsafe {
            (
                (*h).bytes.load(Ordering::Relaxed) as usize,
                [(*h).desc[0].load(Ordering::Relaxed), (*h).desc[1].load(Ordering::Relaxed)],
            )
        };
        if bytes & REFERENCE != 0 {
            return None; // only by-reference senders post these; never peeked
        }
        let bytes = bytes.min(self.fifo.shape.slot_bytes);
        Some(Msg { ptr: self.fifo.data(slot, bytes), bytes, desc })
    }

    /// Returns the current slot to the sender.
    #[inline]
    pub fn release(&mut self) {
        self.tail += 1;
        self.fifo.ctrl().tail.store(self.tail, Ordering::Release);
        self.bell.ring();
    }

    /// Messages consumed so far.
    pub fn consumed(&self) -> u64 {
        self.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(shape: FifoShape) -> (FifoTx, FifoRx) {
        let r = Arc::new(Region::heap(shape.region_bytes()).unwrap());
        let f = Fifo::init(r, 0, shape).unwrap();
        (f.sender(Doorbell::new_private()), f.receiver(Doorbell::new_private()))
    }

    #[test]
    fn credits_bound_the_messages_in_flight() {
        let (mut tx, mut rx) = pair(FifoShape { nslots: 2, slot_bytes: 128 });
        assert!(!rx.can_recv());
        for i in 0..2u8 {
            assert!(tx.can_send());
            // SAFETY: can_send granted the slot; 1 byte fits inline.
            unsafe { *tx.buffer(1) = i };
            tx.post(1, [7, i as u64]);
        }
        assert!(!tx.can_send(), "third message must wait for a credit");
        assert!(rx.can_recv());
        let m = rx.message();
        assert_eq!((m.bytes, m.desc), (1, [7, 0]));
        // SAFETY: the message is valid until release.
        assert_eq!(unsafe { *m.ptr }, 0);
        rx.release();
        assert!(tx.can_send());
        let big = [0xabu8; 100];
        // SAFETY: 100 <= slot_bytes; the slot is ours after can_send.
        unsafe { std::ptr::copy_nonoverlapping(big.as_ptr(), tx.buffer(100), 100) };
        tx.post(100, [1, 2]);
        let m = rx.message();
        assert_eq!(m.bytes, 1);
        rx.release();
        let m = rx.message();
        assert!(rx.can_recv());
        assert_eq!(m.bytes, 100);
        // SAFETY: valid until release.
        assert_eq!(unsafe { std::slice::from_raw_parts(m.ptr, 100) }, &big[..]);
        rx.release();
        assert!(!rx.can_recv());
    }

    #[test]
    fn streams_between_threads() {
        let (mut tx, mut rx) = pair(FifoShape { nslots: 4, slot_bytes: 64 });
        let n = 20_000u64;
        let t = std::thread::spawn(move || {
            for i in 0..n {
                while !tx.can_send() {
                    std::hint::spin_loop();
                }
                let b = tx.buffer(8) as *mut u64;
                // SAFETY: the slot is ours after can_send; 8 bytes fit inline.
                unsafe { b.write_unaligned(i * 3) };
                tx.post(8, [i, 0]);
            }
        });
        for i in 0..n {
            while !rx.can_recv() {
                std::hint::spin_loop();
            }
            let m = rx.message();
            // SAFETY: valid until release.
            let v = unsafe { (m.ptr as *const u64).read_unaligned() };
            assert_eq!((v, m.desc[0]), (i * 3, i));
            rx.release();
        }
        t.join().unwrap();
    }

    #[test]
    fn rejects_bad_shapes_and_layouts() {
        assert!(FifoShape { nslots: 1, slot_bytes: 64 }.validate().is_err());
        assert!(FifoShape { nslots: 6, slot_bytes: 64 }.validate().is_err());
        assert!(FifoShape { nslots: 4, slot_bytes: 65 }.validate().is_err());
        let shape = FifoShape { nslots: 2, slot_bytes: 64 };
        let r = Arc::new(Region::heap(shape.region_bytes()).unwrap());
        assert!(Fifo::open(r.clone(), 0, shape).is_err(), "uninitialised memory must not open");
        assert!(Fifo::init(r.clone(), 64, shape).is_err(), "must not overrun the region");
        Fifo::init(r.clone(), 0, shape).unwrap();
        assert!(Fifo::open(r, 0, FifoShape { nslots: 4, slot_bytes: 64 }).is_err());
    }
}
