//! Every level against the portable kernels (`scalar.rs`), bit for bit (any NaN equals
//! any NaN), on every data type and op: lengths 0..=200 and a few large odd ones,
//! unaligned inputs and outputs, in-place, random inputs with NaN, infinities, signed
//! zeros, subnormals and values that overflow narrow types; temporal and non-temporal.
//! Each kernel must also leave every byte outside its output untouched.
//!
//! This file holds the harness every test shares (random inputs, guarded buffers, the
//! comparison) and the tests of the dispatch (level selection, the reducer's
//! composition); the kernels' tests are one file per family: `binary.rs` (Sum, Prod, Max,
//! Min, one and several destinations), `scaled.rs` (the kernels with a scalar argument:
//! PreMulSum's multiply-add and scale, Avg's division), `copy.rs` (the bulk copies).

use super::*;

mod binary;
mod copy;
mod scaled;

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

/// The levels to hold to the portable kernels (all but those kernels themselves).
fn simd_levels() -> Vec<Level> {
    let levels: Vec<Level> = Level::available().into_iter().filter(|l| *l != Level::Scalar).collect();
    if levels.is_empty() {
        eprintln!("no SIMD level on this CPU: only the portable kernels were tested");
    }
    levels
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
