//! The AVX2 conversions between a 64-byte block of a narrow float type (f16, bf16, fp8
//! E4M3 and E5M2; f32 trivially) and the f32 lanes its arithmetic runs in: widening
//! every element exactly, and narrowing back with one rounding to nearest even (fp8
//! saturating), bit for bit as the portable conversions of `scalar.rs`. Only
//! conversions live here: the arithmetic on the lanes, and which conversion each type
//! uses, is `mod.rs`'s. Every function carries the level's `#[target_feature]`.

use std::arch::x86_64::*;

use super::Y2;
use crate::reduce::simd::{Fp8Params, unroll};

/// The four 16-byte quarters of a block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quarters(m: Y2) -> [__m128i; 4] {
    let [lo, hi] = m.0;
    [
        _mm256_castsi256_si128(lo),
        _mm256_extracti128_si256::<1>(lo),
        _mm256_castsi256_si128(hi),
        _mm256_extracti128_si256::<1>(hi),
    ]
}

/// A block from four 16-byte quarters.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn from_quarters(q: [__m128i; 4]) -> Y2 {
    Y2([_mm256_set_m128i(q[1], q[0]), _mm256_set_m128i(q[3], q[2])])
}

/// f32: the block is the lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f32_widen(m: Y2) -> [__m256; 2] {
    unroll!([0, 1], |i| _mm256_castsi256_ps(m.0[i]))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f32_narrow(v: [__m256; 2]) -> Y2 {
    Y2(unroll!([0, 1], |i| _mm256_castps_si256(v[i])))
}

/// f16: `vcvtph2ps` on each quarter.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_widen(m: Y2) -> [__m256; 4] {
    let q = quarters(m);
    unroll!([0, 1, 2, 3], |i| _mm256_cvtph_ps(q[i]))
}

/// f16: `vcvtps2ph`, round to nearest even (as `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_narrow(v: [__m256; 4]) -> Y2 {
    const RNE: i32 = _MM_FROUND_TO_NEAREST_INT;
    from_quarters(unroll!([0, 1, 2, 3], |i| _mm256_cvtps_ph::<RNE>(v[i])))
}

/// bf16: the f32 with the same top 16 bits. No shuffles: shifting each 32-bit lane left
/// by 16 gives the even elements, masking off its low half the odd ones. The lanes are
/// then in the order (even, odd) per register, which the element-wise ops do not mind
/// and [`bf16_narrow`] undoes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bf16_widen(m: Y2) -> [__m256; 4] {
    let [lo, hi] = m.0;
    let high = _mm256_set1_epi32(-0x1_0000);
    [
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(lo)),
        _mm256_castsi256_ps(_mm256_and_si256(lo, high)),
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(hi)),
        _mm256_castsi256_ps(_mm256_and_si256(hi, high)),
    ]
}

/// Rounds 8 f32 to bf16 in the top half of each 32-bit lane (the low half is garbage):
/// round to nearest even, `x + 0x7fff + lsb`, as `half::bf16::from_f32`.
///
/// NaN: `half` keeps the top bits and sets the quiet bit. Here every NaN reaching this
/// point came from arithmetic on widened bf16 values, so its low 16 bits are zero (the
/// hardware either propagates an input NaN or makes the default one), and the rounding
/// increment cannot carry into its exponent. Adding -0.0 (exact for every other value,
/// -0 included) quiets the signalling NaNs that Max and Min pass through.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_round(v: __m256) -> __m256i {
    let x = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(-0.0)));
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(1));
    _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb)
}

/// Even elements (`e`) and odd elements (`o`) back into one register of 16 bf16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_interleave(e: __m256, o: __m256) -> __m256i {
    let even = _mm256_srli_epi32::<16>(bf16_round(e));
    _mm256_blend_epi16::<0b1010_1010>(even, bf16_round(o))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bf16_narrow(v: [__m256; 4]) -> Y2 {
    Y2([bf16_interleave(v[0], v[1]), bf16_interleave(v[2], v[3])])
}

/// A register of 32 fp8 codes as 16-bit lanes holding `code << 8`, without crossing
/// 128-bit lanes (one `vpshufb` each): the first vector takes bytes 0..8 of each 128-bit
/// lane, the second bytes 8..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp8_words(m: __m256i) -> [__m256i; 2] {
    let lo = _mm_setr_epi8(-1, 0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7);
    let hi = _mm_setr_epi8(-1, 8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15);
    [_mm256_shuffle_epi8(m, _mm256_broadcastsi128_si256(lo)), _mm256_shuffle_epi8(m, _mm256_broadcastsi128_si256(hi))]
}

/// f16 bits (two vectors of 16 per register of the block) to eight f32 vectors. With
/// [`fp8_words`], each register's elements land in the order 0-7 | 16-23 | 8-15 | 24-31,
/// which [`fp8_pack`] undoes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_words_to_f32(w: [[__m256i; 2]; 2]) -> [__m256; 8] {
    let lo = |v: __m256i| _mm256_cvtph_ps(_mm256_castsi256_si128(v));
    let hi = |v: __m256i| _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v));
    let [[a, b], [c, d]] = w;
    [lo(a), hi(a), lo(b), hi(b), lo(c), hi(c), lo(d), hi(d)]
}

/// E5M2 is the top byte of an f16: `code << 8` is the same value (infinities and NaNs
/// included).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn e5m2_widen(m: Y2) -> [__m256; 8] {
    f16_words_to_f32([fp8_words(m.0[0]), fp8_words(m.0[1])])
}

/// E4M3 `S.EEEE.MMM` placed as the f16 `S.0EEEE.MMM0000000` is the value times 2^-8
/// (normals and subnormals alike): widen through f16 and multiply by 256 (exact). From
/// `code << 8`, an arithmetic shift right by one puts the magnitude in place and copies
/// the sign into bit 14, which is cleared. The NaN code `S.1111.111` gets bit 14 set
/// (an f16 NaN): adding 0x80 to its magnitude bits carries exactly there.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn e4m3_widen(m: Y2) -> [__m256; 8] {
    let [[a, b], [c, d]] = [fp8_words(m.0[0]), fp8_words(m.0[1])];
    let h = [[e4m3_to_f16(a), e4m3_to_f16(b)], [e4m3_to_f16(c), e4m3_to_f16(d)]];
    let v = f16_words_to_f32(h);
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |i| _mm256_mul_ps(v[i], _mm256_set1_ps(256.0)))
}

/// `code << 8` to the f16 bits of the E4M3 value times 2^-8 (see [`e4m3_widen`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn e4m3_to_f16(w: __m256i) -> __m256i {
    let set = |x: u16| _mm256_set1_epi16(x as i16);
    let h = _mm256_and_si256(_mm256_srai_epi16::<1>(w), set(0xbf80));
    let carry = _mm256_add_epi16(_mm256_and_si256(h, set(0x3f80)), set(0x80));
    _mm256_or_si256(h, _mm256_and_si256(carry, set(0x4000)))
}

/// 8 f32 to 8 fp8 codes as i32 in [-128, 127] (the code's byte, read as signed): the
/// steps of `F8E4M3::from_f32`, lane by lane. |v| is clamped to the largest finite value
/// (infinities too) by `vminps`, which keeps NaN (its second operand); subnormals round
/// by adding a constant; normals are rebiased and rounded to nearest even on the bits;
/// NaN is the only value whose code lands above 0x7f, and the clamp makes it 0x7f; the
/// sign then goes to bit 7.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp8_encode(v: __m256, p: Fp8Params) -> __m256i {
    let set = |x: u32| _mm256_set1_epi32(x as i32);
    let abs = _mm256_and_ps(v, _mm256_castsi256_ps(set(0x7fff_ffff)));
    let abs = _mm256_castps_si256(_mm256_min_ps(_mm256_castsi256_ps(set(p.max)), abs));
    let magic = _mm256_castsi256_ps(set(p.magic));
    let sub = _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(abs), magic));
    let sub = _mm256_sub_epi32(sub, set(p.magic));
    let shift = _mm_cvtsi32_si128(p.shift as i32);
    let odd = _mm256_and_si256(_mm256_srl_epi32(abs, shift), set(1));
    let r = _mm256_add_epi32(abs, set(p.half_minus_one().wrapping_sub(p.rebias)));
    let norm = _mm256_srl_epi32(_mm256_add_epi32(r, odd), shift);
    // `abs` is below 2^31, so a signed compare orders it.
    let is_sub = _mm256_cmpgt_epi32(set(p.min_normal), abs);
    let code = _mm256_blendv_epi8(norm, sub, is_sub);
    let code = _mm256_min_epi32(code, set(0x7f));
    // Negative lanes: (bits >> 24, arithmetic) & !0x7f is -128, i.e. bit 7 of the byte.
    let sign = _mm256_srai_epi32::<24>(_mm256_castps_si256(v));
    _mm256_or_si256(code, _mm256_and_si256(sign, set(0xffff_ff80)))
}

/// Four vectors of codes (from [`fp8_encode`], in [`f16_words_to_f32`]'s order) to a
/// register: two in-lane packs (exact: every code fits a signed byte) and one dword
/// permutation that restores element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp8_pack(c: &[__m256i]) -> __m256i {
    let words = [_mm256_packs_epi32(c[0], c[2]), _mm256_packs_epi32(c[1], c[3])];
    let bytes = _mm256_packs_epi16(words[0], words[1]);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Eight vectors of f32 to a block of fp8 codes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp8_narrow(v: [__m256; 8], p: Fp8Params) -> Y2 {
    let c = unroll!([0, 1, 2, 3, 4, 5, 6, 7], |i| fp8_encode(v[i], p));
    Y2([fp8_pack(&c[..4]), fp8_pack(&c[4..])])
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn e4m3_narrow(v: [__m256; 8]) -> Y2 {
    fp8_narrow(v, Fp8Params::E4M3)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn e5m2_narrow(v: [__m256; 8]) -> Y2 {
    fp8_narrow(v, Fp8Params::E5M2)
}
