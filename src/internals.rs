//! Internals for oxccl's own C ABI, examples, benchmarks and tests: **not a stable API**.
//! What a user needs is re-exported at the crate root; anything here may change in any
//! release.

/// The table of environment variables as Markdown (`docs/SETTINGS.md`).
pub fn settings_markdown() -> String {
    crate::settings::vars::markdown()
}
