//! Fault injection, measured: each fault is injected into a job of 4 rank processes (over
//! shared memory, then over TCP), and every surviving rank reports how long after the
//! fault its call failed and with what error. The test asserts the bounds the library
//! promises and prints a table (fault, transport, median and max detection time over the
//! surviving ranks, the error one survivor read).
//!
//! (tests/abort.rs checks that aborting leaks nothing; it needs a process of its own.)

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::procs;
use oxccl::{Comm, Config, ReduceOp};

const CHILD: &str = "OXCCL_FAULT_CHILD";
const N: usize = 4;
/// The rank that fails (or stalls, or aborts, or calls the wrong thing).
const VICTIM: usize = 2;

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Marks the moment of the fault (the victim's side).
fn fault_now() {
    eprintln!("FAULT-AT {}", now_ns());
}

/// Reports a survivor's failure (the survivor's side).
fn report(r: oxccl::Result<()>) {
    let at = now_ns();
    match r {
        Ok(()) => eprintln!("RESULT ok"),
        Err(e) => eprintln!("RESULT {at} {}", e.to_string().replace('\n', " ")),
    }
}

fn kill_self() -> ! {
    fault_now();
    // SAFETY: sends SIGKILL to this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL")
}

/// One rank's part in a fault.
#[test]
fn child() {
    let Ok(fault) = std::env::var(CHILD) else { return };
    let cfg = Config::new().timeout(Duration::from_secs(if fault == "stall" { 1 } else { 30 }));
    if fault == "kill-init" {
        let me: usize = std::env::var("OXCCL_RANK").unwrap().parse().unwrap();
        if me == VICTIM {
            // Dies while the others are inside init (by default after joining the
            // bootstrap; OXCCL_FAULT_DELAY_MS moves the moment).
            let delay = std::env::var("OXCCL_FAULT_DELAY_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                kill_self();
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = Comm::from_env_with(&cfg).and_then(|mut c| {
            let mut x = vec![1f32; 1 << 16];
            loop {
                c.all_reduce_in_place(&mut x, ReduceOp::Sum)?;
            }
        });
        report(r);
        return;
    }
    let mut comm = Comm::from_env_with(&cfg).expect("init");
    let me = comm.rank();
    let mut warm = vec![1f32; 1024];
    comm.all_reduce_in_place(&mut warm, ReduceOp::Sum).unwrap();
    comm.barrier().unwrap();
    match fault.as_str() {
        "kill-idle" => {
            if me == VICTIM {
                std::thread::sleep(Duration::from_millis(300));
                kill_self();
            }
            let mut x = vec![1f32; 1000];
            report(comm.all_reduce_in_place(&mut x, ReduceOp::Sum));
        }
        "kill-mid" => {
            let mut big = vec![1f32; 8 << 20];
            if me == VICTIM {
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    kill_self();
                });
                loop {
                    let _ = comm.all_reduce_in_place(&mut big, ReduceOp::Sum);
                }
            }
            let r = loop {
                if let Err(e) = comm.all_reduce_in_place(&mut big, ReduceOp::Sum) {
                    break Err(e);
                }
            };
            report(r);
        }
        "abort" => {
            // Nobody sends: every rank is blocked in a receive when the victim aborts.
            let h = comm.abort_handle();
            let from = (me + N - 1) % N;
            if me == VICTIM {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    fault_now();
                    h.abort();
                });
            }
            let mut x = vec![0u8; 64];
            let r = comm.recv(&mut x, from);
            if me == VICTIM {
                eprintln!("LOCAL {} {r:?}", now_ns());
            } else {
                report(r);
            }
        }
        "panic" => {
            // The victim's thread panics with the communicator open while the others wait
            // in a collective with it: unwinding drops the communicator, which must not
            // pass for an orderly goodbye.
            if me == VICTIM {
                std::thread::sleep(Duration::from_millis(300));
                fault_now();
                panic!("injected panic on rank {me}");
            }
            let mut x = vec![1f32; 1000];
            report(comm.all_reduce_in_place(&mut x, ReduceOp::Sum));
        }
        "stall" => {
            if me == VICTIM {
                fault_now();
                std::thread::sleep(Duration::from_secs(4));
                return;
            }
            fault_now();
            let mut x = vec![1f32; 1000];
            report(comm.all_reduce_in_place(&mut x, ReduceOp::Sum));
        }
        "mismatch" => {
            fault_now();
            let n = if me == VICTIM { 1001 } else { 1000 };
            let mut x = vec![1f32; n];
            let r = comm.all_reduce_in_place(&mut x, ReduceOp::Sum);
            // A rank whose part only sent learns at its next call.
            let r = r.and_then(|_| comm.barrier());
            report(r);
        }
        f => panic!("unknown fault {f}"),
    }
}

/// What one job of one fault showed.
struct Outcome {
    /// Detection times of the surviving ranks, ms after the fault.
    ms: Vec<f64>,
    /// Their errors.
    errors: Vec<String>,
    /// The victim's own view (abort: how long its blocked call took to return).
    local_ms: Option<f64>,
}

fn run(fault: &str, tcp: bool) -> Outcome {
    let extra: &[(&str, &str)] = if tcp { &[(CHILD, fault), ("OXCCL_SHM_DISABLE", "1")] } else { &[(CHILD, fault)] };
    let ran = procs::launch("child", procs::job(N, extra), Duration::from_secs(60));
    let logs: Vec<String> = ran.into_iter().map(|r| r.stderr).collect();
    let field = |log: &str, key: &str| -> Option<String> {
        log.lines().find_map(|l| l.strip_prefix(key).map(|s| s.trim().to_string()))
    };
    let at: u128 = logs
        .iter()
        .filter_map(|l| field(l, "FAULT-AT"))
        .map(|s| s.parse::<u128>().unwrap())
        .min()
        .unwrap_or_else(|| panic!("{fault}: no rank marked the fault:\n{}", logs.join("\n---\n")));
    let mut out = Outcome { ms: Vec::new(), errors: Vec::new(), local_ms: None };
    for (r, log) in logs.iter().enumerate() {
        if let Some(l) = field(log, "LOCAL") {
            let t: u128 = l.split_whitespace().next().unwrap().parse().unwrap();
            assert!(l.contains("Aborted"), "{fault}: the aborting rank's call: {l}");
            out.local_ms = Some((t.saturating_sub(at)) as f64 / 1e6);
        }
        if r == VICTIM && fault != "mismatch" {
            continue;
        }
        let res =
            field(log, "RESULT").unwrap_or_else(|| panic!("{fault} (tcp {tcp}): rank {r} reported nothing:\n{log}"));
        assert!(res != "ok", "{fault} (tcp {tcp}): rank {r} did not fail:\n{log}");
        let (t, text) = res.split_once(' ').unwrap();
        let t: u128 = t.parse().unwrap();
        out.ms.push(t.saturating_sub(at) as f64 / 1e6);
        out.errors.push(format!("rank {r}: {text}"));
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn every_fault_is_detected_on_every_rank_in_time() {
    let mut table = vec![
        "| fault | links | detection on surviving ranks, median / max | what the user reads (one rank) |".to_string(),
        "|---|---|---:|---|".to_string(),
    ];
    // (fault, bound on every surviving rank's detection, needles in every error)
    let faults: [(&str, f64, &[&str]); 7] = [
        ("kill-idle", 2000.0, &["rank 2 (host ", "pid "]),
        ("kill-mid", 2000.0, &["rank 2 (host ", "pid "]),
        ("kill-init", 2000.0, &["rank 2"]),
        ("abort", 2000.0, &["rank 2", "aborted"]),
        ("panic", 2000.0, &["rank 2", "panicked"]),
        // Each rank names the peer it waited for (the stalled rank, or one waiting on it).
        ("stall", 3000.0, &["timeout", "waited 1.0 s for rank"]),
        ("mismatch", 2000.0, &["invalid usage", "count=1000", "count=1001"]),
    ];
    for (fault, bound, needles) in faults {
        for tcp in [false, true] {
            let o = run(fault, tcp);
            let links = if tcp { "TCP" } else { "shared memory" };
            for (ms, e) in o.ms.iter().zip(&o.errors) {
                assert!(*ms < bound, "{fault} over {links}: detected after {ms:.1} ms (bound {bound} ms): {e}");
                for n in needles {
                    assert!(e.contains(n), "{fault} over {links}: the error lacks '{n}': {e}");
                }
            }
            if fault == "stall" {
                // Stalling is not failing: it is the timeout (1 s here) that ends it.
                assert!(o.ms.iter().all(|&ms| ms >= 900.0), "{fault}: failed before the timeout: {:?}", o.ms);
            }
            if let Some(l) = o.local_ms {
                assert!(l < 100.0, "abort: the blocked call on the aborting rank returned after {l:.1} ms");
                table.push(format!("| abort, the aborting rank's blocked call | {links} | {l:.1} ms | Aborted |"));
            }
            let max = o.ms.iter().copied().fold(0.0, f64::max);
            let shown = o.errors.iter().find(|e| !e.starts_with("rank 2:")).unwrap_or(&o.errors[0]);
            table.push(format!(
                "| {fault} | {links} | {:.1} / {max:.1} ms | {} |",
                median(&o.ms),
                shown.replace('|', "\\|")
            ));
        }
    }
    println!("{}", table.join("\n"));
}
