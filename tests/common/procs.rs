//! Ranks as processes: copies of the running test binary, each running one `#[test]`
//! function (the "child") with its own environment, waited for with a deadline.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How one rank process ended.
pub struct Ran {
    /// Its exit code (`None`: killed by a signal).
    pub status: Option<i32>,
    /// Everything it wrote to standard error.
    pub stderr: String,
}

/// A local port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The environment of an `n`-rank job that meets at a free local port (rank 0 starts the
/// root there), plus `extra` on every rank.
pub fn job(n: usize, extra: &[(&str, &str)]) -> Vec<Vec<(String, String)>> {
    let port = free_port();
    (0..n)
        .map(|r| {
            let mut env = vec![
                ("OXCCL_COMM_ID".to_string(), format!("127.0.0.1:{port}")),
                ("OXCCL_RANK".to_string(), r.to_string()),
                ("OXCCL_NRANKS".to_string(), n.to_string()),
            ];
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            env
        })
        .collect()
}

/// Runs the test function `child` of this binary once per entry of `ranks` (its
/// environment), and returns how each ended. A rank still running after `deadline` is
/// killed and the test fails naming the stuck ranks and showing what every rank wrote (a
/// hang never stalls the suite).
///
/// The port of [`job`] was free when chosen but may be taken (by any process's outgoing
/// connection or listener) before rank 0 binds it; rank 0 then fails to start the root
/// and the others would wait for it until their timeout. The job is then started again
/// on another port (up to three times).
pub fn launch(child: &str, mut ranks: Vec<Vec<(String, String)>>, deadline: Duration) -> Vec<Ran> {
    for _ in 0..3 {
        match attempt(child, &ranks, deadline) {
            Some(ran) => return ran,
            None => {
                let port = free_port();
                for env in &mut ranks {
                    for (k, v) in env.iter_mut() {
                        if k == "OXCCL_COMM_ID" {
                            *v = format!("127.0.0.1:{port}");
                        }
                    }
                }
            }
        }
    }
    panic!("rank 0 could not listen at three free ports in a row")
}

/// One run of [`launch`]; `None` when rank 0 could not listen at the job's port.
fn attempt(child: &str, ranks: &[Vec<(String, String)>], deadline: Duration) -> Option<Vec<Ran>> {
    let exe = std::env::current_exe().unwrap();
    let mut kids: Vec<_> = ranks
        .iter()
        .map(|env| {
            Command::new(&exe)
                .args(["--exact", child, "--nocapture", "--test-threads=1"])
                .envs(env.iter().cloned())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut readers: Vec<_> = kids
        .iter_mut()
        .map(|k| {
            let mut e = k.stderr.take().unwrap();
            Some(std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            }))
        })
        .collect();
    let mut logs: Vec<Option<String>> = vec![None; kids.len()];
    let start = Instant::now();
    let mut status: Vec<Option<Option<i32>>> = vec![None; kids.len()];
    while status.iter().any(Option::is_none) {
        for (i, k) in kids.iter_mut().enumerate() {
            if status[i].is_none() {
                status[i] = k.try_wait().unwrap().map(|s| s.code());
                if status[i].is_some() {
                    logs[i] = readers[i].take().map(|r| r.join().unwrap());
                }
            }
        }
        let port_taken = status[0].is_some_and(|s| s != Some(0))
            && logs[0].as_deref().is_some_and(|l| l.contains("listening at") && l.contains("in use"));
        if port_taken || start.elapsed() > deadline {
            for k in &mut kids {
                let _ = k.kill();
                let _ = k.wait();
            }
            if port_taken {
                return None;
            }
            let stuck: Vec<usize> = (0..status.len()).filter(|&i| status[i].is_none()).collect();
            let all: Vec<String> = readers
                .iter_mut()
                .zip(logs)
                .enumerate()
                .map(|(i, (r, l))| {
                    let log = l.or_else(|| r.take().map(|r| r.join().unwrap())).unwrap_or_default();
                    format!("--- rank {i} (exit {:?}):\n{}", status[i], tail(&log, 40))
                })
                .collect();
            panic!("deadline: ranks {stuck:?} still running after {deadline:?} (hang)\n{}", all.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(
        status.into_iter().zip(logs).map(|(s, l)| Ran { status: s.flatten(), stderr: l.unwrap_or_default() }).collect(),
    )
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
