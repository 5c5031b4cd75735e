//! What the progress engine costs: one all-reduce issued through [`Comm::scope`] (handed
//! to the communicator's progress thread and waited for) against the same all-reduce as
//! a blocking call, with two ranks as threads, at 8 B and 1 MiB; and a batch of eight
//! outstanding 8 B all-reduces per scope.
//!
//! Both ranks run the same number of iterations: rank 0 is criterion's, and it sends the
//! count to rank 1's thread before each measurement (`iter_custom`).
//!
//! Run with `cargo bench --bench scope`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use oxccl::{Comm, ReduceOp};

/// What one measurement does.
#[derive(Clone, Copy)]
enum Case {
    Blocking(usize),
    Scoped(usize),
    /// Eight operations outstanding in one scope.
    ScopedBatch(usize),
}

fn run(comm: &mut Comm, case: Case, iters: u64) -> Duration {
    let n = match case {
        Case::Blocking(n) | Case::Scoped(n) | Case::ScopedBatch(n) => n,
    };
    let mut bufs: Vec<Vec<f32>> = (0..8).map(|_| vec![1.0f32; n]).collect();
    comm.barrier().expect("barrier");
    let t = Instant::now();
    for _ in 0..iters {
        match case {
            Case::Blocking(_) => comm.all_reduce_in_place(&mut bufs[0], ReduceOp::Max).expect("all_reduce"),
            Case::Scoped(_) => comm
                .scope(|s| s.all_reduce_in_place(&mut bufs[0], ReduceOp::Max).and_then(|w| w.wait()).map(|_| ()))
                .expect("scope")
                .expect("all_reduce"),
            Case::ScopedBatch(_) => comm
                .scope(|s| -> oxccl::Result<()> {
                    let ws = bufs
                        .iter_mut()
                        .map(|b| s.all_reduce_in_place(b, ReduceOp::Max))
                        .collect::<oxccl::Result<Vec<_>>>()?;
                    ws.into_iter().try_for_each(|w| w.wait().map(|_| ()))
                })
                .expect("scope")
                .expect("all_reduce"),
        }
    }
    t.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut comms = Comm::init_all(2).expect("init_all");
    let mut peer = comms.pop().expect("rank 1");
    let mut me = comms.pop().expect("rank 0");
    let (tx, rx) = mpsc::channel::<Option<(Case, u64)>>();
    let helper = std::thread::spawn(move || {
        while let Ok(Some((case, iters))) = rx.recv() {
            run(&mut peer, case, iters);
        }
    });
    let mut g = c.benchmark_group("all_reduce_2_thread_ranks");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (name, case) in [
        ("blocking_8B", Case::Blocking(2)),
        ("scoped_8B", Case::Scoped(2)),
        ("scoped_batch8_8B", Case::ScopedBatch(2)),
        ("blocking_1MiB", Case::Blocking(1 << 18)),
        ("scoped_1MiB", Case::Scoped(1 << 18)),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                tx.send(Some((case, iters))).expect("rank 1 is gone");
                run(&mut me, case, iters)
            })
        });
    }
    g.finish();
    let _ = tx.send(None);
    let _ = helper.join();
}

criterion_group!(benches, bench);
criterion_main!(benches);
