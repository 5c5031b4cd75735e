//! InfiniBand / RoCE verbs between hosts (feature `ib`): [`select`] picks the device,
//! port and GID (NCCL's `OXCCL_IB_HCA` syntax, RoCE v2 detection, the `OXCCL_IB_*`
//! settings); [`verbs`] wraps the libibverbs calls safely; [`conn`] is the connection
//! message; `net` is the transport ([`Ib`]): RDMA WRITE WITH IMMEDIATE into the
//! receiver's registered FIFO slots, credits returned with SEND WITH IMMEDIATE. Between
//! hosts it is preferred to TCP when every rank finds a usable port.

pub mod conn;
#[cfg(feature = "ib")]
mod net;
pub mod select;
#[cfg(feature = "ib")]
pub mod verbs;

#[cfg(feature = "ib")]
mod setup;

#[cfg(feature = "ib")]
pub use net::{Device, Ib};
#[cfg(feature = "ib")]
pub(crate) use setup::IbSetup;
