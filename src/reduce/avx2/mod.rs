//! AVX2 kernels (with FMA and F16C).
//!
//! A 64-byte block is two ymm registers. AVX2 has no byte-masked loads and stores, so a
//! tail goes through a 64-byte buffer on the stack. Integers compute in their own lanes
//! (64-bit multiply and max/min, which AVX2 lacks, are built from 32-bit multiplies and
//! 64-bit compares); f16 (F16C), bf16 and fp8 widen to f32 lanes and round back once per
//! op. Every function here carries the level's `#[target_feature]`, so it may only run
//! where `Level::Avx2` was detected.
//!
//! This file holds the block, the arithmetic on f32, f64 and integer lanes, and the
//! streaming copy; `convert.rs` holds the conversions between narrow float blocks and f32
//! lanes. Which kernel serves which call is the parent module's choice, not this one's.

use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::mem::size_of;
use std::ptr;

use half::{bf16, f16};

use super::simd::{Mem, unroll};
use crate::types::{F8E4M3, F8E5M2};

mod convert;

use convert::{
    bf16_narrow, bf16_widen, e4m3_narrow, e4m3_widen, e5m2_narrow, e5m2_widen, f16_narrow, f16_widen, f32_narrow,
    f32_widen,
};

super::simd::level_kernels!("avx2,fma,f16c");

/// Marks the AVX2 implementation of [`Block`] for element type `T`.
pub(super) struct W<T>(PhantomData<T>);

/// A 64-byte block: two ymm registers, low address first.
#[derive(Clone, Copy)]
pub(super) struct Y2([__m256i; 2]);

impl Mem for Y2 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: the caller guarantees 64 readable bytes; unaligned loads.
        unsafe { Y2([_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(32).cast())]) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_part(p: *const u8, bytes: usize) -> Self {
        let mut buf = [0u8; 64];
        // SAFETY: `bytes` < 64 bytes are readable at `p` (caller) and fit in `buf`.
        unsafe {
            ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), bytes);
            Self::load(buf.as_ptr())
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store(self, p: *mut u8) {
        // SAFETY: the caller guarantees 64 writable bytes; unaligned stores.
        unsafe {
            _mm256_storeu_si256(p.cast(), self.0[0]);
            _mm256_storeu_si256(p.add(32).cast(), self.0[1]);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_nt(self, p: *mut u8) {
        // SAFETY: the caller guarantees 64 writable bytes at a 64-byte aligned address, so
        // both halves are 32-byte aligned as `vmovntdq` requires.
        unsafe {
            _mm256_stream_si256(p.cast(), self.0[0]);
            _mm256_stream_si256(p.add(32).cast(), self.0[1]);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_part(self, p: *mut u8, bytes: usize) {
        let mut buf = [0u8; 64];
        // SAFETY: `buf` holds 64 bytes; `bytes` < 64 bytes are writable at `p` (caller).
        unsafe {
            self.store(buf.as_mut_ptr());
            ptr::copy_nonoverlapping(buf.as_ptr(), p, bytes);
        }
    }
}

// ---- f32 lanes: shared by f32, f16, bf16 and fp8 --------------------------------------

/// maxNum with -0 < +0 (see `scalar.rs`). `vmaxps` returns its second operand when the
/// operands are equal or unordered: equal operands are ANDed (so +0 wins), and a NaN `b`
/// is replaced by `a`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn max_ps(a: __m256, b: __m256) -> __m256 {
    let m = _mm256_max_ps(a, b);
    let m = _mm256_blendv_ps(m, _mm256_and_ps(a, b), _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b));
    _mm256_blendv_ps(m, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(b, b))
}

/// minNum with -0 < +0: as [`max_ps`], with OR for equal operands (so -0 wins).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn min_ps(a: __m256, b: __m256) -> __m256 {
    let m = _mm256_min_ps(a, b);
    let m = _mm256_blendv_ps(m, _mm256_or_ps(a, b), _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b));
    _mm256_blendv_ps(m, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(b, b))
}

/// Implements [`Block`] for a type computed in `$k` vectors of 8 f32 lanes (`$idx` lists
/// their indices, for `unroll!`), given its widening, narrowing and scalar conversion.
macro_rules! f32_lanes {
    ($t:ty, $k:literal, $idx:tt, $widen:ident, $narrow:ident, $to_f32:expr) => {
        impl Block for W<$t> {
            type Mem = Y2;
            type V = [__m256; $k];
            const SIZE: usize = size_of::<$t>();

            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn widen(m: Y2) -> Self::V {
                $widen(m)
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn narrow(v: Self::V) -> Y2 {
                $narrow(v)
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn sum(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| _mm256_add_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn prod(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| _mm256_mul_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| max_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| min_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn splat(bits: u64) -> Self::V {
                [_mm256_set1_ps($to_f32(bits)); $k]
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn mul_add(acc: Self::V, x: Self::V, s: Self::V) -> Self::V {
                unroll!($idx, |i| _mm256_fmadd_ps(x[i], s[i], acc[i]))
            }
        }

        impl FloatBlock for W<$t> {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn splat_divisor(d: u64) -> Self::V {
                [_mm256_set1_ps(d as f32); $k]
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn div(x: Self::V, d: Self::V) -> Self::V {
                unroll!($idx, |i| _mm256_div_ps(x[i], d[i]))
            }
        }
    };
}

f32_lanes!(f32, 2, [0, 1], f32_widen, f32_narrow, |b: u64| { f32::from_bits(b as u32) });
f32_lanes!(f16, 4, [0, 1, 2, 3], f16_widen, f16_narrow, |b: u64| { f16::from_bits(b as u16).to_f32() });
f32_lanes!(bf16, 4, [0, 1, 2, 3], bf16_widen, bf16_narrow, |b: u64| { bf16::from_bits(b as u16).to_f32() });
f32_lanes!(F8E4M3, 8, [0, 1, 2, 3, 4, 5, 6, 7], e4m3_widen, e4m3_narrow, |b: u64| F8E4M3::from_bits(b as u8).to_f32());
f32_lanes!(F8E5M2, 8, [0, 1, 2, 3, 4, 5, 6, 7], e5m2_widen, e5m2_narrow, |b: u64| F8E5M2::from_bits(b as u8).to_f32());

// ---- f64 ------------------------------------------------------------------------------

/// As [`max_ps`], for f64.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn max_pd(a: __m256d, b: __m256d) -> __m256d {
    let m = _mm256_max_pd(a, b);
    let m = _mm256_blendv_pd(m, _mm256_and_pd(a, b), _mm256_cmp_pd::<_CMP_EQ_OQ>(a, b));
    _mm256_blendv_pd(m, a, _mm256_cmp_pd::<_CMP_UNORD_Q>(b, b))
}

/// As [`min_ps`], for f64.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn min_pd(a: __m256d, b: __m256d) -> __m256d {
    let m = _mm256_min_pd(a, b);
    let m = _mm256_blendv_pd(m, _mm256_or_pd(a, b), _mm256_cmp_pd::<_CMP_EQ_OQ>(a, b));
    _mm256_blendv_pd(m, a, _mm256_cmp_pd::<_CMP_UNORD_Q>(b, b))
}

impl Block for W<f64> {
    type Mem = Y2;
    type V = [__m256d; 2];
    const SIZE: usize = 8;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(m: Y2) -> Self::V {
        unroll!([0, 1], |i| _mm256_castsi256_pd(m.0[i]))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn narrow(v: Self::V) -> Y2 {
        Y2(unroll!([0, 1], |i| _mm256_castpd_si256(v[i])))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum(a: Self::V, b: Self::V) -> Self::V {
        unroll!([0, 1], |i| _mm256_add_pd(a[i], b[i]))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prod(a: Self::V, b: Self::V) -> Self::V {
        unroll!([0, 1], |i| _mm256_mul_pd(a[i], b[i]))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        unroll!([0, 1], |i| max_pd(a[i], b[i]))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
        unroll!([0, 1], |i| min_pd(a[i], b[i]))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn splat(bits: u64) -> Self::V {
        [_mm256_set1_pd(f64::from_bits(bits)); 2]
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mul_add(acc: Self::V, x: Self::V, s: Self::V) -> Self::V {
        unroll!([0, 1], |i| _mm256_fmadd_pd(x[i], s[i], acc[i]))
    }
}

impl FloatBlock for W<f64> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn splat_divisor(d: u64) -> Self::V {
        [_mm256_set1_pd(d as f64); 2]
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn div(x: Self::V, d: Self::V) -> Self::V {
        unroll!([0, 1], |i| _mm256_div_pd(x[i], d[i]))
    }
}

// ---- integers -------------------------------------------------------------------------

/// 8-bit multiply (no such instruction): 16-bit multiplies of the even bytes and of the
/// odd bytes, whose low bytes are the wrapped products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mullo_epi8(a: __m256i, b: __m256i) -> __m256i {
    let even = _mm256_mullo_epi16(a, b);
    let odd = _mm256_mullo_epi16(_mm256_srli_epi16::<8>(a), _mm256_srli_epi16::<8>(b));
    let even = _mm256_and_si256(even, _mm256_set1_epi16(0xff));
    _mm256_or_si256(even, _mm256_slli_epi16::<8>(odd))
}

/// 64-bit wrapping multiply (AVX2 has none): `lo*lo + ((lo*hi + hi*lo) << 32)` from
/// 32x32->64-bit multiplies.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mullo_epi64(a: __m256i, b: __m256i) -> __m256i {
    let lo = _mm256_mul_epu32(a, b);
    let a_hi_b = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), b);
    let a_b_hi = _mm256_mul_epu32(a, _mm256_srli_epi64::<32>(b));
    let cross = _mm256_add_epi64(a_hi_b, a_b_hi);
    _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(cross))
}

/// Signed 64-bit max (AVX2 has only the compare).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn max_epi64(a: __m256i, b: __m256i) -> __m256i {
    _mm256_blendv_epi8(b, a, _mm256_cmpgt_epi64(a, b))
}

/// Signed 64-bit min.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn min_epi64(a: __m256i, b: __m256i) -> __m256i {
    _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(a, b))
}

/// `a > b` for unsigned 64-bit lanes: flip the sign bits, compare signed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn cmpgt_epu64(a: __m256i, b: __m256i) -> __m256i {
    let flip = _mm256_set1_epi64x(i64::MIN);
    _mm256_cmpgt_epi64(_mm256_xor_si256(a, flip), _mm256_xor_si256(b, flip))
}

/// Unsigned 64-bit max.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn max_epu64(a: __m256i, b: __m256i) -> __m256i {
    _mm256_blendv_epi8(b, a, cmpgt_epu64(a, b))
}

/// Unsigned 64-bit min.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn min_epu64(a: __m256i, b: __m256i) -> __m256i {
    _mm256_blendv_epi8(a, b, cmpgt_epu64(a, b))
}

/// Implements [`Block`] for an integer type from its lane instructions.
macro_rules! int_lanes {
    ($t:ty, $add:ident, $mul:ident, $max:ident, $min:ident, $set1:ident, $lane:ty) => {
        impl Block for W<$t> {
            type Mem = Y2;
            type V = [__m256i; 2];
            const SIZE: usize = size_of::<$t>();

            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn widen(m: Y2) -> Self::V {
                m.0
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn narrow(v: Self::V) -> Y2 {
                Y2(v)
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn sum(a: Self::V, b: Self::V) -> Self::V {
                unroll!([0, 1], |i| $add(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn prod(a: Self::V, b: Self::V) -> Self::V {
                unroll!([0, 1], |i| $mul(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
                unroll!([0, 1], |i| $max(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
                unroll!([0, 1], |i| $min(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn splat(bits: u64) -> Self::V {
                [$set1(bits as $lane); 2]
            }
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn mul_add(acc: Self::V, x: Self::V, s: Self::V) -> Self::V {
                unroll!([0, 1], |i| $add(acc[i], $mul(x[i], s[i])))
            }
        }
    };
}

int_lanes!(i8, _mm256_add_epi8, mullo_epi8, _mm256_max_epi8, _mm256_min_epi8, _mm256_set1_epi8, i8);
int_lanes!(u8, _mm256_add_epi8, mullo_epi8, _mm256_max_epu8, _mm256_min_epu8, _mm256_set1_epi8, i8);
int_lanes!(i32, _mm256_add_epi32, _mm256_mullo_epi32, _mm256_max_epi32, _mm256_min_epi32, _mm256_set1_epi32, i32);
int_lanes!(u32, _mm256_add_epi32, _mm256_mullo_epi32, _mm256_max_epu32, _mm256_min_epu32, _mm256_set1_epi32, i32);
int_lanes!(i64, _mm256_add_epi64, mullo_epi64, max_epi64, min_epi64, _mm256_set1_epi64x, i64);
int_lanes!(u64, _mm256_add_epi64, mullo_epi64, max_epu64, min_epu64, _mm256_set1_epi64x, i64);

// ---- copy -----------------------------------------------------------------------------

/// Copies with non-temporal stores (two 32-byte stores per cache line) for the 64-byte
/// aligned body of `dst` (no fence: the caller publishes with `store_fence`).
///
/// # Safety
/// `src` readable and `dst` writable for `bytes`, not overlapping; AVX2 present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn copy_nt(dst: *mut u8, src: *const u8, bytes: usize) {
    let head = dst.align_offset(64).min(bytes);
    // SAFETY: all offsets stay below `bytes`, inside the caller's buffers; streaming
    // stores go to `dst + off` with `off - head` a multiple of 64 (32-byte aligned halves).
    unsafe {
        ptr::copy_nonoverlapping(src, dst, head);
        let mut off = head;
        while off + 128 <= bytes {
            let (s, d) = (src.add(off), dst.add(off));
            let v0 = Y2::load(s);
            let v1 = Y2::load(s.add(64));
            v0.store_nt(d);
            v1.store_nt(d.add(64));
            off += 128;
        }
        while off + 64 <= bytes {
            Y2::load(src.add(off)).store_nt(dst.add(off));
            off += 64;
        }
        ptr::copy_nonoverlapping(src.add(off), dst.add(off), bytes - off);
    }
}
