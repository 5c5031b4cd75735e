//! A small safe wrapper over libibverbs (rdma-sys; feature `ib`): devices, contexts,
//! protection domains, memory regions, completion queues and reliable-connected queue
//! pairs, with RDMA WRITE WITH IMMEDIATE. Children hold their parents (`Arc`), so the
//! drop order is the one verbs needs: QP before CQ and PD, MR before PD, all before the
//! context. Errors name the verbs call and the errno text.

use std::ffi::CStr;
use std::sync::Arc;

use rdma_sys::*;

use crate::error::{Error, Result};
pub use crate::settings::QpTuning;

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

/// An open device.
pub struct Context {
    ctx: *mut ibv_context,
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
    pd: *mut ibv_pd,
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

/// A completion channel: the file descriptor a thread blocks on until a completion
/// queue bound to it ([`Cq::with_channel`]) has an event.
pub struct CompChannel {
    ch: *mut ibv_comp_channel,
    _ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for CompChannel {}
// SAFETY: as above.
unsafe impl Sync for CompChannel {}

impl CompChannel {
    /// Creates one on `ctx`.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<CompChannel>> {
        // SAFETY: the context is open.
        let ch = unsafe { ibv_create_comp_channel(ctx.ctx) };
        if ch.is_null() {
            return Err(last("ibv_create_comp_channel"));
        }
        Ok(Arc::new(CompChannel { ch, _ctx: ctx.clone() }))
    }

    /// Its file descriptor (readable when an event is pending).
    pub fn fd(&self) -> i32 {
        // SAFETY: a live channel.
        unsafe { (*self.ch).fd }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_comp_channel; the CQs bound to it (which hold this
        // Arc) are destroyed.
        unsafe { ibv_destroy_comp_channel(self.ch) };
    }
}

/// A completion queue, optionally bound to a [`CompChannel`].
pub struct Cq {
    cq: *mut ibv_cq,
    channel: Option<Arc<CompChannel>>,
    _ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for Cq {}
// SAFETY: as above.
unsafe impl Sync for Cq {}

/// One work completion.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// The work request's id.
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` (0) or the error status.
    pub status: u32,
    /// What completed (`IBV_WC_SEND`, `IBV_WC_RDMA_WRITE`, `IBV_WC_RECV`,
    /// `IBV_WC_RECV_RDMA_WITH_IMM`, ...); only meaningful when the status is success.
    pub opcode: u32,
    /// Bytes received (receive completions).
    pub byte_len: u32,
    /// The immediate value, for a receive that carried one.
    pub imm: Option<u32>,
}

impl Completion {
    /// Whether it completed successfully.
    pub fn is_ok(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_SUCCESS
    }

    /// The status as text (`"success"`, `"transport retry counter exceeded"`, ...).
    pub fn status_text(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        unsafe { CStr::from_ptr(ibv_wc_status_str(self.status)) }.to_string_lossy().into_owned()
    }
}

impl Cq {
    /// A queue of `depth` entries on `ctx`, polled only ([`Cq::poll`]).
    pub fn new(ctx: &Arc<Context>, depth: u32) -> Result<Arc<Cq>> {
        Cq::create(ctx, depth, None)
    }

    /// A queue of `depth` entries on `ctx` whose events arrive on `channel` (the channel
    /// must be on the same device): [`Cq::req_notify`] arms it, [`Cq::wait_event`] blocks.
    pub fn with_channel(ctx: &Arc<Context>, depth: u32, channel: &Arc<CompChannel>) -> Result<Arc<Cq>> {
        Cq::create(ctx, depth, Some(channel.clone()))
    }

    fn create(ctx: &Arc<Context>, depth: u32, channel: Option<Arc<CompChannel>>) -> Result<Arc<Cq>> {
        let ch = channel.as_ref().map_or(std::ptr::null_mut(), |c| c.ch);
        // SAFETY: the context is open; the channel, if any, is live (the CQ keeps it);
        // no user context pointer; completion vector 0.
        let cq = unsafe { ibv_create_cq(ctx.ctx, depth as i32, std::ptr::null_mut(), ch, 0) };
        if cq.is_null() {
            return Err(last("ibv_create_cq"));
        }
        Ok(Arc::new(Cq { cq, channel, _ctx: ctx.clone() }))
    }

    /// Arms the queue: the next completion (any, or only solicited ones) raises one event
    /// on its channel. Poll once more after arming, or a completion that came in between
    /// goes unnoticed.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        // SAFETY: a live queue.
        let r = unsafe { ibv_req_notify_cq(self.cq, solicited_only as i32) };
        if r != 0 { Err(fail("ibv_req_notify_cq", r)) } else { Ok(()) }
    }

    /// Waits up to `timeout` for an event on the queue's channel and acknowledges it:
    /// `Ok(true)` for an event (re-arm with [`Cq::req_notify`], then poll), `Ok(false)`
    /// at the timeout. An error if the queue has no channel.
    pub fn wait_event(&self, timeout: std::time::Duration) -> Result<bool> {
        let Some(ch) = &self.channel else {
            return Err(Error::invalid_argument("Cq::wait_event on a queue without a completion channel"));
        };
        let mut pfd = libc::pollfd { fd: ch.fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Error::system("poll on a completion channel".to_string(), e));
        }
        if r == 0 {
            return Ok(false);
        }
        let mut cq = std::ptr::null_mut();
        let mut cq_ctx = std::ptr::null_mut();
        // SAFETY: the channel is live and readable, so this does not block; both
        // out-parameters are writable.
        let r = unsafe { ibv_get_cq_event(ch.ch, &mut cq, &mut cq_ctx) };
        if r != 0 {
            return Err(last("ibv_get_cq_event"));
        }
        // SAFETY: `cq` is the queue the event is for (one bound to this channel, so
        // live: this one, or another sharing the channel, which the caller keeps alive
        // while it waits); every event is acknowledged once, as ibv_destroy_cq requires.
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(true)
    }

    /// Takes up to `max` completions without blocking.
    pub fn poll(&self, max: usize) -> Result<Vec<Completion>> {
        // SAFETY: a zeroed ibv_wc array is a valid out-parameter.
        let mut wc: Vec<ibv_wc> = (0..max).map(|_| unsafe { std::mem::zeroed() }).collect();
        // SAFETY: the queue is live; `wc` has room for `max` entries.
        let n = unsafe { ibv_poll_cq(self.cq, max as i32, wc.as_mut_ptr()) };
        if n < 0 {
            return Err(fail("ibv_poll_cq", -n));
        }
        Ok(wc[..n as usize]
            .iter()
            .map(|w| Completion {
                wr_id: w.wr_id,
                status: w.status,
                opcode: w.opcode,
                byte_len: w.byte_len,
                imm: (w.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0)
                    // SAFETY: the flag says the union holds the immediate.
                    .then(|| u32::from_be(unsafe { w.imm_data_invalidated_rkey_union.imm_data })),
            })
            .collect())
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_cq; its QPs (which hold this Arc) are gone.
        unsafe { ibv_destroy_cq(self.cq) };
    }
}

/// Where a queue pair's peer is: what the two sides exchange to connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number.
    pub psn: u32,
    /// LID (InfiniBand) or 0.
    pub lid: u16,
    /// GID (RoCE; and InfiniBand across subnets).
    pub gid: [u8; 16],
}

/// Largest payload a work request carries inline ([`SendWr::inline`]).
pub const MAX_INLINE: u32 = 64;

/// One work request for [`Qp::post_send`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Local bytes: (address, length, lkey); `None` for a zero-length request.
    pub local: Option<(u64, u32, u32)>,
    /// Remote destination (address, rkey) of an RDMA write; `None` for a send.
    pub remote: Option<(u64, u32)>,
    /// Immediate data: a write becomes a write with immediate, a send a send with
    /// immediate (both complete a receive on the peer).
    pub imm: Option<u32>,
    /// Ask for a completion (an unsignalled request completes with the next signalled
    /// one of its queue pair).
    pub signaled: bool,
    /// Copy the local bytes into the request (at most [`MAX_INLINE`]): they may change
    /// once the call returns, and need no registration.
    pub inline: bool,
}

/// A reliable-connected queue pair.
pub struct Qp {
    qp: *mut ibv_qp,
    _pd: Arc<Pd>,
    _cq: Arc<Cq>,
}

// SAFETY: verbs objects are thread-safe.
unsafe impl Send for Qp {}
// SAFETY: as above.
unsafe impl Sync for Qp {}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_qp, destroyed once, before its CQ and PD.
        unsafe { ibv_destroy_qp(self.qp) };
    }
}

impl Qp {
    /// A queue pair on `pd` whose sends and receives complete on `cq`, with room for
    /// `depth` outstanding work requests each way.
    pub fn rc(pd: &Arc<Pd>, cq: &Arc<Cq>, depth: u32) -> Result<Qp> {
        // SAFETY: a zeroed init_attr is valid; the fields that matter are set below.
        let mut a: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        a.send_cq = cq.cq;
        a.recv_cq = cq.cq;
        a.qp_type = ibv_qp_type::IBV_QPT_RC;
        a.cap.max_send_wr = depth;
        a.cap.max_recv_wr = depth;
        a.cap.max_send_sge = 1;
        a.cap.max_recv_sge = 1;
        a.cap.max_inline_data = MAX_INLINE;
        // SAFETY: the PD and CQ are live; `a` is initialised.
        let qp = unsafe { ibv_create_qp(pd.pd, &mut a) };
        if qp.is_null() {
            return Err(last("ibv_create_qp"));
        }
        Ok(Qp { qp, _pd: pd.clone(), _cq: cq.clone() })
    }

    /// Its number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: a live queue pair.
        unsafe { (*self.qp).qp_num }
    }

    fn modify(&self, a: &mut ibv_qp_attr, mask: u32, what: &str) -> Result<()> {
        // SAFETY: a live queue pair; `a` holds the attributes `mask` names.
        let r = unsafe { ibv_modify_qp(self.qp, a, mask as i32) };
        if r != 0 { Err(fail(what, r)) } else { Ok(()) }
    }

    /// Connects it to `remote` through local `port` (RESET → INIT → RTR → RTS); `gid_index`
    /// is the local GID to send from (RoCE), `mtu` an `IBV_MTU_*` value, `psn` this side's
    /// first packet number, `tuning` the retry timing, service level and traffic class.
    /// Without a GID index (InfiniBand in one subnet) packets carry no global route header.
    pub fn connect(
        &self,
        port: u8,
        gid_index: Option<u8>,
        mtu: u32,
        psn: u32,
        remote: &Address,
        tuning: &QpTuning,
    ) -> Result<()> {
        use ibv_qp_attr_mask as m;
        // SAFETY: zeroed attributes are valid; the fields each step needs are set.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.port_num = port;
        a.pkey_index = 0;
        a.qp_access_flags =
            (ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0 | ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0) as _;
        self.modify(
            &mut a,
            (m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS).0,
            "ibv_modify_qp(INIT)",
        )?;
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = mtu;
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.port_num = port;
        a.ah_attr.sl = tuning.service_level;
        if let Some(g) = gid_index {
            a.ah_attr.grh.traffic_class = tuning.traffic_class;
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = ibv_gid { raw: remote.gid };
            a.ah_attr.grh.sgid_index = g;
            a.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            &mut a,
            (m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER)
                .0,
            "ibv_modify_qp(RTR)",
        )?;
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.sq_psn = psn;
        // Transport retries before an error completion (RETRY_EXC_ERR): by default 6,
        // ~67 ms apart (timeout 14), so a peer whose queue pair is gone is noticed in
        // about half a second (see QpTuning).
        a.timeout = tuning.timeout;
        a.retry_cnt = tuning.retry_cnt;
        // Receiver-not-ready retries; 7 would retry forever (the spec's meaning).
        a.rnr_retry = 6;
        a.max_rd_atomic = 1;
        self.modify(
            &mut a,
            (m::IBV_QP_STATE
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_MAX_QP_RD_ATOMIC)
                .0,
            "ibv_modify_qp(RTS)",
        )
    }

    /// Posts a receive with room for `len` bytes at `offset` in `local`, for a SEND
    /// ([`SendWr`] without `remote`).
    ///
    /// # Safety
    /// The range must lie inside `local`, and nothing else may touch it until the
    /// receive completes (or is flushed).
    pub unsafe fn post_recv_buf(&self, local: &Mr, offset: usize, len: usize, wr_id: u64) -> Result<()> {
        let mut sge = ibv_sge { addr: local.addr() + offset as u64, length: len as u32, lkey: local.lkey() };
        // SAFETY: a zeroed receive request is valid; the fields used are set below.
        let mut wr: ibv_recv_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        let mut bad = std::ptr::null_mut();
        // SAFETY: a live queue pair; `wr` and `sge` live for the call; the caller's
        // contract covers the memory.
        let r = unsafe { ibv_post_recv(self.qp, &mut wr, &mut bad) };
        if r != 0 { Err(fail("ibv_post_recv", r)) } else { Ok(()) }
    }

    /// Posts a receive (for a write with immediate: no buffer, it only takes the
    /// immediate's completion).
    pub fn post_recv(&self, wr_id: u64) -> Result<()> {
        // SAFETY: a zeroed receive request with no scatter entries is valid.
        let mut wr: ibv_recv_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        let mut bad = std::ptr::null_mut();
        // SAFETY: a live queue pair; `wr` is initialised and lives for the call.
        let r = unsafe { ibv_post_recv(self.qp, &mut wr, &mut bad) };
        if r != 0 { Err(fail("ibv_post_recv", r)) } else { Ok(()) }
    }

    /// Posts an RDMA WRITE WITH IMMEDIATE of `len` bytes at `offset` in `local` to
    /// `remote` (address and remote key), signalled, with immediate `imm`.
    ///
    /// # Safety
    /// The remote range must be registered with `rkey` on the peer and large enough; the
    /// local bytes must not change until the completion.
    pub unsafe fn write_imm(
        &self,
        local: &Mr,
        offset: usize,
        len: usize,
        remote: (u64, u32),
        imm: u32,
        wr_id: u64,
    ) -> Result<()> {
        let mut sge = ibv_sge { addr: local.addr() + offset as u64, length: len as u32, lkey: local.lkey() };
        // SAFETY: a zeroed send request is valid; the fields used are set below.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        wr.wr.rdma = rdma_t { remote_addr: remote.0, rkey: remote.1 };
        let mut bad = std::ptr::null_mut();
        // SAFETY: a live queue pair; `wr` and `sge` live for the call; the caller's
        // contract covers the memory.
        let r = unsafe { ibv_post_send(self.qp, &mut wr, &mut bad) };
        if r != 0 { Err(fail("ibv_post_send", r)) } else { Ok(()) }
    }

    /// Posts `wrs` as one chain (one doorbell).
    ///
    /// # Safety
    /// Every non-inline local range must lie in a region registered with its lkey, every
    /// remote range in a peer region registered with its rkey, and both must stay valid
    /// (the local bytes unchanged) until the request completes or the queue pair is
    /// destroyed.
    pub unsafe fn post_send(&self, wrs: &[SendWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<ibv_sge> = wrs
            .iter()
            .map(|w| {
                let (addr, length, lkey) = w.local.unwrap_or((0, 0, 0));
                ibv_sge { addr, length, lkey }
            })
            .collect();
        // SAFETY: a zeroed send request is valid; the fields used are set below.
        let mut chain: Vec<ibv_send_wr> = wrs.iter().map(|_| unsafe { std::mem::zeroed() }).collect();
        let base = chain.as_mut_ptr();
        for (i, w) in wrs.iter().enumerate() {
            let c = &mut chain[i];
            c.wr_id = w.wr_id;
            // SAFETY: i + 1 < len: a pointer to the next element of `chain`.
            c.next = if i + 1 < wrs.len() { unsafe { base.add(i + 1) } } else { std::ptr::null_mut() };
            if w.local.is_some_and(|l| l.1 > 0) {
                c.sg_list = &mut sges[i];
                c.num_sge = 1;
            }
            c.opcode = match (w.remote.is_some(), w.imm.is_some()) {
                (true, true) => ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM,
                (true, false) => ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                (false, true) => ibv_wr_opcode::IBV_WR_SEND_WITH_IMM,
                (false, false) => ibv_wr_opcode::IBV_WR_SEND,
            };
            let mut flags = 0;
            if w.signaled {
                flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if w.inline && w.local.is_some_and(|l| l.1 <= MAX_INLINE) {
                flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
            c.send_flags = flags;
            if let Some(imm) = w.imm {
                c.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
            }
            if let Some((remote_addr, rkey)) = w.remote {
                c.wr.rdma = rdma_t { remote_addr, rkey };
            }
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: a live queue pair; the chain and its scatter entries live for the call
        // (inline payloads are copied during it); the caller's contract covers the rest.
        let r = unsafe { ibv_post_send(self.qp, base, &mut bad) };
        if r != 0 { Err(fail("ibv_post_send", r)) } else { Ok(()) }
    }
}
