//! Every level against the portable kernels (`scalar.rs`), bit for bit (any NaN equals
//! any NaN), on every data type and op: lengths 0..=200 and a few large odd ones,
//! unaligned inputs and outputs, in-place, random inputs with NaN, infinities, signed
//! zeros, subnormals and values that overflow narrow types; temporal and non-temporal.
//! Each kernel must also leave every byte outside its output untouched.

use super::*;

/// xorshift64*: small, reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bit layout of a float type: (exponent bits, mantissa bits).
fn float_layout(dt: DataType) -> Option<(u32, u32)> {
    match dt {
        DataType::Float16 => Some((5, 10)),
        DataType::Float32 => Some((8, 23)),
        DataType::Float64 => Some((11, 52)),
        DataType::Bfloat16 => Some((8, 7)),
        _ => None,
    }
}

/// Whether raw bits of `dt` are a NaN.
fn is_nan(dt: DataType, b: u64) -> bool {
    match dt {
        DataType::Float16 => b & 0x7fff > 0x7c00,
        DataType::Bfloat16 => b & 0x7fff > 0x7f80,
        DataType::Float32 => b & 0x7fff_ffff > 0x7f80_0000,
        DataType::Float64 => b & 0x7fff_ffff_ffff_ffff > 0x7ff0_0000_0000_0000,
        DataType::Float8E4M3 => b & 0x7f == 0x7f,
        DataType::Float8E5M2 => b & 0x7f > 0x7c,
        _ => false,
    }
}

/// A random element of `dt` (raw bits): integers are random bits or extremes; floats mix
/// specials (NaN, infinities, signed zeros, subnormals, the largest finite values),
/// random bit patterns and values of similar magnitude (so sums round and tie); fp8 is
/// random bytes.
fn random_elem(dt: DataType, r: &mut Rng) -> u64 {
    let bits = dt.size() as u32 * 8;
    let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
    let x = r.next();
    let Some((e, m)) = float_layout(dt) else {
        // Integers (and fp8, whose every byte is interesting).
        let extremes = [0, 1, mask, mask >> 1, (mask >> 1) + 1];
        return if x.is_multiple_of(8) { extremes[r.below(5)] } else { r.next() & mask };
    };
    let sign = 1u64 << (e + m);
    let exp_max = (1u64 << e) - 1;
    let man = r.next() & ((1 << m) - 1);
    let s = if x & 1 == 0 { 0 } else { sign };
    match (x >> 1) % 16 {
        0 => s,                                                  // ±0
        1 => s | exp_max << m,                                   // ±inf
        2 => s | exp_max << m | man.max(1),                      // NaN, any payload
        3 => s | man.max(1),                                     // subnormal
        4 => s | (exp_max - 1) << m | man,                       // huge: overflows when summed
        5..=8 => r.next() & mask,                                // any bits
        _ => s | ((exp_max >> 1) - 2 + (x >> 8) % 5) << m | man, // near 1.0
    }
}

/// A 64-byte aligned buffer of `len` bytes (plus slack for offsets), random content.
struct Buf {
    mem: Vec<u8>,
    base: usize,
}

impl Buf {
    const SLACK: usize = 192;

    /// Every byte `fill`.
    fn new(len: usize, fill: u8) -> Buf {
        let mut mem = vec![fill; len + Self::SLACK];
        let base = mem.as_mut_ptr().align_offset(64);
        Buf { mem, base }
    }

    /// Random bytes.
    fn random_bytes(len: usize, r: &mut Rng) -> Buf {
        let mut b = Buf::new(len, 0);
        for c in b.mem.chunks_mut(8) {
            c.copy_from_slice(&r.next().to_le_bytes()[..c.len()]);
        }
        b
    }

    /// Random elements of `dt` (see [`random_elem`]).
    fn random(len: usize, dt: DataType, r: &mut Rng) -> Buf {
        let mut b = Buf::new(len, 0);
        let size = dt.size();
        // Element-sized chunks from the allocation start: offsets that are not multiples
        // of the size see mixed bytes, which is fine (still random).
        for c in b.mem.chunks_exact_mut(size) {
            c.copy_from_slice(&random_elem(dt, r).to_le_bytes()[..size]);
        }
        b
    }

    fn ptr(&mut self, off: usize) -> *mut u8 {
        assert!(self.base + off + 64 <= self.mem.len());
        // SAFETY: in bounds (asserted above, leaving room for the data).
        unsafe { self.mem.as_mut_ptr().add(self.base + off) }
    }

    fn bytes(&self, off: usize, len: usize) -> &[u8] {
        &self.mem[self.base + off..self.base + off + len]
    }
}

/// Compares `n` elements of `dt`: same bits, or both NaN.
fn assert_same(dt: DataType, want: &[u8], got: &[u8], what: &dyn Fn() -> String) {
    if want == got {
        return; // the common case, checked by memcmp
    }
    let size = dt.size();
    for (i, (w, g)) in want.chunks(size).zip(got.chunks(size)).enumerate() {
        let load = |c: &[u8]| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            u64::from_le_bytes(b)
        };
        let (w, g) = (load(w), load(g));
        if w != g && !(is_nan(dt, w) && is_nan(dt, g)) {
            panic!("{}: element {i}: want {w:#x}, got {g:#x}", what());
        }
    }
}

/// Where the output goes.
#[derive(Clone, Copy, Debug)]
enum Out {
    /// A separate buffer, `dst` byte offset.
    Separate(usize),
    /// Over the first input.
    OverA,
    /// Over the second input.
    OverB,
}

/// A byte offset of `size`-byte elements: usually whole elements (0..=7), sometimes
/// a misaligned byte offset (for types wider than a byte).
fn random_offset(size: usize, r: &mut Rng) -> usize {
    match r.below(10) {
        0..=2 => 0,
        3 if size > 1 => 1 + r.below(size - 1),
        _ => size * r.below(8),
    }
}

/// The lengths to test: all of 0..=200 and some large odd ones (larger in release
/// builds, where the test takes as long as a debug build does with the smaller ones).
fn lengths() -> Vec<usize> {
    let large: &[usize] = if cfg!(debug_assertions) { &[4099, 16411] } else { &[4099, 16411, 65537, 1 << 20 | 3] };
    (0..=200).chain(large.iter().copied()).collect()
}

/// A kernel with its scalar argument: what `check2` runs.
#[derive(Clone, Copy)]
enum Call {
    Binary(BinaryFn),
    MulAdd(MulAddFn, u64),
    /// Reads only the first input.
    Scale(ScaleFn, u64),
    /// Reads only the first input.
    Div(DivFn, u64),
}

impl Call {
    /// # Safety
    /// `a`, `b` readable and `dst` writable for `n` elements; `dst` equal to or disjoint
    /// from each input.
    unsafe fn run(self, dst: *mut u8, a: *const u8, b: *const u8, n: usize) {
        // SAFETY: forwarded from the caller's contract, which is each kernel's.
        unsafe {
            match self {
                Call::Binary(f) => f(dst, a, b, n),
                Call::MulAdd(f, s) => f(dst, a, b, n, s),
                Call::Scale(f, s) => f(dst, a, n, s),
                Call::Div(f, d) => f(dst, a, n, d),
            }
        }
    }
}

/// Runs `kernel(dst, a, b, n)` and the reference on the same random inputs; checks the
/// output and that no byte outside it changed.
fn check2(dt: DataType, n: usize, out: Out, r: &mut Rng, kernel: Call, reference: Call, what: &dyn Fn() -> String) {
    let bytes = n * dt.size();
    let (oa, ob) = (random_offset(dt.size(), r), random_offset(dt.size(), r));
    let (mut a, mut b) = (Buf::random(bytes, dt, r), Buf::random(bytes, dt, r));
    let mut want = Buf::new(bytes, 0);
    let (pa, pb) = (a.ptr(oa), b.ptr(ob));
    // SAFETY: the buffers hold `bytes` bytes (plus slack) past each pointer; disjoint.
    unsafe { reference.run(want.ptr(0), pa, pb, n) };
    let want = want.bytes(0, bytes).to_vec();
    let (a0, b0) = (a.mem.clone(), b.mem.clone());
    let what = || format!("{} (n {n}, a +{oa}, b +{ob}, out {out:?})", what());
    match out {
        Out::Separate(od) => {
            let mut d = Buf::new(bytes, 0xa5);
            let pd = d.ptr(od);
            // SAFETY: as above; `d` is a third, disjoint buffer.
            unsafe { kernel.run(pd, pa, pb, n) };
            assert_same(dt, &want, d.bytes(od, bytes), &what);
            let untouched = Buf::new(bytes, 0xa5).mem;
            let end = d.base + od + bytes;
            let outside_same = d.mem[..end - bytes] == untouched[..end - bytes] && d.mem[end..] == untouched[end..];
            assert!(outside_same, "{}: wrote outside dst", what());
            assert_eq!((a.mem == a0, b.mem == b0), (true, true), "{}: input changed", what());
        }
        Out::OverA | Out::OverB => {
            let (dst, buf, orig, off) = match out {
                Out::OverA => (pa, &a, &a0, oa),
                _ => (pb, &b, &b0, ob),
            };
            // SAFETY: as above, in place: `dst` is exactly one of the inputs.
            unsafe { kernel.run(dst, pa, pb, n) };
            assert_same(dt, &want, buf.bytes(off, bytes), &what);
            let lo = buf.base + off;
            assert!(buf.mem[..lo] == orig[..lo], "{}: wrote before dst", what());
            assert!(buf.mem[lo + bytes..] == orig[lo + bytes..], "{}: wrote after dst", what());
        }
    }
}

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

/// The levels to hold to the portable kernels (all but those kernels themselves).
fn simd_levels() -> Vec<Level> {
    let levels: Vec<Level> = Level::available().into_iter().filter(|l| *l != Level::Scalar).collect();
    if levels.is_empty() {
        eprintln!("no SIMD level on this CPU: only the portable kernels were tested");
    }
    levels
}

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

/// A copy routine under test.
type CopyFn = unsafe fn(*mut u8, *const u8, usize);

/// `copy` without streaming stores.
///
/// # Safety
/// As [`copy`].
unsafe fn copy_temporal(dst: *mut u8, src: *const u8, bytes: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { copy(dst, src, bytes, false) }
}

/// `copy` asking for streaming stores.
///
/// # Safety
/// As [`copy`].
unsafe fn copy_nt(dst: *mut u8, src: *const u8, bytes: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { copy(dst, src, bytes, true) }
}

/// `copy`, temporal and streaming, at every level: sizes around the block and threshold
/// sizes, misaligned source and destination.
#[test]
fn copy_copies_exactly() {
    let mut r = Rng(77);
    let sizes = [0, 1, 63, 64, 65, 200, 4095, 4096, 4097, 100_003];
    for bytes in sizes {
        for _ in 0..4 {
            let (os, od) = (r.below(64), r.below(64));
            let mut src = Buf::random_bytes(bytes, &mut r);
            let ps = src.ptr(os);
            let want = src.bytes(os, bytes).to_vec();
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut runs: Vec<(&str, CopyFn)> = vec![("copy", copy_temporal), ("copy nt", copy_nt)];
            #[cfg(target_arch = "x86_64")]
            {
                if Level::Avx2.is_available() {
                    runs.push(("avx2", avx2::copy_nt));
                }
                if Level::Avx512.is_available() {
                    runs.push(("avx512", avx512::copy_nt));
                }
            }
            for (name, f) in runs {
                let mut dst = Buf::new(bytes, 0x5a);
                let pd = dst.ptr(od);
                // SAFETY: `bytes` bytes at each pointer; separate buffers; the level was
                // checked available.
                unsafe { f(pd, ps, bytes) };
                store_fence();
                assert!(dst.bytes(od, bytes) == want, "{name} {bytes} bytes +{os} -> +{od}");
                let lo = dst.base + od;
                assert!(dst.mem[..lo].iter().all(|v| *v == 0x5a), "{name}: wrote before");
                assert!(dst.mem[lo + bytes..].iter().all(|v| *v == 0x5a), "{name}: wrote after");
            }
        }
    }
}

#[test]
fn level_selection() {
    use Level::*;
    assert_eq!(resolve(None, Avx512), Ok(Avx512));
    assert_eq!(resolve(Some(""), Avx2), Ok(Avx2));
    assert_eq!(resolve(Some("avx2"), Avx512), Ok(Avx2));
    assert_eq!(resolve(Some("AVX512"), Avx512), Ok(Avx512));
    assert_eq!(resolve(Some("avx512"), Avx2), Ok(Avx2));
    assert_eq!(resolve(Some("avx2"), Scalar), Ok(Scalar));
    assert_eq!(resolve(Some(" scalar "), Avx512), Ok(Scalar));
    assert!(resolve(Some("sse9"), Avx2).is_err());
    let avail = Level::available();
    assert_eq!(avail[0], Scalar);
    assert_eq!(*avail.last().unwrap(), Level::best());
    assert!(Level::selected() <= Level::best());
    for l in Level::ALL {
        assert_eq!(l.name().parse::<Level>(), Ok(l));
    }
}

/// The reducer composes the kernels as the executor will: Avg and PreMulSum.
#[test]
fn reducer_avg_and_premulsum() {
    for level in Level::available() {
        let n = 37;
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| 2.0 * i as f32).collect();
        let mut d = vec![0f32; n];
        let red = Reducer::with_level(DataType::Float32, ReduceOp::Avg, 2, level).unwrap();
        assert!(red.has_post() && !red.has_pre());
        // SAFETY: buffers of `n` f32; in-place finalize.
        unsafe {
            red.combine(d.as_mut_ptr().cast(), a.as_ptr().cast(), b.as_ptr().cast(), n, false);
            red.finalize(d.as_mut_ptr().cast(), d.as_ptr().cast(), n);
        }
        assert!(d.iter().enumerate().all(|(i, v)| *v == 1.5 * i as f32), "{level} avg");

        let red = Reducer::with_level(DataType::Int32, ReduceOp::pre_mul_sum(3i32), 2, level).unwrap();
        let (x, y): (Vec<i32>, Vec<i32>) = ((0..n as i32).collect(), (0..n as i32).map(|i| -i).collect());
        let mut d = vec![0i32; n];
        // SAFETY: buffers of `n` i32; in-place accumulate.
        unsafe {
            red.load_input(d.as_mut_ptr().cast(), x.as_ptr().cast(), n, false);
            red.combine_input(d.as_mut_ptr().cast(), d.as_ptr().cast(), y.as_ptr().cast(), n, true);
        }
        store_fence();
        assert!(d.iter().all(|v| *v == 0), "{level} premulsum");
        assert!(Reducer::with_level(DataType::Int8, ReduceOp::pre_mul_sum(1.0f32), 2, level).is_err());
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
