//! Every collective x data type x op x rank count x size class x placement, with ranks as
//! threads, checked element by element against the tests' own reference.

mod common;

use std::time::Duration;

use common::matrix;
use common::*;
use half::{bf16, f16};
use oxccl::{Config, ReduceOp};

const DEADLINE: Duration = Duration::from_secs(240);

fn run_matrix(n: usize, cfg: Config) {
    let errs = run_ranks(n, &cfg.slot_bytes(matrix::SLOT).nslots(4), DEADLINE, |mut comm| matrix::all_types(&mut comm));
    let errs: Vec<String> = errs.into_iter().flatten().collect();
    assert!(
        errs.is_empty(),
        "{} failures:\n{}",
        errs.len(),
        errs.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

macro_rules! matrix_tests {
    ($($name:ident: $n:expr, $algo:expr;)*) => {$(
        #[test]
        fn $name() {
            let cfg = match $algo {
                "" => Config::new(),
                a => Config::new().algo_spec(a),
            };
            run_matrix($n, cfg);
        }
    )*};
}

matrix_tests! {
    one_rank: 1, "";
    two_ranks_auto: 2, "";
    two_ranks_ring: 2, "all_reduce:ring";
    two_ranks_tree: 2, "all_reduce:tree";
    two_ranks_oneshot: 2, "all_reduce:oneshot";
    three_ranks_auto: 3, "";
    three_ranks_ring: 3, "all_reduce:ring";
    three_ranks_tree: 3, "all_reduce:tree";
    three_ranks_oneshot: 3, "all_reduce:oneshot";
    four_ranks_auto: 4, "";
    four_ranks_ring: 4, "all_reduce:ring";
    four_ranks_tree: 4, "all_reduce:tree";
    four_ranks_oneshot: 4, "all_reduce:oneshot";
    eight_ranks_ring: 8, "all_reduce:ring";
    eight_ranks_tree: 8, "all_reduce:tree";
    eight_ranks_oneshot: 8, "all_reduce:oneshot";
}

/// Several MiB per call, with the default slot size: the pipelined paths at full size.
#[test]
fn several_mebibytes() {
    for n in [2usize, 3, 4, 8] {
        for algo in ["all_reduce:ring", "all_reduce:tree", ""] {
            let cfg = if algo.is_empty() { Config::new() } else { Config::new().algo_spec(algo) };
            let errs = run_ranks(n, &cfg, DEADLINE, move |mut comm| {
                let me = comm.rank();
                let mut errs = Vec::new();
                let count = (3 << 20) / 4 + 5;
                for (salt, op) in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max].into_iter().enumerate() {
                    let salt = salt as u64;
                    let send: Vec<f32> = (0..count).map(|i| input::<f32>(&op, n, me, i, salt)).collect();
                    let mut recv = vec![0f32; count];
                    comm.all_reduce(&send, &mut recv, op).unwrap();
                    if let Err(e) =
                        check(&format!("f32 all_reduce {op} n={n} {algo}"), &recv, |i| reduced::<f32>(&op, n, i, salt))
                    {
                        errs.push(e);
                    }
                    let send: Vec<bf16> = (0..count).map(|i| input::<bf16>(&op, n, me, i, salt)).collect();
                    let mut buf = send.clone();
                    comm.all_reduce_in_place(&mut buf, op).unwrap();
                    if let Err(e) = check(&format!("bf16 all_reduce in-place {op} n={n} {algo}"), &buf, |i| {
                        reduced::<bf16>(&op, n, i, salt)
                    }) {
                        errs.push(e);
                    }
                }
                let c = (1 << 20) + 3;
                let mine: Vec<i32> = (0..c).map(|i| (i * 31 + me) as i32).collect();
                let mut all = vec![0i32; c * n];
                comm.all_gather(&mine, &mut all).unwrap();
                if let Err(e) = check("i32 all_gather", &all, |i| ((i % c) * 31 + i / c) as i32) {
                    errs.push(e);
                }
                let mut b = if me == n - 1 { mine.clone() } else { vec![0; c] };
                comm.broadcast_in_place(&mut b, n - 1).unwrap();
                if let Err(e) = check("i32 broadcast", &b, |i| (i * 31 + n - 1) as i32) {
                    errs.push(e);
                }
                errs
            });
            let errs: Vec<String> = errs.into_iter().flatten().collect();
            assert!(errs.is_empty(), "{}", errs.join("\n"));
        }
    }
}

/// Ring, tree and one-shot must give identical bits on exact data, on every rank.
#[test]
fn algorithms_agree_bit_for_bit() {
    for n in [2usize, 3, 5] {
        let mut results = Vec::new();
        for algo in ["all_reduce:ring", "all_reduce:tree", "all_reduce:oneshot"] {
            let r = run_ranks(n, &Config::new().algo_spec(algo).slot_bytes(4096), DEADLINE, move |mut comm| {
                let me = comm.rank();
                let op = ReduceOp::Sum;
                let send: Vec<f16> = (0..10_007).map(|i| input::<f16>(&op, n, me, i, 99)).collect();
                let mut recv = vec![f16::ZERO; send.len()];
                comm.all_reduce(&send, &mut recv, op).unwrap();
                recv.iter().map(|x| x.to_bits()).collect::<Vec<u16>>()
            });
            results.push(r);
        }
        for r in &results[1..] {
            assert_eq!(r, &results[0], "n={n}");
        }
    }
}

/// Random floats: no exactness, so compare with an f64 reference within a tolerance,
/// and require every rank to hold identical bits.
#[test]
fn random_floats_within_tolerance() {
    for n in [2usize, 3, 4, 8] {
        for algo in ["all_reduce:ring", "all_reduce:tree", "all_reduce:oneshot"] {
            let out = run_ranks(n, &Config::new().algo_spec(algo).slot_bytes(8192), DEADLINE, move |mut comm| {
                let me = comm.rank();
                let x = |r: usize, i: usize| (hash(r as u64, i as u64, 5) % 2_000_001) as f64 / 1_000_000.0 - 1.0;
                let count = 30_001;
                let s32: Vec<f32> = (0..count).map(|i| x(me, i) as f32).collect();
                let sbf: Vec<bf16> = (0..count).map(|i| bf16::from_f64(x(me, i))).collect();
                let (mut r32, mut rbf) = (vec![0f32; count], vec![bf16::ZERO; count]);
                comm.all_reduce(&s32, &mut r32, ReduceOp::Avg).unwrap();
                comm.all_reduce(&sbf, &mut rbf, ReduceOp::Sum).unwrap();
                for i in 0..count {
                    let exact32: f64 = (0..n).map(|r| x(r, i) as f32 as f64).sum::<f64>() / n as f64;
                    let tol32 = 4.0 * n as f64 * f32::EPSILON as f64;
                    assert!((r32[i] as f64 - exact32).abs() <= tol32, "f32 avg [{i}] {} vs {exact32}", r32[i]);
                    let exactbf: f64 = (0..n).map(|r| bf16::from_f64(x(r, i)).to_f64()).sum();
                    let tolbf = n as f64 * 2f64.powi(-7) * (0..n).map(|r| x(r, i).abs()).sum::<f64>().max(1.0);
                    assert!((rbf[i].to_f64() - exactbf).abs() <= tolbf, "bf16 sum [{i}] {} vs {exactbf}", rbf[i]);
                }
                (
                    r32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    rbf.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                )
            });
            for r in &out[1..] {
                assert!(r == &out[0], "ranks disagree (n={n} {algo})");
            }
        }
    }
}

/// Max and Min ignore NaN: the result is NaN only where every rank holds NaN.
#[test]
fn max_min_ignore_nan() {
    let n = 3;
    let out = run_ranks(n, &Config::new(), DEADLINE, move |mut comm| {
        let me = comm.rank() as f32;
        // Element 0: NaN on rank 0 only; element 1: NaN everywhere; element 2: no NaN.
        let send = [if me == 0.0 { f32::NAN } else { me }, f32::NAN, -me];
        let (mut mx, mut mn) = ([0f32; 3], [0f32; 3]);
        comm.all_reduce(&send, &mut mx, ReduceOp::Max).unwrap();
        comm.all_reduce(&send, &mut mn, ReduceOp::Min).unwrap();
        (mx, mn)
    });
    for (mx, mn) in out {
        assert_eq!((mx[0], mn[0]), (2.0, 1.0));
        assert!(mx[1].is_nan() && mn[1].is_nan());
        assert_eq!((mx[2], mn[2]), (0.0, -2.0));
    }
}
