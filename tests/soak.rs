//! Soak: 4 rank processes run random collectives (random kind, size, data type, op and
//! root, the same sequence on every rank from a shared seed), verified against a
//! reference computed independently, on communicators that are created, used, and then
//! either destroyed or aborted by a random rank in the middle of the work, generation
//! after generation. Every rank samples its RSS, open descriptors and oxccl's `/dev/shm`
//! files between generations; growth over the run must stay under 2% (descriptors and
//! segments: none).
//!
//! `OXCCL_SOAK_SECS` sets the length (default 120 s, what CI runs);
//! `scripts/soak.sh [SECONDS]` runs it longer.

mod common;

use std::time::{Duration, Instant};

use common::procs;
use oxccl::{Comm, Config, Element, ReduceOp};

const CHILD: &str = "OXCCL_SOAK_CHILD";
const N: usize = 4;

fn secs() -> u64 {
    std::env::var("OXCCL_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120)
}

/// splitmix64: the same stream on every rank.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Small integers: sums, maxima and minima of them are exact in every type used.
fn value(rank: usize, i: usize, op: u64) -> u64 {
    ((rank as u64 * 7 + i as u64 * 3 + op) % 5) + 1
}

trait Val: Element + PartialEq + std::fmt::Debug {
    fn of(v: u64) -> Self;
}
impl Val for f32 {
    fn of(v: u64) -> Self {
        v as f32
    }
}
impl Val for f64 {
    fn of(v: u64) -> Self {
        v as f64
    }
}
impl Val for i32 {
    fn of(v: u64) -> Self {
        v as i32
    }
}
impl Val for u8 {
    fn of(v: u64) -> Self {
        v as u8
    }
}

fn reduce_ref(op: ReduceOp, n: usize, i: usize, k: u64) -> u64 {
    let vs = (0..n).map(|r| value(r, i, k));
    match op {
        ReduceOp::Max => vs.max().unwrap(),
        ReduceOp::Min => vs.min().unwrap(),
        _ => vs.sum(),
    }
}

/// Runs operation `k` (drawn from `rng`) and checks its result; `Err` carries either the
/// library's error or a wrong result.
fn operation<T: Val>(c: &mut Comm, rng: &mut Rng, k: u64) -> Result<usize, String> {
    let (me, n) = (c.rank(), c.size());
    let count = (1usize << rng.below(17)) + rng.below(100) as usize - 1;
    let op = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min][rng.below(3) as usize];
    let root = rng.below(n as u64) as usize;
    let kind = rng.below(7);
    let mine: Vec<T> = (0..count).map(|i| T::of(value(me, i, k))).collect();
    let e = |e: oxccl::Error| e.to_string();
    let bad = |what: &str, i: usize| format!("op {k}: {what} wrong at element {i} (count {count})");
    match kind {
        0 => {
            let mut out = vec![T::of(0); count];
            c.all_reduce(&mine, &mut out, op).map_err(e)?;
            if let Some(i) = (0..count).find(|&i| out[i] != T::of(reduce_ref(op, n, i, k))) {
                return Err(bad("all_reduce", i));
            }
        }
        1 => {
            let mut out = vec![T::of(0); if me == root { count } else { 0 }];
            c.reduce(&mine, &mut out, op, root).map_err(e)?;
            if let Some(i) = (0..out.len()).find(|&i| out[i] != T::of(reduce_ref(op, n, i, k))) {
                return Err(bad("reduce", i));
            }
        }
        2 => {
            let mut buf = if me == root { mine.clone() } else { vec![T::of(0); count] };
            c.broadcast_in_place(&mut buf, root).map_err(e)?;
            if let Some(i) = (0..count).find(|&i| buf[i] != T::of(value(root, i, k))) {
                return Err(bad("broadcast", i));
            }
        }
        3 => {
            let mut out = vec![T::of(0); count * n];
            c.all_gather(&mine, &mut out).map_err(e)?;
            if let Some(j) = (0..count * n).find(|&j| out[j] != T::of(value(j / count, j % count, k))) {
                return Err(bad("all_gather", j));
            }
        }
        4 => {
            let send: Vec<T> = (0..count * n).map(|j| T::of(value(me, j, k))).collect();
            let mut out = vec![T::of(0); count];
            c.reduce_scatter(&send, &mut out, op).map_err(e)?;
            if let Some(i) = (0..count).find(|&i| out[i] != T::of(reduce_ref(op, n, me * count + i, k))) {
                return Err(bad("reduce_scatter", i));
            }
        }
        5 => {
            let send: Vec<T> = (0..count * n).map(|j| T::of(value(me, j, k))).collect();
            let mut out = vec![T::of(0); count * n];
            c.all_to_all(&send, &mut out).map_err(e)?;
            // Block i of the output is block `me` of rank i's input.
            if let Some(j) = (0..count * n).find(|&j| out[j] != T::of(value(j / count, me * count + j % count, k))) {
                return Err(bad("all_to_all", j));
            }
        }
        _ => {
            let mut got = vec![T::of(0); count];
            let (to, from) = ((me + 1) % n, (me + n - 1) % n);
            c.group(|g| {
                g.send(&mine, to)?;
                g.recv(&mut got, from)
            })
            .map_err(e)?;
            if let Some(i) = (0..count).find(|&i| got[i] != T::of(value(from, i, k))) {
                return Err(bad("send/recv", i));
            }
        }
    }
    Ok(count * std::mem::size_of::<T>())
}

fn any_operation(c: &mut Comm, rng: &mut Rng, k: u64) -> Result<usize, String> {
    match rng.below(4) {
        0 => operation::<f32>(c, rng, k),
        1 => operation::<f64>(c, rng, k),
        2 => operation::<i32>(c, rng, k),
        _ => operation::<u8>(c, rng, k),
    }
}

/// (RSS bytes, open descriptors, oxccl files in /dev/shm).
fn resources() -> (u64, usize, usize) {
    // Freed memory goes back to the system first, so RSS tracks live memory rather than
    // the allocator's high-water mark of random buffer sizes.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map(|r| r.count()).unwrap_or(0);
    let shm = std::fs::read_dir("/dev/shm")
        .map(|r| r.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("oxccl")).count())
        .unwrap_or(0);
    (pages * 4096, fds, shm)
}

#[test]
fn child() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let seed: u64 = std::env::var("OXCCL_SOAK_SEED").unwrap().parse().unwrap();
    // Buffers from 128 KiB are mapped and unmapped by themselves, so RSS follows live
    // memory instead of the allocator's adaptive high-water mark.
    // SAFETY: mallopt only changes the allocator's tuning.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs());
    // Samples count from a quarter into the run, once the allocator and the process-wide
    // state have settled. RSS moves by a few hundred KiB from one generation to the next
    // (which buffer sizes happened to be freed where), so growth compares medians: the
    // first and the last third of the settled samples.
    let settle = started + Duration::from_secs(secs()) / 4;
    let mut rss: Vec<u64> = Vec::new();
    let cfg = Config::new().timeout(Duration::from_secs(30));
    let mut world = Comm::from_env_with(&cfg).expect("init");
    let me = world.rank();
    let (mut gens, mut ops, mut bytes, mut aborts, mut detect_ms) = (0u64, 0u64, 0usize, 0u64, Vec::new());
    let mut baseline = None;
    let mut last = resources();
    loop {
        // Every rank decides together whether to go on (rank 0's clock).
        let mut go = [u8::from(Instant::now() < deadline)];
        world.broadcast_in_place(&mut go, 0).expect("world broadcast");
        if go[0] == 0 {
            break;
        }
        let mut rng = Rng(seed ^ gens.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut c = world.split(Some(0), me as i32).expect("split").expect("a colour gives a communicator");
        let nops = 5 + rng.below(40);
        // About one generation in four is aborted by a random rank at a random point.
        let abort_at = (rng.below(4) == 0).then(|| (rng.below(N as u64) as usize, rng.below(nops)));
        let mut k = 0;
        while k < nops {
            if let Some((victim, at)) = abort_at
                && k == at
            {
                if me == victim {
                    c.abort_handle().abort();
                    aborts += 1;
                    break;
                }
                // Survivors go on until the abort reaches them.
                let t = Instant::now();
                let failed = loop {
                    if k >= nops {
                        break false;
                    }
                    if any_operation(&mut c, &mut rng, gens * 1000 + k).is_err() {
                        break true;
                    }
                    k += 1;
                };
                if !failed {
                    while c.async_error().is_none() && t.elapsed() < Duration::from_secs(5) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                assert!(c.async_error().is_some(), "rank {me}: the abort never arrived");
                detect_ms.push(t.elapsed().as_secs_f64() * 1e3);
                break;
            }
            match any_operation(&mut c, &mut rng, gens * 1000 + k) {
                Ok(b) => bytes += b,
                // The victim may abort while this rank still finishes earlier operations
                // (the victim's part of them was done: a root that only sends, say).
                Err(e) if abort_at.is_some_and(|(v, _)| v != me) && e.contains("aborted") => break,
                Err(e) => panic!("rank {me}, generation {gens}, op {k}: {e}"),
            }
            ops += 1;
            k += 1;
        }
        drop(c);
        world.barrier().expect("world barrier");
        gens += 1;
        last = resources();
        if std::env::var("OXCCL_SOAK_TRACE").is_ok() && gens % 250 == 0 {
            eprintln!("TRACE rank {me} gen {gens} rss {} fds {}", last.0, last.1);
        }
        if Instant::now() >= settle && gens >= 5 {
            baseline.get_or_insert(last);
            rss.push(last.0);
        }
    }
    let base = baseline.unwrap_or(last);
    let third = (rss.len() / 3).max(1);
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let (rss_early, rss_late) = (median(&rss[..third.min(rss.len())]), median(&rss[rss.len().saturating_sub(third)..]));
    detect_ms.sort_by(f64::total_cmp);
    let med = detect_ms.get(detect_ms.len() / 2).copied().unwrap_or(0.0);
    let max = detect_ms.last().copied().unwrap_or(0.0);
    eprintln!(
        "SOAK rank {me}: {gens} generations, {ops} verified operations, {:.1} MiB, {aborts} aborts issued, \
         abort seen after median {med:.1} ms / max {max:.1} ms ({} times); RSS (medians of the first and last third) {:.2} -> {:.2} MiB, fds {} -> {}, shm {} -> {}",
        bytes as f64 / (1 << 20) as f64,
        detect_ms.len(),
        rss_early as f64 / (1 << 20) as f64,
        rss_late as f64 / (1 << 20) as f64,
        base.1,
        last.1,
        base.2,
        last.2
    );
    assert!(gens >= 10, "rank {me}: only {gens} generations");
    assert!(
        rss_late as f64 <= rss_early as f64 * 1.02,
        "rank {me}: RSS grew from {rss_early} to {rss_late} bytes (medians of the first and last third of the samples)"
    );
    assert!(last.1 <= base.1, "rank {me}: descriptors grew from {} to {}", base.1, last.1);
    assert!(last.2 <= base.2, "rank {me}: /dev/shm files grew from {} to {}", base.2, last.2);
}

#[test]
fn soak() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let seed_text = seed.to_string();
    let env = procs::job(N, &[(CHILD, "1"), ("OXCCL_SOAK_SEED", &seed_text)]);
    let ran = procs::launch("child", env, Duration::from_secs(secs() + 90));
    let status: Vec<Option<i32>> = ran.iter().map(|r| r.status).collect();
    let logs: Vec<String> = ran.into_iter().map(|r| r.stderr).collect();
    for (r, log) in logs.iter().enumerate() {
        for l in log.lines().filter(|l| l.starts_with("SOAK") || l.starts_with("TRACE")) {
            println!("{l}");
        }
        assert_eq!(status[r], Some(0), "rank {r} (seed {seed}):\n{}", logs.join("\n-----\n"));
    }
}
