//! The unit tests of the `*_perf` examples' harness (`examples/perf_common`): command
//! line, bus factors, size stepping and conventions, what each collective's checker
//! expects, JSON output and the plot. Examples' own tests do not run under `cargo test`,
//! so the harness is compiled here as a module, once, with its `#[cfg(test)]` modules.

#[path = "../examples/perf_common/mod.rs"]
mod perf_common;
