//! The command line of `oxccl-run`: parsing, checking and the usage text.

use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

/// The help text, printed by `-h`/`--help` and after every usage error.
pub const USAGE: &str = "\
usage: oxccl-run -n N [options] [--] CMD [ARGS...]

Starts N ranks of CMD ARGS on this host and waits for them. Each rank gets
OXCCL_RANK and OXCCL_LOCAL_RANK (0..N-1), OXCCL_NRANKS and OXCCL_LOCAL_SIZE (N), and
OXCCL_COMM_ID=127.0.0.1:PORT, a free port where rank 0 listens (an OXCCL_COMM_ID
already set is kept); the rest of the environment is inherited. The first rank to
fail stops the others. Across hosts, use mpirun or srun: oxccl reads their
environment too.

options:
  -n, --nranks N     number of ranks to start (at least 1)
  --timeout SECS     stop the job after SECS seconds (decimals allowed), exit 124
  --tag-output       prefix each line of output with its rank, \"[0] ...\"
  --no-tag-output    forward output untouched, as mpirun and srun do (default; still
                     whole lines, never interleaved)
  --hosts H1,H2,...  reserved: only this host (localhost, 127.0.0.1, ::1, its name)
  -h, --help         print this help

Exit status: 0 when every rank succeeds; otherwise the first failing rank's status
(128+S when signal S killed it), 124 on timeout, 128+S when the launcher gets signal S
(SIGINT, SIGTERM or SIGHUP, forwarded to the ranks), 2 for bad usage, 127 when CMD
cannot be started.
";

/// What the launcher was asked to run.
#[derive(Debug, PartialEq)]
pub struct Options {
    /// Number of ranks to start.
    pub nranks: usize,
    /// Limit on the job's run time, with the text the user gave for it (for the message).
    pub timeout: Option<(Duration, String)>,
    /// Prefix each output line with `[rank] `.
    pub tag_output: bool,
    /// The program and its arguments; never empty.
    pub command: Vec<OsString>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Run a job.
    Run(Options),
    /// Print the usage text and exit successfully.
    Help,
}

/// A command line the launcher cannot run: the message says why.
#[derive(Debug, PartialEq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shorthand for a [`UsageError`] built with `format!`.
macro_rules! usage_error {
    ($($arg:tt)*) => { UsageError(format!($($arg)*)) };
}

/// Parses the arguments after the program name. Options come first; the command starts at
/// `--` or at the first argument that does not start with `-`. `this_host` gives the
/// machine's name, asked only when `--hosts` is used.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    this_host: impl Fn() -> Option<String>,
) -> Result<Parsed, UsageError> {
    let mut args = args.into_iter();
    let mut nranks = None;
    let mut timeout = None;
    let mut tag_output = false;
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        let bytes = arg.as_encoded_bytes();
        if arg == "--" {
            command.extend(args.by_ref());
            break;
        }
        if !bytes.starts_with(b"-") || bytes == b"-" {
            command.push(arg);
            command.extend(args.by_ref());
            break;
        }
        let Some(flag) = arg.to_str() else {
            return Err(usage_error!("unknown option {}", arg.to_string_lossy()));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ if flag.starts_with("-n") && flag.len() > 2 && !flag.starts_with("--") => {
                ("-n", Some(flag[2..].to_string()))
            }
            _ => (flag, None),
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--tag-output" | "--no-tag-output" if inline.is_some() => {
                return Err(usage_error!("{name} takes no value"));
            }
            "--tag-output" => tag_output = true,
            "--no-tag-output" => tag_output = false,
            "-n" | "--nranks" => {
                let value = value(name, inline, &mut args)?;
                match value.parse::<usize>() {
                    Ok(0) => return Err(usage_error!("{name} must be at least 1")),
                    Ok(n) => nranks = Some(n),
                    Err(_) => return Err(usage_error!("{name} expects a number of ranks, got '{value}'")),
                }
            }
            "--timeout" => {
                let value = value(name, inline, &mut args)?;
                let limit = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| usage_error!("--timeout expects a positive number of seconds, got '{value}'"))?;
                timeout = Some((limit, value));
            }
            "--hosts" => {
                let value = value(name, inline, &mut args)?;
                check_hosts(&value, &this_host)?;
            }
            _ => return Err(usage_error!("unknown option {flag}")),
        }
    }
    let nranks = nranks.ok_or_else(|| usage_error!("missing -n N, the number of ranks"))?;
    if command.is_empty() {
        return Err(usage_error!("no command to run: give it after --"));
    }
    Ok(Parsed::Run(Options { nranks, timeout, tag_output, command }))
}

/// The value of option `name`: the text after `=` (or after `-n`), else the next argument.
fn value(name: &str, inline: Option<String>, args: &mut impl Iterator<Item = OsString>) -> Result<String, UsageError> {
    let value = match inline {
        Some(v) => v,
        None => {
            let next = args.next().ok_or_else(|| usage_error!("{name} needs a value"))?;
            next.into_string().map_err(|v| usage_error!("{name}: not a valid value: {}", v.to_string_lossy()))?
        }
    };
    if value.is_empty() {
        return Err(usage_error!("{name} needs a value"));
    }
    Ok(value)
}

/// Accepts a `--hosts` list only when every host is this one: the launcher starts ranks on
/// this machine only.
fn check_hosts(list: &str, this_host: &impl Fn() -> Option<String>) -> Result<(), UsageError> {
    let mut hostname = None;
    for host in list.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(usage_error!("--hosts: empty host name in '{list}'"));
        }
        let local = ["localhost", "127.0.0.1", "::1"].iter().any(|h| host.eq_ignore_ascii_case(h))
            || hostname.get_or_insert_with(this_host).as_deref().is_some_and(|h| host.eq_ignore_ascii_case(h));
        if !local {
            return Err(usage_error!("remote hosts are not supported: use mpirun or srun ({host} is not this host)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args` with `node7` as this machine's name.
    fn p(args: &[&str]) -> Result<Parsed, UsageError> {
        parse(args.iter().map(OsString::from), || Some("node7".to_string()))
    }

    /// The options of a command line that must parse into a job.
    fn run(args: &[&str]) -> Options {
        match p(args) {
            Ok(Parsed::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// The message of a command line that must be refused.
    fn err(args: &[&str]) -> String {
        match p(args) {
            Err(e) => e.0,
            other => panic!("{args:?} should fail, got {other:?}"),
        }
    }

    #[test]
    fn forms_of_options() {
        let o = run(&["-n", "4", "--", "prog", "-x", "--y"]);
        assert_eq!(o.nranks, 4);
        assert!(!o.tag_output);
        assert_eq!(o.timeout, None);
        assert_eq!(o.command, ["prog", "-x", "--y"]);
        assert_eq!(run(&["-n2", "prog"]).nranks, 2);
        assert_eq!(run(&["--nranks=3", "prog", "-n", "9"]).command, ["prog", "-n", "9"]);
        let o = run(&["--timeout=1.5", "--tag-output", "--nranks", "1", "--", "--odd"]);
        assert_eq!(o.timeout, Some((Duration::from_millis(1500), "1.5".to_string())));
        assert!(o.tag_output);
        assert_eq!(o.command, ["--odd"]);
        assert!(run(&["--no-tag-output", "--tag-output", "-n", "1", "x"]).tag_output);
        assert!(!run(&["--tag-output", "--no-tag-output", "-n", "1", "x"]).tag_output);
        assert_eq!(p(&["-n", "1", "--help"]), Ok(Parsed::Help));
        assert_eq!(p(&["-h"]), Ok(Parsed::Help));
    }

    #[test]
    fn bad_usage() {
        assert!(err(&[]).contains("missing -n"));
        assert!(err(&["-n", "2"]).contains("no command"));
        assert!(err(&["-n", "2", "--"]).contains("no command"));
        assert!(err(&["-n", "0", "x"]).contains("at least 1"));
        assert!(err(&["-n", "two", "x"]).contains("expects a number"));
        assert!(err(&["-n"]).contains("needs a value"));
        assert!(err(&["--bogus", "-n", "1", "x"]).contains("unknown option --bogus"));
        assert!(err(&["--timeout", "0", "-n", "1", "x"]).contains("positive"));
        assert!(err(&["--timeout", "nan", "-n", "1", "x"]).contains("positive"));
        assert!(err(&["--tag-output=yes", "-n", "1", "x"]).contains("takes no value"));
    }

    #[test]
    fn hosts_must_be_local() {
        assert_eq!(run(&["--hosts", "localhost,127.0.0.1,NODE7,::1", "-n", "1", "x"]).nranks, 1);
        let e = err(&["--hosts=localhost,node8", "-n", "1", "x"]);
        assert!(e.starts_with("remote hosts are not supported: use mpirun or srun"), "{e}");
        assert!(err(&["--hosts", "localhost,", "-n", "1", "x"]).contains("empty host"));
    }
}
