//! Internals for oxccl's own C ABI, examples, benchmarks and tests: **not a stable API**.
//! What a user needs is re-exported at the crate root; anything here may change in any
//! release.

/// The table of environment variables as Markdown (`docs/SETTINGS.md`).
pub fn settings_markdown() -> String {
    crate::settings::vars::markdown()
}

/// The launchers' environment variables (one copy, shared with the library).
pub mod launcher {
    pub use crate::comm::launch::{
        ADDRESS_VARS, COMM_ID, LOCAL_RANK, LOCAL_SIZE, NRANKS, RANK, RANK_SIZE_VARS, RankSize, launched, rank_and_size,
    };
}

/// This machine's hostname.
pub use crate::sys::hostname;
