//! Hostile clients against every listener of a real job.
//!
//! A job of 3 processes (data over TCP) initialises and runs all-reduces checked against
//! a reference while this test process finds every TCP listener the ranks open (the
//! bootstrap root in rank 0, each rank's bootstrap ring listener, each rank's TCP data
//! listener: from `/proc/<pid>/fd` and `/proc/net/tcp`) and attacks each with one kind
//! of hostile client: random garbage; truncated frames; frames announcing a huge length;
//! well-formed introductions with the wrong secret; slowloris clients writing one byte
//! per 100 ms; 200 connections opened and left idle. The job must complete with correct
//! results, without a panic, in bounded time (a hang fails the test with a message).
//!
//! Rank 2 starts late and every rank pauses after init, so that the root, the ring
//! listeners and the data listeners are all open long enough to be found and attacked
//! before the real peers use them.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxccl::internals::wire::{self, Enc, Kind};
use oxccl::{Comm, Config, ReduceOp};

const CHILD: &str = "OXCCL_HOSTILE_CHILD";
/// The job must finish within this despite the attack (it takes a few seconds alone; a
/// listener blocked by a slowloris or idle clients takes tens of seconds or more).
const BOUND: Duration = Duration::from_secs(15);
/// Past this the ranks are killed and the test fails as a hang.
const DEADLINE: Duration = Duration::from_secs(90);
/// Rank 2 starts this late; every rank pauses this long after init.
const LATE_MS: u64 = 1500;
const PAUSE_MS: u64 = 1000;

/// Tests run one at a time: each judges elapsed time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The rank's side: a no-op unless started by [`run_job`].
#[test]
fn child() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let rank: usize = std::env::var("OXCCL_RANK").unwrap().parse().unwrap();
    if rank == 2 {
        std::thread::sleep(Duration::from_millis(LATE_MS));
    }
    let mut comm = match Comm::from_env_with(&Config::new()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("INIT-ERROR: {e}");
            std::process::exit(3);
        }
    };
    std::thread::sleep(Duration::from_millis(PAUSE_MS));
    let n = comm.size();
    for count in [1000usize, 300_001] {
        let send: Vec<f32> = (0..count).map(|i| ((i % 97) * (rank + 1)) as f32).collect();
        let mut recv = vec![0f32; count];
        comm.all_reduce(&send, &mut recv, ReduceOp::Sum).unwrap();
        let scale: usize = (1..=n).sum();
        for (i, v) in recv.iter().enumerate() {
            assert_eq!(*v, ((i % 97) * scale) as f32, "all_reduce f32 element {i}");
        }
        let mut x: Vec<i64> = (0..count as i64).map(|i| i * (rank as i64 + 1) - 7).collect();
        comm.all_reduce_in_place(&mut x, ReduceOp::Max).unwrap();
        for (i, v) in x.iter().enumerate() {
            assert_eq!(*v, i as i64 * n as i64 - 7, "all_reduce i64 max element {i}");
        }
    }
    drop(comm);
    eprintln!("RANK-OK");
}

#[derive(Clone, Copy, Debug)]
enum Attack {
    Garbage,
    Truncated,
    Huge,
    WrongSecret,
    Slowloris,
    Flood,
}

/// Listening TCP sockets (IPv4) of the processes `pids`.
fn listeners(pids: &[u32]) -> Vec<SocketAddr> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            if let Ok(l) = std::fs::read_link(e.path())
                && let Some(s) = l.to_str().and_then(|s| s.strip_prefix("socket:["))
            {
                inodes.insert(s.trim_end_matches(']').to_string());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
            continue;
        }
        let Some((ip, port)) = f[1].split_once(':') else { continue };
        let (Ok(ip), Ok(port)) = (u32::from_str_radix(ip, 16), u16::from_str_radix(port, 16)) else { continue };
        // /proc/net/tcp prints the address in host order of the raw bytes.
        out.push(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip.to_le_bytes()), port)));
    }
    out
}

fn random_bytes(n: usize, seed: &mut u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

/// Well-formed introductions of every kind, with a secret that is not the job's.
fn wrong_secret_frames(seed: &mut u64) -> Vec<Vec<u8>> {
    let secret = random_bytes(32, seed);
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut hello = Enc::new();
    hello.raw(&secret).u32(0).u32(3).addr(&addr);
    let mut ring = Enc::new();
    ring.raw(&secret).u32(2);
    let mut conn = Enc::new();
    conn.raw(&secret).u32(1).u32(0).u32(0).u64(1).u64(1);
    [(Kind::Hello, hello.0), (Kind::RingHello, ring.0), (Kind::ConnHello, conn.0)]
        .into_iter()
        .map(|(k, p)| {
            let mut f = Vec::new();
            wire::send(&mut f, k, &p).unwrap();
            f
        })
        .collect()
}

/// Attacks `addr` until `stop`; connections stay open until then (a hostile client does
/// not go away politely).
fn attack(addr: SocketAddr, kind: Attack, stop: Arc<AtomicBool>, seed: u64) {
    let mut seed = seed | 1;
    let mut held: Vec<TcpStream> = Vec::new();
    let connect = || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok();
    let frames = wrong_secret_frames(&mut seed);
    match kind {
        Attack::Garbage => {
            for n in [1usize, 11, 12, 100, 4096] {
                if let Some(mut s) = connect() {
                    let _ = s.write_all(&random_bytes(n, &mut seed));
                    held.push(s);
                }
            }
            // Garbage that starts like a frame.
            if let Some(mut s) = connect() {
                let mut b = b"OXBS".to_vec();
                b.extend(random_bytes(64, &mut seed));
                let _ = s.write_all(&b);
                held.push(s);
            }
        }
        Attack::Truncated => {
            for f in &frames {
                for cut in [3, wire::HEADER, wire::HEADER + 10, f.len() - 1] {
                    if let Some(mut s) = connect() {
                        let _ = s.write_all(&f[..cut]);
                        held.push(s);
                    }
                }
                // And one that hangs up half way.
                if let Some(mut s) = connect() {
                    let _ = s.write_all(&f[..f.len() / 2]);
                }
            }
        }
        Attack::Huge => {
            for f in &frames {
                for len in [u32::MAX, 16 << 20, (16 << 20) + 1, 1 << 20, 4097] {
                    if let Some(mut s) = connect() {
                        let mut h = f[..wire::HEADER].to_vec();
                        h[8..12].copy_from_slice(&len.to_le_bytes());
                        let _ = s.write_all(&h);
                        let _ = s.write_all(&random_bytes(8192, &mut seed));
                        held.push(s);
                    }
                }
            }
        }
        Attack::WrongSecret => {
            for _ in 0..3 {
                for f in &frames {
                    if let Some(mut s) = connect() {
                        let _ = s.write_all(f);
                        held.push(s);
                    }
                }
            }
        }
        Attack::Slowloris => {
            // Three of each kind of introduction: 9 x ~8 s, were they served in turn.
            let mut slow: Vec<(TcpStream, Vec<u8>, usize)> = Vec::new();
            for f in frames.iter().chain(&frames).chain(&frames) {
                if let Some(s) = connect() {
                    slow.push((s, f.clone(), 0));
                }
            }
            while !stop.load(Ordering::Relaxed) {
                for (s, f, at) in slow.iter_mut() {
                    if *at < f.len() && s.write_all(&f[*at..*at + 1]).is_ok() {
                        *at += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Attack::Flood => {
            for _ in 0..200 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(s) = connect() {
                    held.push(s);
                }
            }
        }
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Whatever the listener said back (nothing, or a close) is fine; read without waiting.
    for mut s in held {
        let _ = s.set_nonblocking(true);
        let _ = s.read(&mut [0u8; 64]);
    }
}

struct Ran {
    status: Option<i32>,
    stderr: String,
}

/// Runs the 3-rank job under `kind` of attack; returns how long it took, what each rank
/// printed and how many listeners were attacked.
fn run_job(kind: Attack) -> (Duration, Vec<Ran>, usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let mut children: Vec<Child> = (0..3)
        .map(|r| {
            Command::new(&exe)
                .args(["--exact", "child", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env("OXCCL_COMM_ID", format!("127.0.0.1:{port}"))
                .env("OXCCL_RANK", r.to_string())
                .env("OXCCL_NRANKS", "3")
                .env("OXCCL_TIMEOUT", "60")
                .env("OXCCL_SHM_DISABLE", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let mut err = c.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            })
        })
        .collect();
    // The attacker: every listener of the job, as soon as it appears.
    let stop = Arc::new(AtomicBool::new(false));
    let attacked = Arc::new(AtomicUsize::new(0));
    let scout = {
        let (stop, attacked) = (stop.clone(), attacked.clone());
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut attackers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for a in listeners(&pids) {
                    if seen.insert(a) {
                        attacked.fetch_add(1, Ordering::Relaxed);
                        let stop = stop.clone();
                        let seed = 0x9e37_79b9_7f4a_7c15 ^ a.port() as u64;
                        attackers.push(std::thread::spawn(move || attack(a, kind, stop, seed)));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            for a in attackers {
                let _ = a.join();
            }
        })
    };
    let mut status = vec![None; children.len()];
    while status.iter().any(|s: &Option<Option<i32>>| s.is_none()) {
        for (i, c) in children.iter_mut().enumerate() {
            if status[i].is_none()
                && let Some(st) = c.try_wait().unwrap()
            {
                status[i] = Some(st.code());
            }
        }
        if start.elapsed() > DEADLINE {
            for c in children.iter_mut() {
                let _ = c.kill();
            }
            stop.store(true, Ordering::Relaxed);
            let stuck: Vec<usize> = (0..status.len()).filter(|i| status[*i].is_none()).collect();
            panic!("{kind:?}: ranks {stuck:?} still running after {DEADLINE:?}: the attack hung the job");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    scout.join().unwrap();
    let ran = status.into_iter().zip(readers).map(|(s, r)| Ran { status: s.flatten(), stderr: r.join().unwrap() });
    (took, ran.collect(), attacked.load(Ordering::Relaxed))
}

fn check(kind: Attack) {
    let (took, ran, attacked) = run_job(kind);
    for (r, x) in ran.iter().enumerate() {
        assert!(
            x.status == Some(0) && x.stderr.contains("RANK-OK") && !x.stderr.contains("panicked"),
            "{kind:?}: rank {r} failed (status {:?}):\n{}",
            x.status,
            x.stderr
        );
    }
    // The root, the ring listeners of ranks 0 and 1, every data listener.
    assert!(attacked >= 4, "{kind:?}: only {attacked} listeners were found to attack");
    assert!(took < BOUND, "{kind:?}: the job took {took:?} under attack (bound {BOUND:?})");
    eprintln!("{kind:?}: {attacked} listeners attacked; the job took {took:?}");
}

#[test]
fn random_garbage() {
    check(Attack::Garbage);
}

#[test]
fn truncated_frames() {
    check(Attack::Truncated);
}

#[test]
fn huge_length_frames() {
    check(Attack::Huge);
}

#[test]
fn wrong_secret() {
    check(Attack::WrongSecret);
}

#[test]
fn slowloris() {
    check(Attack::Slowloris);
}

#[test]
fn flood_of_idle_connections() {
    check(Attack::Flood);
}
