//! `oxccl-run`: starts the N ranks of one job on this host, for trying things out and for
//! tests. It is not a cluster manager: across hosts, jobs are started by `mpirun` or `srun`,
//! whose environment oxccl reads (see `DESIGN.md`, "Launching").
//!
//! ```text
//! oxccl-run -n N [--timeout SECS] [--tag-output|--no-tag-output] [--hosts ...] -- CMD ARGS...
//! ```
//!
//! Each rank gets `OXCCL_COMM_ID=127.0.0.1:PORT` (a port found free by binding port 0 and
//! letting it go; rank 0 listens there), `OXCCL_RANK`, `OXCCL_NRANKS`, `OXCCL_LOCAL_RANK` and
//! `OXCCL_LOCAL_SIZE`, and inherits the rest of the environment. Its output comes back line
//! by line, untouched as under mpirun and srun (so a rank's table reaches a file as the rank
//! wrote it), or tagged `[rank] ` with `--tag-output`. The first rank to fail (non-zero exit
//! or death by a signal) stops the others: SIGTERM to each rank's process group, SIGKILL 2 s
//! later, and the launcher exits with that rank's status (128+S for signal S). `--timeout`
//! does the same and exits 124; SIGINT, SIGTERM and SIGHUP sent to the launcher are forwarded
//! to the ranks and end the job with 128+S.
//!
//! Each rank leads its own process group, so that stopping a rank also stops what it started,
//! and terminal signals reach the ranks only through the launcher. On Linux a rank also gets
//! SIGKILL if the launcher itself dies, so ranks never outlive it.

#![warn(missing_docs, clippy::missing_docs_in_private_items, clippy::undocumented_unsafe_blocks)]

#[path = "oxccl_run/args.rs"]
mod args;
#[path = "oxccl_run/output.rs"]
mod output;
#[path = "oxccl_run/sys.rs"]
mod sys;

use std::io::{self, IsTerminal, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use args::{Options, Parsed};
use output::Stream;
use oxccl::internals::launcher;

/// How long stopped ranks get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// How often the launcher checks on the ranks when nothing else wakes it.
const POLL: Duration = Duration::from_millis(10);

/// How long the launcher waits for a failed rank's last output before reporting the failure,
/// so that the rank's own error message comes first.
const LAST_WORDS: Duration = Duration::from_millis(200);

/// How long the launcher waits for the rest of the output once every rank is gone (a process
/// that escaped its group may hold a pipe open forever).
const DRAIN: Duration = Duration::from_secs(1);

/// Exit status for a job stopped by `--timeout` (as `timeout(1)`).
const EXIT_TIMEOUT: i32 = 124;

/// Exit status for bad usage.
const EXIT_USAGE: i32 = 2;

/// Exit status when the command cannot be started (as shells use).
const EXIT_CANNOT_START: i32 = 127;

/// Exit status when the launcher itself fails (no port, no threads).
const EXIT_LAUNCHER: i32 = 1;

/// Prints one message of the launcher, `oxccl-run: ` and the formatted text, as one line on
/// stderr. A stderr that cannot be written (a closed pipe) is not a reason to stop: the ranks
/// still have to be stopped and waited for.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!("oxccl-run: {}\n", format_args!($($arg)*));
        let _ = io::stderr().write_all(line.as_bytes());
    }};
}

/// Parses the command line, runs the job and exits with its status.
fn main() {
    let code = match args::parse(std::env::args_os().skip(1), sys::hostname) {
        Ok(Parsed::Help) => {
            let _ = io::stdout().write_all(args::USAGE.as_bytes());
            0
        }
        Ok(Parsed::Run(options)) => run(&options),
        Err(e) => {
            say!("{e}\n\n{}", args::USAGE.trim_end());
            EXIT_USAGE
        }
    };
    std::process::exit(code);
}

/// One started rank.
struct Rank {
    /// The rank's pid, which is also the id of its process group.
    pid: u32,
    /// Its exit status, once reaped.
    status: Option<ExitStatus>,
    /// How many of its two output streams are still open.
    open_streams: u8,
}

impl Rank {
    /// Whether the rank or anything left in its process group is still there.
    fn lingers(&self) -> bool {
        self.status.is_none() || sys::group_exists(self.pid)
    }
}

/// Why the job ends before every rank succeeded.
enum Stop {
    /// This rank exited with a failure status (in its `status`).
    Failed(usize),
    /// The launcher could not wait for its children.
    WaitError(io::Error),
    /// `--timeout` ran out.
    Timeout,
    /// The launcher received this signal.
    Signal(libc::c_int),
}

/// Runs the job; returns the launcher's exit status.
fn run(options: &Options) -> i32 {
    if let Err(e) = sys::catch_stop_signals() {
        say!("cannot catch signals: {e}");
        return EXIT_LAUNCHER;
    }
    let comm_id = match std::env::var_os(launcher::COMM_ID) {
        Some(id) if !id.is_empty() => None,
        _ => match free_port() {
            Ok(port) => Some(format!("127.0.0.1:{port}")),
            Err(e) => {
                say!("cannot find a free TCP port on 127.0.0.1: {e}");
                return EXIT_LAUNCHER;
            }
        },
    };
    sys::adopt_orphans();
    let start = Instant::now();
    let (closed_tx, closed) = mpsc::channel();
    let mut job = Job { ranks: Vec::with_capacity(options.nranks), closed };
    // Rank 0 reads the launcher's stdin, unless it is a terminal: the ranks are not in the
    // terminal's foreground process group, and reading from it would stop them.
    let stdin_to_rank0 = !io::stdin().is_terminal();
    for r in 0..options.nranks {
        let mut cmd = Command::new(&options.command[0]);
        cmd.args(&options.command[1..])
            .env(launcher::RANK, r.to_string())
            .env(launcher::NRANKS, options.nranks.to_string())
            .env(launcher::LOCAL_RANK, r.to_string())
            .env(launcher::LOCAL_SIZE, options.nranks.to_string())
            .stdin(if r == 0 && stdin_to_rank0 { Stdio::inherit() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(id) = &comm_id {
            cmd.env(launcher::COMM_ID, id);
        }
        sys::die_with_launcher(&mut cmd);
        // The `Child` handle is dropped once its pipes are taken (dropping neither waits nor
        // kills): the launcher reaps every child itself, orphans included (`Job::reap`).
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                say!("cannot start {}: {e}", options.command[0].to_string_lossy());
                job.stop(libc::SIGTERM);
                return EXIT_CANNOT_START;
            }
        };
        let pipes = (child.stdout.take(), child.stderr.take());
        job.ranks.push(Rank { pid: child.id(), status: None, open_streams: 0 });
        if let (Some(out), Some(err)) = pipes {
            for forwarded in [
                output::spawn(r, out, Stream::Stdout, options.tag_output, closed_tx.clone()),
                output::spawn(r, err, Stream::Stderr, options.tag_output, closed_tx.clone()),
            ] {
                match forwarded {
                    Ok(()) => job.ranks[r].open_streams += 1,
                    Err(e) => {
                        say!("cannot start a thread to forward the output of rank {r}: {e}");
                        job.stop(libc::SIGTERM);
                        return EXIT_LAUNCHER;
                    }
                }
            }
        }
    }
    drop(closed_tx);

    let deadline = options.timeout.as_ref().map(|(limit, _)| start + *limit);
    let stop = job.wait(deadline);
    let code = match stop {
        None => 0,
        Some(Stop::Failed(r)) => {
            job.wait_output(|ranks| ranks[r].open_streams == 0, LAST_WORDS);
            let status = job.ranks[r].status.expect("a failed rank has been reaped");
            let others = if job.ranks.iter().any(|rank| rank.status.is_none()) { "; stopping the others" } else { "" };
            say!("rank {r} (pid {}) {}{others}", job.ranks[r].pid, describe(status));
            job.stop(libc::SIGTERM);
            exit_code(status)
        }
        Some(Stop::WaitError(e)) => {
            say!("cannot wait for the ranks: {e}; stopping the job");
            job.stop(libc::SIGTERM);
            EXIT_LAUNCHER
        }
        Some(Stop::Timeout) => {
            let secs = options.timeout.as_ref().map_or("?", |(_, text)| text.as_str());
            say!("timeout after {secs} s");
            job.stop(libc::SIGTERM);
            EXIT_TIMEOUT
        }
        Some(Stop::Signal(sig)) => {
            say!("received {}; stopping the ranks", signal_text(sig));
            job.stop(sig);
            128 + sig
        }
    };
    if code == 0 {
        // Every rank succeeded, but what they left running in their groups (background
        // processes) goes too: a job's processes do not outlive it, and they would hold the
        // output pipes open.
        if job.ranks.iter().any(Rank::lingers) {
            job.stop(libc::SIGTERM);
        }
    }
    job.wait_output(|ranks| ranks.iter().all(|rank| rank.open_streams == 0), DRAIN);
    code
}

/// The started ranks and the news from their output threads.
struct Job {
    /// The ranks started so far, in rank order.
    ranks: Vec<Rank>,
    /// Receives a rank each time one of its output streams reaches its end.
    closed: Receiver<usize>,
}

impl Job {
    /// Waits until every rank has succeeded (`None`) or the job must stop.
    fn wait(&mut self, deadline: Option<Instant>) -> Option<Stop> {
        loop {
            if let Some(sig) = sys::received_signal() {
                return Some(Stop::Signal(sig));
            }
            match self.reap() {
                Ok(Some(r)) => return Some(Stop::Failed(r)),
                Ok(None) => {}
                Err(e) => return Some(Stop::WaitError(e)),
            }
            if self.ranks.iter().all(|rank| rank.status.is_some()) {
                return None;
            }
            let mut wake = POLL;
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Some(Stop::Timeout);
                }
                wake = wake.min(deadline - now);
            }
            // A stream closing usually means its rank just exited: it wakes us early.
            self.next_closed(wake);
        }
    }

    /// Reaps every child of the launcher that has exited: records the status of ranks, and
    /// lets orphans it adopted go. Returns the first rank found to have failed, if any.
    fn reap(&mut self) -> io::Result<Option<usize>> {
        let mut failed = None;
        while let Some((pid, raw)) = sys::reap_any()? {
            if let Some(r) = self.ranks.iter().position(|rank| rank.pid == pid && rank.status.is_none()) {
                let status = ExitStatus::from_raw(raw);
                self.ranks[r].status = Some(status);
                if !status.success() && failed.is_none() {
                    failed = Some(r);
                }
            }
        }
        Ok(failed)
    }

    /// Waits up to `timeout` for an output stream to close, and counts it.
    fn next_closed(&mut self, timeout: Duration) -> bool {
        match self.closed.recv_timeout(timeout) {
            Ok(r) => {
                self.ranks[r].open_streams -= 1;
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                // Every output thread is done: nothing will wake us, so just sleep.
                thread::sleep(timeout);
                false
            }
        }
    }

    /// Waits up to `limit` until `done` holds for the ranks' open output streams.
    fn wait_output(&mut self, done: impl Fn(&[Rank]) -> bool, limit: Duration) {
        let until = Instant::now() + limit;
        while !done(&self.ranks) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            self.next_closed(until - now);
        }
    }

    /// Stops every rank and whatever it started: sends `sig` to each rank's process group,
    /// waits up to [`GRACE`] for them to go (less if the launcher gets another stop signal:
    /// a second Ctrl-C means now), then sends SIGKILL to whatever is left, and reaps the ranks.
    fn stop(&mut self, sig: libc::c_int) {
        for rank in &self.ranks {
            let _ = sys::signal_group(rank.pid, sig);
            // A stopped process (Ctrl-Z, a debugger) acts on the signal only once continued.
            let _ = sys::signal_group(rank.pid, libc::SIGCONT);
        }
        let signals = sys::signal_count();
        let until = Instant::now() + GRACE;
        loop {
            let _ = self.reap();
            if !self.ranks.iter().any(Rank::lingers) || Instant::now() >= until || sys::signal_count() != signals {
                break;
            }
            self.next_closed(POLL);
        }
        for (r, rank) in self.ranks.iter().enumerate() {
            if rank.status.is_none() {
                say!(
                    "rank {r} (pid {}) did not stop within {} s of {}; sending SIGKILL",
                    rank.pid,
                    GRACE.as_secs(),
                    signal_text(sig)
                );
            }
            if rank.lingers() {
                let _ = sys::signal_group(rank.pid, libc::SIGKILL);
            }
        }
        // SIGKILL cannot be caught, but a process stuck in the kernel (a dead NFS server)
        // may take its time: do not wait for it forever.
        let until = Instant::now() + GRACE;
        while self.reap().is_ok() && self.ranks.iter().any(|rank| rank.status.is_none()) && Instant::now() < until {
            self.next_closed(POLL);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago: bound to port 0, then released.
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// How a rank ended, for messages: "exited with status 1", "killed by signal 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let core = if status.core_dumped() { " (core dumped)" } else { "" };
            format!(
                "killed by signal {sig}{}{core}",
                sys::signal_name(sig).map(|n| format!(" ({n})")).unwrap_or_default()
            )
        }
        (None, None) => format!("ended with {status}"),
    }
}

/// The launcher's exit status for a rank that ended with `status`: its exit code, or 128+S
/// for signal S, as shells report it.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// A signal's name if it has one, else its number: "SIGINT", "signal 40".
fn signal_text(sig: libc::c_int) -> String {
    sys::signal_name(sig).map_or_else(|| format!("signal {sig}"), str::to_string)
}
