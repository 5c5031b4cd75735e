//! Mismatched calls, for every collective: ranks that call different collectives, or the
//! same one with a different count, data type, op or root, all get an `InvalidUsage`
//! error that names both calls and the operation number, promptly (never a timeout,
//! never a result). Thread ranks and process ranks (over shared memory and TCP).

mod common;

use std::time::{Duration, Instant};

use common::{procs, run_ranks};
use oxccl::{Comm, Config, ErrorKind, ReduceOp};

const DEADLINE: Duration = Duration::from_secs(60);
/// Far above how long detection takes: a mismatch that ends in a timeout fails the test.
const TIMEOUT: Duration = Duration::from_secs(20);

/// One call, as a rank makes it.
#[derive(Clone, Copy, Debug)]
enum Call {
    AllReduce { count: usize, op: ReduceOp, int: bool },
    Reduce { count: usize, root: usize },
    Broadcast { count: usize, root: usize },
    AllGather { count: usize },
    ReduceScatter { count: usize, op: ReduceOp },
    AllToAll { count: usize },
    Gather { count: usize, root: usize },
    Scatter { count: usize, root: usize },
    SendRecv { count: usize },
}

fn run(c: &mut Comm, call: Call) -> oxccl::Result<()> {
    let (me, n) = (c.rank(), c.size());
    match call {
        Call::AllReduce { count, op, int: false } => {
            let mut v = vec![1f32; count];
            c.all_reduce_in_place(&mut v, op)
        }
        Call::AllReduce { count, op, int: true } => {
            let mut v = vec![1i32; count];
            c.all_reduce_in_place(&mut v, op)
        }
        Call::Reduce { count, root } => {
            let mut v = vec![1f32; count];
            c.reduce_in_place(&mut v, ReduceOp::Sum, root)
        }
        Call::Broadcast { count, root } => {
            let mut v = vec![1f32; count];
            c.broadcast_in_place(&mut v, root)
        }
        Call::AllGather { count } => {
            let mut v = vec![1f32; count * n];
            c.all_gather_in_place(&mut v)
        }
        Call::ReduceScatter { count, op } => {
            let mut v = vec![1f32; count * n];
            c.reduce_scatter_in_place(&mut v, op)
        }
        Call::AllToAll { count } => {
            let s = vec![1f32; count * n];
            let mut r = vec![0f32; count * n];
            c.all_to_all(&s, &mut r)
        }
        Call::Gather { count, root } => {
            let s = vec![1f32; count];
            let mut r = vec![0f32; if me == root { count * n } else { 0 }];
            c.gather(&s, &mut r, root)
        }
        Call::Scatter { count, root } => {
            let s = vec![1f32; if me == root { count * n } else { 0 }];
            let mut r = vec![0f32; count];
            c.scatter(&s, &mut r, root)
        }
        Call::SendRecv { count } => {
            let s = vec![me as f32; count];
            let mut r = vec![0f32; count];
            c.group(|g| {
                g.send(&s, (me + 1) % n)?;
                g.recv(&mut r, (me + n - 1) % n)
            })
        }
    }
}

/// The cases: (name, what rank 0 calls, what the last rank calls instead). The counts
/// cover one-slot messages and multi-chunk ones.
fn cases(n: usize) -> Vec<(String, Call, Call, [&'static str; 2])> {
    let sum = ReduceOp::Sum;
    let mut v = Vec::new();
    for count in [1000usize, 300_000] {
        let c2 = count + 1;
        let (cs, c2s): (&'static str, &'static str) =
            if count == 1000 { ("count=1000", "count=1001") } else { ("count=300000", "count=300001") };
        v.push((
            format!("all_reduce count {count}"),
            Call::AllReduce { count, op: sum, int: false },
            Call::AllReduce { count: c2, op: sum, int: false },
            [cs, c2s],
        ));
        v.push((
            format!("all_reduce dtype {count}"),
            Call::AllReduce { count, op: sum, int: false },
            Call::AllReduce { count, op: sum, int: true },
            ["float", "int32"],
        ));
        v.push((
            format!("all_reduce op {count}"),
            Call::AllReduce { count, op: sum, int: false },
            Call::AllReduce { count, op: ReduceOp::Max, int: false },
            ["sum", "max"],
        ));
        v.push((
            format!("reduce count {count}"),
            Call::Reduce { count, root: 0 },
            Call::Reduce { count: c2, root: 0 },
            [cs, c2s],
        ));
        v.push((
            format!("broadcast count {count}"),
            Call::Broadcast { count, root: 0 },
            Call::Broadcast { count: c2, root: 0 },
            [cs, c2s],
        ));
        v.push((
            format!("all_gather count {count}"),
            Call::AllGather { count },
            Call::AllGather { count: c2 },
            [cs, c2s],
        ));
        v.push((
            format!("reduce_scatter count {count}"),
            Call::ReduceScatter { count, op: sum },
            Call::ReduceScatter { count: c2, op: sum },
            [cs, c2s],
        ));
        v.push((
            format!("all_to_all count {count}"),
            Call::AllToAll { count },
            Call::AllToAll { count: c2 },
            [cs, c2s],
        ));
        v.push((
            format!("gather count {count}"),
            Call::Gather { count, root: 0 },
            Call::Gather { count: c2, root: 0 },
            [cs, c2s],
        ));
        v.push((
            format!("scatter count {count}"),
            Call::Scatter { count, root: 0 },
            Call::Scatter { count: c2, root: 0 },
            [cs, c2s],
        ));
        v.push((format!("send/recv count {count}"), Call::SendRecv { count }, Call::SendRecv { count: c2 }, [cs, c2s]));
    }
    // Different algorithms on the two sides (one-slot below 8 KiB, direct or ring
    // above): the messages go on different links.
    v.push((
        "all_reduce 1000 vs 1000000".into(),
        Call::AllReduce { count: 1000, op: sum, int: false },
        Call::AllReduce { count: 1_000_000, op: sum, int: false },
        ["count=1000,", "count=1000000"],
    ));
    // A rank with nothing to reduce returns at once; the others must still learn.
    v.push((
        "all_reduce 1000 vs 0".into(),
        Call::AllReduce { count: 1000, op: sum, int: false },
        Call::AllReduce { count: 0, op: sum, int: false },
        // Where the empty call left no message, the error names the next call instead.
        ["count=1000,", "op #2"],
    ));
    // Different collectives.
    v.push((
        "all_reduce vs all_gather".into(),
        Call::AllReduce { count: 1000, op: sum, int: false },
        Call::AllGather { count: 1000 },
        ["all_reduce", "all_gather"],
    ));
    v.push((
        "broadcast vs reduce".into(),
        Call::Broadcast { count: 1000, root: 0 },
        Call::Reduce { count: 1000, root: 0 },
        ["broadcast", "reduce("],
    ));
    // Roots: the last rank thinks rank 1 is the root of a broadcast rooted at 0 elsewhere
    // (rank 0 sends, rank 1 receives from the wrong source).
    v.push((
        "broadcast root".into(),
        Call::Broadcast { count: 1000, root: 0 },
        Call::Broadcast { count: 1000, root: 1 % n },
        ["root=0", "root=1"],
    ));
    v
}

/// What a rank saw: the mismatched call's result and how long it took, then the next
/// call's.
type Seen = (oxccl::Result<()>, Duration, oxccl::Result<()>, Duration);

/// Every rank must fail with InvalidUsage naming both calls: in the mismatched call, or,
/// for a rank whose part of it only sends (it cannot know yet), in its next call. Returns
/// the slowest detection.
fn check(name: &str, out: &[Seen], needles: [&str; 2]) -> Duration {
    let mut slowest = Duration::ZERO;
    for (r, (first, took, next, took_next)) in out.iter().enumerate() {
        let (res, took) = match first {
            Ok(()) => (next, *took + *took_next),
            Err(_) => {
                assert!(next.is_err(), "{name}: rank {r}: the call after a failed one must fail too");
                assert!(
                    *took_next < Duration::from_millis(100),
                    "{name}: rank {r}: a broken communicator's next call took {took_next:?}"
                );
                (first, *took)
            }
        };
        match res {
            Err(e) if e.kind() == ErrorKind::InvalidUsage => {
                let m = e.message().to_string();
                {}
                assert!(
                    m.contains(needles[0]) && m.contains(needles[1]) && (m.contains("op #2") || m.contains("op #3")),
                    "{name}: rank {r}'s error does not name both calls ({needles:?}) and the op: {m}"
                );
            }
            other => panic!("{name}: rank {r}: expected InvalidUsage naming both calls, got {other:?}"),
        }
        slowest = slowest.max(took);
    }
    slowest
}

#[test]
fn every_collective_with_thread_ranks() {
    for n in [2, 3] {
        for (name, a, b, needles) in cases(n) {
            let cfg = Config::new().timeout(TIMEOUT);
            let out = run_ranks(n, &cfg, DEADLINE, move |mut c| {
                // One good call first: the mismatch is op #2.
                let mut x = [1u8];
                c.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
                let call = if c.rank() == c.size() - 1 { b } else { a };
                let t = Instant::now();
                let r = run(&mut c, call);
                let took = t.elapsed();
                // The communicator is broken now: the next call fails.
                let t1 = Instant::now();
                let again = c.barrier();
                (r, took, again, t1.elapsed())
            });
            let slowest = check(&format!("{n} threads, {name}"), &out, needles);
            println!("{n} thread ranks, {name}: every rank failed within {slowest:?}");
            if let Err(e) = &out[0].0 {
                println!("  rank 0 reads: {e}");
            }
        }
    }
}

const CHILD: &str = "OXCCL_MISMATCH_CHILD";

/// A rank process: runs every case on a fresh communicator split from the job's, so one
/// job covers the matrix; prints one line per case, exits non-zero on a wrong outcome.
#[test]
fn child() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let mut world = Comm::from_env_with(&Config::new().timeout(TIMEOUT)).expect("init");
    let (me, n) = (world.rank(), world.size());
    let mut bad = 0;
    let only = std::env::var("OXCCL_MISMATCH_ONLY").ok();
    for (name, a, b, needles) in cases(n) {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut c = world.split(Some(0), me as i32).expect("split").expect("a colour gives a communicator");
        let mut x = [1u8];
        c.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
        let call = if me == n - 1 { b } else { a };
        let t = Instant::now();
        let r = run(&mut c, call);
        let took = t.elapsed();
        let t1 = Instant::now();
        let again = c.barrier();
        let seen = (r, took, again, t1.elapsed());
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(&format!("rank {me}: {name}"), std::slice::from_ref(&seen), needles)
        }));
        match res {
            Ok(d) => eprintln!("CASE {name}: rank {me} failed as it should within {d:?}"),
            Err(_) => bad += 1,
        }
        drop(c);
        // Every rank is done with the case before the next split.
        world.barrier().expect("the job's communicator stays healthy");
    }
    std::process::exit(if bad == 0 { 0 } else { 1 });
}

fn processes(n: usize, extra: &[(&str, &str)]) {
    let env: Vec<(&str, &str)> = extra.iter().copied().chain([(CHILD, "1")]).collect();
    let ran = procs::launch("child", procs::job(n, &env), Duration::from_secs(180));
    for (r, o) in ran.iter().enumerate() {
        assert_eq!(o.status, Some(0), "rank {r} of {n} ({extra:?}):\n{}", o.stderr);
    }
    let logs: Vec<String> = ran.into_iter().map(|r| r.stderr).collect();
    let cases = logs[0].lines().filter(|l| l.starts_with("CASE")).count();
    if std::env::var("OXCCL_MISMATCH_ONLY").is_err() {
        assert_eq!(cases, self::cases(n).len(), "every case ran:\n{}", logs[0]);
    }
    println!("{n} processes {extra:?}: all {cases} cases detected on every rank");
}

#[test]
fn every_collective_with_processes_over_shared_memory() {
    processes(3, &[]);
}

#[test]
fn every_collective_with_processes_over_tcp() {
    processes(3, &[("OXCCL_SHM_DISABLE", "1")]);
}
