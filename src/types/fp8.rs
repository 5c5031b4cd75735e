//! The two 8-bit float formats of NCCL (OCP FP8): E4M3 and E5M2.
//!
//! Widening to f32 is exact and reads a 256-entry table built at compile time. Narrowing
//! from f32 rounds to the nearest value, ties to even, and saturates to the largest finite
//! value (as CUDA's `__nv_cvt_float_to_fp8` with `__NV_SATFINITE`); it works on the bits of
//! the f32, without a search, so the SIMD kernels can do the same steps lane by lane.

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

/// The constants that describe one 8-bit format, and its conversions to and from f32.
#[derive(Clone, Copy)]
struct Format {
    /// Exponent bits.
    ebits: u32,
    /// Mantissa bits.
    mbits: u32,
    /// True for E5M2: the top exponent holds infinities and NaNs (as in IEEE 754); false
    /// for E4M3, where only `S.1111.111` is NaN and there are no infinities.
    ieee: bool,
}

impl Format {
    /// OCP E4M3.
    const E4M3: Format = Format { ebits: 4, mbits: 3, ieee: false };
    /// OCP E5M2.
    const E5M2: Format = Format { ebits: 5, mbits: 2, ieee: true };

    /// Exponent bias.
    const fn bias(&self) -> u32 {
        (1 << (self.ebits - 1)) - 1
    }

    /// The code of the largest finite positive value (0x7e for E4M3, 0x7b for E5M2).
    const fn max_code(&self) -> u8 {
        if self.ieee {
            // Top exponent is reserved: largest exponent below it, all mantissa bits set.
            (((1u32 << self.ebits) - 2) << self.mbits | ((1 << self.mbits) - 1)) as u8
        } else {
            // Top exponent is usable; only all-ones mantissa there is NaN.
            (((1u32 << self.ebits) - 1) << self.mbits | ((1 << self.mbits) - 2)) as u8
        }
    }

    /// The f32 bits of the largest finite value (448 for E4M3, 57344 for E5M2).
    const fn max_f32_bits(&self) -> u32 {
        self.decode(self.max_code())
    }

    /// The f32 bits of the smallest normal value, 2^(1 - bias).
    const fn min_normal_f32_bits(&self) -> u32 {
        (127 + 1 - self.bias()) << 23
    }

    /// What to subtract from the bits of a normal f32 to move its exponent to this
    /// format's bias: `(127 - bias) << 23`.
    const fn rebias(&self) -> u32 {
        (127 - self.bias()) << 23
    }

    /// Mantissa bits an f32 has beyond this format's: the right shift of the rounding.
    const fn shift(&self) -> u32 {
        23 - self.mbits
    }

    /// An f32 whose unit in the last place is this format's smallest subnormal, 2^(1 -
    /// bias - mbits): adding it to a value below the smallest normal rounds that value,
    /// ties to even, to a whole number of subnormal steps, which then sit in the low bits.
    const fn subnormal_magic_bits(&self) -> u32 {
        ((127 - self.bias()) + self.shift() + 1) << 23
    }

    /// Exact f32 bits of `code`. NaN codes give a quiet NaN with the code's sign and
    /// payload, as an f16 to f32 conversion would.
    const fn decode(&self, code: u8) -> u32 {
        let c = code as u32;
        let sign = (c & 0x80) << 24;
        let e = (c >> self.mbits) & ((1 << self.ebits) - 1);
        let m = c & ((1 << self.mbits) - 1);
        let emax = (1 << self.ebits) - 1;
        let is_nan = e == emax && if self.ieee { m != 0 } else { m == (1 << self.mbits) - 1 };
        if is_nan {
            return sign | 0x7fc0_0000 | (m << self.shift());
        }
        if self.ieee && e == emax {
            return sign | 0x7f80_0000;
        }
        if e != 0 {
            return sign | (((e + 127 - self.bias()) << 23) | (m << self.shift()));
        }
        if m == 0 {
            return sign;
        }
        // Subnormal: m * 2^(1 - bias - mbits). Normalise m so its top set bit becomes the
        // implicit one of the f32.
        let lead = 31 - m.leading_zeros(); // position of the top set bit, < mbits
        let exp = 127 + 1 - self.bias() - self.mbits + lead;
        let frac = (m << (23 - lead)) & 0x7f_ffff;
        sign | (exp << 23) | frac
    }

    /// Rounds `x` to the nearest code, ties to even, saturating to the largest finite
    /// value; NaN gives `S.1111111` (a NaN in both formats) with the sign of `x`.
    #[inline]
    fn encode(&self, x: f32) -> u8 {
        let bits = x.to_bits();
        let sign = ((bits >> 24) & 0x80) as u8;
        let abs = bits & 0x7fff_ffff;
        if abs > 0x7f80_0000 {
            return sign | 0x7f;
        }
        // Everything at or beyond the largest finite value (infinity included) becomes it;
        // below it, rounding can reach it but never pass it.
        let abs = abs.min(self.max_f32_bits());
        let code = if abs < self.min_normal_f32_bits() {
            // The f32 addition does the round-to-nearest-even of a subnormal.
            let magic = self.subnormal_magic_bits();
            (f32::from_bits(abs) + f32::from_bits(magic)).to_bits() - magic
        } else {
            // Rebias, then round the dropped mantissa bits to nearest even; a carry into
            // the exponent is the correct result.
            let r = abs - self.rebias();
            let s = self.shift();
            (r + (1 << (s - 1)) - 1 + ((r >> s) & 1)) >> s
        };
        sign | code as u8
    }

    /// The f32 bits of all 256 codes.
    const fn table(&self) -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut c = 0;
        while c < 256 {
            t[c] = self.decode(c as u8);
            c += 1;
        }
        t
    }
}

/// f32 bits of every E4M3 code.
static E4M3_TO_F32: [u32; 256] = Format::E4M3.table();
/// f32 bits of every E5M2 code.
static E5M2_TO_F32: [u32; 256] = Format::E5M2.table();

macro_rules! fp8 {
    ($t:ident, $fmt:expr, $table:ident) => {
        impl $t {
            /// Wraps raw bits.
            pub const fn from_bits(bits: u8) -> Self {
                $t(bits)
            }
            /// The raw bits.
            pub const fn to_bits(self) -> u8 {
                self.0
            }
            /// f32 bits of the largest finite value (for the SIMD conversions in
            /// `reduce/`, which repeat [`Self::from_f32`]'s steps lane by lane).
            #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
            pub(crate) const MAX_F32_BITS: u32 = $fmt.max_f32_bits();
            /// f32 bits of the smallest normal value.
            #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
            pub(crate) const MIN_NORMAL_F32_BITS: u32 = $fmt.min_normal_f32_bits();
            /// Subtracted from a normal f32's bits to rebias its exponent.
            #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
            pub(crate) const REBIAS: u32 = $fmt.rebias();
            /// Right shift that drops the extra f32 mantissa bits.
            #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
            pub(crate) const SHIFT: u32 = $fmt.shift();
            /// f32 bits of the constant whose addition rounds subnormals.
            #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
            pub(crate) const SUBNORMAL_MAGIC: u32 = $fmt.subnormal_magic_bits();
            /// Exact widening to f32 (NaN stays NaN, with its sign).
            #[inline]
            pub fn to_f32(self) -> f32 {
                f32::from_bits($table[self.0 as usize])
            }
            /// Rounds to the nearest representable value, ties to even; values beyond the
            /// largest finite value saturate to it (infinities too); NaN stays NaN (the
            /// code `S.1111111`, keeping the sign); signed zeros and subnormals are exact.
            #[inline]
            pub fn from_f32(x: f32) -> Self {
                $t($fmt.encode(x))
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

fp8!(F8E4M3, Format::E4M3, E4M3_TO_F32);
fp8!(F8E5M2, Format::E5M2, E5M2_TO_F32);

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes by the formula, in floating point: an independent check of the table.
    fn decode_formula(bits: u8, f: Format) -> f32 {
        let sign = if bits & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let e = ((bits as u32) >> f.mbits) & ((1 << f.ebits) - 1);
        let m = (bits as u32) & ((1 << f.mbits) - 1);
        let bias = f.bias() as i32;
        let emax = (1 << f.ebits) - 1;
        if f.ieee && e == emax {
            return if m == 0 { sign * f32::INFINITY } else { f32::NAN };
        }
        if !f.ieee && e == emax && m == (1 << f.mbits) - 1 {
            return f32::NAN;
        }
        let frac = m as f32 / (1u32 << f.mbits) as f32;
        if e == 0 { sign * frac * 2f32.powi(1 - bias) } else { sign * (1.0 + frac) * 2f32.powi(e as i32 - bias) }
    }

    /// The reference encoder: saturation by definition, else the nearest finite code of
    /// the same sign by exhaustive search (distances in f64, exact for the neighbours that
    /// matter), ties to the even code. NaN: any NaN code is accepted by the comparison.
    fn encode_search(x: f32, f: Format) -> u8 {
        if x.is_nan() {
            return 0x7f;
        }
        let neg = x.is_sign_negative();
        let max = f32::from_bits(f.max_f32_bits());
        if x.abs() >= max {
            return f.max_code() | if neg { 0x80 } else { 0 };
        }
        let mut best = 0u8;
        let mut best_d = f64::INFINITY;
        for c in 0..=255u8 {
            let v = decode_formula(c, f);
            if !v.is_finite() || (c & 0x80 != 0) != neg {
                continue;
            }
            let d = (v as f64 - x as f64).abs();
            if d < best_d || (d == best_d && c & 1 == 0) {
                best = c;
                best_d = d;
            }
        }
        best
    }

    fn same(a: u8, b: u8, f: Format) -> bool {
        let (x, y) = (f32::from_bits(f.decode(a)), f32::from_bits(f.decode(b)));
        a == b || (x.is_nan() && y.is_nan())
    }

    fn check(x: f32, f: Format) {
        let got = f.encode(x);
        let want = encode_search(x, f);
        assert!(same(got, want, f), "encode({x:e} = {:#010x}) = {got:#04x}, reference {want:#04x}", x.to_bits());
    }

    const FORMATS: [Format; 2] = [Format::E4M3, Format::E5M2];

    #[test]
    fn table_matches_formula() {
        for f in FORMATS {
            for c in 0..=255u8 {
                let (t, r) = (f32::from_bits(f.decode(c)), decode_formula(c, f));
                assert!(
                    t.to_bits() == r.to_bits() || (t.is_nan() && r.is_nan()),
                    "code {c:#04x}: table {t}, formula {r}"
                );
                if t.is_nan() {
                    assert_eq!(t.is_sign_negative(), c & 0x80 != 0, "NaN sign of {c:#04x}");
                }
            }
        }
        assert_eq!(Format::E4M3.max_code(), 0x7e);
        assert_eq!(Format::E5M2.max_code(), 0x7b);
        assert_eq!(f32::from_bits(Format::E4M3.max_f32_bits()), 448.0);
        assert_eq!(f32::from_bits(Format::E5M2.max_f32_bits()), 57344.0);
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            let a = F8E4M3::from_bits(c);
            let b = F8E5M2::from_bits(c);
            for (v, back, f) in [
                (a.to_f32(), F8E4M3::from_f32(a.to_f32()).to_bits(), Format::E4M3),
                (b.to_f32(), F8E5M2::from_f32(b.to_f32()).to_bits(), Format::E5M2),
            ] {
                if v.is_nan() {
                    assert!(f32::from_bits(f.decode(back)).is_nan(), "NaN {c:#04x}");
                    assert_eq!(back & 0x80, c & 0x80, "NaN sign of {c:#04x}");
                } else if v.is_infinite() {
                    // E5M2 infinities saturate to the largest finite value.
                    assert_eq!(back, f.max_code() | (c & 0x80));
                } else {
                    assert_eq!(back, c, "code {c:#04x} ({v}) came back as {back:#04x}");
                }
            }
        }
    }

    #[test]
    fn near_every_code_and_midpoint() {
        for f in FORMATS {
            // Finite values, sorted by value, both signs.
            let mut vals: Vec<f32> =
                (0..=255u8).map(|c| f32::from_bits(f.decode(c))).filter(|v| v.is_finite()).collect();
            vals.sort_by(f32::total_cmp);
            let mut points = Vec::new();
            for w in vals.windows(2) {
                points.push(w[0]);
                // Midpoints need one bit more than the format: exact in f32.
                points.push(((w[0] as f64 + w[1] as f64) / 2.0) as f32);
            }
            let max = *vals.last().unwrap();
            // The would-be midpoint above the largest value, and the next power of two.
            let top = [max, max * 1.0625, max * 1.125, max * 2.0, f32::MAX, 1e30];
            for p in top.into_iter().chain(points) {
                for q in [p, -p] {
                    for k in -4i32..=4 {
                        let b = q.to_bits() as i64 + k as i64;
                        check(f32::from_bits(b as u32), f);
                    }
                }
            }
        }
    }

    #[test]
    fn specials() {
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffff_ffff),
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            f32::from_bits(0x007f_ffff),
            f32::MAX,
            f32::MIN,
            1e-10,
            -1e-10,
        ];
        for f in FORMATS {
            for x in specials {
                check(x, f);
            }
        }
        assert_eq!(F8E4M3::from_f32(f32::INFINITY).to_f32(), 448.0);
        assert_eq!(F8E4M3::from_f32(f32::NEG_INFINITY).to_f32(), -448.0);
        assert_eq!(F8E5M2::from_f32(f32::INFINITY).to_f32(), 57344.0);
        assert_eq!(F8E5M2::from_f32(1e9).to_f32(), 57344.0);
        assert_eq!(F8E4M3::from_f32(-0.0).to_bits(), 0x80);
        assert_eq!(F8E5M2::from_f32(-1e-30).to_bits(), 0x80);
        assert!(F8E4M3::from_f32(f32::NAN).to_f32().is_nan());
        assert!(F8E5M2::from_f32(-f32::NAN).to_f32().is_nan());
        // Ties to even: 464 is halfway between 448 and (absent) 480 -> saturates; 0.5 * the
        // smallest subnormal rounds to zero, 1.5 * to 2.
        assert_eq!(F8E4M3::from_f32(464.0).to_f32(), 448.0);
        assert_eq!(F8E4M3::from_f32(2f32.powi(-10)).to_bits(), 0x00);
        assert_eq!(F8E4M3::from_f32(3.0 * 2f32.powi(-10)).to_bits(), 0x02);
    }

    /// A small xorshift generator: no dependency, reproducible.
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn random_f32() {
        let n = if cfg!(debug_assertions) { 30_000 } else { 300_000 };
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for f in FORMATS {
            let max = f32::from_bits(f.max_f32_bits()) as f64;
            for _ in 0..n {
                let r = xorshift(&mut s);
                // Any bit pattern, then a value in the format's range (where rounding is
                // interesting), then a value near the subnormals.
                check(f32::from_bits(r as u32), f);
                let u = (r >> 32) as f64 / u32::MAX as f64;
                check(((u * 2.0 - 1.0) * max * 1.1) as f32, f);
                let tiny = f32::from_bits(f.min_normal_f32_bits()) as f64;
                check(((u * 2.0 - 1.0) * tiny * 1.5) as f32, f);
            }
        }
    }
}
