//! Tests of the `oxccl-run` launcher, run as a program with `sh -c` ranks: the environment of
//! each rank, output tagging, failure propagation, signals, timeouts and bad usage.
//!
//! Every run has a deadline: a launcher that runs over is killed and the test fails with
//! what it printed so far, so a hang fails instead of stalling CI.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The launcher under test.
const LAUNCHER: &str = env!("CARGO_BIN_EXE_oxccl-run");

/// Deadline of a run that should finish at once.
const QUICK: Duration = Duration::from_secs(10);

/// The launcher with `args`, its output captured, no stdin and no `OXCCL_COMM_ID` of ours.
fn launcher(args: &[&str]) -> Command {
    let mut cmd = Command::new(LAUNCHER);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).env_remove("OXCCL_COMM_ID");
    cmd
}

/// A finished run of the launcher.
struct Run {
    /// How it ended.
    status: ExitStatus,
    /// Its standard output.
    stdout: String,
    /// Its standard error.
    stderr: String,
    /// How long it ran.
    elapsed: Duration,
}

impl Run {
    /// Its exit code; fails the test if a signal killed it.
    fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("oxccl-run was killed: {:?}\n{}", self.status, self.dump()))
    }

    /// Both outputs, for failure messages.
    fn dump(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}---", self.stdout, self.stderr)
    }

    /// Asserts the exit code, showing the output when it differs.
    fn assert_code(&self, code: i32) {
        assert_eq!(self.code(), code, "unexpected exit code\n{}", self.dump());
    }
}

/// Collects everything `pipe` yields into a shared buffer, so that a test that times out can
/// still show what came.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

/// The text collected so far.
fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Waits for `child` (started with piped stderr, and stdout unless already taken) until
/// `limit` after `start`; kills it and fails the test if it runs over.
fn finish(mut child: Child, start: Instant, limit: Duration) -> Run {
    let (out, out_thread) = collect(match child.stdout.take() {
        Some(stdout) => Box::new(stdout) as Box<dyn Read + Send>,
        None => Box::new(std::io::empty()),
    });
    let (err, err_thread) = collect(child.stderr.take().expect("stderr is piped"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for oxccl-run") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            thread::sleep(Duration::from_millis(100));
            panic!(
                "oxccl-run ran over its deadline of {limit:?} and was killed\n--- stdout\n{}--- stderr\n{}---",
                text(&out),
                text(&err)
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    // The launcher is gone; its output pipes close unless something it left holds them.
    for handle in [out_thread, err_thread] {
        while !handle.is_finished() {
            assert!(
                start.elapsed() < limit + Duration::from_secs(2),
                "oxccl-run exited but its output stays open: something it started is still running\n--- stdout\n{}--- stderr\n{}---",
                text(&out),
                text(&err)
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
    Run { status, stdout: text(&out), stderr: text(&err), elapsed }
}

/// Runs the launcher with `args` to the end, within `limit`.
fn run(args: &[&str], limit: Duration) -> Run {
    run_cmd(launcher(args), limit)
}

/// Runs `cmd` (from [`launcher`]) to the end, within `limit`.
fn run_cmd(mut cmd: Command, limit: Duration) -> Run {
    let start = Instant::now();
    finish(cmd.spawn().expect("start oxccl-run"), start, limit)
}

/// The numbers on lines `[rank] word NUMBER` of `text`, in order: pids the ranks printed.
fn numbers_after(text: &str, word: &str) -> Vec<u32> {
    let key = format!("{word} ");
    text.lines()
        .filter_map(|line| {
            let body = line.split_once("] ").map_or(line, |(_, body)| body);
            body.strip_prefix(&key).and_then(|n| n.trim().parse().ok())
        })
        .collect()
}

/// Whether process `pid` is alive (not a zombie waiting for its parent).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which ends with ')'.
        Ok(stat) => !matches!(stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()), Some('Z' | 'X')),
        Err(_) if std::path::Path::new("/proc/self/stat").exists() => false,
        Err(_) => {
            let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
            // SAFETY: kill takes no pointers; signal 0 only checks that the process exists.
            unsafe { libc::kill(pid, 0) == 0 }
        }
    }
}

/// Asserts that every process in `pids` is gone (or goes within a second).
fn assert_gone(pids: &[u32], what: &str) {
    let until = Instant::now() + Duration::from_secs(1);
    for &pid in pids {
        while alive(pid) {
            assert!(Instant::now() < until, "{what} {pid} outlived oxccl-run");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Lines arriving on the launcher's stdout, as they come, through a channel.
fn lines(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Receives `count` lines from `rx` before `until`, or fails the test.
fn take_lines(rx: &Receiver<String>, count: usize, until: Instant, child: &mut Child) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < count {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(line) => got.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("oxccl-run did not stream {count} lines in time; got {got:?}");
            }
        }
    }
    got
}

#[test]
fn each_rank_gets_its_environment() {
    let mut cmd = launcher(&[
        "--tag-output",
        "-n",
        "3",
        "--",
        "sh",
        "-c",
        "echo \"rank=$OXCCL_RANK nranks=$OXCCL_NRANKS local=$OXCCL_LOCAL_RANK/$OXCCL_LOCAL_SIZE id=$OXCCL_COMM_ID inherited=$OXCCL_TEST_INHERITED\"",
    ]);
    cmd.env("OXCCL_TEST_INHERITED", "yes");
    let run = run_cmd(cmd, QUICK);
    run.assert_code(0);
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{}", run.dump());
    let mut ids = Vec::new();
    for (r, line) in lines.iter().enumerate() {
        let expected = format!("[{r}] rank={r} nranks=3 local={r}/3 id=");
        let rest = line.strip_prefix(&expected).unwrap_or_else(|| panic!("{line:?} should start with {expected:?}"));
        let (id, inherited) = rest.split_once(' ').expect("id, then inherited");
        assert_eq!(inherited, "inherited=yes");
        ids.push(id.to_string());
    }
    assert!(ids.iter().all(|id| id == &ids[0]), "every rank gets the same address: {ids:?}");
    let port = ids[0].strip_prefix("127.0.0.1:").expect("rank 0 listens on 127.0.0.1");
    assert_ne!(port.parse::<u16>().expect("a port number"), 0);
    assert_eq!(run.stderr, "");
}

#[test]
fn comm_id_already_set_is_kept() {
    let mut cmd = launcher(&["--tag-output", "-n", "2", "--", "sh", "-c", "echo \"$OXCCL_COMM_ID\""]);
    cmd.env("OXCCL_COMM_ID", "10.1.2.3:4567");
    let run = run_cmd(cmd, QUICK);
    run.assert_code(0);
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["[0] 10.1.2.3:4567", "[1] 10.1.2.3:4567"]);
}

#[test]
fn output_is_tagged_whole_lines() {
    // Every line is written in two pieces with a pause between, on both streams, by four
    // ranks at once; the last line of stdout has no newline.
    let script = r#"
        for i in 1 2 3 4 5 6; do
            printf "r%s-a" "$OXCCL_RANK"; sleep 0.01; printf -- "-b%s\n" "$i"
            printf "e%s-x" "$OXCCL_RANK" >&2; sleep 0.01; printf -- "-y%s\n" "$i" >&2
        done
        printf "tail%s" "$OXCCL_RANK""#;
    let run = run(&["--tag-output", "-n", "4", "--", "sh", "-c", script], QUICK);
    run.assert_code(0);
    assert!(run.stdout.ends_with('\n'), "a tagged last line is terminated\n{}", run.dump());
    for (stream, text, mid) in [("stdout", &run.stdout, "-a-b"), ("stderr", &run.stderr, "-x-y")] {
        let mut seen = vec![Vec::new(); 4];
        for line in text.lines() {
            let (tag, body) = line.split_once("] ").unwrap_or_else(|| panic!("untagged {stream} line {line:?}"));
            let r: usize =
                tag.strip_prefix('[').and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("bad tag in {line:?}"));
            let letter = if stream == "stdout" { 'r' } else { 'e' };
            if body == format!("tail{r}") && stream == "stdout" {
                seen[r].push(0);
                continue;
            }
            let i = body
                .strip_prefix(&format!("{letter}{r}{mid}"))
                .and_then(|i| i.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("{stream} line {line:?} is mixed or cut\n{}", run.dump()));
            seen[r].push(i);
        }
        let expected: Vec<u32> = if stream == "stdout" { vec![1, 2, 3, 4, 5, 6, 0] } else { vec![1, 2, 3, 4, 5, 6] };
        for (r, got) in seen.iter().enumerate() {
            assert_eq!(got, &expected, "rank {r}'s {stream} lines, in order\n{}", run.dump());
        }
    }
}

/// By default (as under mpirun and srun) and with `--no-tag-output`, a rank's bytes reach
/// the launcher's output as written: a table stays a table, byte for byte.
#[test]
fn output_is_untouched_by_default() {
    let script = r#"if [ "$OXCCL_RANK" = 0 ]; then printf "  size  time\n  8 B  1 us\nend"; fi"#;
    for flags in [&[][..], &["--no-tag-output"], &["--tag-output", "--no-tag-output"]] {
        let args: Vec<&str> = flags.iter().copied().chain(["-n", "3", "--", "sh", "-c", script]).collect();
        let run = run(&args, QUICK);
        run.assert_code(0);
        assert_eq!(run.stdout, "  size  time\n  8 B  1 us\nend", "{flags:?}");
    }
}

#[test]
fn output_streams_while_ranks_run_and_sigterm_stops_them() {
    let start = Instant::now();
    let mut child =
        launcher(&["-n", "2", "--", "sh", "-c", "echo \"pid $$\"; exec sleep 30"]).spawn().expect("start oxccl-run");
    let rx = lines(child.stdout.take().expect("stdout is piped"));
    // Both lines come while the ranks still sleep: output is not held until exit.
    let got = take_lines(&rx, 2, start + Duration::from_secs(5), &mut child);
    let pids = numbers_after(&got.join("\n"), "pid");
    assert_eq!(pids.len(), 2, "{got:?}");
    let launcher_pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill takes no pointers; the pid is our own child's, not yet reaped.
    assert_eq!(unsafe { libc::kill(launcher_pid, libc::SIGTERM) }, 0);
    let run = finish(child, start, QUICK);
    run.assert_code(128 + libc::SIGTERM);
    assert!(run.stderr.contains("oxccl-run: received SIGTERM; stopping the ranks"), "{}", run.dump());
    assert!(run.elapsed < Duration::from_secs(5), "took {:?}", run.elapsed);
    assert_gone(&pids, "rank");
}

#[cfg(target_os = "linux")]
#[test]
fn ranks_die_with_a_killed_launcher() {
    let start = Instant::now();
    let mut child =
        launcher(&["-n", "2", "--", "sh", "-c", "echo \"pid $$\"; exec sleep 30"]).spawn().expect("start oxccl-run");
    let rx = lines(child.stdout.take().expect("stdout is piped"));
    let got = take_lines(&rx, 2, start + Duration::from_secs(5), &mut child);
    let pids = numbers_after(&got.join("\n"), "pid");
    assert_eq!(pids.len(), 2, "{got:?}");
    child.kill().expect("SIGKILL oxccl-run");
    child.wait().expect("reap oxccl-run");
    assert_gone(&pids, "rank");
}

#[test]
fn first_failure_stops_the_others() {
    // Ranks 0 and 2 start a grandchild and wait; rank 1 fails with status 3.
    let script = r#"
        if [ "$OXCCL_RANK" = 1 ]; then sleep 0.3; echo "rank 1 gives up" >&2; exit 3; fi
        sleep 30 &
        echo "grandchild $!"; echo "child $$"
        wait"#;
    let run = run(&["--tag-output", "-n", "3", "--", "sh", "-c", script], QUICK);
    run.assert_code(3);
    assert!(run.elapsed < Duration::from_secs(3), "took {:?}\n{}", run.elapsed, run.dump());
    let message = run
        .stderr
        .lines()
        .position(|l| {
            l.starts_with("oxccl-run: rank 1 (pid ") && l.ends_with(") exited with status 3; stopping the others")
        })
        .unwrap_or_else(|| panic!("no failure message\n{}", run.dump()));
    let last_words = run.stderr.lines().position(|l| l == "[1] rank 1 gives up").expect("rank 1's own message");
    assert!(last_words < message, "the rank's last words come before the launcher's report\n{}", run.dump());
    let children = numbers_after(&run.stdout, "child");
    let grandchildren = numbers_after(&run.stdout, "grandchild");
    assert_eq!((children.len(), grandchildren.len()), (2, 2), "{}", run.dump());
    assert_gone(&children, "rank");
    assert_gone(&grandchildren, "process started by a rank");
}

#[test]
fn death_by_signal_exits_128_plus_signal() {
    let script = r#"if [ "$OXCCL_RANK" = 0 ]; then sleep 0.1; kill -9 $$; fi; exec sleep 30"#;
    let run = run(&["-n", "2", "--", "sh", "-c", script], QUICK);
    run.assert_code(137);
    assert!(run.stderr.contains("oxccl-run: rank 0 (pid "), "{}", run.dump());
    assert!(run.stderr.contains(") killed by signal 9 (SIGKILL); stopping the others"), "{}", run.dump());
    assert!(run.elapsed < Duration::from_secs(3), "took {:?}", run.elapsed);
}

#[test]
fn successful_job_leaves_nothing_behind() {
    // Each rank leaves a background process holding its stdout: the launcher must neither
    // wait for it nor leave it running.
    let run = run(&["-n", "2", "--", "sh", "-c", "sleep 30 & echo \"grandchild $!\""], QUICK);
    run.assert_code(0);
    assert!(run.elapsed < Duration::from_secs(3), "took {:?}\n{}", run.elapsed, run.dump());
    let grandchildren = numbers_after(&run.stdout, "grandchild");
    assert_eq!(grandchildren.len(), 2, "{}", run.dump());
    assert_gone(&grandchildren, "process started by a rank");
}

#[test]
fn timeout_exits_124() {
    let run = run(&["--timeout", "1", "-n", "2", "--", "sh", "-c", "exec sleep 30"], QUICK);
    run.assert_code(124);
    assert!(run.stderr.contains("oxccl-run: timeout after 1 s"), "{}", run.dump());
    // Ranks that stop on SIGTERM are not given the whole grace period.
    assert!(
        run.elapsed >= Duration::from_secs(1) && run.elapsed < Duration::from_millis(2900),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn timeout_kills_ranks_that_ignore_sigterm() {
    let script = r#"trap "" TERM; echo "child $$"; sleep 30"#;
    let run = run(&["--timeout=0.3", "-n", "2", "--", "sh", "-c", script], QUICK);
    run.assert_code(124);
    assert!(run.stderr.contains("oxccl-run: timeout after 0.3 s"), "{}", run.dump());
    assert!(run.stderr.contains("sending SIGKILL"), "{}", run.dump());
    assert!(run.elapsed < Duration::from_secs(5), "took {:?}", run.elapsed);
    let children = numbers_after(&run.stdout, "child");
    assert_eq!(children.len(), 2, "{}", run.dump());
    assert_gone(&children, "rank");
}

#[test]
fn bad_usage_exits_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "missing -n"),
        (&["--", "true"], "missing -n"),
        (&["-n"], "-n needs a value"),
        (&["-n", "0", "--", "true"], "-n must be at least 1"),
        (&["-n", "many", "--", "true"], "-n expects a number of ranks"),
        (&["-n", "2"], "no command to run"),
        (&["-n", "2", "--"], "no command to run"),
        (&["--bogus", "-n", "2", "--", "true"], "unknown option --bogus"),
        (&["--timeout", "-1", "-n", "2", "--", "true"], "--timeout expects a positive number"),
        (
            &["--hosts", "localhost,node-far-away", "-n", "2", "--", "true"],
            "remote hosts are not supported: use mpirun or srun",
        ),
    ];
    for (args, message) in cases {
        let run = run(args, QUICK);
        assert_eq!(run.code(), 2, "{args:?}\n{}", run.dump());
        assert!(
            run.stderr.starts_with(&format!("oxccl-run: {message}")),
            "{args:?}: expected {message:?}\n{}",
            run.dump()
        );
        assert!(run.stderr.contains("usage: oxccl-run -n N"), "{args:?}: usage follows\n{}", run.dump());
        assert_eq!(run.stdout, "");
    }
}

#[test]
fn help_exits_0() {
    for flag in ["-h", "--help"] {
        let run = run(&[flag], QUICK);
        run.assert_code(0);
        assert!(run.stdout.starts_with("usage: oxccl-run -n N"), "{}", run.dump());
        assert_eq!(run.stderr, "");
    }
}

#[test]
fn local_hosts_are_accepted() {
    let mut hosts = "localhost,127.0.0.1".to_string();
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        hosts = format!("{hosts},{}", name.trim());
    }
    let run = run(&["--hosts", &hosts, "-n", "2", "--", "true"], QUICK);
    run.assert_code(0);
}

#[test]
fn command_that_cannot_start_exits_127() {
    let run = run(&["-n", "2", "--", "/nonexistent/oxccl-test-program", "arg"], QUICK);
    run.assert_code(127);
    assert!(
        run.stderr.starts_with("oxccl-run: cannot start /nonexistent/oxccl-test-program: No such file or directory"),
        "{}",
        run.dump()
    );
}
