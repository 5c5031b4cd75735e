//! Many ranks as threads of one process: `Comm::init_all(n)`, then an 8-byte all-reduce
//! and a barrier on every rank, checked; prints the time of each phase, what one rank's
//! communicator holds (`Comm::mem_stats`) and the process's peak memory. Used by
//! `scripts/scale.sh`.
//!
//! ```text
//! cargo run --release --example threads_scale -- 1024
//! ```

use std::time::Instant;

use oxccl::{Comm, ReduceOp};

/// The process's peak resident memory in KiB (`VmHWM`), if Linux says.
fn peak_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> oxccl::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let t0 = Instant::now();
    let comms = Comm::init_all(n)?;
    let init = t0.elapsed();
    let t1 = Instant::now();
    let results: Vec<oxccl::Result<(f64, oxccl::MemStats)>> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn_scoped(s, move || {
                        let mut v = [c.rank() as f64 + 1.0];
                        c.all_reduce_in_place(&mut v, ReduceOp::Sum)?;
                        c.barrier()?;
                        Ok((v[0], c.mem_stats()))
                    })
                    .expect("a thread")
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("a rank thread")).collect()
    });
    let ran = t1.elapsed();
    let want = (n * (n + 1) / 2) as f64;
    let mut mem = oxccl::MemStats::default();
    for (r, res) in results.into_iter().enumerate() {
        let (got, m) = res?;
        if got != want {
            eprintln!("threads_scale: rank {r} got {got}, expected {want}");
            std::process::exit(1);
        }
        mem = m;
    }
    println!(
        "threads {n}: init {:.1} ms, all-reduce + barrier {:.1} ms, peak RSS {} KiB; rank {} holds {mem}",
        init.as_secs_f64() * 1e3,
        ran.as_secs_f64() * 1e3,
        peak_kib().unwrap_or(0),
        n - 1
    );
    Ok(())
}
