//! The kernels with a scalar argument against the portable ones: PreMulSum's
//! multiply-add and scale, and Avg's division (floats, integers at their extremes and on
//! exact multiples, and the 64-bit division by magic numbers the integer kernels use).

use super::*;

/// Scalars to multiply by: random elements, plus one, minus zero and a half.
fn random_scalar(dt: DataType, r: &mut Rng) -> u64 {
    let fixed = match dt {
        DataType::Float16 => [0x3c00, 0x8000, 0x3800],
        DataType::Bfloat16 => [0x3f80, 0x8000, 0x3f00],
        DataType::Float32 => [0x3f80_0000, 0x8000_0000, 0x3f00_0000],
        DataType::Float64 => [0x3ff0 << 48, 1 << 63, 0x3fe0 << 48],
        DataType::Float8E4M3 => [0x38, 0x80, 0x30],
        DataType::Float8E5M2 => [0x3c, 0x80, 0x38],
        _ => [1, 0, 2],
    };
    if r.below(4) == 0 { fixed[r.below(3)] } else { random_elem(dt, r) }
}

/// PreMulSum's kernels (`acc + s * x`, `s * x`) at every level.
#[test]
fn mul_add_and_scale_match_scalar() {
    let mut r = Rng(0x0bad_cafe_f00d_0001);
    for level in simd_levels() {
        for dt in DataType::ALL {
            let (k, s) = (kernels(dt, level), scalar::KERNELS[dt as usize]);
            for n in lengths() {
                let sc = random_scalar(dt, &mut r);
                let out = match r.below(3) {
                    0 => Out::OverA,
                    _ => Out::Separate(random_offset(dt.size(), &mut r)),
                };
                let what = || format!("{level} {dt} mul_add s={sc:#x}");
                check2(dt, n, out, &mut r, Call::MulAdd(k.mul_add, sc), Call::MulAdd(s.mul_add, sc), &what);
                // scale reads one input: run it over `a`, ignoring `b`.
                let what = || format!("{level} {dt} scale s={sc:#x}");
                let out = match r.below(3) {
                    0 => Out::OverA,
                    _ => Out::Separate(random_offset(dt.size(), &mut r)),
                };
                check2(dt, n, out, &mut r, Call::Scale(k.scale, sc), Call::Scale(s.scale, sc), &what);
            }
        }
    }
}

/// Avg's division at every level, with small and huge divisors.
#[test]
fn div_matches_scalar() {
    let divisors =
        [1, 2, 3, 4, 7, 8, 100, 1 << 31, 1 << 32, (1 << 32) + 1, 1 << 40, i64::MAX as u64, 1 << 63, u64::MAX];
    let mut r = Rng(0x5eed_0000_0000_0042);
    for level in simd_levels() {
        for dt in DataType::ALL {
            let (k, s) = (kernels(dt, level), scalar::KERNELS[dt as usize]);
            for n in lengths() {
                let d = divisors[r.below(divisors.len())];
                let out = match r.below(3) {
                    0 => Out::OverA,
                    _ => Out::Separate(random_offset(dt.size(), &mut r)),
                };
                let what = || format!("{level} {dt} div d={d}");
                check2(dt, n, out, &mut r, Call::Div(k.div, d), Call::Div(s.div, d), &what);
            }
        }
    }
}

/// Integer division at the extremes of every type, for every divisor class.
#[test]
fn int_div_extremes() {
    let divisors = [1, 2, 3, 255, 256, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 33, 1 << 63, u64::MAX];
    for level in Level::available() {
        for dt in &DataType::ALL[..6] {
            let size = dt.size();
            let mask = if size == 8 { u64::MAX } else { (1 << (8 * size)) - 1 };
            let vals = [0, 1, 2, mask, mask - 1, mask >> 1, (mask >> 1) + 1, (mask >> 1) - 1];
            let input: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()[..size].to_vec()).collect();
            for d in divisors {
                let (mut got, mut want) = (vec![0u8; input.len()], vec![0u8; input.len()]);
                let n = vals.len();
                // SAFETY: all three buffers hold `n` elements.
                unsafe {
                    (kernels(*dt, level).div)(got.as_mut_ptr(), input.as_ptr(), n, d);
                    (scalar::KERNELS[*dt as usize].div)(want.as_mut_ptr(), input.as_ptr(), n, d);
                }
                assert_eq!(got, want, "{level} {dt} / {d}");
            }
        }
    }
}

/// Divisors of every size: small, around powers of two, and random magnitudes.
fn divisors(r: &mut Rng) -> Vec<u64> {
    let mut d: Vec<u64> = (1..=40).collect();
    for k in 2..64 {
        let p = 1u64 << k;
        d.extend([p - 1, p, p + 1]);
    }
    d.extend([u64::MAX, u64::MAX - 1, i64::MAX as u64, (1 << 63) + 1]);
    for _ in 0..200 {
        d.push((r.next() >> r.below(64)).max(1));
    }
    d
}

/// 64-bit division by magic numbers against u128 division, with exact multiples and their
/// neighbours (where a multiply-based division goes wrong first).
#[cfg(target_arch = "x86_64")]
#[test]
fn div64_magic_is_exact() {
    let mut r = Rng(0xd1d0_0064);
    for d in divisors(&mut r) {
        let div = simd::Div64::new(d).unwrap();
        let mut xs = vec![0, 1, d - 1, d, d.wrapping_add(1), u64::MAX, u64::MAX - 1, 1 << 63];
        for _ in 0..50 {
            let k = r.next() >> r.below(64);
            let m = k.wrapping_mul(d);
            xs.extend([m, m.wrapping_sub(1), m.wrapping_add(1), r.next()]);
        }
        for x in xs {
            assert_eq!(div.div(x), x / d, "{x} / {d}");
        }
    }
    assert!(simd::Div64::new(0).is_none());
}

/// Integer Avg division at every level against the reference, on exact multiples of the
/// divisor and their neighbours, for every integer type.
#[test]
fn int_div_exact_multiples() {
    let mut r = Rng(0x3_1415_9265);
    let ds = divisors(&mut r);
    for level in simd_levels() {
        for dt in &DataType::ALL[..6] {
            let size = dt.size();
            let bits = 8 * size as u32;
            let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
            let signed = matches!(dt, DataType::Int8 | DataType::Int32 | DataType::Int64);
            // The largest magnitude a positive value of the type has.
            let top = if signed { mask >> 1 } else { mask };
            let (k, s) = (kernels(*dt, level), scalar::KERNELS[*dt as usize]);
            for &d in &ds {
                let mut xs = vec![0, 1, top, top.wrapping_add(1) & mask, mask];
                for _ in 0..40 {
                    // A multiple of d that fits the type, its neighbours and its negation
                    // (two's complement in the type's width).
                    let dd = d.min(top);
                    let q = (r.next() >> r.below(64)) % (top / dd).saturating_add(1);
                    let m = q * dd;
                    for x in [m, m.wrapping_sub(1), m.wrapping_add(1), m.wrapping_neg()] {
                        xs.push(x & mask);
                    }
                }
                let input: Vec<u8> = xs.iter().flat_map(|v| v.to_le_bytes()[..size].to_vec()).collect();
                let (mut got, mut want) = (vec![0u8; input.len()], vec![0u8; input.len()]);
                // SAFETY: all three buffers hold `xs.len()` elements.
                unsafe {
                    (k.div)(got.as_mut_ptr(), input.as_ptr(), xs.len(), d);
                    (s.div)(want.as_mut_ptr(), input.as_ptr(), xs.len(), d);
                }
                assert_eq!(got, want, "{level} {dt} / {d}");
            }
        }
    }
}
