//! A small safe wrapper over libibverbs (rdma-sys; feature `ib`), one file per kind of
//! object: `context.rs` opens a device ([`Context`]) and holds its protection domains
//! ([`Pd`]) and memory registrations ([`Mr`]), `cq.rs` its completion queues ([`Cq`]) and
//! their channels, `qp.rs` its reliable-connected queue pairs ([`Qp`]) and their work
//! requests (RDMA WRITE WITH IMMEDIATE).
//! Children hold their parents (`Arc`), so the drop order is the one verbs needs: QP
//! before CQ and PD, MR before PD, all before the context. Errors name the verbs call
//! and the errno text.
//!
//! This wrapper knows nothing of oxccl's links, FIFOs or ranks: the transport above it
//! (`transport::ib`) decides what to register, connect and post.

use std::ffi::CStr;

use rdma_sys::*;

use crate::error::Error;
pub use crate::settings::QpTuning;

mod context;
mod cq;
mod qp;

pub use context::{Context, LINK_LAYER_ETHERNET, LINK_LAYER_INFINIBAND, Mr, Pd, PortInfo};
pub use cq::{CompChannel, Completion, Cq};
pub use qp::{Address, MAX_INLINE, Qp, SendWr};

fn fail(call: &str, errno: i32) -> Error {
    Error::system(format!("verbs call {call}"), std::io::Error::from_raw_os_error(errno))
}

fn last(call: &str) -> Error {
    let e = std::io::Error::last_os_error();
    fail(call, e.raw_os_error().unwrap_or(libc::EIO))
}

/// The names of the RDMA devices this host has (empty without any, or without an RDMA
/// stack).
pub fn device_names() -> Vec<String> {
    let mut n = 0;
    // SAFETY: `n` is writable; the list is freed below.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Vec::new();
    }
    let names = (0..n.max(0) as usize)
        .map(|i| {
            // SAFETY: `list` holds `n` device pointers; each name is a C string they own.
            unsafe { CStr::from_ptr(ibv_get_device_name(*list.add(i))) }.to_string_lossy().into_owned()
        })
        .collect();
    // SAFETY: the list came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    names
}
