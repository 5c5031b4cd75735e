//! Reliable-connected queue pairs ([`Qp`]): creating one, connecting it to a peer's
//! ([`Address`], RESET → INIT → RTR → RTS), posting receives and chains of writes and
//! sends ([`SendWr`]). The memory a request names is registered in [`super::context`];
//! its completions arrive on a queue of [`super::cq`].

use std::sync::Arc;

use rdma_sys::*;

use super::{Cq, Mr, Pd, QpTuning, fail, last};
use crate::error::Result;

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
