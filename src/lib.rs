//! oxccl: collective communication in Rust, in the family of NVIDIA NCCL, Gloo and MPI.
//!
//! Ranks form a communicator ([`Comm`]) and run all-reduce, broadcast, reduce,
//! all-gather, reduce-scatter, all-to-all, gather, scatter, send/recv and barrier on
//! their buffers, over the fastest link between each pair of ranks.
//!
//! ```
//! use oxccl::{Comm, ReduceOp};
//! let comms = Comm::init_all(2)?;
//! let results: Vec<Vec<i32>> = std::thread::scope(|s| {
//!     let hs: Vec<_> = comms
//!         .into_iter()
//!         .map(|mut c| s.spawn(move || {
//!             let mut buf = vec![c.rank() as i32 + 1; 4];
//!             c.all_reduce_in_place(&mut buf, ReduceOp::Sum).unwrap();
//!             buf
//!         }))
//!         .collect();
//!     hs.into_iter().map(|h| h.join().unwrap()).collect()
//! });
//! assert!(results.iter().all(|r| r == &[3, 3, 3, 3]));
//! # Ok::<(), oxccl::Error>(())
//! ```
//!
//! The public API is what this page lists: [`Comm`] and its work handles, [`Config`] and
//! [`Settings`], [`Error`], the data types and ops, [`UniqueId`], and, with the `cuda`
//! feature, the `cuda` module. ARCHITECTURE.md maps the modules behind it. `oxccl::internals` is
//! for oxccl's own C ABI, examples, benchmarks and tests: not a stable API.

#![deny(missing_docs)]

mod algo;
mod bootstrap;
mod call;
mod comm;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod exec;
mod fault;
/// Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`): not a stable
/// API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod internals;
mod liveness;
mod log;
mod plan;
#[doc(hidden)]
pub mod reduce;
pub mod settings;
mod sync;
mod sys;
mod topology;
#[doc(hidden)]
pub mod transport;
mod types;
#[doc(hidden)]
pub mod wire;

pub use bootstrap::UniqueId;
pub use call::Algo;
pub use comm::{AbortHandle, Comm, Group, Lent, RawBatch, RawWork, Scope, Work};
pub use error::{Error, ErrorKind, NCCL_RESULTS, NcclResult, Result};
pub use settings::{Config, Settings};
pub use transport::MemStats;
pub use types::{DataType, Element, F8E4M3, F8E5M2, ReduceOp, Scalar};
