//! NCCL's C entry points on CUDA device pointers (feature `cuda`): two ranks of one
//! process (`ncclCommInitAll`) on one GPU, each on its own stream; `ncclAllReduce`,
//! `ncclBroadcast` and a grouped send/recv enqueue on the stream and return before the
//! work runs; mixing host and device buffers in one call is `ncclInvalidArgument`.
//! Without a CUDA driver or device the test prints `skipped: ...`.
#![cfg(feature = "cuda")]

use std::ffi::{c_int, c_void};

use oxccl_ffi::coll::{ncclAllReduce, ncclBroadcast, ncclRecv, ncclSend};
use oxccl_ffi::lifecycle::{ncclComm_t, ncclCommDestroy, ncclCommInitAll, ncclGroupEnd, ncclGroupStart};
use oxccl_ffi::oxccl::cuda::cudarc::driver::{CudaContext, DevicePtr, DevicePtrMut};

const FLOAT: c_int = 7;
const SUM: c_int = 0;

#[test]
fn device_pointers_are_enqueued_on_their_stream() {
    match oxccl_ffi::oxccl::cuda::driver::ready() {
        Ok(n) if n > 0 => {}
        Ok(_) => return println!("skipped: device_pointers_are_enqueued_on_their_stream: no CUDA device"),
        Err(e) => return println!("skipped: device_pointers_are_enqueued_on_their_stream: {e}"),
    }
    let mut comms: [ncclComm_t; 2] = [std::ptr::null_mut(); 2];
    // SAFETY: `comms` has room for two handles; no device list.
    assert_eq!(unsafe { ncclCommInitAll(comms.as_mut_ptr(), 2, std::ptr::null()) }, 0);
    let addrs: Vec<usize> = comms.iter().map(|&c| c as usize).collect();
    let threads: Vec<_> = addrs
        .into_iter()
        .enumerate()
        .map(|(rank, c)| {
            std::thread::spawn(move || {
                let comm = c as ncclComm_t;
                let ctx = CudaContext::new(0).unwrap();
                let s = ctx.new_stream().unwrap();
                let cs = s.cu_stream() as *mut c_void;
                let n = 100_003usize;
                let x: Vec<f32> = (0..n).map(|i| (rank + 1) as f32 * (i % 5) as f32).collect();
                let dx = s.clone_htod(&x).unwrap();
                let mut dy = s.alloc_zeros::<f32>(n).unwrap();
                let mut db = s.clone_htod(&vec![rank as f32; n]).unwrap();
                let mut dp = s.alloc_zeros::<f32>(n).unwrap();
                {
                    let (px, _a) = dx.device_ptr(&s);
                    let (py, _b) = dy.device_ptr_mut(&s);
                    let (pb, _c) = db.device_ptr_mut(&s);
                    let (pp, _d) = dp.device_ptr_mut(&s);
                    // SAFETY: device buffers of `n` floats, alive until the stream has
                    // synchronised below; `comm` is live.
                    unsafe {
                        assert_eq!(ncclAllReduce(px as _, py as _, n, FLOAT, SUM, comm, cs), 0);
                        assert_eq!(ncclBroadcast(pb as _, pb as _, n, FLOAT, 1, comm, cs), 0);
                        assert_eq!(ncclGroupStart(), 0);
                        assert_eq!(ncclSend(px as _, n, FLOAT, 1 - rank as c_int, comm, cs), 0);
                        assert_eq!(ncclRecv(pp as _, n, FLOAT, 1 - rank as c_int, comm, cs), 0);
                        assert_eq!(ncclGroupEnd(), 0);
                        // A host buffer with a device buffer: refused at the call.
                        let mut host = vec![0f32; n];
                        let bad = ncclAllReduce(px as _, host.as_mut_ptr().cast(), n, FLOAT, SUM, comm, cs);
                        assert_eq!(bad, 4, "mixing host and device buffers is ncclInvalidArgument");
                    }
                }
                let y = s.clone_dtoh(&dy).unwrap();
                assert!((0..n).all(|i| y[i] == 3.0 * (i % 5) as f32), "all-reduce");
                let b = s.clone_dtoh(&db).unwrap();
                assert!(b.iter().all(|&v| v == 1.0), "broadcast from rank 1");
                let p = s.clone_dtoh(&dp).unwrap();
                let other = 2 - rank;
                assert!((0..n).all(|i| p[i] == other as f32 * (i % 5) as f32), "send/recv");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for c in comms {
        // SAFETY: live handles, destroyed once.
        assert_eq!(unsafe { ncclCommDestroy(c) }, 0);
    }
    println!("ncclAllReduce, ncclBroadcast and grouped ncclSend/ncclRecv on device pointers: correct");
}
