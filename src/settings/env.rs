//! The process's environment, read once: every variable oxccl's library reads (its own
//! `OXCCL_*`, the launchers' rank and address variables, CUDA's install paths) comes
//! through [`var`], from a snapshot taken the first time one is asked for. A program
//! that sets `OXCCL_*` variables must do so before its first communicator, as with
//! NCCL's parameters.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::OnceLock;

fn snapshot() -> &'static HashMap<OsString, OsString> {
    static SNAPSHOT: OnceLock<HashMap<OsString, OsString>> = OnceLock::new();
    SNAPSHOT.get_or_init(|| std::env::vars_os().collect())
}

/// The value of variable `name` when the snapshot was taken, if it was set and is UTF-8.
pub fn var(name: &str) -> Option<String> {
    snapshot().get(std::ffi::OsStr::new(name)).and_then(|v| v.to_str()).map(str::to_string)
}

/// As [`var`], for variables that hold paths (which need not be UTF-8).
pub fn var_os(name: &str) -> Option<OsString> {
    snapshot().get(std::ffi::OsStr::new(name)).cloned()
}
