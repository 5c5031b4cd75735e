//! The two 8-bit float formats of NCCL (OCP FP8): E4M3 and E5M2.
//!
//! PLACEHOLDER conversions (decode by formula, encode by nearest search); the reduce
//! helper replaces `from_f32` with a bit-twiddling version tested against this one.

use std::fmt;

/// 8-bit float, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, NaN is
/// `S.1111.111`; largest finite value 448.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct F8E4M3(u8);

/// 8-bit float, 5 exponent bits (bias 15), 2 mantissa bits; IEEE-like infinities and
/// NaNs; largest finite value 57344.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct F8E5M2(u8);

fn decode(bits: u8, ebits: u32, mbits: u32, ieee_special: bool) -> f32 {
    let sign = if bits & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((bits as u32) >> mbits) & ((1 << ebits) - 1);
    let m = (bits as u32) & ((1 << mbits) - 1);
    let bias = (1i32 << (ebits - 1)) - 1;
    let emax = (1 << ebits) - 1;
    if ieee_special && e == emax {
        return if m == 0 { sign * f32::INFINITY } else { f32::NAN };
    }
    if !ieee_special && e == emax && m == (1 << mbits) - 1 {
        return f32::NAN;
    }
    let frac = m as f32 / (1u32 << mbits) as f32;
    if e == 0 { sign * frac * 2f32.powi(1 - bias) } else { sign * (1.0 + frac) * 2f32.powi(e as i32 - bias) }
}

/// Nearest finite code, ties to even mantissa, saturating; used as a reference.
fn encode_search(x: f32, dec: impl Fn(u8) -> f32, nan: u8) -> u8 {
    if x.is_nan() {
        return nan;
    }
    let mut best = 0u8;
    let mut best_d = f32::INFINITY;
    for c in 0..=255u8 {
        let v = dec(c);
        if !v.is_finite() {
            continue;
        }
        // Only codes of the right sign (keeps -0.0 for tiny negatives).
        if (c & 0x80 != 0) != x.is_sign_negative() {
            continue;
        }
        let d = (v as f64 - x as f64).abs() as f32;
        if d < best_d || (d == best_d && c & 1 == 0) {
            best = c;
            best_d = d;
        }
    }
    best
}

macro_rules! fp8 {
    ($t:ident, $e:expr, $m:expr, $ieee:expr, $nan:expr) => {
        impl $t {
            /// Wraps raw bits.
            pub const fn from_bits(bits: u8) -> Self {
                $t(bits)
            }
            /// The raw bits.
            pub const fn to_bits(self) -> u8 {
                self.0
            }
            /// Exact widening to f32.
            pub fn to_f32(self) -> f32 {
                decode(self.0, $e, $m, $ieee)
            }
            /// Rounds to the nearest representable value, ties to even; values beyond the
            /// largest finite value saturate to it (infinities too); NaN stays NaN.
            pub fn from_f32(x: f32) -> Self {
                $t(encode_search(x, |c| decode(c, $e, $m, $ieee), $nan))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.to_f32())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.to_f32())
            }
        }
    };
}

fp8!(F8E4M3, 4, 3, false, 0x7f);
fp8!(F8E5M2, 5, 2, true, 0x7f);
