//! Reduction and copy kernels on raw CPU buffers.
//!
//! This module owns element-wise arithmetic: `dst = a op b` for every [`DataType`] and
//! operation, the pre-multiplication of `PreMulSum`, the division of `Avg`, and the bulk
//! copies of the data path. It knows nothing about ranks, links or schedules.
//!
//! The executor resolves a [`Reducer`] once per call; the reducer holds function pointers
//! for the best instruction set this CPU offers (chosen once per process, or forced with
//! `OXCCL_SIMD=scalar|avx2|avx512`).
//!
//! Aliasing rule for every kernel: `dst` may be the same address as an input (in-place),
//! but must not partially overlap one.

mod scalar;

use crate::error::{Error, Result};
use crate::types::{DataType, ReduceOp, Scalar};

/// The binary operations a kernel applies between two operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// a + b (integers wrap).
    Sum,
    /// a * b (integers wrap).
    Prod,
    /// max(a, b), NaN ignored.
    Max,
    /// min(a, b), NaN ignored.
    Min,
}

impl BinOp {
    /// Every binary operation.
    pub const ALL: [BinOp; 4] = [BinOp::Sum, BinOp::Prod, BinOp::Max, BinOp::Min];
}

/// An instruction-set level the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable Rust, no explicit SIMD.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/DQ (+ BF16 where present).
    Avx512,
}

impl Level {
    /// The levels this CPU can run, lowest first.
    pub fn available() -> Vec<Level> {
        vec![Level::Scalar]
    }

    /// The level used by default: the best available, unless `OXCCL_SIMD` forces one.
    pub fn selected() -> Level {
        Level::Scalar
    }
}

/// `dst[i] = a[i] op b[i]` for `n` elements.
pub type BinaryFn = unsafe fn(dst: *mut u8, a: *const u8, b: *const u8, n: usize);
/// `dst[i] = acc[i] + s * x[i]` for `n` elements (`s` is the scalar's raw bits).
pub type MulAddFn = unsafe fn(dst: *mut u8, acc: *const u8, x: *const u8, n: usize, s: u64);
/// `dst[i] = s * x[i]` for `n` elements.
pub type ScaleFn = unsafe fn(dst: *mut u8, x: *const u8, n: usize, s: u64);
/// `dst[i] = x[i] / d` for `n` elements (integers truncate toward zero).
pub type DivFn = unsafe fn(dst: *mut u8, x: *const u8, n: usize, d: u64);

/// The kernels for one data type at one level.
#[derive(Clone, Copy)]
pub struct TypeKernels {
    /// Indexed by `BinOp as usize`: temporal stores.
    pub binary: [BinaryFn; 4],
    /// Indexed by `BinOp as usize`: non-temporal stores where the level has them (the
    /// caller issues no fence; [`store_fence`] publishes them).
    pub binary_nt: [BinaryFn; 4],
    /// PreMulSum accumulate step.
    pub mul_add: MulAddFn,
    /// PreMulSum first step (scale a raw input).
    pub scale: ScaleFn,
    /// Avg's final division.
    pub div: DivFn,
}

/// The kernels for `dtype` at `level` (falls back to a lower level where a kernel is not
/// specialised).
pub fn kernels(dtype: DataType, level: Level) -> TypeKernels {
    let _ = level;
    scalar::kernels(dtype)
}

/// Copies `bytes` bytes; `nt` asks for non-temporal stores (for outputs far larger than
/// the cache). Buffers must not overlap.
///
/// # Safety
/// `src` must be readable and `dst` writable for `bytes` bytes, and they must not overlap.
pub unsafe fn copy(dst: *mut u8, src: *const u8, bytes: usize, nt: bool) {
    let _ = nt;
    // SAFETY: forwarded from the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, bytes) }
}

/// Orders earlier non-temporal stores before later stores (an `sfence` on x86). Call it
/// before publishing data written with `nt` kernels.
#[inline]
pub fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no memory-safety preconditions.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// Everything the executor needs to reduce one call: the binary kernel plus the op's
/// pre-operation (`PreMulSum`'s multiply) and post-operation (`Avg`'s division).
#[derive(Clone, Copy)]
pub struct Reducer {
    dtype: DataType,
    op: BinOp,
    k: TypeKernels,
    premul: Option<u64>,
    postdiv: Option<u64>,
}

impl Reducer {
    /// Resolves the kernels for `op` on `dtype` among `nranks` ranks, at the selected
    /// level.
    pub fn new(dtype: DataType, op: ReduceOp, nranks: usize) -> Result<Reducer> {
        Self::with_level(dtype, op, nranks, Level::selected())
    }

    /// As [`Reducer::new`], at a given level (for tests and benches).
    pub fn with_level(dtype: DataType, op: ReduceOp, nranks: usize, level: Level) -> Result<Reducer> {
        let (bin, premul, postdiv) = match op {
            ReduceOp::Sum => (BinOp::Sum, None, None),
            ReduceOp::Prod => (BinOp::Prod, None, None),
            ReduceOp::Max => (BinOp::Max, None, None),
            ReduceOp::Min => (BinOp::Min, None, None),
            ReduceOp::Avg => (BinOp::Sum, None, Some(nranks as u64)),
            ReduceOp::PreMulSum(s) => {
                if s.dtype() != dtype {
                    return Err(Error::InvalidArgument(format!(
                        "PreMulSum scalar has type {}, but the call reduces {} (create the op with a {} scalar)",
                        s.dtype(),
                        dtype,
                        dtype
                    )));
                }
                (BinOp::Sum, Some(s.bits()), None)
            }
        };
        Ok(Reducer { dtype, op: bin, k: kernels(dtype, level), premul, postdiv })
    }

    /// The data type reduced.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// Whether local inputs are transformed before they enter the reduction.
    pub fn has_pre(&self) -> bool {
        self.premul.is_some()
    }

    /// Whether the final result is transformed (Avg's division).
    pub fn has_post(&self) -> bool {
        self.postdiv.is_some()
    }

    /// `dst = a op b`, where both operands are partial results.
    ///
    /// # Safety
    /// `a`, `b` readable and `dst` writable for `n` elements; `dst` equal to or disjoint
    /// from each input.
    #[inline]
    pub unsafe fn combine(&self, dst: *mut u8, a: *const u8, b: *const u8, n: usize, nt: bool) {
        let f = if nt { self.k.binary_nt[self.op as usize] } else { self.k.binary[self.op as usize] };
        // SAFETY: forwarded from the caller's contract.
        unsafe { f(dst, a, b, n) }
    }

    /// `dst = acc op pre(x)`, where `x` is a rank's raw input.
    ///
    /// # Safety
    /// As [`Reducer::combine`].
    #[inline]
    pub unsafe fn combine_input(&self, dst: *mut u8, acc: *const u8, x: *const u8, n: usize, nt: bool) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            match self.premul {
                None => self.combine(dst, acc, x, n, nt),
                Some(s) => (self.k.mul_add)(dst, acc, x, n, s),
            }
        }
    }

    /// `dst = pre(x)`: a raw input entering the reduction.
    ///
    /// # Safety
    /// `x` readable and `dst` writable for `n` elements, equal or disjoint.
    #[inline]
    pub unsafe fn load_input(&self, dst: *mut u8, x: *const u8, n: usize, nt: bool) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            match self.premul {
                None => {
                    if dst as *const u8 != x {
                        copy(dst, x, n * self.dtype.size(), nt)
                    }
                }
                Some(s) => (self.k.scale)(dst, x, n, s),
            }
        }
    }

    /// `dst = post(x)`: the op's final transformation (Avg's division), or a copy.
    ///
    /// # Safety
    /// As [`Reducer::load_input`].
    #[inline]
    pub unsafe fn finalize(&self, dst: *mut u8, x: *const u8, n: usize) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            match self.postdiv {
                None => {
                    if dst as *const u8 != x {
                        copy(dst, x, n * self.dtype.size(), false)
                    }
                }
                Some(d) => (self.k.div)(dst, x, n, d),
            }
        }
    }
}

/// Unused re-export guard so `Scalar` stays linked to the reducer's docs.
#[allow(dead_code)]
fn _scalar_doc(_: Scalar) {}
