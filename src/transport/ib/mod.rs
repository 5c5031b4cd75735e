//! InfiniBand / RoCE verbs between hosts (feature `ib`): RDMA WRITE WITH IMMEDIATE into
//! the receiver's registered FIFO slots, credits returned with SEND WITH IMMEDIATE.
//! Between hosts it is preferred to TCP when every rank finds a usable port. One file per
//! concept:
//! - [`select`] picks the device, port and GID (NCCL's `OXCCL_IB_HCA` syntax, RoCE v2
//!   detection, the `OXCCL_IB_*` settings): pure choosing, built without `ib` too;
//! - [`conn`] is the connection message and the immediates: pure encoding, built
//!   without `ib` too;
//! - `verbs` wraps the libibverbs calls safely, and knows nothing of links;
//! - `device.rs` probes for the port a rank uses (`Device`);
//! - `setup.rs` sets the transport up with the other ranks (`transport::setup`);
//! - `link.rs` is the transport (`Ib`): its links' state and the `Transport` calls;
//! - `handshake.rs` makes a link: meeting a peer over the listener and exchanging the
//!   connection messages;
//! - `data.rs` moves messages on a link: writes, completions, credits, and peers that
//!   leave.

pub mod conn;
pub mod select;
#[cfg(feature = "ib")]
pub mod verbs;

#[cfg(feature = "ib")]
mod data;
#[cfg(feature = "ib")]
mod device;
#[cfg(feature = "ib")]
mod handshake;
#[cfg(feature = "ib")]
mod link;
#[cfg(feature = "ib")]
mod setup;

#[cfg(feature = "ib")]
pub use device::Device;
#[cfg(feature = "ib")]
pub use link::Ib;
#[cfg(feature = "ib")]
pub(crate) use setup::IbSetup;
