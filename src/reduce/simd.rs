//! The skeleton the x86 SIMD levels share: a kernel walks its buffers in blocks of 64
//! bytes (one cache line, one AVX-512 register, two AVX2 registers). A level says how to
//! move a block between memory and registers ([`Mem`]) and, per data type, how to widen
//! a block to the lanes it computes in, narrow it back, and combine lanes ([`Block`]).
//! The loops here are written once and inlined into each level's `#[target_feature]`
//! entry points (see `level_kernels!`), so they compile to that level's instructions.
//!
//! Semantics are those of `scalar.rs`, lane by lane; the tests hold every level to it.

use crate::types::{F8E4M3, F8E5M2};

/// 64 bytes held in registers, and the loads and stores a level has for them.
///
/// Every method is `unsafe`: the pointers must be valid for the bytes moved, and the CPU
/// must support the level (the methods carry its `#[target_feature]`).
pub(super) trait Mem: Copy {
    /// Loads 64 bytes from `p` (any alignment).
    unsafe fn load(p: *const u8) -> Self;
    /// Loads the first `bytes` (< 64) bytes from `p`, zero in the rest; reads no byte
    /// past `p + bytes`.
    unsafe fn load_part(p: *const u8, bytes: usize) -> Self;
    /// Stores 64 bytes at `p` (any alignment).
    unsafe fn store(self, p: *mut u8);
    /// Stores 64 bytes at `p` (64-byte aligned) without keeping them in the cache.
    unsafe fn store_nt(self, p: *mut u8);
    /// Stores the first `bytes` (< 64) bytes at `p`; writes no byte past `p + bytes`.
    unsafe fn store_part(self, p: *mut u8, bytes: usize);
}

/// One data type's arithmetic on a 64-byte block of its elements, at one level.
///
/// `V` is the block in registers, in the type's computing format: f16, bf16 and fp8 are
/// widened to f32 lanes (so `V` is several f32 vectors) and rounded back once per op.
pub(super) trait Block {
    /// How the level holds 64 bytes.
    type Mem: Mem;
    /// The block in computing format.
    type V: Copy;
    /// Bytes per element.
    const SIZE: usize;
    /// Memory format to computing format (exact).
    unsafe fn widen(m: Self::Mem) -> Self::V;
    /// Computing format to memory format (round to nearest even; saturating for fp8).
    unsafe fn narrow(v: Self::V) -> Self::Mem;
    /// `a + b` (integers wrap).
    unsafe fn sum(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b` (integers wrap).
    unsafe fn prod(a: Self::V, b: Self::V) -> Self::V;
    /// maxNum: NaN only where both are; -0 < +0.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// minNum: NaN only where both are; -0 < +0.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// A scalar of the type (its raw bits, as in `Scalar::bits`) in every lane.
    unsafe fn splat(bits: u64) -> Self::V;
    /// `acc + x * s`, rounded once to the lanes' type (fused for floats).
    unsafe fn mul_add(acc: Self::V, x: Self::V, s: Self::V) -> Self::V;
}

/// Division, which only the float types vectorize (see [`int_div`] for integers).
pub(super) trait FloatBlock: Block {
    /// The divisor `d` (a rank count) converted as `scalar.rs` does, in every lane.
    unsafe fn splat_divisor(d: u64) -> Self::V;
    /// `x / d`.
    unsafe fn div(x: Self::V, d: Self::V) -> Self::V;
}

/// Applies binary operation `OP` (`BinOp as usize`).
///
/// # Safety
/// The CPU supports `K`'s level.
#[inline(always)]
pub(super) unsafe fn apply<K: Block, const OP: usize>(a: K::V, b: K::V) -> K::V {
    // SAFETY: the caller guarantees the level's features.
    unsafe {
        match OP {
            0 => K::sum(a, b),
            1 => K::prod(a, b),
            2 => K::max(a, b),
            _ => K::min(a, b),
        }
    }
}

/// Where a streaming loop can start: the byte offset (a whole number of elements) that
/// makes `dst + offset` 64-byte aligned, if that exists and leaves at least one full block.
#[inline(always)]
fn nt_start(dst: *mut u8, total: usize, size: usize) -> Option<usize> {
    let head = (64 - dst as usize % 64) % 64;
    (head.is_multiple_of(size) && head + 64 <= total).then_some(head)
}

/// `dst[i] = f(a[i], b[i])` over `n` elements of `K`, block by block; with `NT`, the
/// 64-byte-aligned body of `dst` is written with non-temporal stores (no fence).
///
/// # Safety
/// `a`, `b` readable and `dst` writable for `n` elements; `dst` equal to or disjoint
/// from each input; the CPU supports `K`'s level.
#[inline(always)]
pub(super) unsafe fn map2<K: Block, const NT: bool>(
    dst: *mut u8,
    a: *const u8,
    b: *const u8,
    n: usize,
    f: impl Fn(K::V, K::V) -> K::V,
) {
    let total = n * K::SIZE;
    // SAFETY: every access is at `off..off + len` with `off + len <= total`, inside the
    // caller's buffers; each block is loaded before it is stored, so `dst == a` or
    // `dst == b` reads each input before overwriting it; `store_nt` gets 64-byte aligned
    // addresses (`nt_start`); the caller guarantees the level's features.
    unsafe {
        let mut off = 0;
        if NT && let Some(head) = nt_start(dst, total, K::SIZE) {
            if head > 0 {
                part2::<K>(dst, a, b, head, &f);
            }
            off = head;
            while off + 64 <= total {
                let r = f(load::<K>(a.add(off)), load::<K>(b.add(off)));
                K::narrow(r).store_nt(dst.add(off));
                off += 64;
            }
        }
        while off + 64 <= total {
            let r = f(load::<K>(a.add(off)), load::<K>(b.add(off)));
            K::narrow(r).store(dst.add(off));
            off += 64;
        }
        if off < total {
            part2::<K>(dst.add(off), a.add(off), b.add(off), total - off, &f);
        }
    }
}

/// `dsts[k][i] = f(a[i], b[i])` for every destination, block by block: each block of the
/// inputs is loaded once and its result stored to every destination. With `NT` and every
/// destination at the same offset from a 64-byte boundary, the aligned body is written
/// with non-temporal stores (no fence).
///
/// # Safety
/// `a`, `b` readable and every destination writable for `n` elements; each destination
/// equal to or disjoint from each input; destinations disjoint; the CPU supports `K`'s
/// level.
#[inline(always)]
pub(super) unsafe fn map2_multi<K: Block, const NT: bool>(
    dsts: &[*mut u8],
    a: *const u8,
    b: *const u8,
    n: usize,
    f: impl Fn(K::V, K::V) -> K::V,
) {
    let total = n * K::SIZE;
    let Some(&d0) = dsts.first() else { return };
    let same_alignment = dsts.iter().all(|d| *d as usize % 64 == d0 as usize % 64);
    // SAFETY: as in `map2`: every access is in bounds, each block is loaded before any
    // destination is stored, `store_nt` gets aligned addresses (all destinations share
    // d0's alignment), and the caller guarantees the level's features.
    unsafe {
        let mut off = 0;
        if NT
            && same_alignment
            && let Some(head) = nt_start(d0, total, K::SIZE)
        {
            if head > 0 {
                for d in dsts {
                    part2::<K>(*d, a, b, head, &f);
                }
            }
            off = head;
            while off + 64 <= total {
                let r = K::narrow(f(load::<K>(a.add(off)), load::<K>(b.add(off))));
                for d in dsts {
                    r.store_nt(d.add(off));
                }
                off += 64;
            }
        }
        while off + 64 <= total {
            let r = K::narrow(f(load::<K>(a.add(off)), load::<K>(b.add(off))));
            for d in dsts {
                r.store(d.add(off));
            }
            off += 64;
        }
        if off < total {
            let len = total - off;
            let x = K::widen(K::Mem::load_part(a.add(off), len));
            let y = K::widen(K::Mem::load_part(b.add(off), len));
            let r = K::narrow(f(x, y));
            for d in dsts {
                r.store_part(d.add(off), len);
            }
        }
    }
}

/// Loads and widens one full block.
///
/// # Safety
/// `p` readable for 64 bytes; the CPU supports `K`'s level.
#[inline(always)]
unsafe fn load<K: Block>(p: *const u8) -> K::V {
    // SAFETY: forwarded from the caller.
    unsafe { K::widen(K::Mem::load(p)) }
}

/// `dst = f(a, b)` on the first `len` (< 64) bytes.
///
/// # Safety
/// The pointers valid for `len` bytes (as in `map2`); the CPU supports `K`'s level.
#[inline(always)]
unsafe fn part2<K: Block>(dst: *mut u8, a: *const u8, b: *const u8, len: usize, f: &impl Fn(K::V, K::V) -> K::V) {
    // SAFETY: forwarded from the caller; partial loads and stores stay within `len`.
    unsafe {
        let x = K::widen(K::Mem::load_part(a, len));
        let y = K::widen(K::Mem::load_part(b, len));
        K::narrow(f(x, y)).store_part(dst, len);
    }
}

/// `dst[i] = f(x[i])` over `n` elements of `K`, block by block (temporal stores).
///
/// # Safety
/// `x` readable and `dst` writable for `n` elements, equal or disjoint; the CPU supports
/// `K`'s level.
#[inline(always)]
pub(super) unsafe fn map1<K: Block>(dst: *mut u8, x: *const u8, n: usize, f: impl Fn(K::V) -> K::V) {
    let total = n * K::SIZE;
    let mut off = 0;
    // SAFETY: as in `map2`: in bounds, load before store, features guaranteed by caller.
    unsafe {
        while off + 64 <= total {
            K::narrow(f(K::widen(K::Mem::load(x.add(off))))).store(dst.add(off));
            off += 64;
        }
        if off < total {
            let len = total - off;
            K::narrow(f(K::widen(K::Mem::load_part(x.add(off), len)))).store_part(dst.add(off), len);
        }
    }
}

/// Integer division by a rank count, exact (truncating toward zero, as `scalar.rs`), and
/// much cheaper than the reference's 128-bit division: 8- and 32-bit integers multiply by
/// a reciprocal in f64, in a loop the compiler vectorizes; 64-bit integers multiply by a
/// magic number (see [`Div64`]).
///
/// # Safety
/// `x` readable and `dst` writable for `n` elements of `T`, equal or disjoint.
#[inline(always)]
pub(super) unsafe fn int_div<T: IntDiv>(dst: *mut u8, x: *const u8, n: usize, d: u64) {
    let (dp, xp) = (dst as *mut T, x as *const T);
    // SAFETY: the caller's contract covers `n` elements of `T` at both pointers; unaligned
    // accesses are used.
    unsafe {
        let Some(d) = T::divisor(d) else {
            // Division by zero: the reference panics, as Rust's division does.
            return super::scalar::div::<T>(dst, x, n, d);
        };
        for i in 0..n {
            dp.add(i).write_unaligned(xp.add(i).read_unaligned().div_by(d));
        }
    }
}

/// An integer type with a fast exact division by a `u64` (see [`int_div`]).
pub(super) trait IntDiv: super::scalar::Arith {
    /// What the division needs to know about the divisor, worked out once per call.
    type Divisor: Copy;
    /// The divisor's form, or `None` for zero.
    fn divisor(d: u64) -> Option<Self::Divisor>;
    /// `self / d`, truncating toward zero.
    fn div_by(self, d: Self::Divisor) -> Self;
}

/// 1/d rounded up to an f64, for some d >= 1: a value in (0, 1]. Only [`Recip::new`]
/// makes one, which [`IntDiv::div_by`]'s unchecked conversion relies on.
///
/// Why `trunc(x * r)` is exact for |x| <= 2^32 and any d >= 1: write |x|/d = q + f
/// (q whole, f = 0 or f >= 1/d). As r is within a factor (1 + 2^-52) above 1/d, the
/// exact product lies in [q + f, (q + f)(1 + 2^-52)]: at least q, so its rounding is too
/// (q is representable); and below q + 1 by at least (1 - |x| 2^-52)/d, which exceeds
/// half an ulp of q + 1 (at most (q + 1) 2^-53, and (q + 1) d <= |x| + d; divisors
/// above 2^33 give products below 1/2 anyway). So the rounded product truncates to q.
#[derive(Clone, Copy)]
pub(super) struct Recip(f64);

impl Recip {
    /// 1/d rounded up, or `None` for d = 0.
    fn new(d: u64) -> Option<Recip> {
        if d == 0 {
            return None;
        }
        let df = d as f64; // exact for d <= 2^53; larger divisors only give zeros
        let r = 1.0 / df;
        // The sign of r * d - 1, exactly.
        Some(Recip(if r.mul_add(df, -1.0) < 0.0 { r.next_up() } else { r }))
    }
}

macro_rules! int_div_via_f64 {
    ($($t:ty),*) => {$(
        impl IntDiv for $t {
            type Divisor = Recip;
            #[inline(always)]
            fn divisor(d: u64) -> Option<Recip> {
                Recip::new(d)
            }
            #[inline(always)]
            fn div_by(self, r: Recip) -> Self {
                let q = self as f64 * r.0;
                // SAFETY: r is in (0, 1] (`Recip`), so q is finite with |q| <= |self|
                // (equal only for r = 1, exactly): truncated, it fits the type. The
                // unchecked conversion lets the loop vectorize; a saturating `as` does not.
                unsafe { q.to_int_unchecked::<$t>() }
            }
        }
    )*};
}
int_div_via_f64!(i8, u8, i32, u32);

/// Unsigned 64-bit division by an invariant divisor without a `div` instruction
/// (Granlund and Montgomery, "Division by invariant integers using multiplication",
/// 1994; the branch-free form libdivide uses).
#[derive(Clone, Copy)]
pub(super) enum Div64 {
    /// d = 2^k: a shift.
    Shift(u32),
    /// 2^(l-1) < d < 2^l, l <= 63: with t = (m * x) >> 64, the quotient is
    /// (t + ((x - t) >> 1)) >> (l - 1), where m = floor(2^(64+l) / d) - 2^64 + 1.
    Magic {
        /// The multiplier (its 2^64 bit implied).
        m: u64,
        /// l - 1.
        s: u32,
    },
    /// d > 2^63: the quotient is 0 or 1.
    Big(u64),
}

impl Div64 {
    /// The form of divisor `d`, or `None` for zero.
    pub(super) fn new(d: u64) -> Option<Div64> {
        if d == 0 {
            return None;
        }
        if d.is_power_of_two() {
            return Some(Div64::Shift(d.trailing_zeros()));
        }
        if d > 1 << 63 {
            return Some(Div64::Big(d));
        }
        let l = 64 - (d - 1).leading_zeros(); // ceil(log2 d), in 2..=63
        let m = ((1u128 << (64 + l)) / d as u128 - (1u128 << 64) + 1) as u64;
        Some(Div64::Magic { m, s: l - 1 })
    }

    /// `x / d`.
    #[inline(always)]
    pub(super) fn div(self, x: u64) -> u64 {
        match self {
            Div64::Shift(k) => x >> k,
            Div64::Magic { m, s } => {
                let t = ((m as u128 * x as u128) >> 64) as u64;
                (t + ((x - t) >> 1)) >> s
            }
            Div64::Big(d) => (x >= d) as u64,
        }
    }
}

impl IntDiv for u64 {
    type Divisor = Div64;
    #[inline(always)]
    fn divisor(d: u64) -> Option<Div64> {
        Div64::new(d)
    }
    #[inline(always)]
    fn div_by(self, d: Div64) -> Self {
        d.div(self)
    }
}

impl IntDiv for i64 {
    type Divisor = Div64;
    #[inline(always)]
    fn divisor(d: u64) -> Option<Div64> {
        Div64::new(d)
    }
    /// Divides the magnitude (truncation toward zero is symmetric), then puts the sign
    /// back; i64::MIN / 1 wraps back to i64::MIN, as in the reference.
    #[inline(always)]
    fn div_by(self, d: Div64) -> Self {
        let q = d.div(self.unsigned_abs()) as i64;
        if self < 0 { q.wrapping_neg() } else { q }
    }
}

/// Defines a level's kernel entry points and its table of
/// [`TypeKernels`](super::TypeKernels), given the level's `#[target_feature]` list. Every
/// entry point is a thin wrapper that enables the level's features around a loop of this
/// module.
macro_rules! level_kernels {
    ($features:literal) => {
        use super::simd::{self, Block, FloatBlock, IntDiv};
        use super::{DivFn, TypeKernels};

        /// `dst = a OP b` (see `simd::map2`).
        ///
        /// # Safety
        /// As `BinaryFn`, and the CPU supports this level.
        #[target_feature(enable = $features)]
        unsafe fn binary<K: Block, const OP: usize, const NT: bool>(
            dst: *mut u8,
            a: *const u8,
            b: *const u8,
            n: usize,
        ) {
            // SAFETY: the caller's contract is `map2`'s; `apply` runs inside this
            // function's enabled features.
            unsafe { simd::map2::<K, NT>(dst, a, b, n, |x, y| simd::apply::<K, OP>(x, y)) }
        }

        /// `dsts[k] = a OP b` (see `simd::map2_multi`).
        ///
        /// # Safety
        /// As `MultiFn`, and the CPU supports this level.
        #[target_feature(enable = $features)]
        unsafe fn binary_multi<K: Block, const OP: usize>(
            dsts: &[*mut u8],
            a: *const u8,
            b: *const u8,
            n: usize,
            nt: bool,
        ) {
            // SAFETY: the caller's contract is `map2_multi`'s; `apply` runs inside this
            // function's enabled features.
            unsafe {
                if nt {
                    simd::map2_multi::<K, true>(dsts, a, b, n, |x, y| simd::apply::<K, OP>(x, y))
                } else {
                    simd::map2_multi::<K, false>(dsts, a, b, n, |x, y| simd::apply::<K, OP>(x, y))
                }
            }
        }

        /// `dst = acc + s * x`.
        ///
        /// # Safety
        /// As `MulAddFn`, and the CPU supports this level.
        #[target_feature(enable = $features)]
        unsafe fn mul_add<K: Block>(dst: *mut u8, acc: *const u8, x: *const u8, n: usize, s: u64) {
            // SAFETY: as in `binary`.
            unsafe {
                let s = K::splat(s);
                simd::map2::<K, false>(dst, acc, x, n, |acc, x| K::mul_add(acc, x, s))
            }
        }

        /// `dst = s * x`.
        ///
        /// # Safety
        /// As `ScaleFn`, and the CPU supports this level.
        #[target_feature(enable = $features)]
        unsafe fn scale<K: Block>(dst: *mut u8, x: *const u8, n: usize, s: u64) {
            // SAFETY: as in `binary`.
            unsafe {
                let s = K::splat(s);
                simd::map1::<K>(dst, x, n, |x| K::prod(x, s))
            }
        }

        /// `dst = x / d` for float types.
        ///
        /// # Safety
        /// As `DivFn`, and the CPU supports this level.
        #[target_feature(enable = $features)]
        unsafe fn div_float<K: FloatBlock>(dst: *mut u8, x: *const u8, n: usize, d: u64) {
            // SAFETY: as in `binary`.
            unsafe {
                let d = K::splat_divisor(d);
                simd::map1::<K>(dst, x, n, |x| K::div(x, d))
            }
        }

        /// `dst = x / d` for integer types: a scalar loop compiled for this level.
        ///
        /// # Safety
        /// As `DivFn`, and the CPU supports this level.
        #[target_feature(enable = $features)]
        unsafe fn div_int<T: IntDiv>(dst: *mut u8, x: *const u8, n: usize, d: u64) {
            // SAFETY: forwarded from the caller's contract.
            unsafe { simd::int_div::<T>(dst, x, n, d) }
        }

        /// The kernels of one data type, with its division kernel.
        const fn table<K: Block>(div: DivFn) -> TypeKernels {
            TypeKernels {
                binary: [binary::<K, 0, false>, binary::<K, 1, false>, binary::<K, 2, false>, binary::<K, 3, false>],
                binary_nt: [binary::<K, 0, true>, binary::<K, 1, true>, binary::<K, 2, true>, binary::<K, 3, true>],
                binary_multi: [binary_multi::<K, 0>, binary_multi::<K, 1>, binary_multi::<K, 2>, binary_multi::<K, 3>],
                mul_add: mul_add::<K>,
                scale: scale::<K>,
                div,
            }
        }

        /// This level's kernels for every data type, indexed by `DataType as usize`.
        pub(super) const KERNELS: [TypeKernels; 12] = [
            table::<W<i8>>(div_int::<i8>),
            table::<W<u8>>(div_int::<u8>),
            table::<W<i32>>(div_int::<i32>),
            table::<W<u32>>(div_int::<u32>),
            table::<W<i64>>(div_int::<i64>),
            table::<W<u64>>(div_int::<u64>),
            table::<W<f16>>(div_float::<W<f16>>),
            table::<W<f32>>(div_float::<W<f32>>),
            table::<W<f64>>(div_float::<W<f64>>),
            table::<W<bf16>>(div_float::<W<bf16>>),
            table::<W<F8E4M3>>(div_float::<W<F8E4M3>>),
            table::<W<F8E5M2>>(div_float::<W<F8E5M2>>),
        ];
    };
}
pub(super) use level_kernels;

/// The constants of the bit-level f32 to fp8 rounding (the steps of
/// `F8E4M3::from_f32`, which the levels repeat lane by lane).
#[derive(Clone, Copy)]
pub(super) struct Fp8Params {
    /// f32 bits of the largest finite value: larger magnitudes saturate to it.
    pub max: u32,
    /// f32 bits of the smallest normal value: below it, the subnormal path.
    pub min_normal: u32,
    /// Subtracted from a normal f32's bits to rebias its exponent.
    pub rebias: u32,
    /// The right shift that drops the f32's extra mantissa bits.
    pub shift: u32,
    /// f32 bits of the constant whose addition rounds a subnormal.
    pub magic: u32,
}

impl Fp8Params {
    /// E4M3.
    pub const E4M3: Fp8Params = Fp8Params {
        max: F8E4M3::MAX_F32_BITS,
        min_normal: F8E4M3::MIN_NORMAL_F32_BITS,
        rebias: F8E4M3::REBIAS,
        shift: F8E4M3::SHIFT,
        magic: F8E4M3::SUBNORMAL_MAGIC,
    };
    /// E5M2.
    pub const E5M2: Fp8Params = Fp8Params {
        max: F8E5M2::MAX_F32_BITS,
        min_normal: F8E5M2::MIN_NORMAL_F32_BITS,
        rebias: F8E5M2::REBIAS,
        shift: F8E5M2::SHIFT,
        magic: F8E5M2::SUBNORMAL_MAGIC,
    };

    /// The rounding increment below one unit of the result: `2^(shift-1) - 1`.
    pub const fn half_minus_one(&self) -> u32 {
        (1 << (self.shift - 1)) - 1
    }
}

/// `[e(0), e(1), ...]` for the listed indices, written out: `unroll!([0, 1], |i| a[i])`
/// is `[a[0], a[1]]`. The levels use it for their arrays of registers instead of
/// `array::map` or loops: nothing is left for the optimizer to unroll or inline, so each
/// kernel compiles to one straight block per 64 bytes, with no calls.
macro_rules! unroll {
    ([$($i:literal),*], |$v:ident| $e:expr) => {
        [$({
            let $v = $i;
            $e
        }),*]
    };
}
pub(super) use unroll;
