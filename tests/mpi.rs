//! `Comm::from_mpi` under a real mpirun (feature `mpi`): communicators over
//! `MPI_COMM_WORLD`, over its halves (`MPI_Comm_split` by rank % 2, both halves at once),
//! over a split that reverses the ranks, and over `MPI_COMM_SELF`, each checked with
//! collectives whose results depend on which ranks are members; and bad input (a rank
//! whose configuration is wrong) failing on every rank instead of hanging; the world's
//! communicator is used once more after MPI_Finalize.
//!
//! A plain test binary (`harness = false`): run by `cargo test`, it asks the MPI library
//! it was linked with which one it is (mpi-sys binds to one at build time), re-launches
//! itself with `--mpi-child` under that library's mpirun (`mpirun.openmpi` or
//! `mpirun.mpich` where Debian's names exist, else `mpirun`; `OXCCL_MPIRUN` overrides)
//! with 2 and 4 ranks, and fails a run that does not end within [`DEADLINE`].
//! `OXCCL_TEST_MPI=openmpi|mpich` makes it fail unless linked with that library (CI sets
//! it, so a build against the wrong MPI cannot pass unnoticed).

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::matrix;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;
use oxccl::{Comm, Config, ReduceOp};

/// The argument that makes this binary one rank of the job.
const CHILD_ARG: &str = "--mpi-child";
/// How long one mpirun may run before it is killed and the test fails.
const DEADLINE: Duration = Duration::from_secs(120);
/// How long one oxccl operation may wait for its peers inside a rank.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Job sizes (ranks), oversubscribed on small machines.
const SIZES: [usize; 2] = [2, 4];

fn main() {
    if std::env::args().any(|a| a == CHILD_ARG) {
        child();
        return;
    }
    std::process::exit(parent());
}

/// The MPI library this binary is linked with, and how to start its jobs.
struct Mpi {
    /// `openmpi`, `mpich` or `mpi` (unknown).
    kind: &'static str,
    /// Its own description (`MPI_Get_library_version`), first line.
    version: String,
    /// The mpirun command and the options it needs here.
    mpirun: Vec<String>,
}

impl Mpi {
    fn detect() -> Mpi {
        // MPI_Get_library_version may be called before MPI_Init.
        let version = mpi::environment::library_version().unwrap_or_default();
        let version = version.lines().next().unwrap_or("").trim().to_string();
        let (kind, runner, opts): (&str, &str, &[&str]) = if version.contains("Open MPI") {
            // As root Open MPI refuses to start without the first flag; the second lets
            // 4 ranks share 2 cores.
            ("openmpi", "mpirun.openmpi", &["--allow-run-as-root", "--oversubscribe"])
        } else if version.contains("MPICH") {
            ("mpich", "mpirun.mpich", &[])
        } else {
            ("mpi", "mpirun", &[])
        };
        let mpirun = match std::env::var("OXCCL_MPIRUN") {
            Ok(v) if !v.trim().is_empty() => v.split_whitespace().map(String::from).collect(),
            _ => {
                let runner = if on_path(runner) { runner } else { "mpirun" };
                std::iter::once(runner).chain(opts.iter().copied()).map(String::from).collect()
            }
        };
        Mpi { kind, version, mpirun }
    }
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Runs the job at every size; returns the exit status of the test binary.
fn parent() -> i32 {
    let mpi = Mpi::detect();
    println!("\nrunning {} MPI jobs: {} ({})", SIZES.len(), mpi.version, mpi.mpirun.join(" "));
    if let Ok(want) = std::env::var("OXCCL_TEST_MPI")
        && !want.is_empty()
        && want != mpi.kind
    {
        println!(
            "test from_mpi ... FAILED: OXCCL_TEST_MPI={want}, but this binary is linked with {} ({}). mpi-sys binds \
             to the MPI that MPICC (or `mpicc`) names when it is first built and does not rebuild when MPICC changes: \
             build into another CARGO_TARGET_DIR, or `cargo clean -p mpi-sys` first.",
            mpi.kind, mpi.version
        );
        println!("\n0 passed, 1 failed");
        return 1;
    }
    if !on_path(&mpi.mpirun[0]) && !std::path::Path::new(&mpi.mpirun[0]).is_file() {
        println!("test from_mpi ... skipped: {} is not on PATH (install {}'s mpirun)", mpi.mpirun[0], mpi.kind);
        println!("\n0 passed, 0 failed, {} skipped", SIZES.len());
        return 0;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let (mut passed, mut failed) = (0, 0);
    for n in SIZES {
        let start = Instant::now();
        let mut cmd = Command::new(&mpi.mpirun[0]);
        cmd.args(&mpi.mpirun[1..]).arg("-np").arg(n.to_string()).arg(&exe).arg(CHILD_ARG);
        let (status, out) = run_with_deadline(cmd, DEADLINE);
        let secs = start.elapsed().as_secs_f64();
        match status {
            Some(0) if out.contains("from_mpi checks passed") => {
                passed += 1;
                println!("test from_mpi, {n} ranks under {} ... ok ({secs:.1} s)", mpi.kind);
            }
            other => {
                failed += 1;
                let why = match other {
                    None => format!("no end within {} s (a hang): killed", DEADLINE.as_secs()),
                    Some(0) => "exit 0 without the ranks' report".to_string(),
                    Some(c) => format!("exit status {c}"),
                };
                println!("test from_mpi, {n} ranks under {} ... FAILED: {why} ({secs:.1} s)\n{out}", mpi.kind);
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    i32::from(failed > 0)
}

/// Runs `cmd` in its own process group with its output collected; past `deadline` the
/// whole group is terminated (then killed) and the status is `None`.
fn run_with_deadline(mut cmd: Command, deadline: Duration) -> (Option<i32>, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (Some(127), format!("cannot start {:?}: {e}", cmd.get_program())),
    };
    let pipes = [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .map(|mut p| {
            std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = p.read_to_end(&mut b);
                String::from_utf8_lossy(&b).into_owned()
            })
        })
        .collect();
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st.code().unwrap_or(128)),
            Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let pgid = child.id() as libc::pid_t;
                for (sig, grace) in [(libc::SIGTERM, 3), (libc::SIGKILL, 0)] {
                    // SAFETY: kill(2) with a negative pid signals the process group that
                    // `process_group(0)` made for mpirun and its ranks; no memory is touched.
                    unsafe { libc::kill(-pgid, sig) };
                    std::thread::sleep(Duration::from_secs(grace));
                }
                let _ = child.wait();
                break None;
            }
        }
    };
    let out: Vec<String> = readers.into_iter().map(|r| r.join().unwrap_or_default()).collect();
    (status, format!("--- stdout\n{}--- stderr\n{}---", out[0], out[1]))
}

/// One rank of the job: the checks; then MPI_Finalize, and the world communicator once
/// more without MPI. On a failure under MPI the message and MPI_Abort, which ends every
/// rank at once; after MPI_Finalize the message and a non-zero exit.
fn child() {
    let universe = mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let (wr, wn) = (world.rank(), world.size());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checks(&world)));
    let msg = match outcome {
        Ok(Ok(wc)) => Ok(wc),
        Ok(Err(e)) => Err(e),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()),
    };
    let mut wc = match msg {
        Ok(wc) => wc,
        Err(m) => {
            eprintln!("rank {wr} of {wn}: FAILED: {m}");
            world.abort(1);
        }
    };
    world.barrier();
    drop(world);
    drop(universe); // MPI_Finalize: the oxccl communicators do not need MPI any more
    let (me, n) = (wr as u64, wn as u64);
    if let Err(m) = members(&mut wc, me + 2, &(2..n + 2).collect::<Vec<_>>(), "world, after MPI_Finalize") {
        eprintln!("rank {wr} of {wn}: FAILED: {m}");
        std::process::exit(1);
    }
    if wr == 0 {
        println!("from_mpi checks passed on {wn} ranks");
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// The oxccl communicator over `c` must have `c`'s rank and size.
fn comm_over(c: &SimpleCommunicator, cfg: &Config, what: &str) -> Result<Comm, String> {
    let comm = Comm::from_mpi_with(c, cfg).map_err(|e| format!("from_mpi over {what}: {e}"))?;
    let (r, n) = (c.rank() as usize, c.size() as usize);
    ensure((comm.rank(), comm.size()) == (r, n), || {
        format!("{what}: oxccl rank {} of {}, MPI rank {r} of {n}", comm.rank(), comm.size())
    })?;
    Ok(comm)
}

/// Every oxccl rank contributes `mine`; checks the all-gather (in oxccl rank order)
/// against `want`, and the sum against its sum.
fn members(comm: &mut Comm, mine: u64, want: &[u64], what: &str) -> Result<(), String> {
    let mut all = vec![0u64; comm.size()];
    comm.all_gather(&[mine], &mut all).map_err(|e| format!("{what}: all_gather: {e}"))?;
    ensure(all == want, || format!("{what}: all_gather gave {all:?}, expected {want:?}"))?;
    let mut sum = [mine];
    comm.all_reduce_in_place(&mut sum, ReduceOp::Sum).map_err(|e| format!("{what}: all_reduce: {e}"))?;
    let total: u64 = want.iter().sum();
    ensure(sum[0] == total, || format!("{what}: all_reduce gave {}, expected {total}", sum[0]))
}

fn matrix_of(comm: &mut Comm, all_types: bool, what: &str) -> Result<(), String> {
    let errs = if all_types {
        matrix::all_types(comm)
    } else {
        let mut errs = Vec::new();
        matrix::matrix::<f32>(comm, &mut errs);
        errs
    };
    ensure(errs.is_empty(), || {
        format!("{what}: {} wrong results:\n{}", errs.len(), errs[..errs.len().min(10)].join("\n"))
    })
}

/// Every check that needs MPI; returns the communicator over the world, for use after
/// MPI_Finalize.
fn checks(world: &SimpleCommunicator) -> Result<Comm, String> {
    let cfg = Config::new().slot_bytes(matrix::SLOT).nslots(4).timeout(OP_TIMEOUT);
    let (wr, wn) = (world.rank() as usize, world.size() as usize);
    let me = wr as u64;

    // The whole world, through every collective, type and op.
    let mut wc = comm_over(world, &cfg, "MPI_COMM_WORLD")?;
    members(&mut wc, me, &(0..wn as u64).collect::<Vec<_>>(), "world")?;
    matrix_of(&mut wc, true, "world")?;

    // Halves by rank % 2: two oxccl jobs at once, each with its own root.
    let parity = wr % 2;
    let half = world.split_by_color(Color::with_value(parity as i32)).ok_or("MPI_Comm_split gave no communicator")?;
    let mut hc = comm_over(&half, &cfg, "half")?;
    drop(half); // MPI_Comm_free: the oxccl communicator does not need it
    ensure(hc.rank() == wr / 2, || format!("half {parity}: oxccl rank {}, expected {}", hc.rank(), wr / 2))?;
    let evens_or_odds: Vec<u64> = (0..wn as u64).filter(|r| *r as usize % 2 == parity).collect();
    members(&mut hc, me, &evens_or_odds, &format!("half {parity}"))?;
    matrix_of(&mut hc, false, &format!("half {parity}"))?;

    // A split whose key reverses the order: oxccl ranks follow the MPI communicator's.
    let rev = world
        .split_by_color_with_key(Color::with_value(0), (wn - wr) as i32)
        .ok_or("MPI_Comm_split gave no communicator")?;
    let mut rc = comm_over(&rev, &cfg, "reversed world")?;
    ensure(rc.rank() == wn - 1 - wr, || format!("reversed: oxccl rank {}, expected {}", rc.rank(), wn - 1 - wr))?;
    members(&mut rc, me, &(0..wn as u64).rev().collect::<Vec<_>>(), "reversed world")?;

    // MPI_COMM_SELF: a job of one.
    let mut sc = comm_over(&SimpleCommunicator::self_comm(), &cfg, "MPI_COMM_SELF")?;
    members(&mut sc, me, &[me], "self")?;

    // The communicators live side by side: use the first ones again.
    members(&mut wc, me + 1, &(1..=wn as u64).collect::<Vec<_>>(), "world, again")?;
    members(&mut hc, me + 1, &evens_or_odds.iter().map(|r| r + 1).collect::<Vec<_>>(), "half, again")?;

    failures(world, &cfg)?;
    Ok(wc)
}

/// Bad input makes `from_mpi` fail on every rank, with an error rather than a panic or a
/// hang: rank 0 unable to create the unique id (the others learn it from the broadcast),
/// then another rank failing before it joins (the others give up at the timeout).
fn failures(world: &SimpleCommunicator, cfg: &Config) -> Result<(), String> {
    let wr = world.rank();
    let bad = |on: i32| if wr == on { cfg.clone().algo_spec("no_such_algorithm") } else { cfg.clone() };

    let start = Instant::now();
    let e = Comm::from_mpi_with(world, &bad(0)).err().ok_or("from_mpi succeeded with a bad config on rank 0")?;
    let e = e.to_string();
    if wr == 0 {
        ensure(e.contains("no_such_algorithm"), || format!("rank 0, bad config: unexpected error {e}"))?;
    } else {
        ensure(e.contains("rank 0 of the MPI communicator") && e.contains("no_such_algorithm"), || {
            format!("bad config on rank 0: rank {wr} got {e}, not rank 0's reason")
        })?;
    }
    ensure(start.elapsed() < Duration::from_secs(10), || format!("bad config on rank 0: took {:?}", start.elapsed()))?;
    world.barrier();

    // Rank 1 fails at once; the others must not wait longer than their timeout.
    let short = Duration::from_secs(3);
    let start = Instant::now();
    let r = Comm::from_mpi_with(world, &bad(1).timeout(short));
    ensure(r.is_err(), || format!("rank {wr}: from_mpi succeeded although rank 1 failed"))?;
    let took = start.elapsed();
    ensure(took < short * 4, || format!("rank {wr}: from_mpi took {took:?} to fail, the timeout is {short:?}"))?;
    world.barrier();
    Ok(())
}
