//! CUDA support (feature `cuda`): the reduction and copy kernels' CUDA C source, and the
//! probing of the CUDA driver (libcuda) and of NVRTC (libnvrtc).
//!
//! Both libraries are loaded at run time, so the crate builds and runs on machines with
//! no CUDA at all; a missing library is an ordinary error ([`CudaError::NoDriver`],
//! [`CudaError::NoNvrtc`]), never a panic. Call [`probe`] (or [`probe_driver`] /
//! [`Nvrtc::load`]) before anything that would load them by itself.
//!
//! The kernels ([`KERNELS_SOURCE`], `src/cuda/kernels.cu`) are compiled by NVRTC for the
//! device at hand. Their `extern "C"` names come from [`kernel_name`]; every name is in
//! [`kernel_names`]. They need the headers `cuda_fp16.h`, `cuda_bf16.h` and `cuda_fp8.h`
//! (a CUDA toolkit, or the PyPI wheel `nvidia-cuda-runtime-cu12`): see
//! [`find_include_dir`].
//!
//! ```
//! let p = oxccl::cuda::probe();
//! match &p.driver {
//!     Ok(n) => println!("CUDA driver with {n} device(s)"),
//!     Err(e) => println!("no GPU work: {e}"),
//! }
//! ```

pub mod driver;
pub mod launch;
mod nvrtc;

/// cudarc, whose device buffers ([`cudarc::driver::CudaSlice`] and its views) and streams
/// the device collectives take: use this re-export so that the versions match.
pub use cudarc;

pub use nvrtc::{Compiled, Nvrtc};

use crate::types::DataType;
use std::ffi::c_int;
use std::fmt;
use std::path::{Path, PathBuf};

/// The CUDA C source of every reduction and copy kernel (`src/cuda/kernels.cu`).
pub const KERNELS_SOURCE: &str = include_str!("kernels.cu");

/// The name NVRTC is given for [`KERNELS_SOURCE`] (it appears in compile logs).
pub const KERNELS_FILE_NAME: &str = "oxccl_kernels.cu";

/// Threads per block every kernel is compiled for (its `__launch_bounds__`): launch
/// blocks of at most this many threads.
pub const BLOCK_THREADS: u32 = 512;

/// The byte copy kernel: `oxccl_copy(void* dst, const void* src, size_t bytes)`.
pub const COPY_KERNEL: &str = "oxccl_copy";

/// One element-wise kernel of a data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelOp {
    /// `dst = a + b` (Sum, and Avg and PreMulSum between partial results).
    Sum,
    /// `dst = a * b`.
    Prod,
    /// `dst = max(a, b)`.
    Max,
    /// `dst = min(a, b)`.
    Min,
    /// `dst = acc + s * x`, fused: PreMulSum's step on a raw input (`s`: the scalar's bits).
    MulAdd,
    /// `dst = s * x`: PreMulSum's first raw input.
    Scale,
    /// `dst = x / d`: Avg's final division by the rank count (integers truncate).
    Div,
}

impl KernelOp {
    /// Every kernel of a data type.
    pub const ALL: [KernelOp; 7] =
        [KernelOp::Sum, KernelOp::Prod, KernelOp::Max, KernelOp::Min, KernelOp::MulAdd, KernelOp::Scale, KernelOp::Div];

    /// The op's part of the kernel name.
    pub fn name(self) -> &'static str {
        match self {
            KernelOp::Sum => "sum",
            KernelOp::Prod => "prod",
            KernelOp::Max => "max",
            KernelOp::Min => "min",
            KernelOp::MulAdd => "mul_add",
            KernelOp::Scale => "scale",
            KernelOp::Div => "div",
        }
    }
}

/// The data type's part of the kernel names (`NAME` in `kernels.cu`).
pub fn type_name(dtype: DataType) -> &'static str {
    match dtype {
        DataType::Int8 => "i8",
        DataType::Uint8 => "u8",
        DataType::Int32 => "i32",
        DataType::Uint32 => "u32",
        DataType::Int64 => "i64",
        DataType::Uint64 => "u64",
        DataType::Float16 => "f16",
        DataType::Float32 => "f32",
        DataType::Float64 => "f64",
        DataType::Bfloat16 => "bf16",
        DataType::Float8E4M3 => "f8e4m3",
        DataType::Float8E5M2 => "f8e5m2",
    }
}

/// The `extern "C"` name of a kernel, e.g. `oxccl_sum_bf16`.
pub fn kernel_name(op: KernelOp, dtype: DataType) -> String {
    format!("oxccl_{}_{}", op.name(), type_name(dtype))
}

/// Every kernel in [`KERNELS_SOURCE`]: each op of each data type, then [`COPY_KERNEL`].
pub fn kernel_names() -> Vec<String> {
    let mut v: Vec<String> =
        DataType::ALL.iter().flat_map(|&t| KernelOp::ALL.iter().map(move |&op| kernel_name(op, t))).collect();
    v.push(COPY_KERNEL.to_string());
    v
}

/// NVRTC options for the kernels: the virtual architecture `compute_<sm>` (e.g. 80 or
/// 90), C++17, the include directory of CUDA's headers when given, and, with `dtype`,
/// only that type's kernels (and the copy), for a compilation per data type.
pub fn compile_options(sm: u32, include_dir: Option<&Path>, dtype: Option<DataType>) -> Vec<String> {
    let mut o = vec![format!("--gpu-architecture=compute_{sm}"), "-std=c++17".to_string()];
    if let Some(d) = include_dir {
        o.push(format!("--include-path={}", d.display()));
    }
    if let Some(t) = dtype {
        o.push("-DOXCCL_ONLY_TYPE".to_string());
        o.push(format!("-DOXCCL_TYPE_{}", type_name(t)));
    }
    o
}

/// A directory holding `cuda_fp16.h`, `cuda_bf16.h` and `cuda_fp8.h`, searched in the
/// entries of `OXCCL_CUDA_INCLUDE` (a path list of include directories or of
/// `pip install --target` directories holding `nvidia-cuda-runtime-cu12`), then in
/// `$CUDA_PATH/include`, `$CUDA_HOME/include` and `/usr/local/cuda/include`.
pub fn find_include_dir() -> Option<PathBuf> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Some(v) = &crate::settings::process().cuda_include {
        bases.extend(std::env::split_paths(v));
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(v) = crate::settings::env::var_os(var) {
            bases.push(PathBuf::from(v).join("include"));
        }
    }
    bases.push("/usr/local/cuda/include".into());
    bases
        .iter()
        .flat_map(|b| [b.clone(), b.join("nvidia/cuda_runtime/include")])
        .find(|d| ["cuda_fp16.h", "cuda_bf16.h", "cuda_fp8.h"].iter().all(|h| d.join(h).is_file()))
}

/// Why CUDA work cannot be done.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CudaError {
    /// libcuda could not be loaded, or lacks an entry point: no NVIDIA driver.
    NoDriver(String),
    /// The driver loaded but reports no CUDA device.
    NoDevice,
    /// A driver call failed with this `CUresult`.
    Driver {
        /// The call, e.g. `cuInit`.
        call: &'static str,
        /// The `CUresult` it returned.
        code: i32,
    },
    /// libnvrtc could not be loaded, or lacks an entry point.
    NoNvrtc(String),
    /// An NVRTC call failed; for a compilation, `log` is NVRTC's log.
    Nvrtc {
        /// The call, e.g. `nvrtcCompileProgram`.
        call: &'static str,
        /// NVRTC's error string for the `nvrtcResult`.
        message: String,
        /// The program log (empty where there is none).
        log: String,
    },
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NoDriver(why) => write!(f, "no CUDA driver: {why}"),
            CudaError::NoDevice => write!(f, "no CUDA device: the driver reports none"),
            CudaError::Driver { call, code } => match driver::error_name(*code) {
                Some(name) => write!(f, "CUDA driver call {call} failed: {name} ({code})"),
                None => write!(f, "CUDA driver call {call} failed with CUresult {code}"),
            },
            CudaError::NoNvrtc(why) => {
                write!(
                    f,
                    "no NVRTC: {why} (install the CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel; OXCCL_NVRTC_LIB names the library)"
                )
            }
            CudaError::Nvrtc { call, message, log } => {
                write!(f, "{call} failed: {message}")?;
                if !log.is_empty() {
                    write!(f, "\n{log}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CudaError {}

impl From<CudaError> for crate::error::Error {
    fn from(e: CudaError) -> crate::error::Error {
        let kind = match e {
            CudaError::NoDriver(_) | CudaError::NoDevice | CudaError::NoNvrtc(_) => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        crate::error::Error::system("CUDA", std::io::Error::new(kind, e.to_string()))
    }
}

/// What [`probe`] found.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The number of CUDA devices, or why there are none to use.
    pub driver: Result<usize, CudaError>,
    /// NVRTC's version `(major, minor)`, or why it cannot be used.
    pub nvrtc: Result<(i32, i32), CudaError>,
}

/// Checks, without panicking, whether the CUDA driver (with at least one device) and
/// NVRTC can be loaded and used.
pub fn probe() -> Probe {
    Probe { driver: probe_driver(), nvrtc: Nvrtc::load().and_then(|n| n.version()) }
}

/// The names libcuda is loaded by.
const DRIVER_NAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// Loads libcuda, initialises it and counts the devices: [`CudaError::NoDriver`] when the
/// library is missing, [`CudaError::NoDevice`] when it sees no device.
pub fn probe_driver() -> Result<usize, CudaError> {
    let mut why = Vec::new();
    let lib = DRIVER_NAMES.iter().find_map(|name| {
        // SAFETY: loading runs libcuda's initialisers, which NVIDIA's driver library
        // provides for exactly this use (cudarc and the CUDA runtime dlopen it the same
        // way); no Rust invariants depend on them.
        match unsafe { libloading::Library::new(name) } {
            Ok(l) => Some(l),
            Err(e) => {
                why.push(format!("{name}: {e}"));
                None
            }
        }
    });
    let Some(lib) = lib else {
        return Err(CudaError::NoDriver(why.join("; ")));
    };
    type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
    type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
    // SAFETY: the types are the C prototypes of cuInit and cuDeviceGetCount (CUresult is
    // a C enum, an int); the symbols are used only while `lib` is alive.
    let (init, count) = unsafe {
        let init = lib.get::<CuInit>(b"cuInit\0").map_err(|e| CudaError::NoDriver(format!("cuInit: {e}")))?;
        let count = lib
            .get::<CuDeviceGetCount>(b"cuDeviceGetCount\0")
            .map_err(|e| CudaError::NoDriver(format!("cuDeviceGetCount: {e}")))?;
        (*init, *count)
    };
    const CUDA_ERROR_NO_DEVICE: c_int = 100;
    // SAFETY: cuInit takes flags 0 and may be called any number of times.
    match unsafe { init(0) } {
        0 => {}
        CUDA_ERROR_NO_DEVICE => return Err(CudaError::NoDevice),
        code => return Err(CudaError::Driver { call: "cuInit", code }),
    }
    let mut n: c_int = 0;
    // SAFETY: cuInit succeeded; `n` is a valid, writable int.
    match unsafe { count(&mut n) } {
        0 if n > 0 => Ok(n as usize),
        0 => Err(CudaError::NoDevice),
        code => Err(CudaError::Driver { call: "cuDeviceGetCount", code }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_cover_every_type() {
        let names = kernel_names();
        assert_eq!(names.len(), DataType::ALL.len() * KernelOp::ALL.len() + 1);
        let set: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len());
        assert_eq!(kernel_name(KernelOp::MulAdd, DataType::Bfloat16), "oxccl_mul_add_bf16");
        for op in KernelOp::ALL {
            assert!(KERNELS_SOURCE.contains(&format!("OXCCL_KERNEL oxccl_{}_##NAME(", op.name())), "{op:?}");
        }
        assert!(KERNELS_SOURCE.contains(&format!("OXCCL_KERNEL {COPY_KERNEL}(")));
        for t in DataType::ALL {
            assert!(KERNELS_SOURCE.contains(&format!("OXCCL_KERNELS({}, ", type_name(t))), "{t}");
        }
        assert!(KERNELS_SOURCE.contains("__launch_bounds__(OXCCL_BLOCK)"));
        assert!(KERNELS_SOURCE.contains(&format!("#define OXCCL_BLOCK {BLOCK_THREADS}")));
    }

    #[test]
    fn probing_never_panics() {
        let p = probe();
        // Without a GPU (CI), both are ordinary errors with a message.
        if let Err(e) = &p.driver {
            assert!(!e.to_string().is_empty());
            let _: crate::error::Error = e.clone().into();
        }
        if let Err(e) = &p.nvrtc {
            assert!(!e.to_string().is_empty());
        }
        println!("driver: {:?}\nnvrtc: {:?}", p.driver, p.nvrtc);
    }
}
