//! The CUDA driver calls of the device path, through cudarc's bindings (loaded at run
//! time), each checked and wrapped so that nothing else needs `unsafe` for them: whether
//! the driver is there, what kind of memory a pointer addresses, pinned host buffers the
//! device can read and write, and events.
//!
//! cudarc panics when it cannot load libcuda, so every entry point here first asks
//! [`ready`], which probes the driver once per process with `libloading` and turns a
//! missing driver into [`CudaError::NoDriver`].

use std::ffi::c_void;
use std::sync::OnceLock;

use cudarc::driver::sys;

use super::CudaError;

/// Whether the driver is loaded and initialised (probed once per process): the number
/// of devices, or why there is no CUDA.
pub fn ready() -> Result<usize, CudaError> {
    static PROBE: OnceLock<Result<usize, CudaError>> = OnceLock::new();
    PROBE.get_or_init(super::probe_driver).clone()
}

/// Turns a driver result into an error naming the call (and the driver's name for the
/// code).
pub fn check(r: sys::CUresult, call: &'static str) -> Result<(), CudaError> {
    if r == sys::CUresult::CUDA_SUCCESS { Ok(()) } else { Err(CudaError::Driver { call, code: r as i32 }) }
}

/// The driver's name for a `CUresult` code (`CUDA_ERROR_INVALID_VALUE`), if the driver is
/// loaded and knows it.
pub fn error_name(code: i32) -> Option<String> {
    ready().ok()?;
    // Called with a plain int: `code` need not be one of the values cudarc's enum knows.
    type GetErrorName = unsafe extern "C" fn(std::ffi::c_int, *mut *const std::ffi::c_char) -> std::ffi::c_int;
    // SAFETY: the driver is loaded (`ready`), so cudarc's library handle is valid; the
    // type is cuGetErrorName's C prototype (CUresult is a C int).
    let f = unsafe { sys::culib().get::<GetErrorName>(b"cuGetErrorName\0") }.ok()?;
    let mut p: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: `p` is writable; unknown codes are reported as an error, not a fault.
    let ok = unsafe { f(code, &mut p) } == 0;
    if !ok || p.is_null() {
        return None;
    }
    // SAFETY: on success the driver returns a static NUL-terminated string.
    Some(unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// What a pointer addresses, as the driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Host memory (pageable, or pinned: the CPU path reads it directly).
    Host,
    /// Device memory (or managed memory) of the device with this ordinal.
    Device(usize),
}

/// Classifies `ptr` by its pointer attributes: memory the driver does not know is host
/// memory. With no driver, everything is host memory.
pub fn memory_of(ptr: *const c_void) -> Memory {
    if ready().is_err() || ptr.is_null() {
        return Memory::Host;
    }
    let attr = |a: sys::CUpointer_attribute| -> Option<u32> {
        let mut v: u32 = 0;
        // SAFETY: the three attributes queried write one 32-bit value (a CUmemorytype,
        // a bool as unsigned int, an int ordinal); `v` is writable. Any address may be
        // queried: unknown memory is an error, not a fault.
        let r = unsafe { sys::cuPointerGetAttribute((&mut v as *mut u32).cast(), a, ptr as sys::CUdeviceptr) };
        (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
    };
    let managed = attr(sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_IS_MANAGED).unwrap_or(0) != 0;
    let kind = attr(sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE);
    let device = kind == Some(sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32);
    if !(device || managed) {
        return Memory::Host;
    }
    let ordinal = attr(sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL).unwrap_or(0);
    Memory::Device(ordinal as usize)
}

/// The context a stream's work runs in (for the legacy default stream, the calling
/// thread's current context).
///
/// # Safety
/// `stream` must be a live stream handle, or null (the default stream).
pub unsafe fn stream_context(stream: sys::CUstream) -> Result<sys::CUcontext, CudaError> {
    ready()?;
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: `ctx` is writable; `stream` is a stream handle the caller vouches for
    // (null is the default stream).
    check(unsafe { sys::cuStreamGetCtx(stream, &mut ctx) }, "cuStreamGetCtx")?;
    if ctx.is_null() {
        return Err(CudaError::Driver {
            call: "cuStreamGetCtx",
            code: sys::CUresult::CUDA_ERROR_INVALID_CONTEXT as i32,
        });
    }
    Ok(ctx)
}

/// Makes `ctx` current on the calling thread.
///
/// # Safety
/// `ctx` must be a live context handle.
pub unsafe fn make_current(ctx: sys::CUcontext) -> Result<(), CudaError> {
    // SAFETY: the caller's contract.
    check(unsafe { sys::cuCtxSetCurrent(ctx) }, "cuCtxSetCurrent")
}

/// Page-locked host memory, mapped into the device's address space (the device reads and
/// writes it over the bus; copies to and from it run at full speed).
pub struct Pinned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value; who may touch it when is the
// business of its user (the staging code), as for a Vec.
unsafe impl Send for Pinned {}
// SAFETY: `&Pinned` only hands out the address and length; writes through the address
// are the user's to order (the staging code writes its flag with volatile stores).
unsafe impl Sync for Pinned {}

impl Pinned {
    /// `len` bytes (at least one), zeroed, in the current context.
    pub fn new(len: usize) -> Result<Pinned, CudaError> {
        ready()?;
        let len = len.max(1);
        let mut p: *mut c_void = std::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: `p` is writable; on success it points to `len` bytes we own until
        // cuMemFreeHost.
        check(unsafe { sys::cuMemHostAlloc(&mut p, len, flags) }, "cuMemHostAlloc")?;
        // SAFETY: `p` points to `len` writable bytes.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, len) };
        Ok(Pinned { ptr: p.cast(), len })
    }

    /// The host address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: at least one byte is allocated).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address the device uses for byte `offset` of it.
    pub fn device_ptr(&self, offset: usize) -> Result<sys::CUdeviceptr, CudaError> {
        let mut d: sys::CUdeviceptr = 0;
        // SAFETY: `self.ptr` was allocated with CU_MEMHOSTALLOC_DEVICEMAP; `d` is writable.
        check(unsafe { sys::cuMemHostGetDevicePointer_v2(&mut d, self.ptr.cast(), 0) }, "cuMemHostGetDevicePointer")?;
        Ok(d + offset as u64)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc and freed once; the owner made sure no
        // device work still uses it (see the staging code's events).
        unsafe { sys::cuMemFreeHost(self.ptr.cast()) };
    }
}

/// A CUDA event without timing (cheap to record and query).
pub struct Event(sys::CUevent);

// SAFETY: an event handle may be recorded, queried and destroyed from any thread with
// its context current.
unsafe impl Send for Event {}
// SAFETY: as above; the driver serialises operations on one event.
unsafe impl Sync for Event {}

impl Event {
    /// A new event in the current context.
    pub fn new() -> Result<Event, CudaError> {
        ready()?;
        let mut e: sys::CUevent = std::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: `e` is writable.
        check(unsafe { sys::cuEventCreate(&mut e, flags) }, "cuEventCreate")?;
        Ok(Event(e))
    }

    /// Records the event at the current end of `stream`.
    ///
    /// # Safety
    /// `stream` must be a live stream handle of the event's context, or null.
    pub unsafe fn record(&self, stream: sys::CUstream) -> Result<(), CudaError> {
        // SAFETY: the event is ours; the stream is the caller's (contract).
        check(unsafe { sys::cuEventRecord(self.0, stream) }, "cuEventRecord")
    }

    /// Whether the work before the record has completed.
    pub fn done(&self) -> Result<bool, CudaError> {
        // SAFETY: the event is valid.
        match unsafe { sys::cuEventQuery(self.0) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            r => check(r, "cuEventQuery").map(|_| false),
        }
    }

    /// Blocks until the work before the record has completed.
    pub fn wait(&self) -> Result<(), CudaError> {
        // SAFETY: the event is valid.
        check(unsafe { sys::cuEventSynchronize(self.0) }, "cuEventSynchronize")
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by cuEventCreate and destroyed once (the driver defers the
        // destruction until pending records complete).
        unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}

/// Enqueues a copy of `bytes` from device address `src` to host address `dst` on `stream`.
///
/// # Safety
/// `src` must be device memory readable for `bytes` bytes and `dst` pinned host memory
/// writable for `bytes`, both until the copy has run on the stream.
pub unsafe fn copy_to_host(
    dst: *mut u8,
    src: sys::CUdeviceptr,
    bytes: usize,
    stream: sys::CUstream,
) -> Result<(), CudaError> {
    // SAFETY: the caller's contract.
    check(unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, bytes, stream) }, "cuMemcpyDtoHAsync")
}

/// Enqueues a copy of `bytes` from host address `src` to device address `dst` on `stream`.
///
/// # Safety
/// As [`copy_to_host`], the other way round.
pub unsafe fn copy_to_device(
    dst: sys::CUdeviceptr,
    src: *const u8,
    bytes: usize,
    stream: sys::CUstream,
) -> Result<(), CudaError> {
    // SAFETY: the caller's contract.
    check(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), bytes, stream) }, "cuMemcpyHtoDAsync")
}

/// Enqueues on `stream` a wait until the 32-bit word at device address `flag` is at least
/// `value` (work after it on the stream starts only then).
///
/// # Safety
/// `flag` must be device-readable memory (e.g. a [`Pinned`] word) that stays allocated
/// until the wait has completed.
pub unsafe fn wait_at_least(stream: sys::CUstream, flag: sys::CUdeviceptr, value: u32) -> Result<(), CudaError> {
    let geq = sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32;
    // SAFETY: the caller's contract.
    check(unsafe { sys::cuStreamWaitValue32_v2(stream, flag, value, geq) }, "cuStreamWaitValue32")
}

/// The device of the calling thread's current context (what `cudaGetDevice` reports once
/// the CUDA runtime has set one), if the driver is there and a context is current.
pub fn current_device() -> Option<usize> {
    ready().ok()?;
    let mut d: sys::CUdevice = 0;
    // SAFETY: `d` is writable; with no current context the call fails (checked).
    let r = unsafe { sys::cuCtxGetDevice(&mut d) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(d as usize)
}

/// Enqueues on `stream` a write of `value` into the 32-bit word at device address `flag`.
///
/// # Safety
/// `flag` must be device-writable memory that stays allocated until the write has run.
pub unsafe fn write_value(stream: sys::CUstream, flag: sys::CUdeviceptr, value: u32) -> Result<(), CudaError> {
    let write = sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32;
    // SAFETY: the caller's contract.
    check(unsafe { sys::cuStreamWriteValue32_v2(stream, flag, value, write) }, "cuStreamWriteValue32")
}

/// Enqueues a copy of `bytes` between device addresses on `stream`.
///
/// # Safety
/// `src` readable and `dst` writable for `bytes` bytes until the copy has run.
pub unsafe fn copy_on_device(
    dst: sys::CUdeviceptr,
    src: sys::CUdeviceptr,
    bytes: usize,
    stream: sys::CUstream,
) -> Result<(), CudaError> {
    // SAFETY: the caller's contract.
    check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, stream) }, "cuMemcpyDtoDAsync")
}

/// Blocks until the current context's work has completed.
pub fn synchronize() -> Result<(), CudaError> {
    ready()?;
    // SAFETY: synchronises the current context; no memory is passed.
    check(unsafe { sys::cuCtxSynchronize() }, "cuCtxSynchronize")
}

/// Device memory of the current context that other processes can map through CUDA IPC
/// (`cuMemAlloc`: stream-ordered pool memory cannot be exported).
pub struct Exported {
    ptr: sys::CUdeviceptr,
    len: usize,
}

/// What a process hands another so that it can map an [`Exported`] buffer.
pub type IpcHandle = [u8; 64];

impl Exported {
    /// `len` bytes (at least one) and the handle that maps them elsewhere.
    pub fn new(len: usize) -> Result<(Exported, IpcHandle), CudaError> {
        ready()?;
        let mut d: sys::CUdeviceptr = 0;
        // SAFETY: `d` is writable; on success it is `len` bytes we own until cuMemFree.
        check(unsafe { sys::cuMemAlloc_v2(&mut d, len.max(1)) }, "cuMemAlloc")?;
        let buf = Exported { ptr: d, len: len.max(1) };
        let mut h = std::mem::MaybeUninit::<sys::CUipcMemHandle>::zeroed();
        // SAFETY: `h` is writable; `d` came from cuMemAlloc.
        check(unsafe { sys::cuIpcGetMemHandle(h.as_mut_ptr(), d) }, "cuIpcGetMemHandle")?;
        // SAFETY: initialised by the call above (and zeroed before).
        let h = unsafe { h.assume_init() };
        let mut out = [0u8; 64];
        for (o, c) in out.iter_mut().zip(h.reserved.iter()) {
            *o = *c as u8;
        }
        Ok((buf, out))
    }

    /// Its device address.
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: at least one byte is allocated).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAlloc, freed once; the owner synchronised the
        // context's work that used it.
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// Another process's [`Exported`] buffer, mapped into this context.
pub struct Imported(sys::CUdeviceptr);

impl Imported {
    /// Maps the buffer `handle` names (lazily enabling peer access between devices).
    pub fn open(handle: &IpcHandle) -> Result<Imported, CudaError> {
        ready()?;
        let mut raw = sys::CUipcMemHandle { reserved: [0; 64] };
        for (c, b) in raw.reserved.iter_mut().zip(handle.iter()) {
            *c = *b as _;
        }
        let lazy = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
        let mut d: sys::CUdeviceptr = 0;
        // SAFETY: `d` is writable; the handle came from a peer's cuIpcGetMemHandle.
        check(unsafe { sys::cuIpcOpenMemHandle_v2(&mut d, raw, lazy) }, "cuIpcOpenMemHandle")?;
        Ok(Imported(d))
    }

    /// Its device address here.
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.0
    }
}

impl Drop for Imported {
    fn drop(&mut self) {
        // SAFETY: opened by cuIpcOpenMemHandle, closed once, after the owner synchronised
        // this context's work that read it.
        unsafe { sys::cuIpcCloseMemHandle(self.0) };
    }
}

/// Host memory (a mapping the caller owns) registered with the driver, so the device
/// reads and writes it at [`Registered::device_ptr`].
pub struct Registered {
    host: *mut u8,
    dev: sys::CUdeviceptr,
}

// SAFETY: the registration is a handle on memory the owner keeps mapped; any thread may
// unregister it with the context current.
unsafe impl Send for Registered {}
// SAFETY: `&Registered` only hands out addresses.
unsafe impl Sync for Registered {}

impl Registered {
    /// Registers `len` bytes at `host`, mapped for the device.
    ///
    /// # Safety
    /// `host` must be a page-aligned mapping of `len` bytes that outlives the value.
    pub unsafe fn new(host: *mut u8, len: usize) -> Result<Registered, CudaError> {
        ready()?;
        let flags = sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE;
        // SAFETY: the caller's contract.
        check(unsafe { sys::cuMemHostRegister_v2(host.cast(), len, flags) }, "cuMemHostRegister")?;
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: registered with DEVICEMAP above; `dev` is writable.
        let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0) };
        // Dropped on error, which undoes the registration.
        let reg = Registered { host, dev };
        check(r, "cuMemHostGetDevicePointer")?;
        Ok(reg)
    }

    /// The address the device uses for the memory's first byte.
    pub fn device_ptr(&self) -> sys::CUdeviceptr {
        self.dev
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // SAFETY: registered by `new` and unregistered once.
        unsafe { sys::cuMemHostUnregister(self.host.cast()) };
    }
}
