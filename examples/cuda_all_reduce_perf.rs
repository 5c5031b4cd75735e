//! All-reduce on device buffers (feature `cuda`), in the style of nccl-tests'
//! `all_reduce_perf`: one rank per process, all on GPU 0 (`CUDA_DEVICE` picks another),
//! float sum, out of place, sizes from `-b` to `-e` by factor `-f`, `-n` timed iterations
//! after `-w` warm-ups, every size checked. Rank 0 prints time, algorithm bandwidth and
//! bus bandwidth (`algbw * 2(n-1)/n`), and, for reference, the memory-bound floor of an
//! all-reduce of `n` ranks sharing one GPU: `2·n·S / B_copy`, with `B_copy` the device's
//! copy rate (bytes read + written) measured in the same run.
//!
//! ```text
//! cargo build --release --features cuda --bins --examples
//! target/release/oxccl-run -n 2 -- target/release/examples/cuda_all_reduce_perf -b 8 -e 1G -f 2
//! ```

use std::time::Instant;

use oxccl::cuda::cudarc::driver::sys::CUevent_flags;
use oxccl::cuda::cudarc::driver::{CudaContext, CudaSlice};
use oxccl::{Comm, ReduceOp};

fn size_arg(v: &str) -> usize {
    let (num, mul) = match v.chars().last() {
        Some('K' | 'k') => (&v[..v.len() - 1], 1 << 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<usize>().unwrap_or_else(|_| panic!("bad size {v}")) * mul
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str, d: &str| -> String {
        args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| d.to_string())
    };
    let (lo, hi, factor) =
        (size_arg(&get("-b", "8")), size_arg(&get("-e", "64M")), get("-f", "2").parse::<usize>().unwrap());
    let (iters, warm) = (get("-n", "20").parse::<usize>().unwrap(), get("-w", "5").parse::<usize>().unwrap());
    match oxccl::cuda::driver::ready() {
        Ok(n) if n > 0 => {}
        Ok(_) => return println!("skipped: no CUDA device"),
        Err(e) => return println!("skipped: {e}"),
    }
    let mut comm = Comm::from_env().expect("communicator (run under oxccl-run or mpirun)");
    let (me, n) = (comm.rank(), comm.size());
    let dev = std::env::var("CUDA_DEVICE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let ctx = CudaContext::new(dev).expect("CUDA device");
    let s = ctx.new_stream().expect("stream");

    // The device's copy rate, measured by rank 0 while the others wait.
    let mut b_copy = [0f64];
    if me == 0 {
        let bytes = 256usize << 20;
        let a: CudaSlice<u8> = s.alloc_zeros(bytes).unwrap();
        let mut d: CudaSlice<u8> = s.alloc_zeros(bytes).unwrap();
        let (e0, e1) = (
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap(),
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap(),
        );
        for _ in 0..2 {
            s.memcpy_dtod(&a, &mut d).unwrap();
        }
        e0.record(&s).unwrap();
        for _ in 0..10 {
            s.memcpy_dtod(&a, &mut d).unwrap();
        }
        e1.record(&s).unwrap();
        let ms = e0.elapsed_ms(&e1).unwrap() as f64 / 10.0;
        b_copy[0] = 2.0 * bytes as f64 / (ms * 1e-3);
    }
    comm.broadcast_in_place(&mut b_copy, 0).unwrap();
    let b_copy = b_copy[0];
    if me == 0 {
        let path = if std::env::var("OXCCL_CUDA_IPC").is_ok_and(|v| v.trim() == "1") {
            "CUDA IPC one-shot"
        } else {
            "staged through pinned host memory"
        };
        println!(
            "# cuda_all_reduce_perf: {n} ranks on {} (device {dev}), float sum, out of place, {path}",
            ctx.name().unwrap_or_default()
        );
        println!("# device copy rate B_copy = {:.1} GB/s (read + written); floor = 2*n*S/B_copy", b_copy / 1e9);
        println!(
            "#{:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>7}",
            "size", "count", "time(us)", "algbw", "busbw", "floor(us)", "floor/time", "#wrong"
        );
    }
    let mut size = lo.max(4);
    while size <= hi {
        let count = size / 4;
        let x: CudaSlice<f32> = s.clone_htod(&vec![(me + 1) as f32; count]).unwrap();
        let mut y: CudaSlice<f32> = s.alloc_zeros(count).unwrap();
        for _ in 0..warm {
            comm.all_reduce_device(&x, &mut y, ReduceOp::Sum, &s).unwrap();
        }
        s.synchronize().unwrap();
        comm.barrier().unwrap();
        let t0 = Instant::now();
        for _ in 0..iters {
            comm.all_reduce_device(&x, &mut y, ReduceOp::Sum, &s).unwrap();
        }
        s.synchronize().unwrap();
        let us = t0.elapsed().as_secs_f64() * 1e6 / iters as f64;
        let want = (n * (n + 1) / 2) as f32;
        let got = s.clone_dtoh(&y).unwrap();
        let mut wrong = [got.iter().filter(|&&v| v != want).count() as u64];
        let mut worst = [us];
        comm.all_reduce_in_place(&mut wrong, ReduceOp::Sum).unwrap();
        comm.all_reduce_in_place(&mut worst, ReduceOp::Max).unwrap();
        if let Some(e) = comm.async_error() {
            panic!("rank {me}: {e}");
        }
        if me == 0 {
            let t = worst[0];
            let algbw = size as f64 / (t * 1e-6) / 1e9;
            let busbw = algbw * 2.0 * (n - 1) as f64 / n as f64;
            let floor = 2.0 * n as f64 * size as f64 / b_copy * 1e6;
            println!(
                " {size:>12} {count:>12} {t:>10.1} {algbw:>10.2} {busbw:>10.2} {floor:>10.1} {:>12.3} {:>7}",
                floor / t,
                wrong[0]
            );
        }
        assert_eq!(wrong[0], 0, "wrong results at {size} bytes");
        size *= factor;
    }
}
