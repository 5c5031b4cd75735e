//! liboxccl: NCCL's C API (`nccl.h`) over oxccl.
//!
//! A C or C++ program written against NCCL's `nccl.h` compiles against
//! `ffi/include/nccl.h` and links with `-loxccl`. This crate builds that library
//! (`liboxccl.so`, soname `liboxccl.so.0`, and `liboxccl.a`); `install.sh` installs it
//! with the header and a pkg-config file.
//!
//! Modules, one concept each: [`abi`] (C types and enum conversions), [`boundary`]
//! (panics and errors into result codes, the last error), [`handle`] (what an
//! `ncclComm_t` points to), [`group`] (group semantics), and the entry points by topic:
//! [`lifecycle`], [`coll`], [`ops`], [`mem`].
//!
//! Buffers are host memory. Operations run, and return, when complete; the stream
//! argument is not used. Every difference from NCCL is listed in the README's
//! "Deviations from NCCL".

#![warn(missing_docs)]

pub mod abi;
pub mod boundary;
pub mod coll;
pub mod group;
pub mod handle;
pub mod lifecycle;
pub mod mem;
pub mod ops;

pub use oxccl;
