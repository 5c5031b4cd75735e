//! Shared harness of the `*_perf` examples: nccl-tests-compatible benchmarks of oxccl.
//!
//! A benchmark is a type implementing [`Collective`]: its buffer sizes for a count, its
//! bus-bandwidth factor, how to run it out-of-place and in-place, and where its inputs go
//! and what its outputs must hold (as [`Segment`]s of periodic tables). [`main`] does the
//! rest, with nccl-tests' flags, output format and exit codes:
//!
//! - flags `-b -e -i -f -n -w -c -o -d -r -z -a -t -T -u -N -J -h` (and their long
//!   forms), and `--plot`/`--plot-peer` (busbw as an SVG picture, [`plot`]); `-r all`
//!   (or `-1`) runs every root in turn; `-z 1` adds a timed barrier after each call
//!   (oxccl's calls block until this rank is done, so that is all nccl-tests' blocking
//!   mode adds); the `perf_plot` example draws several `-J` files into one picture;
//! - the collectives are in [`collectives`], with nccl-tests' size conventions and bus
//!   factors; each `*_perf` example only picks one;
//! - ranks are threads of this process (`-t N`, [`oxccl::Comm::init_all`]), or, under a
//!   launcher (`oxccl-run`, mpirun, srun, torchrun: see [`launch::job_from_env`]), each
//!   process is one rank ([`oxccl::Comm::from_env_with`]) and `-t` must be 1. Only the
//!   start ([`launch`]) and how ranks combine their results ([`ranks`]) differ; every
//!   rank runs the same [`timing::rank_main`];
//! - once, before the first size, ~20 ms of small all-reduces; then per size: warm-up, a
//!   barrier, `iters` timed back-to-back calls; every rank times itself and `-a`
//!   aggregates (rank 0, average, min, max), out-of-place then in-place ([`timing`]);
//! - `-c N`: N checks per measurement, with inputs whose reduction is exact in any order,
//!   compared element by element with a host reference; `#wrong` is summed over ranks
//!   ([`check`]);
//! - only rank 0 writes to standard output, and the `-J` and `--plot` files
//!   ([`report`]); each row is written whole as soon as measured, so a file or a pipe
//!   gets nccl-tests' bytes whatever the launcher; a progress note (`[row 3/40,
//!   in-place]`) shows while a row runs only where a person watches (a terminal, no
//!   launcher: [`output::shows_progress`]) or with `--progress 1`; with ranks as
//!   processes, every line on standard error starts with `rank R: ` ([`output`]);
//! - exit status 0 when every value is right, 1 on wrong values or an oxccl error, 2 on a
//!   bad command line; with ranks as processes, every rank exits with the same status
//!   when the run completes (wrong values on any rank fail them all).
//!
//! One module per concept: [`args`] (command line), [`buffers`], [`check`] (data and
//! verification), [`timing`], [`launch`] (threads or processes), [`ranks`] (what
//! nccl-tests does over MPI), [`output`] (the table and messages), [`report`] (`-J`),
//! [`plot`] (`--plot`, `perf_plot`); [`collective`] is the interface the seven
//! [`collectives`] implement. This file only puts them together ([`main`]).

#![allow(dead_code)] // Each example uses a different part of the harness.

pub mod args;
pub mod buffers;
pub mod check;
pub mod collective;
pub mod collectives;
pub mod launch;
pub mod output;
pub mod plot;
pub mod ranks;
pub mod report;
pub mod timing;

use std::io::IsTerminal as _;
use std::time::Duration;

use oxccl::{Config, DataType};

pub use collective::{CallCtx, Collective, Layout, Segment, Src};

use args::{CliError, parse_args, usage};
use check::OpKind;
use launch::{check_root, job_from_env, launched, run_process, run_threads};
use output::{ERR_PREFIX, err, flush_out, footer, out, set_progress, shows_progress};

/// Runs the benchmark of `coll` with the process's arguments and exits: status 0 when
/// every check passed, 1 on wrong values or an oxccl error, 2 on a bad command line.
/// Under a launcher ([`job_from_env`]) this process is one rank of the job; otherwise
/// its threads are all the ranks.
pub fn main<C: Collective>(coll: C) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prog = C::NAME;
    let job = job_from_env(|k| std::env::var(k).ok());
    if let Some(j) = job {
        let r = j.rank.map_or("?".to_string(), |r| r.to_string());
        let _ = ERR_PREFIX.set(format!("rank {r}: "));
    }
    // Standard output is rank 0's.
    let quiet = job.is_some_and(|j| j.rank.is_some_and(|r| r != 0));
    let default_ranks = if job.is_some() { 1 } else { C::DEFAULT_RANKS };
    let opts = match parse_args(&args, default_ranks) {
        Ok(o) => o,
        Err(CliError::Help) => {
            if !quiet {
                out(&usage(prog, default_ranks));
            }
            std::process::exit(0);
        }
        Err(CliError::Bad(m)) => {
            err(&format!("{prog}: {m}"));
            if !quiet {
                eprint!("{}", usage(prog, default_ranks));
            }
            std::process::exit(2);
        }
    };
    if job.is_some() && opts.nthreads != 1 {
        err(&format!("{prog}: -t {} with several processes is not supported yet; use -t 1", opts.nthreads));
        std::process::exit(2);
    }
    if job.is_none() {
        check_root::<C>(&opts, opts.nthreads);
    }
    let env = |k: &str| std::env::var(k).ok();
    set_progress(!quiet && shows_progress(opts.progress, std::io::stdout().is_terminal(), launched(env)));

    // A panicking rank would leave the others waiting for it: end the process instead.
    let default_hook = std::panic::take_hook();
    let processes = job.is_some();
    std::panic::set_hook(Box::new(move |info| {
        flush_out();
        report::abort(&info.to_string());
        if processes {
            err(&info.to_string());
            let bt = std::backtrace::Backtrace::capture();
            if bt.status() == std::backtrace::BacktraceStatus::Captured {
                err(&bt.to_string());
            }
        } else {
            default_hook(info);
        }
        std::process::exit(1);
    }));

    let types: Vec<DataType> = match opts.dtype {
        Some(t) => vec![t],
        None => DataType::ALL.to_vec(),
    };
    let ops: Vec<OpKind> = if !C::REDUCES {
        vec![OpKind::None]
    } else {
        match opts.op {
            Some(o) => vec![o],
            None => OpKind::ALL.to_vec(),
        }
    };
    let mut cfg = Config::new();
    match opts.timeout {
        Some(t) if t > 0.0 => cfg = cfg.timeout(Duration::from_secs_f64(t)),
        Some(_) => cfg = cfg.no_timeout(),
        None => {}
    }

    let (summary, print) = match job {
        None => (run_threads(&coll, opts, types, ops, &cfg), true),
        Some(_) => run_process(&coll, opts, types, ops, &cfg),
    };

    let min_bw: Option<f64> = std::env::var("NCCL_TESTS_MIN_BW").ok().and_then(|v| v.parse().ok());
    let bw_ok = min_bw.is_none_or(|m| summary.bw >= m * 0.9);
    let mut files_ok = true;
    if print {
        out(&footer(prog, summary.errors, summary.bw, min_bw.map(|_| bw_ok)));
        for p in report::finish(summary.errors, summary.bw, min_bw.map(|_| bw_ok)) {
            err(&format!("{prog}: {p}"));
            files_ok = false;
        }
    }
    std::process::exit(if summary.errors > 0 || !bw_ok || !files_ok { 1 } else { 0 });
}
