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

/// The environment of an `n`-rank job that meets at a free local port (rank 0 starts the
/// root there), plus `extra` on every rank.
pub fn job(n: usize, extra: &[(&str, &str)]) -> Vec<Vec<(String, String)>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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
/// killed and the test fails naming the stuck ranks (a hang never stalls the suite).
pub fn launch(child: &str, ranks: Vec<Vec<(String, String)>>, deadline: Duration) -> Vec<Ran> {
    let exe = std::env::current_exe().unwrap();
    let mut kids: Vec<_> = ranks
        .into_iter()
        .map(|env| {
            Command::new(&exe)
                .args(["--exact", child, "--nocapture", "--test-threads=1"])
                .envs(env)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let readers: Vec<_> = kids
        .iter_mut()
        .map(|k| {
            let mut e = k.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        })
        .collect();
    let start = Instant::now();
    let mut status: Vec<Option<Option<i32>>> = vec![None; kids.len()];
    while status.iter().any(Option::is_none) {
        for (i, k) in kids.iter_mut().enumerate() {
            if status[i].is_none() {
                status[i] = k.try_wait().unwrap().map(|s| s.code());
            }
        }
        if start.elapsed() > deadline {
            for k in &mut kids {
                let _ = k.kill();
            }
            let stuck: Vec<usize> = (0..status.len()).filter(|&i| status[i].is_none()).collect();
            panic!("deadline: ranks {stuck:?} still running after {deadline:?} (hang)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    status.into_iter().zip(readers).map(|(s, r)| Ran { status: s.flatten(), stderr: r.join().unwrap() }).collect()
}
