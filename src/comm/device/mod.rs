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

mod ipc;
mod staging;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::raw::RawBatch;
use super::work::Worker;
use super::{CallSpec, Comm};
use crate::cuda::driver::{self, Event};
use crate::error::{Error, Result};
use crate::types::{Element, ReduceOp};
pub(crate) use ipc::IpcState;
pub(crate) use staging::Staging;
use staging::{PIPELINE_CHUNK, Staged, pieces, plan};

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
    /// must stay alive while the communicator uses it. Gathers and scatters in place are
    /// not supported (their recording reads the buffer on the host).
    pub unsafe fn run_raw_device(&mut self, batch: RawBatch, stream: &CudaStream) -> Result<()> {
        // SAFETY: a cudarc stream is a live stream handle of its context (the caller's
        // contract covers the buffers).
        unsafe { self.run_raw_on(batch, stream.cu_stream()) }
    }

    /// As [`Comm::run_raw_device`], on a raw stream handle (the C ABI's `cudaStream_t`).
    ///
    /// # Safety
    /// As [`Comm::run_raw_device`], and `stream` must be a valid stream handle (null: the
    /// default stream) whose context stays alive while the communicator uses it.
    pub(crate) unsafe fn run_raw_on(&mut self, batch: RawBatch, stream: CUstream) -> Result<()> {
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
        unsafe { self.run_raw_device(b, stream) }
    }
}
