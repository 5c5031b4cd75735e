//! The kernels of [`KERNELS_SOURCE`](super::KERNELS_SOURCE) on a device: compiled by NVRTC
//! the first time a device needs a data type (only that type's kernels, for the device's
//! own architecture), loaded into the current context, cached for the process, and
//! launched on a stream.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys;

use super::driver::{check, ready};
use super::{BLOCK_THREADS, COPY_KERNEL, CudaError, KernelOp, Nvrtc, compile_options, find_include_dir, kernel_name};
use crate::types::DataType;

/// One data type's kernels, loaded into one context.
pub struct TypeKernels {
    dtype: DataType,
    module: sys::CUmodule,
    funcs: HashMap<&'static str, sys::CUfunction>,
    copy: sys::CUfunction,
    /// Blocks per launch: enough to fill the device (a few per multiprocessor).
    blocks: u32,
}

// SAFETY: module and function handles may be used from any thread with their context
// current; the map is read-only after loading.
unsafe impl Send for TypeKernels {}
// SAFETY: as above.
unsafe impl Sync for TypeKernels {}

impl Drop for TypeKernels {
    fn drop(&mut self) {
        // SAFETY: loaded by cuModuleLoadData and unloaded once.
        unsafe { sys::cuModuleUnload(self.module) };
    }
}

/// Compiled and loaded kernels, by (context, data type).
type Cache = Mutex<HashMap<(usize, DataType), Arc<TypeKernels>>>;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// The kernels of `dtype` in the calling thread's current context, compiled and loaded
/// on first use (NVRTC and CUDA's headers are needed then: see
/// [`find_include_dir`] and [`Nvrtc::load`]).
pub fn kernels(dtype: DataType) -> Result<Arc<TypeKernels>, CudaError> {
    ready()?;
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: `ctx` is writable.
    check(unsafe { sys::cuCtxGetCurrent(&mut ctx) }, "cuCtxGetCurrent")?;
    if ctx.is_null() {
        return Err(CudaError::Driver {
            call: "cuCtxGetCurrent",
            code: sys::CUresult::CUDA_ERROR_INVALID_CONTEXT as i32,
        });
    }
    let key = (ctx as usize, dtype);
    if let Some(k) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(k);
    }
    let k = Arc::new(load(dtype)?);
    if let Ok(mut c) = cache().lock() {
        c.entry(key).or_insert_with(|| k.clone());
    }
    Ok(k)
}

/// An attribute of the current context's device.
fn attribute(a: sys::CUdevice_attribute) -> Result<i32, CudaError> {
    let mut dev: sys::CUdevice = 0;
    // SAFETY: `dev` is writable.
    check(unsafe { sys::cuCtxGetDevice(&mut dev) }, "cuCtxGetDevice")?;
    let mut v = 0;
    // SAFETY: `v` is writable; `dev` is a device ordinal the driver gave.
    check(unsafe { sys::cuDeviceGetAttribute(&mut v, a, dev) }, "cuDeviceGetAttribute")?;
    Ok(v)
}

fn load(dtype: DataType) -> Result<TypeKernels, CudaError> {
    use sys::CUdevice_attribute::*;
    let major = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let sms = attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
    let include = find_include_dir();
    let opts = compile_options((major * 10 + minor) as u32, include.as_deref(), Some(dtype));
    let ptx = Nvrtc::load()?.compile(super::KERNELS_SOURCE, super::KERNELS_FILE_NAME, &opts)?.ptx;
    let image = CString::new(ptx).map_err(|_| CudaError::Driver {
        call: "cuModuleLoadData",
        code: sys::CUresult::CUDA_ERROR_INVALID_IMAGE as i32,
    })?;
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `image` is NUL-terminated PTX, alive for the call; `module` is writable.
    check(unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr().cast()) }, "cuModuleLoadData")?;
    let mut k = TypeKernels { dtype, module, funcs: HashMap::new(), copy: std::ptr::null_mut(), blocks: sms * 4 };
    let get = |name: &str| -> Result<sys::CUfunction, CudaError> {
        let c = CString::new(name).expect("kernel names have no NUL");
        let mut f: sys::CUfunction = std::ptr::null_mut();
        // SAFETY: `module` is loaded; `f` is writable; `c` is NUL-terminated.
        check(unsafe { sys::cuModuleGetFunction(&mut f, module, c.as_ptr()) }, "cuModuleGetFunction")?;
        Ok(f)
    };
    for op in KernelOp::ALL {
        k.funcs.insert(op.name(), get(&kernel_name(op, dtype))?);
    }
    k.copy = get(COPY_KERNEL)?;
    Ok(k)
}

impl TypeKernels {
    /// The data type.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// Enqueues `dst[i] = a[i] op b[i]` for `n` elements (Sum, Prod, Max, Min) on `stream`.
    ///
    /// # Safety
    /// `dst`, `a` and `b` must be device memory of the current context holding `n`
    /// elements of the type, alive until the kernel has run; `stream` live or null.
    pub unsafe fn binary(
        &self,
        op: KernelOp,
        dst: sys::CUdeviceptr,
        a: sys::CUdeviceptr,
        b: sys::CUdeviceptr,
        n: usize,
        stream: sys::CUstream,
    ) -> Result<(), CudaError> {
        assert!(matches!(op, KernelOp::Sum | KernelOp::Prod | KernelOp::Max | KernelOp::Min), "{op:?} is not binary");
        let (mut d, mut a, mut b, mut n) = (dst, a, b, n);
        let mut args: [*mut c_void; 4] = [
            (&mut d as *mut u64).cast(),
            (&mut a as *mut u64).cast(),
            (&mut b as *mut u64).cast(),
            (&mut n as *mut usize).cast(),
        ];
        // SAFETY: the kernel's parameters are (T*, const T*, const T*, size_t), matched by
        // `args` in order; the caller's contract covers the memory.
        unsafe { self.launch(self.funcs[op.name()], &mut args, n, stream) }
    }

    /// Enqueues a copy of `bytes` bytes from `src` to `dst` with the copy kernel.
    ///
    /// # Safety
    /// As [`TypeKernels::binary`], for `bytes` bytes.
    pub unsafe fn copy(
        &self,
        dst: sys::CUdeviceptr,
        src: sys::CUdeviceptr,
        bytes: usize,
        stream: sys::CUstream,
    ) -> Result<(), CudaError> {
        let (mut d, mut s, mut n) = (dst, src, bytes);
        let mut args: [*mut c_void; 3] =
            [(&mut d as *mut u64).cast(), (&mut s as *mut u64).cast(), (&mut n as *mut usize).cast()];
        // SAFETY: `oxccl_copy(void*, const void*, size_t)`; the caller's contract.
        unsafe { self.launch(self.copy, &mut args, bytes, stream) }
    }

    /// Launches `f` with a grid sized for `n` items (grid-stride kernels: any size works).
    ///
    /// # Safety
    /// `args` must match `f`'s parameters; the memory they name is the caller's to vouch for.
    unsafe fn launch(
        &self,
        f: sys::CUfunction,
        args: &mut [*mut c_void],
        n: usize,
        stream: sys::CUstream,
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let want = n.div_ceil(BLOCK_THREADS as usize * 8).max(1);
        let grid = (want as u64).min(self.blocks as u64) as u32;
        // SAFETY: `args` points to the parameters in the kernel's order, alive for the
        // call (the driver copies them); grid and block are within the device's limits
        // (the block size is the kernels' launch bound).
        check(
            unsafe {
                sys::cuLaunchKernel(
                    f,
                    grid,
                    1,
                    1,
                    BLOCK_THREADS,
                    1,
                    1,
                    0,
                    stream,
                    args.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )
    }
}

/// Makes sure the driver is there and the current context can run kernels of `dtype`
/// (compiling them now rather than at the first launch); for benchmarks and checks.
pub fn warm_up(dtype: DataType) -> Result<(), CudaError> {
    kernels(dtype).map(|_| ())
}
