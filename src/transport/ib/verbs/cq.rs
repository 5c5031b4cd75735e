//! Completion queues ([`Cq`]), the channels their events arrive on ([`CompChannel`]), and
//! the completions polled from them ([`Completion`]). Queue pairs post to these queues
//! ([`super::qp`]); what a completion means is the transport's business.

use std::ffi::CStr;
use std::sync::Arc;

use rdma_sys::*;

use super::{Context, fail, last};
use crate::error::{Error, Result};

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
    pub(super) cq: *mut ibv_cq,
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
