//! CUDA IPC between the rank processes of one host (feature `cuda`; opt in with
//! `OXCCL_CUDA_IPC=1`): every rank owns one IPC-exportable device buffer and maps every
//! peer's, so an all-reduce reads the peers' data in device memory with no staging
//! through the host. It also works with several ranks on one GPU, which NCCL refuses.
//! Not yet run on a GPU: the staged path of `comm::device` stays the default until
//! `scripts/gpu-check.sh` has measured this one.
//!
//! A shared host page, registered with the driver, holds two counters per rank: `arrived`
//! (its input is in its buffer) and `done` (it has finished reading the others'). One
//! all-reduce is, all on the caller's stream, with no host thread involved:
//!
//! 1. wait until every peer's `done` reached the previous operation (nobody still reads
//!    this rank's buffer);
//! 2. copy the input into this rank's buffer, then write `arrived = seq`;
//! 3. wait until every peer's `arrived` reached `seq`;
//! 4. one-shot reduction: `recv = buf_0 op buf_1 op ... op buf_{n-1}` with the NVRTC
//!    kernels, reading the peers' buffers directly, in rank order on every rank (so all
//!    ranks get bitwise the same result);
//! 5. write `done = seq`.
//!
//! If the communicator fails (a dead peer, an abort), a watcher thread sets every counter
//! to its maximum, so no stream waits forever on a rank that will not come.
//!
//! As with NCCL, a rank must not destroy its communicator while others may still run
//! operations on it: its buffer is freed (after its own streams are done) and a peer
//! still reading it would fault.
//!
//! This module owns the buffers, the counters and the stream's work; the communicator
//! exchanges the handles and the counters' segment name (`comm::device`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys;

use crate::cuda::driver::{self, Exported, Imported, IpcHandle, Registered};
use crate::cuda::launch::{self, TypeKernels};
use crate::cuda::{CudaError, KernelOp};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::sys::shmem::Segment;
use crate::types::{DataType, ReduceOp};

/// The kernel op of a reduction this path runs (the others go through staging).
pub fn kernel_op(op: ReduceOp) -> Option<KernelOp> {
    match op {
        ReduceOp::Sum => Some(KernelOp::Sum),
        ReduceOp::Prod => Some(KernelOp::Prod),
        ReduceOp::Max => Some(KernelOp::Max),
        ReduceOp::Min => Some(KernelOp::Min),
        _ => None,
    }
}

/// The shared counters: `2 * nranks` 32-bit words (arrived, then done) in a shared
/// segment, registered with the driver.
struct Flags {
    /// Dropped before the segment it registers.
    reg: Registered,
    seg: Segment,
}

impl Flags {
    fn host(&self) -> *mut u32 {
        self.seg.as_ptr().cast()
    }

    fn words(&self) -> usize {
        self.seg.len() / 4
    }
}

/// One communicator's IPC state.
pub struct Ipc {
    rank: usize,
    nranks: usize,
    /// This rank's exported buffer.
    mine: Exported,
    /// Every peer's buffer as mapped here (`None` at this rank's own index).
    peers: Vec<Option<Imported>>,
    flags: Arc<Flags>,
    seq: u32,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

// SAFETY: device addresses, the registration and the segment are plain values the driver
// and the kernel accept from any thread; the communicator uses this from one thread.
unsafe impl Send for Ipc {}
// SAFETY: only the watcher reads `flags` concurrently, through volatile stores.
unsafe impl Send for Flags {}
// SAFETY: as above.
unsafe impl Sync for Flags {}

impl Drop for Ipc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
        // The context's work that reads the buffers must be done before they go.
        let _ = driver::synchronize();
    }
}

/// Bytes of the counters' segment of a job of `nranks` ranks.
pub fn flags_len(nranks: usize) -> usize {
    (2 * nranks * 4).next_multiple_of(4096)
}

impl Ipc {
    /// This rank's buffer of `cap` bytes and the handle that maps it elsewhere (step one
    /// of the setup; the communicator exchanges the handles).
    pub fn export(cap: usize) -> Result<(Exported, IpcHandle)> {
        Ok(Exported::new(cap)?)
    }

    /// Maps the peers' buffers from their `handles`, registers the counters' segment
    /// `flags` (every rank mapped it; `flags_len` bytes), and starts the watcher.
    pub fn open(rank: usize, mine: Exported, handles: &[IpcHandle], flags: Segment, fault: Arc<Fault>) -> Result<Ipc> {
        let nranks = handles.len();
        let peers = handles
            .iter()
            .enumerate()
            .map(|(r, h)| if r == rank { Ok(None) } else { Imported::open(h).map(Some) })
            .collect::<std::result::Result<Vec<_>, CudaError>>()?;
        // SAFETY: the segment is a page-aligned shared mapping of its length, kept alive
        // by `Flags` for as long as the registration.
        let reg = unsafe { Registered::new(flags.as_ptr(), flags.len())? };
        let flags = Arc::new(Flags { reg, seg: flags });
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (flags.clone(), stop.clone());
        let watcher = std::thread::Builder::new()
            .name(format!("oxccl-ipc-watch-{rank}"))
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    if fault.tripped() {
                        for i in 0..f.words() {
                            // SAFETY: inside the mapping; volatile, as devices read it.
                            unsafe { std::ptr::write_volatile(f.host().add(i), u32::MAX) };
                        }
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
            .map_err(|e| Error::system("starting the IPC watcher thread", e))?;
        Ok(Ipc { rank, nranks, mine, peers, flags, seq: 0, stop, watcher: Some(watcher) })
    }

    /// The capacity of the buffers, in bytes.
    pub fn cap(&self) -> usize {
        self.mine.len()
    }

    fn buf(&self, r: usize) -> sys::CUdeviceptr {
        self.peers[r].as_ref().map_or(self.mine.ptr(), Imported::ptr)
    }

    /// Enqueues the one-shot all-reduce of `count` elements of `dtype` from `send` to
    /// `recv` on `stream` (see the module documentation).
    ///
    /// # Safety
    /// `send` and `recv` must be device memory of the current context holding `count`
    /// elements, valid until the stream has passed the operation; `stream` live or null;
    /// `count * size <= cap()`.
    pub unsafe fn all_reduce(
        &mut self,
        send: sys::CUdeviceptr,
        recv: sys::CUdeviceptr,
        count: usize,
        dtype: DataType,
        op: KernelOp,
        stream: sys::CUstream,
    ) -> std::result::Result<(), CudaError> {
        let bytes = count * dtype.size();
        debug_assert!(bytes <= self.cap());
        let k: Arc<TypeKernels> = launch::kernels(dtype)?;
        let prev = self.seq;
        self.seq = self.seq.checked_add(1).unwrap_or(1);
        let seq = self.seq;
        let base = self.flags.reg.device_ptr();
        let arrived = |r: usize| base + (4 * r) as u64;
        let done = |r: usize| base + (4 * (self.nranks + r)) as u64;
        let peers: Vec<usize> = (0..self.nranks).filter(|&r| r != self.rank).collect();
        // SAFETY (every call below): the flag words are inside the registered mapping,
        // the buffers are ours or mapped peers' of `cap` bytes, `send`/`recv` are the
        // caller's (contract); all calls only enqueue work on `stream`.
        unsafe {
            for &p in &peers {
                driver::wait_at_least(stream, done(p), prev)?;
            }
            driver::copy_on_device(self.mine.ptr(), send, bytes, stream)?;
            driver::write_value(stream, arrived(self.rank), seq)?;
            for &p in &peers {
                driver::wait_at_least(stream, arrived(p), seq)?;
            }
            if self.nranks == 1 {
                driver::copy_on_device(recv, self.mine.ptr(), bytes, stream)?;
            } else {
                k.binary(op, recv, self.buf(0), self.buf(1), count, stream)?;
                for r in 2..self.nranks {
                    k.binary(op, recv, recv, self.buf(r), count, stream)?;
                }
            }
            driver::write_value(stream, done(self.rank), seq)?;
        }
        Ok(())
    }
}
