//! oxccl: collective communication in Rust, in the family of NCCL.
pub mod error;
pub mod reduce;
pub mod types;

pub use error::{Error, Result};
pub use types::{DataType, Element, F8E4M3, F8E5M2, ReduceOp, Scalar};
