//! Staging device buffers through pinned host memory: where a call's buffers go in one
//! staging buffer (in-place layouts kept), large element-wise calls cut into pieces so
//! that staging overlaps communication, the pool of staging buffers and the flag the
//! stream waits on, and the progress thread's side of one operation.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{CUcontext, CUdeviceptr};

use super::super::CallSpec;
use super::super::work::{Hooks, Pending};
use crate::call::Collective;
use crate::cuda::driver::{self, Event, Pinned};
use crate::error::Result;
use crate::fault::Fault;

/// Staging buffers kept for reuse, at most.
const KEEP_STAGES: usize = 4;
/// Region alignment inside a staging buffer (regions keep the device address's offset
/// within it, so kernels see the same alignment on both sides).
const ALIGN: usize = 64;

/// A communicator's device state: the context its streams belong to, the flag streams
/// wait on, the staging buffers and the operations still in flight.
pub(crate) struct Staging {
    pub(super) ctx: CUcontext,
    /// One 32-bit word: the number of the last operation the progress thread finished.
    pub(super) flag: Arc<Pinned>,
    pub(super) seq: u32,
    /// Buffers and the event after which the device no longer touches them.
    pub(super) stages: Vec<(Pinned, Option<Event>)>,
    pub(super) in_flight: Vec<Pending>,
}

// SAFETY: the context handle is only passed to the driver, which allows any thread to
// make it current; the rest is owned data.
unsafe impl Send for Staging {}

impl Staging {
    pub(super) fn new(ctx: CUcontext) -> Result<Staging> {
        // SAFETY: `ctx` is the live context of the caller's stream.
        unsafe { driver::make_current(ctx)? };
        Ok(Staging { ctx, flag: Arc::new(Pinned::new(64)?), seq: 0, stages: Vec::new(), in_flight: Vec::new() })
    }

    /// A staging buffer of at least `bytes` the device has finished with.
    pub(super) fn take(&mut self, bytes: usize) -> Result<Pinned> {
        let mut i = 0;
        while i < self.stages.len() {
            let free = match &self.stages[i].1 {
                None => true,
                Some(e) => e.done()?,
            };
            if free && self.stages[i].0.len() >= bytes {
                return Ok(self.stages.swap_remove(i).0);
            }
            i += 1;
        }
        if self.stages.len() >= KEEP_STAGES {
            // Too many in use or too small: wait for the oldest and let it go.
            let (_, e) = self.stages.remove(0);
            if let Some(e) = e {
                e.wait()?;
            }
        }
        Ok(Pinned::new(bytes.next_power_of_two().max(1 << 16))?)
    }

    /// Starts the operation numbers again from 1 (the streams wait for "at least", so the
    /// numbers must not wrap): once every stream has passed every earlier operation, the
    /// flag goes back to 0.
    pub(super) fn restart_numbering(&mut self) -> Result<()> {
        self.settle();
        for (_, e) in &self.stages {
            if let Some(e) = e {
                e.wait()?;
            }
        }
        // SAFETY: a live pinned word no stream waits on any more (all have passed).
        unsafe { std::ptr::write_volatile(self.flag.as_ptr().cast::<u32>(), 0) };
        fence(Ordering::SeqCst);
        self.seq = 0;
        Ok(())
    }

    /// The pinned memory it holds: the flag and the staging buffers kept.
    pub(crate) fn mem(&self) -> crate::transport::MemStats {
        let bytes = self.flag.len() + self.stages.iter().map(|(p, _)| p.len()).sum::<usize>();
        crate::transport::MemStats { pinned_bytes: bytes as u64, ..Default::default() }
    }

    /// Waits for the operations still queued on the progress thread.
    pub(super) fn settle(&mut self) {
        for p in self.in_flight.drain(..) {
            p.wait();
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.settle();
        // SAFETY: the context outlives the communicator's use of it (the contract of
        // `run_raw_device`).
        let _ = unsafe { driver::make_current(self.ctx) };
        // The streams may still be copying from or waiting on this memory.
        for (_, e) in &self.stages {
            if let Some(e) = e {
                let _ = e.wait();
            }
        }
    }
}

/// One device buffer range of a call and where it is staged.
#[derive(Clone, Copy)]
pub(super) struct Region {
    /// The spec (index) it belongs to.
    pub(super) spec: usize,
    /// Device address and length in bytes.
    pub(super) dev: CUdeviceptr,
    pub(super) bytes: usize,
    /// Offset of the range in the staging buffer.
    pub(super) at: usize,
    /// Whether the stream copies it in (an input) and out (an output).
    pub(super) copy_in: bool,
    pub(super) copy_out: bool,
}

/// Plans where each spec's device buffers go in one staging buffer and rewrites the
/// specs' pointers to the staged copies (host addresses relative to 0 until `base` is
/// added). A send and receive range that overlap (NCCL's in-place layouts) are staged as
/// one region, so the overlap is kept.
pub(super) fn plan(specs: &mut [CallSpec]) -> (Vec<Region>, usize) {
    let mut regions = Vec::new();
    let mut end = 0usize;
    let mut place = |spec: usize, dev: u64, bytes: usize, copy_in: bool, copy_out: bool| -> usize {
        let at = end.next_multiple_of(ALIGN) + (dev as usize % ALIGN);
        end = at + bytes;
        regions.push(Region { spec, dev, bytes, at, copy_in, copy_out });
        at
    };
    for (i, s) in specs.iter_mut().enumerate() {
        let size = s.dtype.size();
        let (sd, sb) = (s.send as u64, s.send_len * size);
        let (rd, rb) = (s.recv as u64, s.recv_len * size);
        let overlap = sb > 0 && rb > 0 && sd < rd + rb as u64 && rd < sd + sb as u64;
        if overlap {
            let lo = sd.min(rd);
            let hi = (sd + sb as u64).max(rd + rb as u64);
            // The send part is an input; the whole span is copied back (the receive part
            // is inside it; the rest is copied back unchanged).
            let at = place(i, lo, (hi - lo) as usize, true, true);
            s.send = (at + (sd - lo) as usize) as *const u8;
            s.recv = (at + (rd - lo) as usize) as *mut u8;
        } else {
            s.send = if sb > 0 { place(i, sd, sb, true, false) as *const u8 } else { std::ptr::null() };
            s.recv = if rb > 0 { place(i, rd, rb, false, true) as *mut u8 } else { std::ptr::null_mut() };
        }
    }
    (regions, end)
}

/// Size of the pieces a large all-reduce, reduce or broadcast is staged in.
pub(super) const PIPELINE_CHUNK: usize = 4 << 20;

/// `spec` cut into pieces of at most `chunk` bytes when it is an element-wise collective
/// (all-reduce, reduce, broadcast) larger than that: each piece is a collective of its
/// own on the matching slices, so the copy to the host of piece k+1 overlaps the
/// communication of piece k. Every rank cuts the same call the same way.
pub(super) fn pieces(spec: CallSpec, chunk: usize) -> Vec<CallSpec> {
    let size = spec.dtype.size();
    // The call's count, and the same call on `c` elements.
    let (count, make): (usize, Box<dyn Fn(usize) -> Collective>) = match spec.coll {
        Collective::AllReduce { count } => (count, Box::new(|c| Collective::AllReduce { count: c })),
        Collective::Reduce { count, root } => (count, Box::new(move |c| Collective::Reduce { count: c, root })),
        Collective::Broadcast { count, root } => (count, Box::new(move |c| Collective::Broadcast { count: c, root })),
        _ => return vec![spec],
    };
    let per = (chunk / size).max(1);
    if count <= per {
        return vec![spec];
    }
    (0..count)
        .step_by(per)
        .map(|i| {
            let c = per.min(count - i);
            let cut = |len: usize, p: usize| if len > 0 { (c, p + i * size) } else { (0, p) };
            let (send_len, send) = cut(spec.send_len, spec.send as usize);
            let (recv_len, recv) = cut(spec.recv_len, spec.recv as usize);
            CallSpec {
                coll: make(c),
                dtype: spec.dtype,
                op: spec.op,
                send: send as *const u8,
                send_len,
                recv: recv as *mut u8,
                recv_len,
            }
        })
        .collect()
}

/// The progress thread's side of one device operation.
pub(super) struct Staged {
    pub(super) ctx: CUcontext,
    /// Recorded on the stream once the inputs are staged.
    pub(super) staged: Event,
    pub(super) flag: Arc<Pinned>,
    pub(super) seq: u32,
    pub(super) fault: Arc<Fault>,
}

// SAFETY: the context handle is only given to the driver (any thread may make it
// current); the rest is Send.
unsafe impl Send for Staged {}

impl Hooks for Staged {
    /// Waits for the stream to stage the inputs: spins briefly, then sleeps in growing
    /// steps up to 1 ms, and gives up if the communicator fails meanwhile.
    fn before(&mut self) -> Result<()> {
        let r = (|| -> Result<()> {
            // SAFETY: as in `Staging::drop`.
            unsafe { driver::make_current(self.ctx)? };
            let start = Instant::now();
            let mut nap = Duration::from_micros(10);
            loop {
                if self.staged.done()? {
                    return Ok(());
                }
                if let Some(e) = self.fault.error() {
                    return Err(e);
                }
                if start.elapsed() < Duration::from_micros(50) {
                    std::hint::spin_loop();
                } else {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(1));
                }
            }
        })();
        if let Err(e) = &r {
            // The other ranks wait for this one's part: tell them.
            self.fault.fail(e);
        }
        r
    }

    /// Releases the stream, whatever happened.
    fn after(&mut self, _: &Result<()>) {
        let p = self.flag.as_ptr().cast::<u32>();
        fence(Ordering::SeqCst);
        // SAFETY: the flag is a live pinned allocation of at least 4 bytes, aligned (the
        // driver's allocations are page-aligned); the device only reads it.
        unsafe { std::ptr::write_volatile(p, self.seq) };
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, ReduceOp};

    fn spec(send: u64, send_len: usize, recv: u64, recv_len: usize) -> CallSpec {
        CallSpec {
            coll: Collective::AllReduce { count: send_len },
            dtype: DataType::Float32,
            op: Some(ReduceOp::Sum),
            send: send as *const u8,
            send_len,
            recv: recv as *mut u8,
            recv_len,
        }
    }

    #[test]
    fn separate_buffers_are_staged_apart_with_their_alignment() {
        let mut s = [spec(0x1000_0004, 10, 0x2000_0000, 10)];
        let (r, end) = plan(&mut s);
        assert_eq!(r.len(), 2);
        assert!(r[0].copy_in && !r[0].copy_out && r[0].bytes == 40 && r[0].at % ALIGN == 4);
        assert!(!r[1].copy_in && r[1].copy_out && r[1].at % ALIGN == 0 && r[1].at >= r[0].at + 40);
        assert_eq!(s[0].send as usize, r[0].at);
        assert_eq!(s[0].recv as usize, r[1].at);
        assert!(end >= r[1].at + 40);
    }

    #[test]
    fn overlapping_buffers_keep_their_layout() {
        // NCCL's in-place all-gather: send is block 2 of recv.
        let recv = 0x3000_0000u64;
        let mut s = [spec(recv + 2 * 16, 4, recv, 16)];
        let (r, end) = plan(&mut s);
        assert_eq!(r.len(), 1);
        assert!(r[0].copy_in && r[0].copy_out && r[0].bytes == 64);
        assert_eq!(s[0].send as usize - s[0].recv as usize, 32);
        assert_eq!(end, r[0].at + 64);
    }

    #[test]
    fn large_element_wise_calls_are_cut_into_pieces_that_tile_the_buffers() {
        let (send, recv) = (0x1000_0000u64, 0x2000_0000u64);
        let p = pieces(spec(send, 1000, recv, 1000), 256 * 4);
        assert_eq!(p.len(), 4);
        let counts: Vec<usize> = p.iter().map(|s| s.send_len).collect();
        assert_eq!(counts, [256, 256, 256, 232]);
        for (k, s) in p.iter().enumerate() {
            assert_eq!(s.send as u64, send + (k * 1024) as u64);
            assert_eq!(s.recv as u64, recv + (k * 1024) as u64);
            assert!(matches!(s.coll, Collective::AllReduce { count } if count == s.send_len));
        }
        // A non-root's reduce has no receive buffer, and keeps none.
        let mut r = spec(send, 1000, recv, 0);
        r.coll = Collective::Reduce { count: 1000, root: 1 };
        let p = pieces(r, 1024);
        assert!(p.iter().all(|s| s.recv_len == 0 && s.recv as u64 == recv));
        assert!(matches!(p[3].coll, Collective::Reduce { count: 232, root: 1 }));
        // Small calls and other collectives stay whole.
        assert_eq!(pieces(spec(send, 100, recv, 100), 1024).len(), 1);
        let mut g = spec(send, 1000, recv, 4000);
        g.coll = Collective::AllGather { count: 1000 };
        assert_eq!(pieces(g, 1024).len(), 1);
    }

    #[test]
    fn empty_buffers_take_no_space() {
        let mut s = [spec(0x1000, 0, 0x2000, 0)];
        let (r, end) = plan(&mut s);
        assert!(r.is_empty());
        assert_eq!(end, 0);
        assert!(s[0].send.is_null() && s[0].recv.is_null());
    }
}
