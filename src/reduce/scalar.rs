//! Portable kernels: plain loops over typed elements. They are the reference the SIMD
//! levels are tested against, and the tail handlers of those levels.

use super::{BinaryFn, MultiFn, TypeKernels};
use crate::types::{F8E4M3, F8E5M2};
use half::{bf16, f16};

/// Arithmetic of one element type, as the reduction semantics define it.
pub(crate) trait Arith: Copy + 'static {
    fn sum(a: Self, b: Self) -> Self;
    fn prod(a: Self, b: Self) -> Self;
    fn max(a: Self, b: Self) -> Self;
    fn min(a: Self, b: Self) -> Self;
    /// acc + s * x, rounded once (narrow floats: once to f32, then to the type).
    fn mul_add(acc: Self, x: Self, s: Self) -> Self;
    /// s * x.
    fn scale(x: Self, s: Self) -> Self;
    /// x / d (integers truncate toward zero).
    fn div(x: Self, d: u64) -> Self;
    /// Reinterprets the low bytes of a scalar's bits.
    fn from_bits64(b: u64) -> Self;
}

macro_rules! int_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            #[inline(always)] fn sum(a: Self, b: Self) -> Self { a.wrapping_add(b) }
            #[inline(always)] fn prod(a: Self, b: Self) -> Self { a.wrapping_mul(b) }
            #[inline(always)] fn max(a: Self, b: Self) -> Self { Ord::max(a, b) }
            #[inline(always)] fn min(a: Self, b: Self) -> Self { Ord::min(a, b) }
            #[inline(always)] fn mul_add(acc: Self, x: Self, s: Self) -> Self { acc.wrapping_add(x.wrapping_mul(s)) }
            #[inline(always)] fn scale(x: Self, s: Self) -> Self { x.wrapping_mul(s) }
            #[inline(always)] fn div(x: Self, d: u64) -> Self {
                // Division of the widened value; the quotient's magnitude is at most |x|,
                // so it converts back exactly.
                ((x as i128) / (d as i128)) as $t
            }
            #[inline(always)] fn from_bits64(b: u64) -> Self { b as $t }
        }
    )*};
}
int_arith!(i8, u8, i32, u32, i64, u64);

macro_rules! float_arith {
    ($($t:ty => $bits:ty),*) => {$(
        impl Arith for $t {
            #[inline(always)] fn sum(a: Self, b: Self) -> Self { a + b }
            #[inline(always)] fn prod(a: Self, b: Self) -> Self { a * b }
            // `f32::max` leaves the sign of max(+0, -0) open (LLVM returns the first
            // operand on x86 but orders zeros when it constant-folds); equal operands are
            // resolved here so that -0 < +0 (IEEE 754-2019 maximumNumber): the op is then
            // commutative and the result does not depend on the order ranks are combined.
            // Equal operands have equal bits except for zeros, so AND/OR picks +0/-0.
            #[inline(always)] fn max(a: Self, b: Self) -> Self {
                if a == b { <$t>::from_bits(a.to_bits() & b.to_bits()) } else { a.max(b) }
            }
            #[inline(always)] fn min(a: Self, b: Self) -> Self {
                if a == b { <$t>::from_bits(a.to_bits() | b.to_bits()) } else { a.min(b) }
            }
            #[inline(always)] fn mul_add(acc: Self, x: Self, s: Self) -> Self { x.mul_add(s, acc) }
            #[inline(always)] fn scale(x: Self, s: Self) -> Self { x * s }
            #[inline(always)] fn div(x: Self, d: u64) -> Self { x / d as $t }
            #[inline(always)] fn from_bits64(b: u64) -> Self { <$t>::from_bits(b as $bits) }
        }
    )*};
}
float_arith!(f32 => u32, f64 => u64);

/// Narrow floats compute in f32 and round once per step (mul_add: its f32 FMA's result).
macro_rules! narrow_arith {
    ($($t:ty: $to:expr, $from:expr, $bits:ident),*) => {$(
        impl Arith for $t {
            #[inline(always)] fn sum(a: Self, b: Self) -> Self { $from($to(a) + $to(b)) }
            #[inline(always)] fn prod(a: Self, b: Self) -> Self { $from($to(a) * $to(b)) }
            #[inline(always)] fn max(a: Self, b: Self) -> Self { $from(<f32 as Arith>::max($to(a), $to(b))) }
            #[inline(always)] fn min(a: Self, b: Self) -> Self { $from(<f32 as Arith>::min($to(a), $to(b))) }
            #[inline(always)] fn mul_add(acc: Self, x: Self, s: Self) -> Self {
                $from($to(x).mul_add($to(s), $to(acc)))
            }
            #[inline(always)] fn scale(x: Self, s: Self) -> Self { $from($to(x) * $to(s)) }
            #[inline(always)] fn div(x: Self, d: u64) -> Self { $from($to(x) / d as f32) }
            #[inline(always)] fn from_bits64(b: u64) -> Self { <$t>::from_bits(b as $bits) }
        }
    )*};
}
narrow_arith!(
    f16: f16::to_f32, f16::from_f32, u16,
    bf16: bf16::to_f32, bf16::from_f32, u16,
    F8E4M3: F8E4M3::to_f32, F8E4M3::from_f32, u8,
    F8E5M2: F8E5M2::to_f32, F8E5M2::from_f32, u8
);

/// # Safety
/// `a`, `b` readable, `dst` writable for `n` elements of `T`, equal or disjoint.
pub(crate) unsafe fn binary<T: Arith, const OP: usize>(dst: *mut u8, a: *const u8, b: *const u8, n: usize) {
    let (d, a, b) = (dst as *mut T, a as *const T, b as *const T);
    for i in 0..n {
        // SAFETY: i < n, within the caller's buffers; unaligned access is allowed.
        unsafe {
            let (x, y) = (a.add(i).read_unaligned(), b.add(i).read_unaligned());
            let r = match OP {
                0 => T::sum(x, y),
                1 => T::prod(x, y),
                2 => T::max(x, y),
                _ => T::min(x, y),
            };
            d.add(i).write_unaligned(r);
        }
    }
}

/// # Safety
/// As [`binary`].
pub(crate) unsafe fn mul_add<T: Arith>(dst: *mut u8, acc: *const u8, x: *const u8, n: usize, s: u64) {
    let s = T::from_bits64(s);
    let (d, acc, x) = (dst as *mut T, acc as *const T, x as *const T);
    for i in 0..n {
        // SAFETY: i < n, within the caller's buffers.
        unsafe {
            let r = T::mul_add(acc.add(i).read_unaligned(), x.add(i).read_unaligned(), s);
            d.add(i).write_unaligned(r);
        }
    }
}

/// # Safety
/// `x` readable and `dst` writable for `n` elements, equal or disjoint.
pub(crate) unsafe fn scale<T: Arith>(dst: *mut u8, x: *const u8, n: usize, s: u64) {
    let s = T::from_bits64(s);
    let (d, x) = (dst as *mut T, x as *const T);
    for i in 0..n {
        // SAFETY: i < n, within the caller's buffers.
        unsafe { d.add(i).write_unaligned(T::scale(x.add(i).read_unaligned(), s)) }
    }
}

/// # Safety
/// As [`scale`].
pub(crate) unsafe fn div<T: Arith>(dst: *mut u8, x: *const u8, n: usize, dv: u64) {
    let (d, x) = (dst as *mut T, x as *const T);
    for i in 0..n {
        // SAFETY: i < n, within the caller's buffers.
        unsafe { d.add(i).write_unaligned(T::div(x.add(i).read_unaligned(), dv)) }
    }
}

/// # Safety
/// As [`super::MultiFn`].
pub(crate) unsafe fn binary_multi<T: Arith, const OP: usize>(
    dsts: &[*mut u8],
    a: *const u8,
    b: *const u8,
    n: usize,
    _nt: bool,
) {
    let (a, b) = (a as *const T, b as *const T);
    for i in 0..n {
        // SAFETY: i < n, within the caller's buffers; each element is read before any
        // destination (which may equal an input) is written.
        unsafe {
            let (x, y) = (a.add(i).read_unaligned(), b.add(i).read_unaligned());
            let r = match OP {
                0 => T::sum(x, y),
                1 => T::prod(x, y),
                2 => T::max(x, y),
                _ => T::min(x, y),
            };
            for p in dsts {
                (*p as *mut T).add(i).write_unaligned(r);
            }
        }
    }
}

const fn table<T: Arith>() -> TypeKernels {
    let binary: [BinaryFn; 4] = [binary::<T, 0>, binary::<T, 1>, binary::<T, 2>, binary::<T, 3>];
    let binary_multi: [MultiFn; 4] =
        [binary_multi::<T, 0>, binary_multi::<T, 1>, binary_multi::<T, 2>, binary_multi::<T, 3>];
    TypeKernels { binary, binary_nt: binary, binary_multi, mul_add: mul_add::<T>, scale: scale::<T>, div: div::<T> }
}

/// The portable kernels of every data type, indexed by `DataType as usize`.
pub(crate) const KERNELS: [TypeKernels; 12] = [
    table::<i8>(),
    table::<u8>(),
    table::<i32>(),
    table::<u32>(),
    table::<i64>(),
    table::<u64>(),
    table::<f16>(),
    table::<f32>(),
    table::<f64>(),
    table::<bf16>(),
    table::<F8E4M3>(),
    table::<F8E5M2>(),
];
