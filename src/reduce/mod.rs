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
//! but must not partially overlap one. Pointers need no alignment.
//!
//! Every level computes bit-for-bit what the portable kernels (`scalar.rs`) compute, NaN
//! payloads aside: integers wrap; Max/Min ignore NaN and order -0 below +0; f16, bf16
//! and fp8 are widened to f32, computed, and rounded to nearest even once per op (fp8
//! saturating to its largest finite value); PreMulSum's `acc + s * x` is fused: one FMA,
//! f32's for those narrow types, whose result is then rounded to the type (so for f16,
//! bf16 and fp8 e5m2 it is not always the correctly rounded `acc + s * x`, and no path
//! pretends otherwise: the CUDA kernels do the same).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::types::{DataType, ReduceOp, Scalar};

/// The binary operations a kernel applies between two operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// a + b (integers wrap).
    Sum,
    /// a * b (integers wrap).
    Prod,
    /// max(a, b), NaN ignored (NaN only if both are), -0 < +0.
    Max,
    /// min(a, b), NaN ignored (NaN only if both are), -0 < +0.
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
    /// AVX-512 F/BW/VL/DQ (with AVX2, FMA and F16C). AVX512_BF16 is not used: its
    /// conversions flush subnormals, which the semantics above do not allow.
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512];

    /// The levels this CPU can run, lowest first.
    pub fn available() -> Vec<Level> {
        let best = Level::best();
        Level::ALL.into_iter().filter(|l| *l <= best).collect()
    }

    /// The best level this CPU can run (detected once per process).
    ///
    /// AVX-512 needs F, BW, VL and DQ, and the AVX2 level's features too; AVX2 needs FMA
    /// and F16C as well.
    pub fn best() -> Level {
        static BEST: OnceLock<Level> = OnceLock::new();
        *BEST.get_or_init(detect)
    }

    /// Whether this CPU can run the level.
    pub fn is_available(self) -> bool {
        self <= Level::best()
    }

    /// The level used by default: the best available, unless `OXCCL_SIMD` forces one
    /// (`scalar`, `avx2` or `avx512`). A forced level this CPU lacks falls back to the
    /// best one below it; an unknown value is ignored, with a warning on stderr. Decided
    /// once per process.
    pub fn selected() -> Level {
        static SELECTED: OnceLock<Level> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            resolve(crate::settings::process().simd.as_deref(), Level::best()).unwrap_or_else(|e| {
                crate::log::warn(&e.to_string());
                Level::best()
            })
        })
    }

    /// The name `OXCCL_SIMD` accepts: `scalar`, `avx2` or `avx512`.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;

    /// Accepts `scalar`, `avx2` and `avx512` (any case; `avx512f` and `avx-512` too).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "portable" => Ok(Level::Scalar),
            "avx2" => Ok(Level::Avx2),
            "avx512" | "avx512f" | "avx-512" => Ok(Level::Avx512),
            _ => Err(format!("unknown SIMD level '{s}' (expected one of scalar, avx2, avx512)")),
        }
    }
}

/// The level `OXCCL_SIMD=env` selects on a CPU whose best level is `best`: the forced
/// level capped at `best`, or `best` when unset or empty.
fn resolve(env: Option<&str>, best: Level) -> std::result::Result<Level, String> {
    match env.map(str::trim) {
        None | Some("") => Ok(best),
        Some(v) => v.parse::<Level>().map(|l| l.min(best)).map_err(|e| format!("OXCCL_SIMD: {e}; using {best}")),
    }
}

/// The best level this CPU supports.
fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq");
        if avx2 && avx512 {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

/// `dst[i] = a[i] op b[i]` for `n` elements.
pub type BinaryFn = unsafe fn(dst: *mut u8, a: *const u8, b: *const u8, n: usize);
/// `dsts[k][i] = a[i] op b[i]` for every destination, in one pass over the inputs
/// (`nt`: non-temporal stores where every destination has the same alignment).
pub type MultiFn = unsafe fn(dsts: &[*mut u8], a: *const u8, b: *const u8, n: usize, nt: bool);
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
    /// Indexed by `BinOp as usize`: non-temporal stores where the level has them, for
    /// the 64-byte aligned part of `dst` (an output not aligned to its element size gets
    /// ordinary stores). The kernels issue no fence: call [`store_fence`] before
    /// publishing the output.
    pub binary_nt: [BinaryFn; 4],
    /// Indexed by `BinOp as usize`: one result stored to several destinations.
    pub binary_multi: [MultiFn; 4],
    /// PreMulSum accumulate step.
    pub mul_add: MulAddFn,
    /// PreMulSum first step (scale a raw input).
    pub scale: ScaleFn,
    /// Avg's final division.
    pub div: DivFn,
}

/// The kernels for `dtype` at `level`, or at the best level below it that this CPU has
/// (so the pointers are always safe to call on this CPU). A table lookup: no allocation.
pub fn kernels(dtype: DataType, level: Level) -> TypeKernels {
    let i = dtype as usize;
    match level.min(Level::best()) {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => avx512::KERNELS[i],
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => avx2::KERNELS[i],
        _ => scalar::KERNELS[i],
    }
}

/// Copies smaller than this use `ptr::copy_nonoverlapping` even when asked for
/// non-temporal stores: aligning and streaming cost more than they save.
pub const NT_COPY_MIN: usize = 4096;

/// Copies `bytes` bytes; `nt` asks for non-temporal stores (for outputs far larger than
/// the cache), which copies of at least [`NT_COPY_MIN`] bytes get at the selected level
/// (AVX-512 or AVX2), for the 64-byte aligned part of `dst`. Call [`store_fence`] before
/// publishing the data. Buffers must not overlap.
///
/// # Safety
/// `src` must be readable and `dst` writable for `bytes` bytes, and they must not overlap.
pub unsafe fn copy(dst: *mut u8, src: *const u8, bytes: usize, nt: bool) {
    // SAFETY: forwarded from the caller's contract; each level's copy runs only
    // when `Level::selected()` (never above the detected level) is that level.
    unsafe {
        if nt && bytes >= NT_COPY_MIN {
            match Level::selected() {
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => return avx512::copy_nt(dst, src, bytes),
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => return avx2::copy_nt(dst, src, bytes),
                _ => {}
            }
        }
        std::ptr::copy_nonoverlapping(src, dst, bytes)
    }
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
                    return Err(Error::invalid_argument(format!(
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

    /// `dsts[k] = a op b` for every destination in one pass, for ops without pre- or
    /// post-operation (check [`Reducer::has_pre`] and [`Reducer::has_post`]).
    ///
    /// # Safety
    /// `a`, `b` readable and every destination writable for `n` elements; each
    /// destination equal to or disjoint from each input, destinations disjoint.
    #[inline]
    pub unsafe fn combine_multi(&self, dsts: &[*mut u8], a: *const u8, b: *const u8, n: usize, nt: bool) {
        debug_assert!(!self.has_pre() && !self.has_post());
        // SAFETY: forwarded from the caller's contract.
        unsafe { (self.k.binary_multi[self.op as usize])(dsts, a, b, n, nt) }
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
                    if !std::ptr::eq(dst, x) {
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
                    if !std::ptr::eq(dst, x) {
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
