//! Internals for oxccl's own C ABI, examples, benchmarks and tests: **not a stable API**.
//! What a user needs is re-exported at the crate root; anything here may change in any
//! release.

pub use crate::{reduce, transport, wire};

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

/// The part of a rank's init that grows with the job, run on synthetic peers (for the
/// init model, `examples/init_model.rs`).
pub mod init_model {
    pub use crate::comm::model::{RankWork, rank_work};
}

/// This machine's hostname.
pub use crate::sys::hostname;

/// Device operations on raw stream handles (the C ABI's and Python's `cudaStream_t`).
#[cfg(feature = "cuda")]
pub mod device {
    use crate::cuda::cudarc::driver::sys::CUstream;
    use crate::{Comm, RawBatch, Result};

    /// Runs a batch of device operations on a raw stream handle, as
    /// [`Comm::run_raw_device`] does on a cudarc stream.
    ///
    /// # Safety
    /// As [`Comm::run_raw_device`], and `stream` must be a valid stream handle (null: the
    /// default stream) whose context stays alive while the communicator uses it.
    pub unsafe fn run_raw_on(comm: &mut Comm, batch: RawBatch, stream: CUstream) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { comm.run_raw_on(batch, stream) }
    }
}
