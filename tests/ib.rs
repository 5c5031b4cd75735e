//! The InfiniBand transport between rank processes, for real (feature `ib`): inside the
//! Soft-RoCE VM (`scripts/ib-vm-test.sh` boots it), two "hosts" (`OXCCL_HOSTID`), each
//! on its own RDMA device (`OXCCL_IB_HCA`: rxe0 and rxe1, joined by a veth pair):
//! - 2 ranks (one per host) and 4 (two per host: shared memory inside, IB across) run
//!   every collective against the tests' reference (`common::matrix`);
//! - messages of several slots, striped over several queue pairs per connection, with
//!   tiny FIFOs so that credits run out;
//! - a rank killed during a large all-reduce: every survivor fails within seconds with an
//!   error that names it.
//!
//! Outside the VM every test prints `skipped: <name>: <why>`.
#![cfg(feature = "ib")]

mod common;

use std::time::{Duration, Instant};

use common::{matrix, procs};
use oxccl::{Comm, Config, ErrorKind, ReduceOp};

const CHILD: &str = "OXCCL_TEST_CHILD";

fn in_vm(test: &str) -> bool {
    if std::env::var("RDMA_VM").is_err() {
        println!("skipped: {test}: not inside the Soft-RoCE VM (scripts/ib-vm-test.sh runs it there)");
        return false;
    }
    true
}

/// The rank's side: a no-op unless started by [`launch`].
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD) else { return };
    let cfg = match role.as_str() {
        "large" => Config::new().slot_bytes(64 << 10).nslots(2),
        "die" => Config::new(),
        _ => Config::new().slot_bytes(matrix::SLOT).nslots(4),
    };
    let t0 = Instant::now();
    let mut comm = match Comm::from_env_with(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("INIT-ERROR: {e}");
            std::process::exit(3);
        }
    };
    let (me, n) = (comm.rank(), comm.size());
    match role.as_str() {
        "matrix" => {
            let mut errs = Vec::new();
            matrix::matrix::<f32>(&mut comm, &mut errs);
            matrix::matrix::<u8>(&mut comm, &mut errs);
            if n == 2 {
                // (4 ranks on the emulated CPU take a minute already.)
                matrix::matrix::<i64>(&mut comm, &mut errs);
            }
            if !errs.is_empty() {
                eprintln!("{} failures:\n{}", errs.len(), errs.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
                std::process::exit(1);
            }
        }
        "large" => {
            // 64 KiB slots, two of them: a 1 MiB message is 16 chunks through credits, and
            // each chunk is striped over the queue pairs.
            for count in [(1usize << 18) + 5, 3 << 16] {
                let send: Vec<f32> = (0..count).map(|i| ((i % 1021) * (me + 1)) as f32).collect();
                let mut recv = vec![0f32; count];
                comm.all_reduce(&send, &mut recv, ReduceOp::Sum).unwrap();
                let tri = (n * (n + 1) / 2) as f32;
                assert!(recv.iter().enumerate().all(|(i, &x)| x == (i % 1021) as f32 * tri), "all_reduce {count}");
                let mut got = vec![0f32; count];
                comm.group(|g| {
                    g.send(&send, (me + 1) % n)?;
                    g.recv(&mut got, (me + n - 1) % n)
                })
                .unwrap();
                let p = (me + n - 1) % n;
                assert!(got.iter().enumerate().all(|(i, &x)| x == ((i % 1021) * (p + 1)) as f32), "send/recv {count}");
            }
        }
        "die" => {
            let victim = n - 1;
            let mut x = vec![1u32; 1 << 16];
            comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
            assert!(x.iter().all(|&v| v as usize == n));
            if me == victim {
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    // SAFETY: sends SIGKILL to this process.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                });
            }
            let mut big = vec![1f32; 1 << 20];
            let t0 = Instant::now();
            let r = loop {
                match comm.all_reduce_in_place(&mut big, ReduceOp::Sum) {
                    Ok(()) if t0.elapsed() < Duration::from_secs(30) => continue,
                    r => break r,
                }
            };
            let m = match r {
                Err(e) if e.kind() == ErrorKind::Remote => e.message().to_string(),
                other => panic!("rank {me}: expected a remote error, got {other:?}"),
            };
            eprintln!("DETECTED after {:?}: {m}", t0.elapsed());
            // The victim dies 0.3 s in; an emulated CPU is slow, but not this slow.
            assert!(t0.elapsed() < Duration::from_secs(10), "rank {me}: detected only after {:?}", t0.elapsed());
            assert!(m.contains(&format!("rank {victim} (host ")), "the error names the victim: {m}");
        }
        r => panic!("unknown child role {r}"),
    }
    eprintln!("CHILD-DONE rank {me}/{n} {role} in {:?}", t0.elapsed());
}

/// `n` ranks, the first half on host a (rxe0), the rest on host b (rxe1); `extra` on
/// every rank.
fn two_hosts(n: usize, extra: &[(&str, &str)]) -> Vec<Vec<(String, String)>> {
    let mut all = vec![("OXCCL_TIMEOUT", "120"), ("OXCCL_DEBUG", "INFO")];
    all.extend_from_slice(extra);
    let mut j = procs::job(n, &all);
    let dev = |i: usize| std::env::var(format!("RDMA_VM_DEV{i}")).unwrap_or(format!("rxe{i}"));
    for (r, env) in j.iter_mut().enumerate() {
        let h = usize::from(r >= n / 2);
        env.push(("OXCCL_HOSTID".into(), format!("host-{h}")));
        env.push(("OXCCL_IB_HCA".into(), format!("={}", dev(h))));
    }
    j
}

fn launch(role: &str, mut ranks: Vec<Vec<(String, String)>>, deadline: Duration) -> Vec<procs::Ran> {
    for env in &mut ranks {
        env.push((CHILD.to_string(), role.to_string()));
    }
    procs::launch("child", ranks, deadline)
}

fn expect_success(what: &str, out: &[procs::Ran]) {
    let all: Vec<String> =
        out.iter().enumerate().map(|(r, o)| format!("--- rank {r}: {:?}\n{}", o.status, o.stderr)).collect();
    for (r, o) in out.iter().enumerate() {
        assert_eq!(o.status, Some(0), "{what}: rank {r} failed:\n{}", all.join("\n"));
        assert!(
            o.stderr.contains("InfiniBand to other hosts through"),
            "{what}: rank {r} did not use IB:\n{}",
            o.stderr
        );
        for l in o.stderr.lines().filter(|l| l.contains("CHILD-DONE") || l.contains("InfiniBand to other")) {
            println!("{what}: {l}");
        }
    }
}

#[test]
fn every_collective_two_ranks_on_two_hosts() {
    if !in_vm("every_collective_two_ranks_on_two_hosts") {
        return;
    }
    let out = launch("matrix", two_hosts(2, &[]), Duration::from_secs(400));
    expect_success("2 ranks", &out);
}

#[test]
fn every_collective_four_ranks_on_two_hosts() {
    if !in_vm("every_collective_four_ranks_on_two_hosts") {
        return;
    }
    let out = launch("matrix", two_hosts(4, &[]), Duration::from_secs(400));
    expect_success("4 ranks", &out);
}

#[test]
fn large_messages_span_slots_and_queue_pairs() {
    if !in_vm("large_messages_span_slots_and_queue_pairs") {
        return;
    }
    // The 3-QP run also sets the queue pair tuning an operator would (traffic class,
    // service level, ACK timeout, retries): the links still connect and deliver.
    let tuned = [("OXCCL_IB_TC", "106"), ("OXCCL_IB_SL", "3"), ("OXCCL_IB_TIMEOUT", "16"), ("OXCCL_IB_RETRY_CNT", "5")];
    for (qps, extra) in [("1", &[][..]), ("3", &tuned[..])] {
        let mut env = vec![("OXCCL_IB_QPS_PER_CONNECTION", qps)];
        env.extend_from_slice(extra);
        let out = launch("large", two_hosts(2, &env), Duration::from_secs(300));
        expect_success(&format!("large, {qps} QPs {extra:?}"), &out);
    }
}

#[test]
fn a_killed_peer_is_named_within_seconds() {
    if !in_vm("a_killed_peer_is_named_within_seconds") {
        return;
    }
    let out = launch("die", two_hosts(4, &[]), Duration::from_secs(300));
    let all: Vec<String> =
        out.iter().enumerate().map(|(r, o)| format!("--- rank {r}: {:?}\n{}", o.status, o.stderr)).collect();
    assert_eq!(out[3].status, None, "the victim was killed by a signal:\n{}", all.join("\n"));
    for (r, o) in out.iter().enumerate().take(3) {
        assert_eq!(o.status, Some(0), "rank {r} failed:\n{}", all.join("\n"));
        let l = o.stderr.lines().find(|l| l.starts_with("DETECTED")).unwrap_or_default();
        println!("survivor rank {r}: {l}");
    }
}
