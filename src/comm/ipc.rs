//! All-reduce on device buffers through CUDA IPC, between rank processes of one host
//! (on different GPUs, or several on one GPU, which NCCL refuses): opt in with
//! `OXCCL_CUDA_IPC=1` (feature `cuda`). Not yet run on a GPU: the staged path of
//! [`super::device`] stays the default until `scripts/gpu-check.sh` has measured this one.
//!
//! Every rank owns one IPC-exportable device buffer (`cuMemAlloc`; stream-ordered pool
//! memory cannot be exported) and maps every peer's. A shared host page, registered with
//! the driver, holds two counters per rank: `arrived` (its input is in its buffer) and
//! `done` (it has finished reading the others'). One all-reduce is, all on the caller's
//! stream, with no host thread involved:
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys;

use crate::cuda::driver::check;
use crate::cuda::launch::{self, TypeKernels};
use crate::cuda::{CudaError, KernelOp};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::types::{DataType, ReduceOp};

/// The kernel op of a reduction this path runs (the others go through staging).
pub(crate) fn kernel_op(op: ReduceOp) -> Option<KernelOp> {
    match op {
        ReduceOp::Sum => Some(KernelOp::Sum),
        ReduceOp::Prod => Some(KernelOp::Prod),
        ReduceOp::Max => Some(KernelOp::Max),
        ReduceOp::Min => Some(KernelOp::Min),
        _ => None,
    }
}

/// The shared counters: `2 * nranks` 32-bit words (arrived, then done), 4 KiB aligned.
struct Flags {
    host: *mut u32,
    len: usize,
    dev: sys::CUdeviceptr,
}

impl Drop for Flags {
    fn drop(&mut self) {
        // SAFETY: registered with cuMemHostRegister and mapped with mmap by `Ipc::setup`;
        // undone once here.
        unsafe {
            sys::cuMemHostUnregister(self.host.cast());
            libc::munmap(self.host.cast(), self.len);
        }
    }
}

/// One communicator's IPC state.
pub(crate) struct Ipc {
    rank: usize,
    nranks: usize,
    /// This rank's exported buffer and its capacity in bytes.
    mine: sys::CUdeviceptr,
    cap: usize,
    /// Every rank's buffer as mapped here (this rank's own is `mine`).
    bufs: Vec<sys::CUdeviceptr>,
    flags: Arc<Flags>,
    seq: u32,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

// SAFETY: device addresses and the flag mapping are plain values the driver accepts from
// any thread with the context current; the communicator uses this from one thread.
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
        // SAFETY: peers' buffers were opened by cuIpcOpenMemHandle and ours allocated by
        // cuMemAlloc; each is released once, after this context's work is done.
        unsafe {
            sys::cuCtxSynchronize();
            for (r, &b) in self.bufs.iter().enumerate() {
                if r != self.rank {
                    sys::cuIpcCloseMemHandle(b);
                }
            }
            sys::cuMemFree_v2(self.mine);
        }
    }
}

/// What a rank publishes at setup: its buffer's IPC handle.
pub(crate) type Handle = [u8; 64];

impl Ipc {
    /// Allocates this rank's buffer of `cap` bytes and its IPC handle (step one of the
    /// setup; the communicator exchanges the handles and the flag segment's name).
    pub(crate) fn export(cap: usize) -> Result<(sys::CUdeviceptr, Handle)> {
        let mut d: sys::CUdeviceptr = 0;
        // SAFETY: `d` is writable; a context is current (the caller's stream's).
        check(unsafe { sys::cuMemAlloc_v2(&mut d, cap.max(1)) }, "cuMemAlloc")?;
        let mut h = std::mem::MaybeUninit::<sys::CUipcMemHandle>::zeroed();
        // SAFETY: `h` is writable; `d` came from cuMemAlloc.
        check(unsafe { sys::cuIpcGetMemHandle(h.as_mut_ptr(), d) }, "cuIpcGetMemHandle")?;
        // SAFETY: initialised by the call above.
        let h = unsafe { h.assume_init() };
        let mut out = [0u8; 64];
        for (o, c) in out.iter_mut().zip(h.reserved.iter()) {
            *o = *c as u8;
        }
        Ok((d, out))
    }

    /// Maps the peers' buffers from their `handles` and the flag segment at `shm` (a
    /// /dev/shm name every rank opened), and starts the watcher.
    pub(crate) fn open(
        rank: usize,
        mine: sys::CUdeviceptr,
        cap: usize,
        handles: &[Handle],
        shm: &str,
        fault: Arc<Fault>,
    ) -> Result<Ipc> {
        let nranks = handles.len();
        let mut bufs = vec![0; nranks];
        for (r, h) in handles.iter().enumerate() {
            if r == rank {
                bufs[r] = mine;
                continue;
            }
            let mut raw: sys::CUipcMemHandle = sys::CUipcMemHandle { reserved: [0; 64] };
            for (c, b) in raw.reserved.iter_mut().zip(h.iter()) {
                *c = *b as _;
            }
            let lazy = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
            // SAFETY: `bufs[r]` is writable; the handle came from the peer's cuIpcGetMemHandle.
            check(unsafe { sys::cuIpcOpenMemHandle_v2(&mut bufs[r], raw, lazy) }, "cuIpcOpenMemHandle")?;
        }
        let flags = Arc::new(map_flags(shm, 2 * nranks)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (flags.clone(), stop.clone());
        let watcher = std::thread::Builder::new()
            .name(format!("oxccl-ipc-watch-{rank}"))
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    if fault.tripped() {
                        for i in 0..f.len / 4 {
                            // SAFETY: inside the mapping; volatile, as devices read it.
                            unsafe { std::ptr::write_volatile(f.host.add(i), u32::MAX) };
                        }
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
            .map_err(|e| Error::system("starting the IPC watcher thread", e))?;
        Ok(Ipc { rank, nranks, mine, cap, bufs, flags, seq: 0, stop, watcher: Some(watcher) })
    }

    /// The capacity of the buffers, in bytes.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Enqueues the one-shot all-reduce of `count` elements of `dtype` from `send` to
    /// `recv` on `stream` (see the module documentation).
    ///
    /// # Safety
    /// `send` and `recv` must be device memory of the current context holding `count`
    /// elements, valid until the stream has passed the operation; `stream` live or null;
    /// `count * size <= cap()`.
    pub(crate) unsafe fn all_reduce(
        &mut self,
        send: sys::CUdeviceptr,
        recv: sys::CUdeviceptr,
        count: usize,
        dtype: DataType,
        op: KernelOp,
        stream: sys::CUstream,
    ) -> std::result::Result<(), CudaError> {
        let bytes = count * dtype.size();
        debug_assert!(bytes <= self.cap);
        let k: Arc<TypeKernels> = launch::kernels(dtype)?;
        let prev = self.seq;
        self.seq = self.seq.checked_add(1).unwrap_or(1);
        let seq = self.seq;
        let arrived = |r: usize| self.flags.dev + (4 * r) as u64;
        let done = |r: usize| self.flags.dev + (4 * (self.nranks + r)) as u64;
        let geq = sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32;
        let write = sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32;
        let peers: Vec<usize> = (0..self.nranks).filter(|&r| r != self.rank).collect();
        // SAFETY (every call below): the flag words are inside the registered mapping,
        // the buffers are ours or mapped peers' of `cap` bytes, `send`/`recv` are the
        // caller's (contract); all calls only enqueue work on `stream`.
        unsafe {
            for &p in &peers {
                check(sys::cuStreamWaitValue32_v2(stream, done(p), prev, geq), "cuStreamWaitValue32")?;
            }
            check(sys::cuMemcpyDtoDAsync_v2(self.mine, send, bytes, stream), "cuMemcpyDtoDAsync")?;
            check(sys::cuStreamWriteValue32_v2(stream, arrived(self.rank), seq, write), "cuStreamWriteValue32")?;
            for &p in &peers {
                check(sys::cuStreamWaitValue32_v2(stream, arrived(p), seq, geq), "cuStreamWaitValue32")?;
            }
            if self.nranks == 1 {
                check(sys::cuMemcpyDtoDAsync_v2(recv, self.mine, bytes, stream), "cuMemcpyDtoDAsync")?;
            } else {
                k.binary(op, recv, self.bufs[0], self.bufs[1], count, stream)?;
                for r in 2..self.nranks {
                    k.binary(op, recv, recv, self.bufs[r], count, stream)?;
                }
            }
            check(sys::cuStreamWriteValue32_v2(stream, done(self.rank), seq, write), "cuStreamWriteValue32")?;
        }
        Ok(())
    }
}

/// Opens (creating if needed) the /dev/shm segment `name` of `words` 32-bit counters,
/// maps it and registers it with the driver for device access.
fn map_flags(name: &str, words: usize) -> Result<Flags> {
    let len = (words * 4).next_multiple_of(4096);
    let path = std::ffi::CString::new(format!("/{name}")).map_err(|_| Error::internal("bad segment name"))?;
    // SAFETY: `path` is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::shm_open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
    if fd < 0 {
        return Err(Error::system("shm_open for the IPC flags", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is ours; growing a new segment (or one of the same size) is harmless.
    let grown = unsafe { libc::ftruncate(fd, len as libc::off_t) };
    // SAFETY: mapping `len` bytes of the segment we just sized.
    let p =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    // SAFETY: closing our descriptor; the mapping stays.
    unsafe { libc::close(fd) };
    if grown != 0 || p == libc::MAP_FAILED {
        return Err(Error::system("mapping the IPC flags", std::io::Error::last_os_error()));
    }
    let flags = sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE;
    // SAFETY: `p` is a page-aligned mapping of `len` bytes.
    if let Err(e) = check(unsafe { sys::cuMemHostRegister_v2(p, len, flags) }, "cuMemHostRegister") {
        // SAFETY: undoing the mapping above.
        unsafe { libc::munmap(p, len) };
        return Err(e.into());
    }
    let mut dev: sys::CUdeviceptr = 0;
    // SAFETY: `p` is registered with DEVICEMAP; `dev` is writable.
    let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, p, 0) };
    let f = Flags { host: p.cast(), len, dev };
    check(r, "cuMemHostGetDevicePointer")?;
    Ok(f)
}

/// Removes the segment's name (the mappings stay).
pub(crate) fn unlink(name: &str) {
    if let Ok(path) = std::ffi::CString::new(format!("/{name}")) {
        // SAFETY: `path` is NUL-terminated.
        unsafe { libc::shm_unlink(path.as_ptr()) };
    }
}

impl super::Comm {
    /// Runs `specs` through CUDA IPC if this is an all-reduce the IPC path takes and it
    /// is enabled (see the module documentation); returns whether it did.
    ///
    /// # Safety
    /// As [`super::Comm::run_raw_device`]: `specs` name device memory of `stream`'s
    /// context (the current one).
    pub(crate) unsafe fn try_ipc(&mut self, specs: &[super::CallSpec], stream: sys::CUstream) -> Result<bool> {
        let [s] = specs else { return Ok(false) };
        let crate::call::Collective::AllReduce { count } = s.coll else { return Ok(false) };
        let Some(op) = s.op.and_then(kernel_op) else { return Ok(false) };
        let one_host = self.topology.as_ref().is_some_and(|t| t.hosts.len() == 1);
        if !self.settings.cuda_ipc || !one_host || count == 0 {
            return Ok(false);
        }
        let bytes = count * s.dtype.size();
        if self.ipc.as_ref().is_none_or(|i| i.cap() < bytes) {
            self.setup_ipc(bytes)?;
        }
        let ipc = self.ipc.as_mut().expect("set up above");
        // SAFETY: the caller's contract; `bytes` fits the buffers.
        unsafe { ipc.all_reduce(s.send as u64, s.recv as u64, count, s.dtype, op, stream)? };
        Ok(true)
    }

    /// (Re)creates the IPC buffers with room for `bytes` (every rank does this at the
    /// same operation: they make the same calls).
    fn setup_ipc(&mut self, bytes: usize) -> Result<()> {
        if self.ipc.is_some() {
            // Nobody may still read the buffers about to be freed.
            // SAFETY: plain synchronisation of the current context.
            check(unsafe { sys::cuCtxSynchronize() }, "cuCtxSynchronize")?;
            self.barrier()?;
            self.ipc = None;
        }
        let cap = bytes.next_power_of_two().max(1 << 20);
        let (mine, handle) = Ipc::export(cap)?;
        let mut all = vec![0u8; 64 * self.nranks];
        self.all_gather(&handle, &mut all)?;
        let handles: Vec<Handle> = all.chunks(64).map(|c| c.try_into().expect("64 bytes")).collect();
        let mut name = [0u8; 64];
        if self.rank == 0 {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let n = format!("oxccl-ipc-{}-{nanos}", std::process::id());
            name[..n.len()].copy_from_slice(n.as_bytes());
        }
        self.broadcast_in_place(&mut name, 0)?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(64);
        let shm = String::from_utf8_lossy(&name[..end]).into_owned();
        let r = Ipc::open(self.rank, mine, cap, &handles, &shm, self.fault.clone());
        self.barrier()?;
        if self.rank == 0 {
            unlink(&shm);
        }
        self.ipc = Some(r?);
        Ok(())
    }
}
