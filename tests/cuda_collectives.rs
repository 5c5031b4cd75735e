//! Collectives on CUDA device buffers (feature `cuda`), as rank processes sharing one GPU:
//! 1, 2 and 4 processes, every collective and send/recv on several data types, all
//! enqueued back to back on one stream and checked against values computed on the host.
//! The stream's order is checked too: an input overwritten on the stream right after a
//! call must not change that call's result, and the results are read back on the stream
//! without any other synchronisation.
//!
//! Without a CUDA driver or device every test prints `skipped: ...` (they run for real in
//! `scripts/gpu-check.sh`).
#![cfg(feature = "cuda")]

mod common;

use std::time::Duration;

use common::procs;
use half::bf16;
use oxccl::cuda::cudarc::driver::{CudaContext, CudaStream};
use oxccl::{Comm, ErrorKind, ReduceOp};

const CHILD: &str = "OXCCL_CUDA_CHILD";

/// Whether a GPU is there; prints why not, naming the `test`.
fn gpu(test: &str) -> bool {
    match oxccl::cuda::driver::ready() {
        Ok(0) => {
            println!("skipped: {test}: no CUDA device");
            false
        }
        Ok(_) => true,
        Err(e) => {
            println!("skipped: {test}: {e}");
            false
        }
    }
}

/// Element `i` of rank `r`'s input: small integers, exact in every type used.
fn val(r: usize, i: usize) -> i64 {
    ((r + 1) * (i % 7 + 1)) as i64
}

/// One rank's part.
#[test]
fn child() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let mut comm = Comm::from_env().expect("init");
    let (me, n) = (comm.rank(), comm.size());
    let ctx = CudaContext::new(0).expect("device 0");
    let s = ctx.new_stream().expect("stream");
    let len = (1 << 16) + 3;
    check_all(&mut comm, &s, me, n, len);
    check_all(&mut comm, &s, me, n, 3 << 20);
    // Bad arguments are errors at the call, not on the stream.
    let a = s.alloc_zeros::<f32>(10).unwrap();
    let mut b = s.alloc_zeros::<f32>(11).unwrap();
    let e = comm.all_reduce_device(&a, &mut b, ReduceOp::Sum, &s).unwrap_err();
    assert!(e.kind() == ErrorKind::InvalidArgument, "{e}");
    assert!(comm.async_error().is_none(), "{:?}", comm.async_error());
    eprintln!("OK rank {me} of {n}");
}

/// Runs every operation on `len` elements, then reads everything back and checks it.
fn check_all(comm: &mut Comm, s: &std::sync::Arc<CudaStream>, me: usize, n: usize, len: usize) {
    let idx = 0..len;
    // all_reduce f32 sum, send != recv; the input is overwritten right after the call.
    let x: Vec<f32> = idx.clone().map(|i| val(me, i) as f32).collect();
    let dx = s.clone_htod(&x).unwrap();
    let mut dsum = s.alloc_zeros::<f32>(len).unwrap();
    comm.all_reduce_device(&dx, &mut dsum, ReduceOp::Sum, s).unwrap();
    let mut dx = dx;
    s.memcpy_htod(&vec![-1.0f32; len], &mut dx).unwrap();
    // all_reduce i32 max, in place.
    let mut dmax = s.clone_htod(&idx.clone().map(|i| val(me, i) as i32).collect::<Vec<_>>()).unwrap();
    comm.all_reduce_device_in_place(&mut dmax, ReduceOp::Max, s).unwrap();
    // all_reduce bf16 sum.
    let mut dbf = s.clone_htod(&idx.clone().map(|i| bf16::from_f32(val(me, i) as f32)).collect::<Vec<_>>()).unwrap();
    comm.all_reduce_device_in_place(&mut dbf, ReduceOp::Sum, s).unwrap();
    // broadcast from the last rank.
    let root = n - 1;
    let mut dbc = s.clone_htod(&idx.clone().map(|i| val(me, i) as u32).collect::<Vec<_>>()).unwrap();
    comm.broadcast_device_in_place(&mut dbc, root, s).unwrap();
    // reduce i64 sum to rank 0.
    let dr = s.clone_htod(&idx.clone().map(|i| val(me, i)).collect::<Vec<_>>()).unwrap();
    // (Other ranks' recv is not used: one element, as a zero-size allocation may fail.)
    let mut drr = s.alloc_zeros::<i64>(if me == 0 { len } else { 1 }).unwrap();
    comm.reduce_device(&dr, &mut drr, ReduceOp::Sum, 0, s).unwrap();
    // all_gather u8.
    let dg = s.clone_htod(&idx.clone().map(|i| (val(me, i) % 251) as u8).collect::<Vec<_>>()).unwrap();
    let mut dgr = s.alloc_zeros::<u8>(len * n).unwrap();
    comm.all_gather_device(&dg, &mut dgr, s).unwrap();
    // reduce_scatter f64 sum.
    let drs = s.clone_htod(&(0..len * n).map(|i| val(me, i) as f64).collect::<Vec<_>>()).unwrap();
    let mut drsr = s.alloc_zeros::<f64>(len).unwrap();
    comm.reduce_scatter_device(&drs, &mut drsr, ReduceOp::Sum, s).unwrap();
    // all_to_all u32: block j of rank r holds r * 1000 + j.
    let per = len / n;
    let dt = s.clone_htod(&(0..per * n).map(|i| (me * 1000 + i / per) as u32).collect::<Vec<_>>()).unwrap();
    let mut dtr = s.alloc_zeros::<u32>(per * n).unwrap();
    comm.all_to_all_device(&dt, &mut dtr, s).unwrap();
    // send/recv around the ring (even ranks send first).
    let dp = s.clone_htod(&idx.clone().map(|i| val(me, i) as f32).collect::<Vec<_>>()).unwrap();
    let mut dpr = s.alloc_zeros::<f32>(len).unwrap();
    if n > 1 {
        let (to, from) = ((me + 1) % n, (me + n - 1) % n);
        if me.is_multiple_of(2) {
            comm.send_device(&dp, to, s).unwrap();
            comm.recv_device(&mut dpr, from, s).unwrap();
        } else {
            comm.recv_device(&mut dpr, from, s).unwrap();
            comm.send_device(&dp, to, s).unwrap();
        }
    }

    // Read back on the stream: ordered after every operation above.
    let sum: i64 = (0..n).map(|r| (r + 1) as i64).sum();
    let got = s.clone_dtoh(&dsum).unwrap();
    assert!(idx.clone().all(|i| got[i] == (sum * (i % 7 + 1) as i64) as f32), "all_reduce f32 (len {len})");
    let got = s.clone_dtoh(&dmax).unwrap();
    assert!(idx.clone().all(|i| got[i] as i64 == val(n - 1, i)), "all_reduce i32 max");
    let got = s.clone_dtoh(&dbf).unwrap();
    assert!(idx.clone().all(|i| got[i].to_f32() == (sum * (i % 7 + 1) as i64) as f32), "all_reduce bf16");
    let got = s.clone_dtoh(&dbc).unwrap();
    assert!(idx.clone().all(|i| got[i] as i64 == val(root, i)), "broadcast");
    if me == 0 {
        let got = s.clone_dtoh(&drr).unwrap();
        assert!(idx.clone().all(|i| got[i] == sum * (i % 7 + 1) as i64), "reduce");
    }
    let got = s.clone_dtoh(&dgr).unwrap();
    assert!((0..len * n).all(|k| got[k] as i64 == val(k / len, k % len) % 251), "all_gather");
    let got = s.clone_dtoh(&drsr).unwrap();
    assert!(idx.clone().all(|i| got[i] == (sum * ((me * len + i) % 7 + 1) as i64) as f64), "reduce_scatter");
    let got = s.clone_dtoh(&dtr).unwrap();
    assert!((0..per * n).all(|k| got[k] as usize == (k / per) * 1000 + me), "all_to_all");
    if n > 1 {
        let got = s.clone_dtoh(&dpr).unwrap();
        let from = (me + n - 1) % n;
        assert!(idx.clone().all(|i| got[i] as i64 == val(from, i)), "send/recv");
    }
}

#[test]
fn device_collectives_on_one_gpu_with_1_2_and_4_processes() {
    if !gpu("device_collectives_on_one_gpu_with_1_2_and_4_processes") {
        return;
    }
    // Staged through host memory (the default), then all-reduce through CUDA IPC.
    for ipc in ["0", "1"] {
        for n in [1, 2, 4] {
            let env = [(CHILD, "1"), ("OXCCL_CUDA_IPC", ipc)];
            let ran = procs::launch("child", procs::job(n, &env), Duration::from_secs(120));
            for (r, o) in ran.iter().enumerate() {
                assert_eq!(o.status, Some(0), "rank {r} of {n} (OXCCL_CUDA_IPC={ipc}) failed:\n{}", o.stderr);
                assert!(o.stderr.contains("OK rank"), "{}", o.stderr);
            }
            println!("{n} process(es) on one GPU, OXCCL_CUDA_IPC={ipc}: every device collective correct");
        }
    }
}

/// Without a driver nothing loads CUDA by itself: the probe is an error and every
/// pointer is host memory.
#[test]
fn no_driver_is_an_error_not_a_panic() {
    let x = [1u8; 4];
    match oxccl::cuda::driver::ready() {
        Err(e) => {
            println!("no CUDA driver here ({e}): checking the fallbacks");
            assert_eq!(oxccl::cuda::driver::memory_of(x.as_ptr().cast()), oxccl::cuda::driver::Memory::Host);
            assert_eq!(oxccl::cuda::driver::current_device(), None);
        }
        Ok(_) => {
            // Host memory is host memory with a driver too.
            assert_eq!(oxccl::cuda::driver::memory_of(x.as_ptr().cast()), oxccl::cuda::driver::Memory::Host);
        }
    }
}
