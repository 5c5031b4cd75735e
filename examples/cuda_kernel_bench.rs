//! Reduction kernel bandwidth on one GPU (feature `cuda`): `dst = a + b` for f32, bf16 and
//! f16 next to a device-to-device copy (`cuMemcpyDtoDAsync`) and our copy kernel, in the
//! same run, on buffers of `--mib` MiB (default 256). Bandwidth counts every byte read
//! and written (3 x the buffer for a sum, 2 x for a copy); the last column is the sum's
//! rate over the copy's.
//!
//! ```text
//! cargo run --release --features cuda --example cuda_kernel_bench [-- --mib 256 --iters 20]
//! ```

use oxccl::DataType;
use oxccl::cuda::cudarc::driver::sys::CUevent_flags;
use oxccl::cuda::cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use oxccl::cuda::{KernelOp, launch};
use std::sync::Arc;

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Milliseconds per run of `f`, timed with events over `iters` runs after two warm-ups.
fn time(ctx: &Arc<CudaContext>, s: &Arc<CudaStream>, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let (a, b) = (
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap(),
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap(),
    );
    a.record(s).unwrap();
    for _ in 0..iters {
        f();
    }
    b.record(s).unwrap();
    a.elapsed_ms(&b).unwrap() as f64 / iters as f64
}

fn main() {
    match oxccl::cuda::driver::ready() {
        Ok(n) if n > 0 => {}
        Ok(_) => return println!("skipped: no CUDA device"),
        Err(e) => return println!("skipped: {e}"),
    }
    let (mib, iters) = (arg("--mib", 256), arg("--iters", 20));
    let bytes = mib << 20;
    let ctx = CudaContext::new(0).expect("device 0");
    let s = ctx.new_stream().expect("stream");
    let name = ctx.name().unwrap_or_default();
    let a: CudaSlice<u8> = s.alloc_zeros(bytes).unwrap();
    let b: CudaSlice<u8> = s.alloc_zeros(bytes).unwrap();
    let mut d: CudaSlice<u8> = s.alloc_zeros(bytes).unwrap();
    let (pa, _ga) = a.device_ptr(&s);
    let (pb, _gb) = b.device_ptr(&s);
    let (pd, _gd) = d.device_ptr_mut(&s);
    let cs = s.cu_stream();
    let gbs = |moved: usize, ms: f64| moved as f64 / (ms * 1e-3) / 1e9;
    let copy_ms = time(&ctx, &s, iters, || {
        // SAFETY: two device buffers of `bytes` bytes, alive until the end of main (the
        // stream is synchronised by the timing).
        let r = unsafe { oxccl::cuda::cudarc::driver::sys::cuMemcpyDtoDAsync_v2(pd, pa, bytes, cs) };
        assert_eq!(r, oxccl::cuda::cudarc::driver::sys::CUresult::CUDA_SUCCESS);
    });
    let copy = gbs(2 * bytes, copy_ms);
    println!("# {name}, {mib} MiB per buffer, {iters} iterations; GB/s count bytes read + written");
    println!("{:<24} {:>10} {:>10} {:>12}", "kernel", "ms", "GB/s", "vs D2D copy");
    println!("{:<24} {:>10.3} {:>10.1} {:>12}", "cuMemcpyDtoDAsync", copy_ms, copy, "1.00");
    let k = launch::kernels(DataType::Float32).expect("compiling the f32 kernels");
    // SAFETY: as above.
    let ms = time(&ctx, &s, iters, || unsafe { k.copy(pd, pa, bytes, cs).unwrap() });
    println!("{:<24} {:>10.3} {:>10.1} {:>12.2}", "oxccl_copy", ms, gbs(2 * bytes, ms), gbs(2 * bytes, ms) / copy);
    for t in [DataType::Float32, DataType::Bfloat16, DataType::Float16] {
        let k = launch::kernels(t).expect("compiling the kernels");
        let n = bytes / t.size();
        // SAFETY: as above; `n` elements fill the buffers.
        let ms = time(&ctx, &s, iters, || unsafe { k.binary(KernelOp::Sum, pd, pa, pb, n, cs).unwrap() });
        let bw = gbs(3 * bytes, ms);
        println!("{:<24} {:>10.3} {:>10.1} {:>12.2}", format!("sum {t}"), ms, bw, bw / copy);
    }
}
