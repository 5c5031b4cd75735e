//! The collective matrix every multi-rank test runs: every collective x data type x op x
//! size class x placement, checked element by element against the tests' reference.
#![allow(dead_code)]

use super::*;
use half::{bf16, f16};
use oxccl::{Comm, F8E4M3, F8E5M2, ReduceOp};

/// Small slots, so "a chunk", "a chunk ± 1" and "several chunks" stay cheap.
pub const SLOT: usize = 1024;

fn sizes<T: Val>() -> Vec<usize> {
    let chunk = SLOT / std::mem::size_of::<T>();
    vec![0, 1, 7, chunk - 1, chunk, chunk + 1, 5 * chunk + 3]
}

fn fill<T: Val>(op: &ReduceOp, n: usize, rank: usize, len: usize, salt: u64) -> Vec<T> {
    (0..len).map(|i| input::<T>(op, n, rank, i, salt)).collect()
}

/// Runs every collective on `T` for every size, op and placement; returns the failures.
pub fn matrix<T: Val>(comm: &mut Comm, errs: &mut Vec<String>) {
    let (n, me) = (comm.size(), comm.rank());
    let t = dtype_of::<T>();
    let mut salt = 0u64;
    let mut rec = |r: Result<(), String>| {
        if let Err(e) = r {
            errs.push(format!("rank {me}/{n} {t}: {e}"));
        }
    };
    for count in sizes::<T>() {
        for op in all_ops::<T>() {
            salt += 1;
            let ctx = format!("count={count} op={op}");
            // all_reduce, out of place and in place
            let send = fill::<T>(&op, n, me, count, salt);
            let mut recv = vec![T::default(); count];
            comm.all_reduce(&send, &mut recv, op).unwrap();
            rec(check(&format!("all_reduce {ctx}"), &recv, |i| reduced::<T>(&op, n, i, salt)));
            let mut buf = send.clone();
            comm.all_reduce_in_place(&mut buf, op).unwrap();
            rec(check(&format!("all_reduce in-place {ctx}"), &buf, |i| reduced::<T>(&op, n, i, salt)));
            // reduce to the first and the last rank
            for root in [0, n - 1] {
                let mut recv = vec![T::default(); if me == root { count } else { 0 }];
                comm.reduce(&send, &mut recv, op, root).unwrap();
                if me == root {
                    rec(check(&format!("reduce root={root} {ctx}"), &recv, |i| reduced::<T>(&op, n, i, salt)));
                }
                let mut buf = send.clone();
                comm.reduce_in_place(&mut buf, op, root).unwrap();
                if me == root {
                    rec(check(&format!("reduce in-place root={root} {ctx}"), &buf, |i| reduced::<T>(&op, n, i, salt)));
                }
            }
            // reduce_scatter: block `me` of the n-block reduction
            let big = fill::<T>(&op, n, me, count * n, salt);
            let mut recv = vec![T::default(); count];
            comm.reduce_scatter(&big, &mut recv, op).unwrap();
            rec(check(&format!("reduce_scatter {ctx}"), &recv, |i| reduced::<T>(&op, n, me * count + i, salt)));
            let mut buf = big.clone();
            comm.reduce_scatter_in_place(&mut buf, op).unwrap();
            rec(check(&format!("reduce_scatter in-place {ctx}"), &buf[me * count..(me + 1) * count], |i| {
                reduced::<T>(&op, n, me * count + i, salt)
            }));
        }
        // Data movement: values of every rank, exact copies expected.
        salt += 1;
        let op = ReduceOp::Sum;
        let mine = fill::<T>(&op, n, me, count, salt);
        let of = |r: usize, i: usize| input::<T>(&op, n, r, i, salt);
        let ctx = format!("count={count}");
        let mut all = vec![T::default(); count * n];
        comm.all_gather(&mine, &mut all).unwrap();
        rec(check(&format!("all_gather {ctx}"), &all, |i| of(i / count, i % count)));
        let mut all = vec![T::default(); count * n];
        all[me * count..(me + 1) * count].copy_from_slice(&mine);
        comm.all_gather_in_place(&mut all).unwrap();
        rec(check(&format!("all_gather in-place {ctx}"), &all, |i| of(i / count, i % count)));
        for root in [0, n - 1, n / 2] {
            let mut recv = vec![T::default(); count];
            let send: &[T] = if me == root { &mine } else { &[] };
            comm.broadcast(send, &mut recv, root).unwrap();
            rec(check(&format!("broadcast root={root} {ctx}"), &recv, |i| of(root, i)));
            let mut buf = if me == root { mine.clone() } else { vec![T::default(); count] };
            comm.broadcast_in_place(&mut buf, root).unwrap();
            rec(check(&format!("broadcast in-place root={root} {ctx}"), &buf, |i| of(root, i)));
            let mut g = vec![T::default(); if me == root { count * n } else { 0 }];
            comm.gather(&mine, &mut g, root).unwrap();
            if me == root {
                rec(check(&format!("gather root={root} {ctx}"), &g, |i| of(i / count, i % count)));
            }
            let blocks = fill::<T>(&op, n, me, count * n, salt + 7);
            let mut s = vec![T::default(); count];
            let src: &[T] = if me == root { &blocks } else { &[] };
            comm.scatter(src, &mut s, root).unwrap();
            rec(check(&format!("scatter root={root} {ctx}"), &s, |i| {
                input::<T>(&op, n, root, me * count + i, salt + 7)
            }));
        }
        let blocks = fill::<T>(&op, n, me, count * n, salt + 3);
        let mut got = vec![T::default(); count * n];
        comm.all_to_all(&blocks, &mut got).unwrap();
        rec(check(&format!("all_to_all {ctx}"), &got, |i| {
            input::<T>(&op, n, i / count, me * count + i % count, salt + 3)
        }));
        // A ring of sends and receives in a group, each longer than the FIFO.
        let long = fill::<T>(&op, n, me, count * 3, salt + 5);
        let mut from_prev = vec![T::default(); count * 3];
        comm.group(|g| {
            g.send(&long, (me + 1) % n)?;
            g.recv(&mut from_prev, (me + n - 1) % n)
        })
        .unwrap();
        rec(check(&format!("send/recv ring {ctx}"), &from_prev, |i| input::<T>(&op, n, (me + n - 1) % n, i, salt + 5)));
        comm.barrier().unwrap();
    }
}

/// The matrix over every data type; returns the failures.
pub fn all_types(comm: &mut Comm) -> Vec<String> {
    let mut errs = Vec::new();
    matrix::<i8>(comm, &mut errs);
    matrix::<u8>(comm, &mut errs);
    matrix::<i32>(comm, &mut errs);
    matrix::<u32>(comm, &mut errs);
    matrix::<i64>(comm, &mut errs);
    matrix::<u64>(comm, &mut errs);
    matrix::<f16>(comm, &mut errs);
    matrix::<f32>(comm, &mut errs);
    matrix::<f64>(comm, &mut errs);
    matrix::<bf16>(comm, &mut errs);
    matrix::<F8E4M3>(comm, &mut errs);
    matrix::<F8E5M2>(comm, &mut errs);
    errs
}
