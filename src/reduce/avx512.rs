//! AVX-512 kernels (F, BW, VL, DQ, with the AVX2, FMA and F16C every such CPU has).
//!
//! A 64-byte block is one zmm register. Tails use masked loads and stores, which touch
//! no byte outside the buffer. Integers compute in their own lanes; f32 and f64 in theirs;
//! f16 (F16C at 512 bits), bf16 (shifts) and fp8 (through f16, or bit arithmetic) widen
//! to f32 lanes and round back once per op. Every function here carries the level's
//! `#[target_feature]`, so it may only run where `Level::Avx512` was detected.

use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::mem::size_of;

use half::{bf16, f16};

use super::simd::{Fp8Params, Mem, unroll};
use crate::types::{F8E4M3, F8E5M2};

super::simd::level_kernels!("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c");

/// Marks the AVX-512 implementation of [`Block`] for element type `T`.
pub(super) struct W<T>(PhantomData<T>);

/// A mask of the low `bytes` (< 64) bytes.
#[inline]
fn byte_mask(bytes: usize) -> __mmask64 {
    (1u64 << bytes) - 1
}

impl Mem for __m512i {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn load(p: *const u8) -> Self {
        // SAFETY: the caller guarantees 64 readable bytes; unaligned load.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn load_part(p: *const u8, bytes: usize) -> Self {
        // SAFETY: masked-off bytes are not accessed (faults suppressed); the first `bytes`
        // are readable per the caller.
        unsafe { _mm512_maskz_loadu_epi8(byte_mask(bytes), p.cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn store(self, p: *mut u8) {
        // SAFETY: the caller guarantees 64 writable bytes; unaligned store.
        unsafe { _mm512_storeu_si512(p.cast(), self) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn store_nt(self, p: *mut u8) {
        // SAFETY: the caller guarantees 64 writable bytes at a 64-byte aligned address.
        unsafe { _mm512_stream_si512(p.cast(), self) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn store_part(self, p: *mut u8, bytes: usize) {
        // SAFETY: only the first `bytes` bytes are written, which the caller guarantees.
        unsafe { _mm512_mask_storeu_epi8(p.cast(), byte_mask(bytes), self) }
    }
}

// ---- f32 lanes: shared by f32, f16, bf16 and fp8 --------------------------------------

/// maxNum with -0 < +0 (see `scalar.rs`). `vmaxps` returns its second operand when the
/// operands are equal or unordered: equal operands are ANDed (so +0 wins), and a NaN `b`
/// is replaced by `a`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn max_ps(a: __m512, b: __m512) -> __m512 {
    let m = _mm512_max_ps(a, b);
    let m = _mm512_mask_and_ps(m, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b), a, b);
    _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(b, b), a)
}

/// minNum with -0 < +0: as [`max_ps`], with OR for equal operands (so -0 wins).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn min_ps(a: __m512, b: __m512) -> __m512 {
    let m = _mm512_min_ps(a, b);
    let m = _mm512_mask_or_ps(m, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b), a, b);
    _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(b, b), a)
}

/// Implements [`Block`] for a type computed in `$k` vectors of 16 f32 lanes (`$idx` lists
/// their indices, for `unroll!`), given its widening, narrowing and scalar conversion.
macro_rules! f32_lanes {
    ($t:ty, $k:literal, $idx:tt, $widen:ident, $narrow:ident, $to_f32:expr) => {
        impl Block for W<$t> {
            type Mem = __m512i;
            type V = [__m512; $k];
            const SIZE: usize = size_of::<$t>();

            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn widen(m: __m512i) -> Self::V {
                $widen(m)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn narrow(v: Self::V) -> __m512i {
                $narrow(v)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn sum(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| _mm512_add_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn prod(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| _mm512_mul_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| max_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
                unroll!($idx, |i| min_ps(a[i], b[i]))
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn splat(bits: u64) -> Self::V {
                [_mm512_set1_ps($to_f32(bits)); $k]
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn mul_add(acc: Self::V, x: Self::V, s: Self::V) -> Self::V {
                unroll!($idx, |i| _mm512_fmadd_ps(x[i], s[i], acc[i]))
            }
        }

        impl FloatBlock for W<$t> {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn splat_divisor(d: u64) -> Self::V {
                [_mm512_set1_ps(d as f32); $k]
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn div(x: Self::V, d: Self::V) -> Self::V {
                unroll!($idx, |i| _mm512_div_ps(x[i], d[i]))
            }
        }
    };
}

/// f32: the block is the lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn f32_widen(m: __m512i) -> [__m512; 1] {
    [_mm512_castsi512_ps(m)]
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn f32_narrow(v: [__m512; 1]) -> __m512i {
    _mm512_castps_si512(v[0])
}

/// f16: `vcvtph2ps` on each half of the block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn f16_widen(m: __m512i) -> [__m512; 2] {
    [_mm512_cvtph_ps(_mm512_castsi512_si256(m)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(m))]
}

/// f16: `vcvtps2ph`, round to nearest even (as `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn f16_narrow(v: [__m512; 2]) -> __m512i {
    const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let lo = _mm512_cvtps_ph::<RNE>(v[0]);
    let hi = _mm512_cvtps_ph::<RNE>(v[1]);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// bf16: the f32 with the same top 16 bits. No shuffles: shifting each 32-bit lane left
/// by 16 gives the even elements, masking off its low half the odd ones. The lanes are
/// then in the order (even, odd), which the element-wise ops do not mind and
/// [`bf16_narrow`] undoes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn bf16_widen(m: __m512i) -> [__m512; 2] {
    let even = _mm512_slli_epi32::<16>(m);
    let odd = _mm512_and_si512(m, _mm512_set1_epi32(-0x1_0000));
    [_mm512_castsi512_ps(even), _mm512_castsi512_ps(odd)]
}

/// Rounds 16 f32 to bf16 in the top half of each 32-bit lane (the low half is garbage):
/// round to nearest even, `x + 0x7fff + lsb`, as `half::bf16::from_f32`.
///
/// NaN: `half` keeps the top bits and sets the quiet bit. Here every NaN reaching this
/// point came from arithmetic on widened bf16 values, so its low 16 bits are zero (the
/// hardware either propagates an input NaN or makes the default one), and the rounding
/// increment cannot carry into its exponent. Adding -0.0 (exact for every other value,
/// -0 included) quiets the signalling NaNs that Max and Min pass through.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn bf16_round(v: __m512) -> __m512i {
    let x = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(-0.0)));
    let odd = _mm512_test_epi32_mask(x, _mm512_set1_epi32(0x1_0000));
    let r = _mm512_add_epi32(x, _mm512_set1_epi32(0x7fff));
    _mm512_mask_add_epi32(r, odd, x, _mm512_set1_epi32(0x8000))
}

/// The even elements' bf16 go to the low half of each lane, the odd ones' stay in the top.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn bf16_narrow(v: [__m512; 2]) -> __m512i {
    let even = _mm512_srli_epi32::<16>(bf16_round(v[0]));
    _mm512_mask_blend_epi16(0xaaaa_aaaa, even, bf16_round(v[1]))
}

/// The block's 64 fp8 codes as 16-bit lanes holding `code << 8`, without crossing
/// 128-bit lanes (one `vpshufb` each): the first vector takes bytes 0..8 of each 128-bit
/// lane, the second bytes 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn fp8_words(m: __m512i) -> [__m512i; 2] {
    let lo = _mm_setr_epi8(-1, 0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7);
    let hi = _mm_setr_epi8(-1, 8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15);
    [_mm512_shuffle_epi8(m, _mm512_broadcast_i32x4(lo)), _mm512_shuffle_epi8(m, _mm512_broadcast_i32x4(hi))]
}

/// f16 bits (two vectors of 32) to four f32 vectors. With [`fp8_words`], the f32 lanes
/// hold the block's elements in the order 0-7,16-23 | 32-39,48-55 | 8-15,24-31 |
/// 40-47,56-63, which [`fp8_pack`] undoes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn f16_words_to_f32(w: [__m512i; 2]) -> [__m512; 4] {
    let cvt = |h: __m256i| _mm512_cvtph_ps(h);
    [
        cvt(_mm512_castsi512_si256(w[0])),
        cvt(_mm512_extracti64x4_epi64::<1>(w[0])),
        cvt(_mm512_castsi512_si256(w[1])),
        cvt(_mm512_extracti64x4_epi64::<1>(w[1])),
    ]
}

/// E5M2 is the top byte of an f16: `code << 8` is the same value (infinities and NaNs
/// included).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn e5m2_widen(m: __m512i) -> [__m512; 4] {
    f16_words_to_f32(fp8_words(m))
}

/// E4M3 `S.EEEE.MMM` placed as the f16 `S.0EEEE.MMM0000000` is the value times 2^-8
/// (normals and subnormals alike): widen through f16 and multiply by 256 (exact). From
/// `code << 8`, an arithmetic shift right by one puts the magnitude in place and copies
/// the sign into bit 14, which is cleared. The NaN code `S.1111.111` gets bit 14 set
/// (an f16 NaN): adding 0x80 to its magnitude bits carries exactly there.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn e4m3_widen(m: __m512i) -> [__m512; 4] {
    let [x, y] = fp8_words(m);
    let v = f16_words_to_f32([e4m3_to_f16(x), e4m3_to_f16(y)]);
    unroll!([0, 1, 2, 3], |i| _mm512_mul_ps(v[i], _mm512_set1_ps(256.0)))
}

/// `code << 8` to the f16 bits of the E4M3 value times 2^-8 (see [`e4m3_widen`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn e4m3_to_f16(w: __m512i) -> __m512i {
    let set = |x: u16| _mm512_set1_epi16(x as i16);
    let h = _mm512_and_si512(_mm512_srai_epi16::<1>(w), set(0xbf80));
    let carry = _mm512_add_epi16(_mm512_and_si512(h, set(0x3f80)), set(0x80));
    // h | (carry & 0x4000)
    _mm512_ternarylogic_epi32::<0xf8>(h, carry, set(0x4000))
}

/// 16 f32 to 16 fp8 codes as i32 in [-128, 127] (the code's byte, read as signed): the
/// steps of `F8E4M3::from_f32`, lane by lane. |v| is clamped to the largest finite value
/// (infinities too) by `vminps`, which keeps NaN (its second operand); subnormals round
/// by adding a constant; normals are rebiased and rounded to nearest even on the bits;
/// NaN is the only value whose code lands above 0x7f, and the clamp makes it 0x7f; the
/// sign then goes to bit 7.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn fp8_encode(v: __m512, p: Fp8Params) -> __m512i {
    let set = |x: u32| _mm512_set1_epi32(x as i32);
    let abs = _mm512_and_ps(v, _mm512_castsi512_ps(set(0x7fff_ffff)));
    let abs = _mm512_castps_si512(_mm512_min_ps(_mm512_castsi512_ps(set(p.max)), abs));
    let magic = _mm512_castsi512_ps(set(p.magic));
    let sub = _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(abs), magic));
    let sub = _mm512_sub_epi32(sub, set(p.magic));
    let odd = _mm512_test_epi32_mask(abs, set(1 << p.shift));
    let r = _mm512_add_epi32(abs, set(p.half_minus_one().wrapping_sub(p.rebias)));
    let r = _mm512_mask_add_epi32(r, odd, r, set(1));
    let norm = _mm512_srl_epi32(r, _mm_cvtsi32_si128(p.shift as i32));
    let code = _mm512_mask_mov_epi32(norm, _mm512_cmplt_epu32_mask(abs, set(p.min_normal)), sub);
    let code = _mm512_min_epi32(code, set(0x7f));
    // Negative lanes: (bits >> 24, arithmetic) & !0x7f is -128, i.e. bit 7 of the byte.
    let sign = _mm512_srai_epi32::<24>(_mm512_castps_si512(v));
    // (sign & !0x7f) | code
    _mm512_ternarylogic_epi32::<0xea>(sign, set(0xffff_ff80), code)
}

/// Four vectors of codes (from [`fp8_encode`], in [`f16_words_to_f32`]'s order) to a
/// block: two in-lane packs (exact: every code fits a signed byte) and one dword
/// permutation that restores element order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn fp8_pack(c: [__m512i; 4]) -> __m512i {
    let words = [_mm512_packs_epi32(c[0], c[2]), _mm512_packs_epi32(c[1], c[3])];
    let bytes = _mm512_packs_epi16(words[0], words[1]);
    let order = _mm512_setr_epi32(0, 4, 1, 5, 8, 12, 9, 13, 2, 6, 3, 7, 10, 14, 11, 15);
    _mm512_permutexvar_epi32(order, bytes)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn e4m3_narrow(v: [__m512; 4]) -> __m512i {
    fp8_pack(unroll!([0, 1, 2, 3], |i| fp8_encode(v[i], Fp8Params::E4M3)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn e5m2_narrow(v: [__m512; 4]) -> __m512i {
    fp8_pack(unroll!([0, 1, 2, 3], |i| fp8_encode(v[i], Fp8Params::E5M2)))
}

f32_lanes!(f32, 1, [0], f32_widen, f32_narrow, |b: u64| f32::from_bits(b as u32));
f32_lanes!(f16, 2, [0, 1], f16_widen, f16_narrow, |b: u64| { f16::from_bits(b as u16).to_f32() });
f32_lanes!(bf16, 2, [0, 1], bf16_widen, bf16_narrow, |b: u64| { bf16::from_bits(b as u16).to_f32() });
f32_lanes!(F8E4M3, 4, [0, 1, 2, 3], e4m3_widen, e4m3_narrow, |b: u64| F8E4M3::from_bits(b as u8).to_f32());
f32_lanes!(F8E5M2, 4, [0, 1, 2, 3], e5m2_widen, e5m2_narrow, |b: u64| F8E5M2::from_bits(b as u8).to_f32());

// ---- f64 ------------------------------------------------------------------------------

impl Block for W<f64> {
    type Mem = __m512i;
    type V = __m512d;
    const SIZE: usize = 8;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn widen(m: __m512i) -> __m512d {
        _mm512_castsi512_pd(m)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn narrow(v: __m512d) -> __m512i {
        _mm512_castpd_si512(v)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn sum(a: __m512d, b: __m512d) -> __m512d {
        _mm512_add_pd(a, b)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn prod(a: __m512d, b: __m512d) -> __m512d {
        _mm512_mul_pd(a, b)
    }
    /// As [`max_ps`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn max(a: __m512d, b: __m512d) -> __m512d {
        let m = _mm512_max_pd(a, b);
        let m = _mm512_mask_and_pd(m, _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(a, b), a, b);
        _mm512_mask_mov_pd(m, _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(b, b), a)
    }
    /// As [`min_ps`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn min(a: __m512d, b: __m512d) -> __m512d {
        let m = _mm512_min_pd(a, b);
        let m = _mm512_mask_or_pd(m, _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(a, b), a, b);
        _mm512_mask_mov_pd(m, _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(b, b), a)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn splat(bits: u64) -> __m512d {
        _mm512_set1_pd(f64::from_bits(bits))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn mul_add(acc: __m512d, x: __m512d, s: __m512d) -> __m512d {
        _mm512_fmadd_pd(x, s, acc)
    }
}

impl FloatBlock for W<f64> {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn splat_divisor(d: u64) -> __m512d {
        _mm512_set1_pd(d as f64)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn div(x: __m512d, d: __m512d) -> __m512d {
        _mm512_div_pd(x, d)
    }
}

// ---- integers -------------------------------------------------------------------------

/// 8-bit multiply (no such instruction): 16-bit multiplies of the even bytes and of the
/// odd bytes, whose low bytes are the wrapped products.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
fn mullo_epi8(a: __m512i, b: __m512i) -> __m512i {
    let even = _mm512_mullo_epi16(a, b);
    let odd = _mm512_mullo_epi16(_mm512_srli_epi16::<8>(a), _mm512_srli_epi16::<8>(b));
    _mm512_mask_blend_epi8(0xaaaa_aaaa_aaaa_aaaa, even, _mm512_slli_epi16::<8>(odd))
}

/// Implements [`Block`] for an integer type from its lane instructions.
macro_rules! int_lanes {
    ($t:ty, $add:ident, $mul:ident, $max:ident, $min:ident, $set1:ident, $lane:ty) => {
        impl Block for W<$t> {
            type Mem = __m512i;
            type V = __m512i;
            const SIZE: usize = size_of::<$t>();

            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn widen(m: __m512i) -> __m512i {
                m
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn narrow(v: __m512i) -> __m512i {
                v
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn sum(a: __m512i, b: __m512i) -> __m512i {
                $add(a, b)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn prod(a: __m512i, b: __m512i) -> __m512i {
                $mul(a, b)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn max(a: __m512i, b: __m512i) -> __m512i {
                $max(a, b)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn min(a: __m512i, b: __m512i) -> __m512i {
                $min(a, b)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn splat(bits: u64) -> __m512i {
                $set1(bits as $lane)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn mul_add(acc: __m512i, x: __m512i, s: __m512i) -> __m512i {
                $add(acc, $mul(x, s))
            }
        }
    };
}

int_lanes!(i8, _mm512_add_epi8, mullo_epi8, _mm512_max_epi8, _mm512_min_epi8, _mm512_set1_epi8, i8);
int_lanes!(u8, _mm512_add_epi8, mullo_epi8, _mm512_max_epu8, _mm512_min_epu8, _mm512_set1_epi8, i8);
int_lanes!(i32, _mm512_add_epi32, _mm512_mullo_epi32, _mm512_max_epi32, _mm512_min_epi32, _mm512_set1_epi32, i32);
int_lanes!(u32, _mm512_add_epi32, _mm512_mullo_epi32, _mm512_max_epu32, _mm512_min_epu32, _mm512_set1_epi32, i32);
int_lanes!(i64, _mm512_add_epi64, _mm512_mullo_epi64, _mm512_max_epi64, _mm512_min_epi64, _mm512_set1_epi64, i64);
int_lanes!(u64, _mm512_add_epi64, _mm512_mullo_epi64, _mm512_max_epu64, _mm512_min_epu64, _mm512_set1_epi64, i64);

// ---- copy -----------------------------------------------------------------------------

/// Copies with non-temporal 64-byte stores for the 64-byte aligned body of `dst` (no
/// fence: the caller publishes with `store_fence`).
///
/// # Safety
/// `src` readable and `dst` writable for `bytes`, not overlapping; AVX-512F present.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub(super) unsafe fn copy_nt(dst: *mut u8, src: *const u8, bytes: usize) {
    let head = dst.align_offset(64).min(bytes);
    // SAFETY: all offsets stay below `bytes`, inside the caller's buffers; streaming
    // stores go to `dst + off` with `off - head` a multiple of 64, so 64-byte aligned.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let mut off = head;
        while off + 256 <= bytes {
            let (s, d) = (src.add(off), dst.add(off));
            let v0 = _mm512_loadu_si512(s.cast());
            let v1 = _mm512_loadu_si512(s.add(64).cast());
            let v2 = _mm512_loadu_si512(s.add(128).cast());
            let v3 = _mm512_loadu_si512(s.add(192).cast());
            _mm512_stream_si512(d.cast(), v0);
            _mm512_stream_si512(d.add(64).cast(), v1);
            _mm512_stream_si512(d.add(128).cast(), v2);
            _mm512_stream_si512(d.add(192).cast(), v3);
            off += 256;
        }
        while off + 64 <= bytes {
            _mm512_stream_si512(dst.add(off).cast(), _mm512_loadu_si512(src.add(off).cast()));
            off += 64;
        }
        std::ptr::copy_nonoverlapping(src.add(off), dst.add(off), bytes - off);
    }
}
