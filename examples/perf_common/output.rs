//! What a run prints. Standard output, rank 0's: nccl-tests' table (header, column
//! titles, rows, footer) with C's number formats, written so that a file or a pipe gets
//! exactly those bytes: each line whole, unless a person watches and progress notes show
//! ([`shows_progress`]). Standard error: messages, each line after `rank R: ` when ranks
//! are processes ([`err`]), and the end of the run on an oxccl error ([`fail`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

use super::args::Opts;
use super::ranks::Device;
use super::report;

/// What starts every line on standard error: `rank R: ` when ranks are processes.
pub(super) static ERR_PREFIX: OnceLock<String> = OnceLock::new();

/// Writes `msg` and a newline to standard error, every line after [`ERR_PREFIX`].
pub(super) fn err(msg: &str) {
    let p = ERR_PREFIX.get().map_or("", |s| s.as_str());
    let mut s = String::new();
    for l in msg.lines() {
        s += p;
        s += l;
        s.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// C's `%e` with `prec` decimals (`1.5e+03`).
pub(super) fn c_exp(v: f64, prec: usize) -> String {
    let s = format!("{v:.prec$e}");
    let (m, e) = s.split_once('e').unwrap();
    let e: i32 = e.parse().unwrap();
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// C's `%g` (6 significant digits, trailing zeros removed).
pub fn c_g(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let strip = |s: String| -> String {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    };
    let s = format!("{v:.5e}");
    let x: i32 = s.split_once('e').unwrap().1.parse().unwrap();
    if !(-4..6).contains(&x) {
        let e = c_exp(v, 5);
        let (m, ex) = e.split_once('e').unwrap();
        format!("{}e{ex}", strip(m.to_string()))
    } else {
        strip(format!("{v:.*}", (5 - x) as usize))
    }
}

/// nccl-tests' `getFloatStr`: the most decimals (2, 1, 0) that fit `width`, else `%e`.
pub(super) fn float_str(v: f64, width: usize) -> String {
    for p in [2, 1, 0] {
        let s = format!("{v:>width$.p$}");
        if s.len() <= width {
            return s;
        }
    }
    let s = c_exp(v, if width >= 7 { 1 } else { 0 });
    format!("{s:>width$}")
}

/// Rank 0's standard output: the table, written so that a file or a pipe receives exactly
/// nccl-tests' bytes. Without progress notes every line is written whole, once complete
/// (so a message on standard error, sent to the same file, never lands inside a row);
/// with them, each piece is written as it comes and the note after it is erased with
/// backspaces before the next.
pub(super) struct Stdout {
    /// Progress notes are shown ([`set_progress`]).
    live: bool,
    /// Not live: the start of the current line, waiting for its end.
    pending: String,
    /// Live: characters of the note now at the end of the line (0: none).
    shown: usize,
}

impl Stdout {
    const fn new() -> Stdout {
        Stdout { live: false, pending: String::new(), shown: 0 }
    }

    /// What to write now for `s`: at once with progress notes on (after erasing the note
    /// shown), else up to its last newline (the rest waits for its line's end).
    fn text(&mut self, s: &str) -> Option<String> {
        if self.live {
            let shown = std::mem::take(&mut self.shown);
            let back = "\x08".repeat(shown);
            return Some(format!("{back}{}{back}{s}", " ".repeat(shown)));
        }
        self.pending += s;
        let end = self.pending.rfind('\n')?;
        Some(self.pending.drain(..=end).collect())
    }

    /// What to write to show `note` (nothing when notes are off).
    fn note(&mut self, note: &str) -> Option<String> {
        if !self.live {
            return None;
        }
        let text = self.text(note)?;
        self.shown = note.chars().count();
        Some(text)
    }
}

pub(super) static STDOUT: Mutex<Stdout> = Mutex::new(Stdout::new());

/// Turns progress notes on or off (off until called); see [`shows_progress`].
pub(super) fn set_progress(on: bool) {
    STDOUT.lock().unwrap_or_else(|e| e.into_inner()).live = on;
}

/// Writes `s` to standard output, flushed ([`Stdout::text`]).
pub(super) fn out(s: &str) {
    let mut st = STDOUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(text) = st.text(s) {
        write_stdout(&text);
    }
}

/// Shows `note` after the row being measured, until the next output replaces it; only
/// when progress notes are on.
pub(super) fn progress(note: &str) {
    let mut st = STDOUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(text) = st.note(note) {
        write_stdout(&text);
    }
}

/// Writes what waits of an unfinished line (before an error ends the run, so the file
/// shows where it stopped). Never blocks: from a panic in [`out`], nothing is written.
pub(super) fn flush_out() {
    if let Ok(mut st) = STDOUT.try_lock() {
        let rest = std::mem::take(&mut st.pending);
        write_stdout(&rest);
    }
}

pub(super) fn write_stdout(s: &str) {
    let mut o = std::io::stdout().lock();
    if o.write_all(s.as_bytes()).and_then(|_| o.flush()).is_err() {
        // Nobody reads the results any more (a closed pipe): stop, as nccl-tests would
        // on SIGPIPE.
        std::process::exit(1);
    }
}

/// Whether rank 0 shows progress notes (`[row 3/40, in-place]`, erased with backspaces):
/// as `--progress` says when given; otherwise only where a person watches, that is when
/// standard output is a terminal and no launcher stands in between (`launched`: Open
/// MPI's mpirun and `srun --pty` give each rank a pseudo-terminal whose other end is
/// often a file or a pipe).
pub fn shows_progress(flag: Option<bool>, terminal: bool, launched: bool) -> bool {
    flag.unwrap_or(terminal && !launched)
}

/// The lines before the table: parameters and the "devices" (rank threads or processes).
pub(super) fn header(prog: &str, o: &Opts, devices: &[Device], reduced_max: Option<usize>) -> String {
    let mut h = String::new();
    let ver = env!("CARGO_PKG_VERSION");
    let _ = writeln!(h, "# oxccl-tests version {ver} oxccl={ver} (nccl-tests format)");
    let _ = writeln!(h, "# Collective test starting: {prog}");
    let (step, kind) = if o.step_factor > 1 { (o.step_factor, "factor") } else { (o.step_bytes, "bytes") };
    let _ = writeln!(
        h,
        "# nThread {} nGpus 1 minBytes {} maxBytes {} step: {step}({kind}) warmup iters: {} iters: {} agg iters: 1 validation: {} graph: 0 unalign: {}",
        o.nthreads, o.min_bytes, o.max_bytes, o.warmup, o.iters, o.check, o.unalign
    );
    if o.blocking != 0 {
        let _ = writeln!(h, "#  Blocking Enabled: wait for completion and barrier after each collective");
    }
    let _ = writeln!(h, "#");
    let _ = writeln!(h, "# Using devices");
    for (r, d) in devices.iter().enumerate() {
        let Device { pid, host, dev, what } = d;
        let _ = writeln!(h, "#  Rank {r:2} Group  0 Pid {pid:6} on {host:>10} device {dev:2} [cpu] {what}");
    }
    if let Some(m) = reduced_max {
        let _ = writeln!(h, "#\n# Reducing maxBytes to {m} due to memory limitation");
    }
    h
}

/// The table's column titles, as nccl-tests prints them.
pub(super) fn column_header() -> String {
    let row = |c: [&str; 13]| {
        format!(
            "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6}  {:>6} \n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]
        )
    };
    let mut h = String::from("#\n");
    let _ = writeln!(
        h,
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}           out-of-place                       in-place          ",
        "", "", "", "", ""
    );
    h += &row([
        "size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw",
        "#wrong",
    ]);
    h += &row(["(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", ""]);
    h
}

/// The lines after the table; `bw_ok` is the verdict on NCCL_TESTS_MIN_BW when set.
pub(super) fn footer(prog: &str, errors: u64, bw: f64, bw_ok: Option<bool>) -> String {
    let mut f = String::new();
    let _ = writeln!(f, "# {:<20} : {} {}", "Out of bounds values", errors, if errors > 0 { "FAILED" } else { "OK" });
    let verdict = match bw_ok {
        None => "",
        Some(true) => "OK",
        Some(false) => "FAILED",
    };
    let _ = writeln!(f, "# {:<20} : {} {verdict}", "Avg bus bandwidth", c_g(bw));
    let _ = writeln!(f, "#");
    let _ = writeln!(f, "# Collective test concluded: {prog}");
    let _ = writeln!(f, "#");
    f
}

/// Ends the process on an oxccl error, saying what the call was (rank 0 also writes
/// what it has of the `-J` and `--plot` files).
pub(super) fn fail(e: oxccl::Error, what: &str) -> ! {
    flush_out();
    err(&format!("oxccl error: {e}"));
    err(&format!("  (during {what})"));
    report::abort(&format!("oxccl error: {e} (during {what})"));
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::super::launch::launched;
    use super::*;

    /// Without progress notes a row leaves in one piece, when its line ends; with them,
    /// each piece at once, the note before it erased.
    #[test]
    fn rows_are_written_whole_unless_progress_shows() {
        let mut o = Stdout::new();
        assert_eq!(o.text("# header\n"), Some("# header\n".into()));
        assert_eq!(o.note("  [row 1/2, out-of-place]"), None);
        assert_eq!(o.text("           8"), None);
        assert_eq!(o.text("  1.0"), None);
        assert_eq!(o.text("  2.0\n           16"), Some("           8  1.0  2.0\n".into()));
        assert_eq!(o.pending, "           16");
        let mut o = Stdout { live: true, ..Stdout::new() };
        assert_eq!(o.text("           8"), Some("           8".into()));
        assert_eq!(o.note(" [r]"), Some(" [r]".into()));
        assert_eq!(o.text("  1.0"), Some("\x08\x08\x08\x08    \x08\x08\x08\x08  1.0".into()));
        assert_eq!(o.text("\n"), Some("\n".into()));
    }

    #[test]
    fn progress_only_where_a_person_watches() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        // Open MPI, MPICH, Slurm (one task too), oxccl-run, torchrun, an address alone.
        for vars in [
            &[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")][..],
            &[("PMI_RANK", "1")],
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")],
            &[("OXCCL_RANK", "0"), ("OXCCL_NRANKS", "4")],
            &[("RANK", "0"), ("WORLD_SIZE", "2")],
            &[("OXCCL_COMM_ID", "h:1")],
        ] {
            assert!(launched(env(vars)), "{vars:?}");
            assert!(!shows_progress(None, true, launched(env(vars))), "{vars:?}");
        }
        assert!(!launched(env(&[("OXCCL_RANK", " "), ("HOME", "/root")])));
        assert!(shows_progress(None, true, false));
        assert!(!shows_progress(None, false, false));
        assert!(shows_progress(Some(true), false, true));
        assert!(!shows_progress(Some(false), true, false));
    }

    #[test]
    fn c_formats() {
        assert_eq!(c_g(0.0888226), "0.0888226");
        assert_eq!(c_g(1234567.0), "1.23457e+06");
        assert_eq!(float_str(12.345, 6), " 12.35");
        assert_eq!(float_str(1234567.0, 7), "1234567");
        assert_eq!(float_str(12345678.0, 7), "1.2e+07");
    }
}
