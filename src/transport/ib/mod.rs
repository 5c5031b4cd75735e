//! InfiniBand / RoCE verbs (issue 8, in progress). So far: which devices, ports and GID
//! a rank would use ([`select`]: NCCL's `OXCCL_IB_HCA` syntax, RoCE v2 GID detection,
//! the `OXCCL_IB_*` settings). The verbs wrapper and the transport that carries the
//! FIFOs over RDMA WRITE WITH IMMEDIATE are not written yet: between hosts oxccl uses
//! TCP, and nothing reads these settings yet.

pub mod select;
#[cfg(feature = "ib")]
pub mod verbs;
