//! Shared test support: running ranks as threads with a deadline, per-type arithmetic
//! written independently of the library (in f64 and wrapping integers), and input
//! generators whose reductions are exact in any order.
#![allow(dead_code)]

pub mod matrix;
pub mod procs;

use std::time::Duration;

use half::{bf16, f16};
use oxccl::{Comm, Config, DataType, Element, F8E4M3, F8E5M2, ReduceOp};

/// Runs `f` on every rank of a fresh thread-rank communicator of `n` ranks and returns
/// the results in rank order. Fails the test (instead of hanging it) when a rank does
/// not finish within `deadline`, and propagates any rank's panic.
pub fn run_ranks<R: Send + 'static>(
    n: usize,
    cfg: &Config,
    deadline: Duration,
    f: impl Fn(Comm) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let comms = Comm::init_all_with(n, cfg).expect("init_all");
    let f = std::sync::Arc::new(f);
    let (tx, rx) = std::sync::mpsc::channel();
    for comm in comms {
        let (f, tx) = (f.clone(), tx.clone());
        let rank = comm.rank();
        std::thread::Builder::new()
            .name(format!("rank{rank}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(comm)));
                let _ = tx.send((rank, r));
            })
            .unwrap();
    }
    drop(tx);
    let start = std::time::Instant::now();
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let left = (deadline + Duration::from_secs(5)).saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((rank, Ok(r))) => out[rank] = Some(r),
            Ok((rank, Err(p))) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("rank {rank} of {n} panicked: {msg}");
            }
            Err(_) => {
                let missing: Vec<usize> = (0..n).filter(|r| out[*r].is_none()).collect();
                panic!("deadline: ranks {missing:?} of {n} did not finish within {deadline:?} (hang)");
            }
        }
    }
    out.into_iter().map(|r| r.unwrap()).collect()
}

/// Arithmetic on one element type, written for the tests: floats in f64 (exact for the
/// generated data), integers wrapping in their own width.
pub trait Val: Element + PartialEq {
    /// Whether the type is an integer.
    const INT: bool;
    /// Largest integer M such that every integer in [-M, M] is exact.
    const EXACT: i64;
    fn from_i64(v: i64) -> Self;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// `x / n` as the library defines Avg: integers truncate, narrow floats divide in f32.
    fn avg(sum: Self, n: usize) -> Self;
    fn add(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn max(a: Self, b: Self) -> Self;
    fn min(a: Self, b: Self) -> Self;
    fn bits(self) -> u64;
    fn is_nan(self) -> bool {
        !Self::INT && self.to_f64().is_nan()
    }
    /// Same value: equal bits, or both NaN.
    fn same(a: Self, b: Self) -> bool {
        a.bits() == b.bits() || (a.is_nan() && b.is_nan())
    }
    /// A value built from arbitrary bits (for integers: any; for floats: a finite value).
    fn from_random(bits: u64) -> Self;
}

macro_rules! int_val {
    ($($t:ty),*) => {$(
        impl Val for $t {
            const INT: bool = true;
            const EXACT: i64 = i64::MAX;
            fn from_i64(v: i64) -> Self { v as $t }
            fn to_f64(self) -> f64 { self as f64 }
            fn from_f64(v: f64) -> Self { v as $t }
            fn avg(sum: Self, n: usize) -> Self { sum / (n as $t) }
            fn add(a: Self, b: Self) -> Self { a.wrapping_add(b) }
            fn mul(a: Self, b: Self) -> Self { a.wrapping_mul(b) }
            fn max(a: Self, b: Self) -> Self { if a > b { a } else { b } }
            fn min(a: Self, b: Self) -> Self { if a < b { a } else { b } }
            fn bits(self) -> u64 { self as u64 }
            fn from_random(bits: u64) -> Self { bits as $t }
        }
    )*};
}
int_val!(i8, u8, i32, u32, i64, u64);

macro_rules! float_val {
    ($t:ty, $exact:expr, $to:expr, $from:expr, $bits:expr, $avg:expr, $rand:expr) => {
        impl Val for $t {
            const INT: bool = false;
            const EXACT: i64 = $exact;
            fn from_i64(v: i64) -> Self {
                $from(v as f64)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn avg(sum: Self, n: usize) -> Self {
                $avg(sum, n)
            }
            fn add(a: Self, b: Self) -> Self {
                $from($to(a) + $to(b))
            }
            fn mul(a: Self, b: Self) -> Self {
                $from($to(a) * $to(b))
            }
            fn max(a: Self, b: Self) -> Self {
                $from($to(a).max($to(b)))
            }
            fn min(a: Self, b: Self) -> Self {
                $from($to(a).min($to(b)))
            }
            fn bits(self) -> u64 {
                $bits(self)
            }
            fn from_random(bits: u64) -> Self {
                $rand(bits)
            }
        }
    };
}

fn finite_or<T: Copy>(v: T, ok: bool, fallback: T) -> T {
    if ok { v } else { fallback }
}

float_val!(
    f32,
    1 << 24,
    |x: f32| x as f64,
    |v: f64| v as f32,
    |x: f32| x.to_bits() as u64,
    |s: f32, n: usize| s / n as f32,
    |b: u64| {
        let v = f32::from_bits(b as u32);
        finite_or(v, v.is_finite(), 1.5)
    }
);
float_val!(f64, 1 << 53, |x: f64| x, |v: f64| v, |x: f64| x.to_bits(), |s: f64, n: usize| s / n as f64, |b: u64| {
    let v = f64::from_bits(b);
    finite_or(v, v.is_finite(), -2.5)
});
float_val!(
    f16,
    2048,
    |x: f16| x.to_f64(),
    f16::from_f64,
    |x: f16| x.to_bits() as u64,
    |s: f16, n: usize| f16::from_f32(s.to_f32() / n as f32),
    |b: u64| {
        let v = f16::from_bits(b as u16);
        finite_or(v, v.is_finite(), f16::from_f32(0.25))
    }
);
float_val!(
    bf16,
    256,
    |x: bf16| x.to_f64(),
    bf16::from_f64,
    |x: bf16| x.to_bits() as u64,
    |s: bf16, n: usize| bf16::from_f32(s.to_f32() / n as f32),
    |b: u64| {
        let v = bf16::from_bits(b as u16);
        finite_or(v, v.is_finite(), bf16::from_f32(-0.75))
    }
);
float_val!(
    F8E4M3,
    16,
    |x: F8E4M3| x.to_f32() as f64,
    |v: f64| F8E4M3::from_f32(v as f32),
    |x: F8E4M3| x.to_bits() as u64,
    |s: F8E4M3, n: usize| F8E4M3::from_f32(s.to_f32() / n as f32),
    |b: u64| {
        let v = F8E4M3::from_bits(b as u8);
        finite_or(v, v.to_f32().is_finite(), F8E4M3::from_f32(3.0))
    }
);
float_val!(
    F8E5M2,
    8,
    |x: F8E5M2| x.to_f32() as f64,
    |v: f64| F8E5M2::from_f32(v as f32),
    |x: F8E5M2| x.to_bits() as u64,
    |s: F8E5M2, n: usize| F8E5M2::from_f32(s.to_f32() / n as f32),
    |b: u64| {
        let v = F8E5M2::from_bits(b as u8);
        finite_or(v, v.to_f32().is_finite(), F8E5M2::from_f32(-6.0))
    }
);

/// A 64-bit mix of the inputs (splitmix64).
pub fn hash(a: u64, b: u64, c: u64) -> u64 {
    let mut z =
        a.wrapping_mul(0x9E3779B97F4A7C15) ^ b.wrapping_mul(0xC2B2AE3D27D4EB4F) ^ c.wrapping_add(0x165667B19E3779F9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

/// The scalar used for PreMulSum tests: 2 (exact in every type).
pub fn premul_scalar<T: Val>() -> T {
    T::from_i64(2)
}

/// Every op the tests use, with PreMulSum's scalar of type `T`.
pub fn all_ops<T: Val>() -> Vec<ReduceOp> {
    let mut v = ReduceOp::BUILTIN.to_vec();
    v.push(ReduceOp::pre_mul_sum(premul_scalar::<T>()));
    v
}

/// Input element `i` of `rank` for `op` among `n` ranks: values whose reduction is exact in
/// any order (integers wrap identically in any order anyway).
pub fn input<T: Val>(op: &ReduceOp, n: usize, rank: usize, i: usize, salt: u64) -> T {
    let h = hash(rank as u64, i as u64, salt);
    if T::INT {
        return T::from_random(h);
    }
    match op {
        ReduceOp::Prod => T::from_i64([1, -1, 2, -2][(h % 4) as usize]),
        ReduceOp::Max | ReduceOp::Min => {
            // Random finite values; no -0.0, whose order against +0.0 maxNum leaves open.
            let v = T::from_random(h);
            if v.to_f64() == 0.0 { T::from_i64(0) } else { v }
        }
        _ => {
            let k = (T::EXACT / n as i64).max(1);
            T::from_i64((h % (2 * k as u64 + 1)) as i64 - k)
        }
    }
}

/// The reduction of element `i` over all ranks, by the test's own arithmetic.
pub fn reduced<T: Val>(op: &ReduceOp, n: usize, i: usize, salt: u64) -> T {
    let x = |r| input::<T>(op, n, r, i, salt);
    let fold = |f: fn(T, T) -> T| (1..n).fold(x(0), |acc, r| f(acc, x(r)));
    match op {
        ReduceOp::Sum => fold(T::add),
        ReduceOp::Prod => fold(T::mul),
        ReduceOp::Max => fold(T::max),
        ReduceOp::Min => fold(T::min),
        ReduceOp::Avg => T::avg(fold(T::add), n),
        ReduceOp::PreMulSum(_) => {
            let s = premul_scalar::<T>();
            (1..n).fold(T::mul(x(0), s), |acc, r| T::add(acc, T::mul(x(r), s)))
        }
    }
}

/// Compares `got` with `want(i)`, returning a description of the first mismatches.
pub fn check<T: Val>(what: &str, got: &[T], want: impl Fn(usize) -> T) -> Result<(), String> {
    let mut bad = Vec::new();
    let mut nbad = 0;
    for (i, g) in got.iter().enumerate() {
        let w = want(i);
        if !T::same(*g, w) {
            nbad += 1;
            if bad.len() < 4 {
                bad.push(format!("[{i}] got {g:?} want {w:?}"));
            }
        }
    }
    if nbad == 0 { Ok(()) } else { Err(format!("{what}: {nbad} of {} wrong: {}", got.len(), bad.join(", "))) }
}

/// The data types, for messages.
pub fn dtype_of<T: Element>() -> DataType {
    T::DTYPE
}
