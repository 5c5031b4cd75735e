//! Collectives on CUDA device memory, ordered on a CUDA stream as NCCL orders them
//! (feature `cuda`).
//!
//! The call enqueues its work on the caller's stream and returns before it runs:
//!
//! 1. the stream copies the inputs into a pinned host staging buffer, and an event
//!    marks the moment they are there;
//! 2. the stream then waits (`cuStreamWaitValue32`) until a pinned flag reaches this
//!    operation's number, and after that copies the outputs back to the device;
//! 3. meanwhile the communicator's progress thread waits for the event, runs the
//!    collective on the staged host buffers with every transport the host path has
//!    (shared memory, TCP), and writes the operation's number into the flag.
//!
//! So the user's earlier work on the stream is complete before the inputs are read, and
//! later work sees the outputs; the calling thread never blocks on the GPU. Device
//! buffers from cudarc also carry cudarc's own read/write events, which order the copies
//! against work on the buffers' other streams. If the collective fails, the stream is
//! still released (the outputs are then undefined) and the error is the communicator's:
//! [`Comm::async_error`], and every later call, return it.
//!
//! This path works across processes, hosts and transports and is the reference for the
//! direct paths (CUDA IPC between the GPUs of a host, GPUDirect RDMA).
//!
//! Staging buffers are reused once the stream has finished with them (an event after the
//! copies back); a communicator keeps a few and frees them when it is dropped, after the
//! streams that used them have passed its last operation.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{CUcontext, CUdeviceptr, CUstream};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::raw::RawBatch;
use super::work::{Hooks, Pending, Worker};
use super::{CallSpec, Comm};
use crate::call::Collective;
use crate::cuda::driver::{self, Event, Pinned};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::types::{Element, ReduceOp};

/// Staging buffers kept for reuse, at most.
const KEEP_STAGES: usize = 4;
/// Region alignment inside a staging buffer (regions keep the device address's offset
/// within it, so kernels see the same alignment on both sides).
const ALIGN: usize = 64;

/// A communicator's device state: the context its streams belong to, the flag streams
/// wait on, the staging buffers and the operations still in flight.
pub(crate) struct Staging {
    ctx: CUcontext,
    /// One 32-bit word: the number of the last operation the progress thread finished.
    flag: Arc<Pinned>,
    seq: u32,
    /// Buffers and the event after which the device no longer touches them.
    stages: Vec<(Pinned, Option<Event>)>,
    in_flight: Vec<Pending>,
}

// SAFETY: the context handle is only passed to the driver, which allows any thread to
// make it current; the rest is owned data.
unsafe impl Send for Staging {}

impl Staging {
    fn new(ctx: CUcontext) -> Result<Staging> {
        // SAFETY: `ctx` is the live context of the caller's stream.
        unsafe { driver::make_current(ctx)? };
        Ok(Staging { ctx, flag: Arc::new(Pinned::new(64)?), seq: 0, stages: Vec::new(), in_flight: Vec::new() })
    }

    /// A staging buffer of at least `bytes` the device has finished with.
    fn take(&mut self, bytes: usize) -> Result<Pinned> {
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
    fn restart_numbering(&mut self) -> Result<()> {
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

    /// Waits for the operations still queued on the progress thread.
    fn settle(&mut self) {
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
struct Region {
    /// The spec (index) it belongs to.
    spec: usize,
    /// Device address and length in bytes.
    dev: CUdeviceptr,
    bytes: usize,
    /// Offset of the range in the staging buffer.
    at: usize,
    /// Whether the stream copies it in (an input) and out (an output).
    copy_in: bool,
    copy_out: bool,
}

/// Plans where each spec's device buffers go in one staging buffer and rewrites the
/// specs' pointers to the staged copies (host addresses relative to 0 until `base` is
/// added). A send and receive range that overlap (NCCL's in-place layouts) are staged as
/// one region, so the overlap is kept.
fn plan(specs: &mut [CallSpec]) -> (Vec<Region>, usize) {
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
const PIPELINE_CHUNK: usize = 4 << 20;

/// `spec` cut into pieces of at most `chunk` bytes when it is an element-wise collective
/// (all-reduce, reduce, broadcast) larger than that: each piece is a collective of its
/// own on the matching slices, so the copy to the host of piece k+1 overlaps the
/// communication of piece k. Every rank cuts the same call the same way.
fn pieces(spec: CallSpec, chunk: usize) -> Vec<CallSpec> {
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
struct Staged {
    ctx: CUcontext,
    /// Recorded on the stream once the inputs are staged.
    staged: Event,
    flag: Arc<Pinned>,
    seq: u32,
    fault: Arc<Fault>,
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

impl Comm {
    /// Runs a batch of operations whose buffers are device memory of `stream`'s context
    /// (recorded with [`Comm::raw_batch`] on device addresses), ordered on `stream`:
    /// returns once the work is enqueued, before it runs. See the module documentation
    /// of the device path for the ordering guarantees; errors that happen after this
    /// returns are [`Comm::async_error`]'s.
    ///
    /// # Safety
    /// Every buffer the batch names must be device memory of the stream's context, valid
    /// for the recorded counts until the stream has passed this operation, and `stream`
    /// must be a valid stream handle (null: the default stream) whose context stays alive
    /// while the communicator uses it. Gathers and scatters in place are not supported
    /// (their recording reads the buffer on the host).
    pub unsafe fn run_raw_device(&mut self, batch: RawBatch, stream: CUstream) -> Result<()> {
        if let Some(e) = self.fault.error() {
            return Err(e);
        }
        let specs = self.checked_specs(batch)?;
        if specs.is_empty() {
            return Ok(());
        }
        self.enqueue_device(specs, stream)
    }

    /// Stages `specs` (device addresses) and queues them on the progress thread.
    fn enqueue_device(&mut self, mut specs: Vec<CallSpec>, stream: CUstream) -> Result<()> {
        driver::ready()?;
        // SAFETY: `stream` is live (the contract of `run_raw_device`).
        let ctx = unsafe { driver::stream_context(stream)? };
        if self.device.is_none() {
            self.device = Some(Staging::new(ctx)?);
        }
        let dev = self.device.as_mut().expect("set above");
        if dev.ctx != ctx {
            return Err(Error::invalid_usage(
                "a communicator's device operations must all use streams of one CUDA context (one device)",
            ));
        }
        // SAFETY: the stream's live context.
        unsafe { driver::make_current(ctx)? };
        // SAFETY: the specs name device memory of the stream's context (our contract).
        if unsafe { self.try_ipc(&specs, stream)? } {
            return Ok(());
        }
        // One job (a group's operations together), or a large all-reduce, reduce or
        // broadcast cut into pieces so that staging overlaps communication.
        let jobs: Vec<Vec<CallSpec>> = if specs.len() == 1 {
            pieces(specs.pop().expect("one spec"), PIPELINE_CHUNK).into_iter().map(|s| vec![s]).collect()
        } else {
            vec![specs]
        };
        let lens: Vec<usize> = jobs.iter().map(Vec::len).collect();
        let mut all: Vec<CallSpec> = jobs.into_iter().flatten().collect();
        let dev = self.device.as_mut().expect("set above");
        dev.in_flight.retain(|p| !p.is_done());
        let (regions, bytes) = plan(&mut all);
        let stage = dev.take(bytes)?;
        let base = stage.as_ptr();
        for s in &mut all {
            // Offsets to host addresses; empty buffers get a valid, unused address.
            s.send = if s.send.is_null() { base } else { base.wrapping_add(s.send as usize) };
            s.recv = if s.recv.is_null() { base } else { base.wrapping_add(s.recv as usize) };
        }
        // Job j holds specs first[j] .. first[j] + lens[j].
        let first: Vec<usize> = lens.iter().scan(0, |acc, &l| Some(std::mem::replace(acc, *acc + l))).collect();
        let of_job = |j: usize| {
            let range = first[j]..first[j] + lens[j];
            regions.iter().filter(move |r| range.contains(&r.spec) && r.bytes > 0)
        };
        // Every piece's inputs first, each followed by its event: the progress thread
        // starts on piece 0 while the copy engine stages piece 1.
        let mut staged = Vec::with_capacity(lens.len());
        for j in 0..lens.len() {
            for r in of_job(j).filter(|r| r.copy_in) {
                // SAFETY: `r.dev` is device memory the caller vouched for (`run_raw_device`'s
                // contract); the destination is inside `stage`, which stays allocated until
                // the event recorded after the copies back has completed.
                unsafe { driver::copy_to_host(base.add(r.at), r.dev, r.bytes, stream)? };
            }
            let e = Event::new()?;
            // SAFETY: `stream` is live and of the current context.
            unsafe { e.record(stream)? };
            staged.push(e);
        }
        if dev.seq > u32::MAX - lens.len() as u32 {
            dev.restart_numbering()?;
        }
        let flag = dev.flag.device_ptr(0)?;
        let mut seqs = Vec::with_capacity(lens.len());
        for j in 0..lens.len() {
            dev.seq += 1;
            seqs.push(dev.seq);
            // SAFETY: the flag is pinned, device-mapped and lives as long as the
            // communicator's staging state, which waits for the streams before freeing it.
            unsafe { driver::wait_at_least(stream, flag, dev.seq)? };
            for r in of_job(j).filter(|r| r.copy_out) {
                // SAFETY: as for the copies in.
                unsafe { driver::copy_to_device(r.dev, base.add(r.at), r.bytes, stream)? };
            }
        }
        let free = Event::new()?;
        // SAFETY: as above.
        unsafe { free.record(stream)? };
        dev.stages.push((stage, Some(free)));
        // The staging buffer is back in the pool, but `take` hands it out again only
        // once the event after the copies back has completed, which is after every
        // piece's flag was written: the progress thread is done with it by then.
        let flag = dev.flag.clone();
        if self.worker.is_none() {
            self.worker = Some(Worker::spawn(self.engine.clone(), self.rank)?);
        }
        let worker = self.worker.as_ref().expect("started above");
        let mut rest = all.into_iter();
        let mut pending = Vec::with_capacity(lens.len());
        for ((len, staged), seq) in lens.iter().zip(staged).zip(seqs) {
            let specs: Vec<CallSpec> = rest.by_ref().take(*len).collect();
            let hooks = Staged { ctx, staged, flag: flag.clone(), seq, fault: self.fault.clone() };
            pending.push(worker.submit_with(specs, Box::new(hooks))?);
        }
        self.device.as_mut().expect("set above").in_flight.extend(pending);
        Ok(())
    }

    /// Waits until the device operations queued on the progress thread have run, so that
    /// a blocking call on this thread keeps the order the ranks issued them in.
    pub(crate) fn settle_device(&mut self) {
        if let Some(d) = self.device.as_mut() {
            d.settle();
        }
    }

    /// Sum (or another op) of every rank's `send` into every rank's `recv`
    /// (`ncclAllReduce` on device buffers), enqueued on `stream`.
    ///
    /// ```no_run
    /// use oxccl::cuda::cudarc::driver::CudaContext;
    /// use oxccl::{Comm, ReduceOp};
    /// let mut comm = Comm::from_env()?;
    /// let ctx = CudaContext::new(0).expect("a GPU");
    /// let stream = ctx.default_stream();
    /// let grads = stream.memcpy_stod(&vec![1.0f32; 1 << 20]).expect("copy");
    /// let mut sum = stream.alloc_zeros::<f32>(1 << 20).expect("alloc");
    /// comm.all_reduce_device(&grads, &mut sum, ReduceOp::Sum, &stream)?;
    /// let host = stream.memcpy_dtov(&sum).expect("copy back"); // ordered after it
    /// # Ok::<(), oxccl::Error>(())
    /// ```
    pub fn all_reduce_device<T: Element>(
        &mut self,
        send: &impl DevicePtr<T>,
        recv: &mut impl DevicePtrMut<T>,
        op: ReduceOp,
        stream: &CudaStream,
    ) -> Result<()> {
        let (n, m) = (send.len(), recv.len());
        if n != m {
            return Err(Error::invalid_argument(format!(
                "all_reduce_device: send buffer has {n} elements, recv buffer {m}; they must match"
            )));
        }
        let (s, _r) = send.device_ptr(stream);
        let (d, _w) = recv.device_ptr_mut(stream);
        // SAFETY: cudarc's buffers are device memory of their lengths, kept alive (and
        // ordered through their events) as long as `stream` uses them.
        self.device_call(stream, |b| unsafe { b.all_reduce(s as *const u8, d as *mut u8, n, T::DTYPE, op) })
    }

    /// [`Comm::all_reduce_device`] in place.
    pub fn all_reduce_device_in_place<T: Element>(
        &mut self,
        buf: &mut impl DevicePtrMut<T>,
        op: ReduceOp,
        stream: &CudaStream,
    ) -> Result<()> {
        let n = buf.len();
        let (d, _w) = buf.device_ptr_mut(stream);
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.all_reduce(d as *const u8, d as *mut u8, n, T::DTYPE, op) })
    }

    /// The root's `buf` to every rank's `buf` (`ncclBroadcast` in place on device
    /// buffers), enqueued on `stream`.
    pub fn broadcast_device_in_place<T: Element>(
        &mut self,
        buf: &mut impl DevicePtrMut<T>,
        root: usize,
        stream: &CudaStream,
    ) -> Result<()> {
        let n = buf.len();
        let (d, _w) = buf.device_ptr_mut(stream);
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.broadcast(d as *const u8, d as *mut u8, n, T::DTYPE, root) })
    }

    /// Every rank's `send` reduced into the root's `recv` (`ncclReduce` on device
    /// buffers; `recv` is not touched on other ranks), enqueued on `stream`.
    pub fn reduce_device<T: Element>(
        &mut self,
        send: &impl DevicePtr<T>,
        recv: &mut impl DevicePtrMut<T>,
        op: ReduceOp,
        root: usize,
        stream: &CudaStream,
    ) -> Result<()> {
        let (n, m) = (send.len(), recv.len());
        let (s, _r) = send.device_ptr(stream);
        let (d, _w) = recv.device_ptr_mut(stream);
        if self.rank == root && m != n {
            return Err(Error::invalid_argument(format!(
                "reduce_device: the root's recv buffer has {m} elements, send buffer {n}; they must match"
            )));
        }
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.reduce(s as *const u8, d as *mut u8, n, T::DTYPE, op, root) })
    }

    /// Every rank's `send` concatenated, in rank order, into every rank's `recv`
    /// (`ncclAllGather` on device buffers: `recv` holds `size() * send.len()`), enqueued
    /// on `stream`.
    pub fn all_gather_device<T: Element>(
        &mut self,
        send: &impl DevicePtr<T>,
        recv: &mut impl DevicePtrMut<T>,
        stream: &CudaStream,
    ) -> Result<()> {
        let (n, m) = (send.len(), recv.len());
        if m != n * self.nranks {
            return Err(Error::invalid_argument(format!(
                "all_gather_device: recv buffer has {m} elements; it must hold {} ranks x {n}",
                self.nranks
            )));
        }
        let (s, _r) = send.device_ptr(stream);
        let (d, _w) = recv.device_ptr_mut(stream);
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.all_gather(s as *const u8, d as *mut u8, n, T::DTYPE) })
    }

    /// Every rank's `send` reduced, and block `rank()` of the result into `recv`
    /// (`ncclReduceScatter` on device buffers: `send` holds `size() * recv.len()`),
    /// enqueued on `stream`.
    pub fn reduce_scatter_device<T: Element>(
        &mut self,
        send: &impl DevicePtr<T>,
        recv: &mut impl DevicePtrMut<T>,
        op: ReduceOp,
        stream: &CudaStream,
    ) -> Result<()> {
        let (n, m) = (send.len(), recv.len());
        if n != m * self.nranks {
            return Err(Error::invalid_argument(format!(
                "reduce_scatter_device: send buffer has {n} elements; it must hold {} ranks x {m}",
                self.nranks
            )));
        }
        let (s, _r) = send.device_ptr(stream);
        let (d, _w) = recv.device_ptr_mut(stream);
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.reduce_scatter(s as *const u8, d as *mut u8, m, T::DTYPE, op) })
    }

    /// Block `j` of this rank's `send` to rank `j`, whose block `rank()` of `recv` it
    /// becomes (`ncclAlltoAll` on device buffers), enqueued on `stream`.
    pub fn all_to_all_device<T: Element>(
        &mut self,
        send: &impl DevicePtr<T>,
        recv: &mut impl DevicePtrMut<T>,
        stream: &CudaStream,
    ) -> Result<()> {
        let (n, m) = (send.len(), recv.len());
        if n != m || n % self.nranks != 0 {
            return Err(Error::invalid_argument(format!(
                "all_to_all_device: send has {n} elements, recv {m}; both must be the same multiple of the {} ranks",
                self.nranks
            )));
        }
        let (s, _r) = send.device_ptr(stream);
        let (d, _w) = recv.device_ptr_mut(stream);
        let per = n / self.nranks;
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.all_to_all(s as *const u8, d as *mut u8, per, T::DTYPE) })
    }

    /// `buf` to rank `peer` (`ncclSend` on a device buffer), enqueued on `stream`.
    pub fn send_device<T: Element>(&mut self, buf: &impl DevicePtr<T>, peer: usize, stream: &CudaStream) -> Result<()> {
        let n = buf.len();
        let (s, _r) = buf.device_ptr(stream);
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.send(s as *const u8, n, T::DTYPE, peer) })
    }

    /// `buf` from rank `peer` (`ncclRecv` on a device buffer), enqueued on `stream`.
    pub fn recv_device<T: Element>(
        &mut self,
        buf: &mut impl DevicePtrMut<T>,
        peer: usize,
        stream: &CudaStream,
    ) -> Result<()> {
        let n = buf.len();
        let (d, _w) = buf.device_ptr_mut(stream);
        // SAFETY: as in `all_reduce_device`.
        self.device_call(stream, |b| unsafe { b.recv(d as *mut u8, n, T::DTYPE, peer) })
    }

    /// Records one operation with `record` and enqueues it on `stream`.
    fn device_call(&mut self, stream: &CudaStream, record: impl FnOnce(&mut RawBatch) -> Result<()>) -> Result<()> {
        let mut b = self.raw_batch();
        record(&mut b)?;
        // SAFETY: the recorded addresses are cudarc device buffers of `stream`'s context
        // (see the callers), and `stream` is a live cudarc stream.
        unsafe { self.run_raw_device(b, stream.cu_stream()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DataType;

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
