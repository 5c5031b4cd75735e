//! The binary kernels (Sum, Prod, Max, Min) against the portable ones, with one
//! destination and with several, and Max/Min's NaN and signed-zero rules pinned down.

use super::*;

/// The binary kernels of every level, data type and op, temporal and non-temporal.
#[test]
fn binary_matches_scalar() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    for level in simd_levels() {
        for dt in DataType::ALL {
            let (k, s) = (kernels(dt, level), scalar::KERNELS[dt as usize]);
            for n in lengths() {
                for op in BinOp::ALL {
                    for nt in [false, true] {
                        let f = if nt { k.binary_nt } else { k.binary }[op as usize];
                        let out = match r.below(4) {
                            0 => Out::OverA,
                            1 => Out::OverB,
                            _ => Out::Separate(random_offset(dt.size(), &mut r)),
                        };
                        let what = || format!("{level} {dt} {op:?} nt={nt}");
                        check2(dt, n, out, &mut r, Call::Binary(f), Call::Binary(s.binary[op as usize]), &what);
                    }
                }
            }
        }
    }
}

/// Max/Min pinned down: NaN ignored (NaN only if both are), -0 < +0 in either order.
#[test]
fn max_min_semantics() {
    // (a, b, max, min) as f32; NaN is any NaN.
    let nan = f32::NAN;
    let cases = [
        (0.0f32, -0.0f32, 0.0f32, -0.0f32),
        (-0.0, 0.0, 0.0, -0.0),
        (nan, 1.0, 1.0, 1.0),
        (1.0, nan, 1.0, 1.0),
        (nan, -0.0, -0.0, -0.0),
        (nan, nan, nan, nan),
        (f32::INFINITY, nan, f32::INFINITY, f32::INFINITY),
        (-2.0, 3.0, 3.0, -2.0),
        (f32::NEG_INFINITY, -0.0, -0.0, f32::NEG_INFINITY),
    ];
    for level in Level::available() {
        let k = kernels(DataType::Float32, level);
        let a: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let b: Vec<f32> = cases.iter().map(|c| c.1).collect();
        for (op, pick) in [(BinOp::Max, 2), (BinOp::Min, 3)] {
            let mut d = vec![0f32; cases.len()];
            // SAFETY: three buffers of `cases.len()` f32.
            unsafe { (k.binary[op as usize])(d.as_mut_ptr().cast(), a.as_ptr().cast(), b.as_ptr().cast(), d.len()) };
            for (i, c) in cases.iter().enumerate() {
                let want = if pick == 2 { c.2 } else { c.3 };
                assert!(
                    d[i].to_bits() == want.to_bits() || (d[i].is_nan() && want.is_nan()),
                    "{level} {op:?}({}, {}) = {}, want {want}",
                    c.0,
                    c.1,
                    d[i]
                );
            }
        }
    }
}

/// The multi-destination kernels: every destination holds what the scalar binary kernel
/// computes, whether the destinations share an alignment (the streaming path) or not,
/// and with one destination over an input (in place).
#[test]
fn binary_multi_matches_scalar() {
    let mut r = Rng(0x5eed_0f4a_1100);
    for level in Level::available() {
        for dt in DataType::ALL {
            let (k, s) = (kernels(dt, level), scalar::KERNELS[dt as usize]);
            for n in (0..=70).chain([1000, 4099]) {
                for op in BinOp::ALL {
                    for nt in [false, true] {
                        let bytes = n * dt.size();
                        let (mut a, b) = (Buf::random(bytes, dt, &mut r), Buf::random(bytes, dt, &mut r));
                        let mut b = b;
                        let mut want = Buf::new(bytes, 0);
                        let (pa, pb) = (a.ptr(0), b.ptr(0));
                        // SAFETY: each buffer holds `bytes` bytes past its pointer.
                        unsafe { s.binary[op as usize](want.ptr(0), pa, pb, n) };
                        let want = want.bytes(0, bytes).to_vec();
                        let shift = if r.below(2) == 0 { 0 } else { dt.size() * (1 + r.below(3)) };
                        let (mut d1, mut d2) = (Buf::new(bytes, 0x5a), Buf::new(bytes, 0x5a));
                        let in_place = r.below(3) == 0;
                        let mut dsts = vec![d1.ptr(0), d2.ptr(shift)];
                        if in_place {
                            dsts.push(pa);
                        }
                        // SAFETY: destinations are disjoint buffers of `bytes` bytes, or
                        // exactly input `a`.
                        unsafe { (k.binary_multi[op as usize])(&dsts, pa, pb, n, nt) };
                        let what = || format!("{level} {dt} {op:?} nt={nt} n={n} shift={shift} in_place={in_place}");
                        assert_same(dt, &want, d1.bytes(0, bytes), &what);
                        assert_same(dt, &want, d2.bytes(shift, bytes), &what);
                        if in_place {
                            assert_same(dt, &want, a.bytes(0, bytes), &what);
                        }
                    }
                }
            }
        }
    }
}
