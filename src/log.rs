//! Messages for operators, on standard error: warnings always, `INFO` lines when
//! `OXCCL_DEBUG=INFO` (or `Config::debug`). Each line names the host and process, as
//! NCCL's do, so lines from many ranks can be told apart, and is written in one piece, so
//! lines from ranks that share a standard error (a file, mpirun's forwarding) never mix.

use std::io::Write as _;
use std::sync::OnceLock;

/// Whether INFO lines are printed (`OXCCL_DEBUG=INFO` in the process's settings).
pub fn info_enabled() -> bool {
    crate::settings::process().debug
}

/// `host:pid`, computed once.
pub fn origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| format!("{}:{}", crate::sys::hostname(), std::process::id()))
}

/// Writes `host:pid oxccl LEVEL msg` and a newline to standard error with one write
/// (`eprintln!` writes each formatted piece on its own).
fn emit(level: &str, msg: &str) {
    let line = format!("{} oxccl {level} {msg}\n", origin());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Prints a warning.
pub fn warn(msg: &str) {
    emit("WARN", msg);
}

/// Prints the effective settings, once per process, when INFO lines are on for `s`
/// (`OXCCL_DEBUG=INFO`, or `Config::debug`).
pub fn settings_once(s: &crate::settings::Settings) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if (s.debug || info_enabled()) && !DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        info(true, &format!("settings (* differs from the default): {}", s.summary()));
    }
}

/// Prints an INFO line when enabled (or when `force`).
pub fn info(force: bool, msg: &str) {
    if force || info_enabled() {
        emit("INFO", msg);
    }
}
