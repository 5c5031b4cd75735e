//! Ranks as separate processes: the collective matrix over shared memory and over TCP
//! (`OXCCL_SHM_DISABLE=1`), with 2, 3, 4 and 8 processes; and bad jobs (wrong secret,
//! different sizes, duplicate or out-of-range ranks, no root) fail with a clear message
//! on every rank within the timeout.
//!
//! Each rank is this test binary re-run with `OXCCL_TEST_CHILD` set, which makes the
//! `child` test below act as the rank.

mod common;

use std::time::{Duration, Instant};

use common::{matrix, procs};
use oxccl::{Comm, Config, ErrorKind};

const CHILD: &str = "OXCCL_TEST_CHILD";

/// The rank's side: a no-op unless started by [`launch`].
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD) else { return };
    let cfg = match role.as_str() {
        // Two slots per FIFO: FIFOs fill up, which is where flow control hides its bugs.
        "backpressure" => Config::new().slot_bytes(4096).nslots(2),
        // Default slots: messages large enough to be striped across sockets.
        "large" => Config::new(),
        _ => Config::new().slot_bytes(matrix::SLOT).nslots(4),
    };
    let mut comm = match Comm::from_env_with(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("INIT-ERROR: {e}");
            std::process::exit(3);
        }
    };
    match role.as_str() {
        "matrix" => {
            let errs = matrix::all_types(&mut comm);
            if !errs.is_empty() {
                eprintln!("{} failures:\n{}", errs.len(), errs.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
                std::process::exit(1);
            }
        }
        "init" => {}
        "die" => {
            use oxccl::ReduceOp;
            let (me, n) = (comm.rank(), comm.size());
            let victim = n - 1;
            let during = std::env::var("OXCCL_TEST_DIE").as_deref() == Ok("during");
            let mut x = vec![1u32; 1 << 20];
            comm.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
            assert!(x.iter().all(|&v| v as usize == n));
            if me == victim {
                if during {
                    // Killed while the others (and this rank) are inside a large all-reduce.
                    std::thread::spawn(|| {
                        std::thread::sleep(std::time::Duration::from_millis(30));
                        // SAFETY: sends SIGKILL to this process.
                        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                    });
                    let mut big = vec![1f32; 16 << 20];
                    loop {
                        let _ = comm.all_reduce_in_place(&mut big, ReduceOp::Sum);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
                // SAFETY: sends SIGKILL to this process.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            let mut big = vec![1f32; 16 << 20];
            let t0 = std::time::Instant::now();
            let r = loop {
                // With `during`, the first all-reduces may still complete.
                match comm.all_reduce_in_place(&mut big, ReduceOp::Sum) {
                    Ok(()) if during && t0.elapsed() < std::time::Duration::from_secs(10) => continue,
                    r => break r,
                }
            };
            let took = t0.elapsed();
            let m = match r {
                Err(e) if e.kind() == ErrorKind::Remote => {
                    // The error's fields name the victim and the call, for callers that
                    // act on them without reading the text.
                    assert_eq!(e.peer(), Some(victim), "{e:?}");
                    assert!(e.pid().is_some() && e.host().is_some(), "{e:?}");
                    assert_eq!((e.rank(), e.call()), (Some(me), Some("all_reduce")), "{e:?}");
                    e.message().to_string()
                }
                other => panic!("rank {me}: expected a remote error, got {other:?}"),
            };
            // The rank that waits on the victim names it, or the victim's ring neighbours
            // see its bootstrap socket close and flood the fault to every rank, wherever
            // it waits. (Over TCP the connection may close before the process is gone.)
            let why = m.contains("died") || m.contains("closed its connection");
            assert!(m.contains(" (host ") && m.contains("pid ") && why, "{m}");
            assert!(m.contains("all_reduce") && m.contains('#'), "the error names the operation: {m}");
            // Detection is bounded by the victim's death, not the timeout (60 s here).
            let allowed = std::time::Duration::from_millis(if during { 2000 } else { 2200 });
            eprintln!("DETECTION-MS {}", took.as_secs_f64() * 1e3);
            assert!(took < allowed, "rank {me}: detected after {took:?}");
            eprintln!("DETECTED after {took:?}: {m}");
            // Poisoned: the next call fails at once with the same cause.
            let t1 = std::time::Instant::now();
            match comm.barrier() {
                Err(e) if e.kind() == ErrorKind::Remote => assert!(e.message().contains(&m), "{e}"),
                other => panic!("rank {me}: expected the same remote error, got {other:?}"),
            }
            assert!(t1.elapsed() < std::time::Duration::from_millis(100));
        }
        "split" => {
            use oxccl::ReduceOp;
            let (me, n) = (comm.rank(), comm.size());
            // Even and odd ranks, keys reversed; rank 1 stays out of a second split.
            let mut half = comm.split(Some((me % 2) as u32), -(me as i32)).unwrap().unwrap();
            let size = n.div_ceil(2) - (n % 2 == 1 && me % 2 == 1) as usize;
            assert_eq!(half.size(), size, "half size");
            let members: Vec<usize> = (0..n).filter(|r| r % 2 == me % 2).rev().collect();
            assert_eq!(half.rank(), members.iter().position(|&r| r == me).unwrap(), "half rank");
            let mut x = vec![me as u64 + 1; 100_000];
            half.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
            let want: u64 = members.iter().map(|&r| r as u64 + 1).sum();
            assert!(x.iter().all(|&v| v == want), "all_reduce on the half");
            let rest = comm.split(if me == 1 { None } else { Some(0) }, 0).unwrap();
            assert_eq!(rest.is_none(), me == 1);
            if let Some(mut rest) = rest {
                let mut y = vec![1u32; 1000];
                rest.scope(|s| s.all_reduce_in_place(&mut y, ReduceOp::Sum).unwrap().wait().map(|_| ()))
                    .unwrap()
                    .unwrap();
                assert!(y.iter().all(|&v| v as usize == n - 1), "all_reduce on the rest");
            }
            // The parent still works after its splits.
            let mut z = [1u8];
            comm.all_reduce_in_place(&mut z, ReduceOp::Sum).unwrap();
            assert_eq!(z[0] as usize, n);
        }
        "large" => {
            use oxccl::ReduceOp;
            let (me, n) = (comm.rank(), comm.size());
            for count in [1usize << 20, (3 << 20) + 17] {
                let send: Vec<f32> = (0..count).map(|i| ((i % 1021) * (me + 1)) as f32).collect();
                let mut recv = vec![0f32; count];
                comm.all_reduce(&send, &mut recv, ReduceOp::Sum).unwrap();
                let tri = (n * (n + 1) / 2) as f32;
                assert!(recv.iter().enumerate().all(|(i, &x)| x == (i % 1021) as f32 * tri), "all_reduce {count}");
                let mut all = vec![0f32; count * n];
                comm.all_gather(&send, &mut all).unwrap();
                for r in 0..n {
                    let blk = &all[r * count..(r + 1) * count];
                    assert!(
                        blk.iter().enumerate().all(|(i, &x)| x == ((i % 1021) * (r + 1)) as f32),
                        "all_gather {count}"
                    );
                }
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
        "backpressure" => {
            let (me, n) = (comm.rank(), comm.size());
            for i in 0..40usize {
                let count = 100_000 + 1000 * i;
                let send: Vec<u32> = (0..count).map(|j| (j * 7 + me) as u32).collect();
                let mut recv = vec![0u32; count];
                comm.all_reduce(&send, &mut recv, oxccl::ReduceOp::Sum).unwrap();
                let want = |j: usize| (n * j * 7 + n * (n - 1) / 2) as u32;
                assert!(recv.iter().enumerate().all(|(j, &x)| x == want(j)), "iteration {i}");
                comm.barrier().unwrap();
            }
        }
        "scale" => {
            use oxccl::ReduceOp;
            let (me, n) = (comm.rank(), comm.size());
            let mut v = [me as u64 + 1];
            comm.all_reduce_in_place(&mut v, ReduceOp::Sum).unwrap();
            assert_eq!(v[0] as usize, n * (n + 1) / 2, "all_reduce");
            let mut b = [if me == n / 3 { 77u32 } else { 0 }; 5];
            comm.broadcast_in_place(&mut b, n / 3).unwrap();
            assert_eq!(b, [77; 5], "broadcast");
            let mut r = [me as u32; 3];
            comm.reduce_in_place(&mut r, ReduceOp::Max, n - 1).unwrap();
            if me == n - 1 {
                assert_eq!(r, [(n - 1) as u32; 3], "reduce");
            }
            let mut all = vec![0u32; 2 * n];
            comm.all_gather(&[me as u32, 1000 + me as u32], &mut all).unwrap();
            assert!((0..n).all(|p| all[2 * p] == p as u32 && all[2 * p + 1] == 1000 + p as u32), "all_gather");
            comm.barrier().unwrap();
            // Small calls link a rank to O(log n) peers, never to all of them.
            let m = comm.mem_stats();
            let log = n.next_power_of_two().trailing_zeros() as u64;
            assert!(m.peers <= 4 * log + 2 && m.peers < n as u64 - 1, "rank {me} linked {m}");
            eprintln!("SCALE rank {me}: {m}");
        }
        r => panic!("unknown child role {r}"),
    }
}

/// Runs the `child` test as rank processes acting `role` (see [`procs::launch`]).
fn launch(role: &str, mut ranks: Vec<Vec<(String, String)>>, deadline: Duration) -> Vec<procs::Ran> {
    for env in &mut ranks {
        env.push((CHILD.to_string(), role.to_string()));
    }
    procs::launch("child", ranks, deadline)
}

/// A job of `n` ranks with a 60 s timeout (below every launch deadline, so a rank that
/// waits in vain reports why before the launcher kills it).
fn job(n: usize, extra: &[(&str, &str)]) -> Vec<Vec<(String, String)>> {
    let mut all = vec![("OXCCL_TIMEOUT", "60")];
    all.extend_from_slice(extra);
    procs::job(n, &all)
}

fn run_matrix(n: usize, extra: &[(&str, &str)]) {
    let out = launch("matrix", job(n, extra), Duration::from_secs(240));
    for (r, o) in out.iter().enumerate() {
        assert_eq!(o.status, Some(0), "rank {r} of {n} ({extra:?}) failed:\n{}", o.stderr);
    }
}

#[test]
fn split_processes() {
    for extra in [&[][..], &[("OXCCL_SHM_DISABLE", "1")][..]] {
        let out = launch("split", job(4, extra), Duration::from_secs(120));
        for (r, o) in out.iter().enumerate() {
            assert_eq!(o.status, Some(0), "rank {r} ({extra:?}) failed:\n{}", o.stderr);
        }
    }
}

/// A rank killed with SIGKILL between collectives or inside one: every survivor's call
/// fails within 2 s naming the dead rank, its host and pid, and the operation; later calls
/// fail at once.
#[test]
fn a_killed_rank_is_detected_quickly() {
    for when in ["between", "during"] {
        for extra in [&[][..], &[("OXCCL_SHM_DISABLE", "1")][..]] {
            let mut j = job(3, extra);
            for env in &mut j {
                env.push(("OXCCL_TEST_DIE".into(), when.into()));
            }
            let out = launch("die", j, Duration::from_secs(90));
            for (r, o) in out.iter().enumerate().take(2) {
                let all: Vec<&str> = out.iter().map(|o| o.stderr.as_str()).collect();
                assert_eq!(
                    o.status,
                    Some(0),
                    "rank {r} ({when}, {extra:?}) failed; all ranks:\n{}",
                    all.join("\n-----\n")
                );
                assert!(o.stderr.contains("DETECTED"), "{}", o.stderr);
                for l in o.stderr.lines().filter(|l| l.starts_with("DETECTED")) {
                    println!("{when}, {extra:?}, rank {r}: {l}");
                }
            }
            assert_eq!(out[2].status, None, "the victim was killed by a signal");
            assert!(
                out[..2].iter().any(|o| o.stderr.contains("rank 2 (host ")),
                "no survivor named the victim: {} / {}",
                out[0].stderr,
                out[1].stderr
            );
        }
    }
}

#[test]
fn shared_memory_processes() {
    for n in [2, 3, 4, 8] {
        run_matrix(n, &[]);
    }
}

#[test]
fn tcp_processes() {
    for n in [2, 3, 4, 8] {
        run_matrix(n, &[("OXCCL_SHM_DISABLE", "1")]);
    }
}

/// Tiny FIFOs (two 4 KiB slots) over TCP with every all-reduce algorithm, each call
/// followed by a barrier: empty messages must get through links whose FIFOs were full.
#[test]
fn tcp_flow_control() {
    for algo in ["ring", "tree", "oneshot", "doubling"] {
        let out = launch(
            "backpressure",
            job(4, &[("OXCCL_SHM_DISABLE", "1"), ("OXCCL_ALGO", &format!("all_reduce:{algo}"))]),
            Duration::from_secs(120),
        );
        for (r, o) in out.iter().enumerate() {
            assert_eq!(o.status, Some(0), "rank {r} ({algo}) failed:\n{}", o.stderr);
        }
    }
}

/// Messages of several MiB over TCP, on one socket per link and striped over three.
#[test]
fn tcp_large_messages_and_striping() {
    for nsocks in ["1", "3"] {
        let out =
            launch("large", job(3, &[("OXCCL_SHM_DISABLE", "1"), ("OXCCL_NSOCKS", nsocks)]), Duration::from_secs(180));
        for (r, o) in out.iter().enumerate() {
            assert_eq!(o.status, Some(0), "rank {r} (OXCCL_NSOCKS={nsocks}) failed:\n{}", o.stderr);
        }
    }
}

/// Two "hosts" of two ranks (host identities forced with `OXCCL_HOSTID`): shared memory
/// inside a host, TCP between them, and the hierarchical all-reduce across.
#[test]
fn two_hosts_of_two_ranks() {
    for algo in ["", "all_reduce:hier"] {
        let mut j = job(4, &[("OXCCL_ALGO", algo)]);
        for (r, env) in j.iter_mut().enumerate() {
            env.push(("OXCCL_HOSTID".into(), if r < 2 { "host-a".into() } else { "host-b".into() }));
        }
        let out = launch("matrix", j, Duration::from_secs(240));
        for (r, o) in out.iter().enumerate() {
            assert_eq!(o.status, Some(0), "rank {r} ({algo}) failed:\n{}", o.stderr);
        }
    }
}

/// Runs a job of `init` children and expects every rank to fail with a message
/// containing one of `needles`, within the timeout.
fn expect_init_failure(ranks: Vec<Vec<(String, String)>>, needles: &[&str]) {
    let t0 = Instant::now();
    let out = launch("init", ranks, Duration::from_secs(60));
    let all: String =
        out.iter().enumerate().map(|(i, o)| format!("--- process {i}: {:?}\n{}", o.status, o.stderr)).collect();
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.status, Some(3), "process {i} should fail at init:\n{all}");
        assert!(needles.iter().any(|n| o.stderr.contains(n)), "process {i}: expected one of {needles:?}:\n{all}");
    }
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}

fn set(mut ranks: Vec<Vec<(String, String)>>, i: usize, k: &str, v: &str) -> Vec<Vec<(String, String)>> {
    ranks[i].retain(|(n, _)| n != k);
    ranks[i].push((k.to_string(), v.to_string()));
    ranks
}

#[test]
fn bad_jobs_fail_clearly_on_every_rank() {
    let short = [("OXCCL_TIMEOUT", "3")];
    // Different job sizes.
    let j = set(job(2, &short), 1, "OXCCL_NRANKS", "3");
    expect_init_failure(j, &["disagree on the number of ranks"]);
    // A rank claimed twice.
    let j = set(job(3, &short), 2, "OXCCL_RANK", "1");
    expect_init_failure(j, &["two processes claim rank 1"]);
    // A rank that does not know the secret: refused; the others wait, then time out.
    let j = set(job(2, &short), 1, "OXCCL_SECRET", "not-the-job's");
    let j = set(j, 0, "OXCCL_SECRET", "the-job's");
    expect_init_failure(j, &["closed the connection", "only 1 of 2 ranks"]);
    // Out of range: refused before any connection; rank 0 times out.
    let j = set(job(2, &short), 1, "OXCCL_RANK", "5");
    expect_init_failure(j, &["out of range", "only 1 of 2 ranks"]);
    // No root at the address.
    let j = set(job(2, &short), 0, "OXCCL_RANK", "1");
    let j = vec![j[1].clone()];
    expect_init_failure(j, &["could not connect"]);
}

/// The launcher's answer to the port race of [`procs::job`]: rank 0 cannot listen at the
/// job's port (held here), so the job is started again on another one and succeeds.
#[test]
fn a_taken_root_port_is_retried() {
    let j = job(2, &[]);
    let addr = j[0].iter().find(|(k, _)| k == "OXCCL_COMM_ID").unwrap().1.clone();
    let _held = std::net::TcpListener::bind(addr.as_str()).unwrap();
    let out = launch("split", j, Duration::from_secs(60));
    for (r, o) in out.iter().enumerate() {
        assert_eq!(o.status, Some(0), "rank {r} failed:\n{}", o.stderr);
    }
}

/// 64 processes over shared memory and over TCP: small collectives link each rank to
/// O(log n) peers (a dissemination barrier, recursive doubling, trees, Bruck's
/// all-gather), and the job completes in a few seconds on this host.
#[test]
fn sixty_four_processes_link_few_peers() {
    for extra in [&[][..], &[("OXCCL_SHM_DISABLE", "1")][..]] {
        let out = launch("scale", job(64, extra), Duration::from_secs(120));
        for (r, o) in out.iter().enumerate() {
            assert_eq!(o.status, Some(0), "rank {r} of 64 ({extra:?}) failed:\n{}", o.stderr);
        }
    }
}
