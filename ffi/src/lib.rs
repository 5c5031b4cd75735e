//! NCCL-compatible C ABI for oxccl.
//!
//! This crate will build `liboxccl.so` / `liboxccl.a` exporting `nccl.h`'s entry points
//! (`ncclAllReduce`, `ncclCommInitRank`, ...). It is a placeholder until the C ABI issue;
//! for now it only re-exports the Rust API so the workspace layout is in place.

pub use oxccl;
