//! An open device ([`Context`]) with its ports and GIDs, protection domains ([`Pd`]) and
//! memory registrations ([`Mr`]). Queues and queue pairs live in [`super::cq`] and
//! [`super::qp`]; this file only hands them the raw handles they are created on.

use std::ffi::CStr;
use std::sync::Arc;

use rdma_sys::*;

use super::{device_names, fail, last};
use crate::error::{Error, Result};

/// An open device.
pub struct Context {
    pub(super) ctx: *mut ibv_context,
    name: String,
}

// SAFETY: libibverbs contexts are thread-safe.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: opened by ibv_open_device; every child holds an Arc, so none is left.
        unsafe { ibv_close_device(self.ctx) };
    }
}

/// What a port reports.
#[derive(Clone, Copy, Debug)]
pub struct PortInfo {
    /// LID (0 on RoCE).
    pub lid: u16,
    /// The active MTU (`IBV_MTU_*` value: 1 = 256 ... 5 = 4096).
    pub active_mtu: u32,
    /// Whether the port is active.
    pub active: bool,
    /// [`LINK_LAYER_INFINIBAND`] or [`LINK_LAYER_ETHERNET`] (RoCE).
    pub link_layer: u8,
}

/// `IBV_LINK_LAYER_INFINIBAND` (a C macro, not in the bindings).
pub const LINK_LAYER_INFINIBAND: u8 = 1;
/// `IBV_LINK_LAYER_ETHERNET` (RoCE).
pub const LINK_LAYER_ETHERNET: u8 = 2;

impl Context {
    /// Opens the device named `name`.
    pub fn open(name: &str) -> Result<Arc<Context>> {
        let mut n = 0;
        // SAFETY: `n` is writable; the list is freed below.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(last("ibv_get_device_list"));
        }
        let mut ctx = std::ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: as in `device_names`.
            let dev = unsafe { *list.add(i) };
            // SAFETY: as in `device_names`.
            let dn = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) }.to_string_lossy();
            if dn == name {
                // SAFETY: `dev` is a device of the live list.
                ctx = unsafe { ibv_open_device(dev) };
                if ctx.is_null() {
                    let e = last("ibv_open_device");
                    // SAFETY: freed once.
                    unsafe { ibv_free_device_list(list) };
                    return Err(e);
                }
                break;
            }
        }
        // SAFETY: freed once; an open context stays valid without the list.
        unsafe { ibv_free_device_list(list) };
        if ctx.is_null() {
            return Err(Error::invalid_argument(format!("no RDMA device named {name} (have: {:?})", device_names())));
        }
        Ok(Arc::new(Context { ctx, name: name.to_string() }))
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Port `port`'s attributes.
    pub fn port(&self, port: u8) -> Result<PortInfo> {
        // SAFETY: a zeroed port_attr is a valid out-parameter.
        let mut a: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; `a` is writable. (`___ibv_query_port` is the
        // header's inline ibv_query_port, which tells the provider the structure's size.)
        let r = unsafe { ___ibv_query_port(self.ctx, port, &mut a) };
        if r != 0 {
            return Err(fail(&format!("ibv_query_port({}, port {port})", self.name), r));
        }
        Ok(PortInfo {
            lid: a.lid,
            active_mtu: a.active_mtu,
            active: a.state == ibv_port_state::IBV_PORT_ACTIVE,
            link_layer: a.link_layer,
        })
    }

    /// Number of physical ports.
    pub fn port_count(&self) -> Result<u8> {
        // SAFETY: a zeroed device_attr is a valid out-parameter.
        let mut a: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; `a` is writable.
        let r = unsafe { ibv_query_device(self.ctx, &mut a) };
        if r != 0 {
            return Err(fail(&format!("ibv_query_device({})", self.name), r));
        }
        Ok(a.phys_port_cnt)
    }

    /// GID `index` of port `port`.
    pub fn gid(&self, port: u8, index: u32) -> Result<[u8; 16]> {
        let mut g = ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open; `g` is writable.
        let r = unsafe { ibv_query_gid(self.ctx, port, index as i32, &mut g) };
        if r != 0 {
            return Err(fail("ibv_query_gid", r));
        }
        // SAFETY: every bit pattern is a valid byte array.
        Ok(unsafe { g.raw })
    }
}

/// A protection domain.
pub struct Pd {
    pub(super) pd: *mut ibv_pd,
    _ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    /// Allocates one on `ctx`.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Pd>> {
        // SAFETY: the context is open.
        let pd = unsafe { ibv_alloc_pd(ctx.ctx) };
        if pd.is_null() {
            return Err(last("ibv_alloc_pd"));
        }
        Ok(Arc::new(Pd { pd, _ctx: ctx.clone() }))
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: allocated by ibv_alloc_pd; its MRs and QPs (which hold this Arc) are gone.
        unsafe { ibv_dealloc_pd(self.pd) };
    }
}

/// A registered memory region.
pub struct Mr {
    mr: *mut ibv_mr,
    _pd: Arc<Pd>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for Mr {}
// SAFETY: as above.
unsafe impl Sync for Mr {}

impl Mr {
    /// Registers `len` bytes at `addr` for local writes and remote writes.
    ///
    /// # Safety
    /// The memory must stay allocated (and not be remapped) until the region is dropped.
    pub unsafe fn register(pd: &Arc<Pd>, addr: *mut u8, len: usize) -> Result<Mr> {
        let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        // SAFETY: the caller's contract; the PD is live.
        let mr = unsafe { ibv_reg_mr(pd.pd, addr.cast(), len, access as i32) };
        if mr.is_null() {
            return Err(last("ibv_reg_mr"));
        }
        Ok(Mr { mr, _pd: pd.clone() })
    }

    /// The local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: a live region.
        unsafe { (*self.mr).lkey }
    }

    /// The remote key.
    pub fn rkey(&self) -> u32 {
        // SAFETY: a live region.
        unsafe { (*self.mr).rkey }
    }

    /// The registered address.
    pub fn addr(&self) -> u64 {
        // SAFETY: a live region.
        unsafe { (*self.mr).addr as u64 }
    }
}

impl Mr {
    /// The registered length in bytes.
    pub fn len(&self) -> usize {
        // SAFETY: a live region.
        unsafe { (*self.mr).length }
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deregisters the region now, reporting a failure (dropping it deregisters too,
    /// silently).
    pub fn deregister(mut self) -> Result<()> {
        let mr = std::mem::replace(&mut self.mr, std::ptr::null_mut());
        // SAFETY: registered by ibv_reg_mr; the null left behind makes Drop skip it.
        let r = unsafe { ibv_dereg_mr(mr) };
        if r != 0 { Err(fail("ibv_dereg_mr", r)) } else { Ok(()) }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        if !self.mr.is_null() {
            // SAFETY: registered by ibv_reg_mr, deregistered once.
            unsafe { ibv_dereg_mr(self.mr) };
        }
    }
}
