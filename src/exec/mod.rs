//! The executor: runs a batch of calls (one call, or a group) over connected links. It is
//! the only place that moves bytes between ranks.
//!
//! Each call arrives with its plan's [`Path`]: schedules run as streams over FIFOs
//! ([`streams`]), the direct algorithm in the peers' buffers ([`direct`], threads of one
//! process), or the one-slot one-shot all-reduce for small messages ([`one_slot`]). Waits
//! are bounded by the communicator's timeout and its fault state ([`wait`]); the
//! arithmetic of a step is in [`step`].

pub mod direct;
pub mod one_slot;
pub mod step;
pub mod streams;
pub mod wait;

#[cfg(test)]
mod testing;

use crate::algo::{self, Chunking, Schedule, Topo};
use crate::call::{Algo, Collective, Desc, Rank};
use crate::error::Result;
use crate::fault::Fault;
use crate::reduce::Reducer;
use crate::sync::{BackoffConfig, Doorbell};
use crate::transport::{Links, Transport};
use std::time::Duration;

pub use streams::Stream;
pub(crate) use wait::announced;
pub use wait::flush;

/// How the executor runs a call: chosen by the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The algorithm's schedules, as streams over FIFOs (any call, any group).
    Streams,
    /// Directly in the peers' buffers (threads of one process, a call alone).
    Direct,
    /// The one-shot all-reduce of a call that fits one slot (a call alone).
    OneSlot,
}

/// One call's buffers and arithmetic, as the executor sees them.
pub struct Call {
    /// Start of the send buffer (may equal `recv` for in-place calls).
    pub send: *const u8,
    /// Elements in the send buffer.
    pub send_len: usize,
    /// Start of the receive buffer.
    pub recv: *mut u8,
    /// Elements in the receive buffer.
    pub recv_len: usize,
    /// Bytes per element.
    pub elem: usize,
    /// The reduction, for reducing calls.
    pub reducer: Option<Reducer>,
    /// Descriptor sent with, and expected on, every message.
    pub desc: Desc,
    /// Write the output with non-temporal stores.
    pub nt: bool,
    /// Sequence number of the call on this communicator (for messages).
    pub seq: u64,
    /// The schedule writes each output region once, so links that take references may
    /// send from the caller's buffers (see `execute`).
    pub by_ref: bool,
    /// What the call is.
    pub coll: Collective,
    /// The algorithm that runs it.
    pub algo: Algo,
    /// How its data is cut into messages.
    pub chunking: Chunking,
    /// How the executor runs it.
    pub path: Path,
}

/// What the executor needs from the communicator.
pub struct Ctx<'a> {
    /// This rank.
    pub me: Rank,
    /// Number of ranks.
    pub n: usize,
    /// Where this rank sits in rings and trees.
    pub topo: &'a Topo,
    /// Connected links.
    pub links: &'a mut Links,
    /// The transport that connects missing links.
    pub transport: &'a dyn Transport,
    /// This rank's doorbell.
    pub bell: &'a Doorbell,
    /// Backoff tuning.
    pub backoff: BackoffConfig,
    /// Longest wait without progress.
    pub timeout: Option<Duration>,
    /// Whether the communicator broke (an abort, or a fault here or on another rank).
    pub fault: &'a Fault,
    /// The processes of this host's peers: a wait ends with an error naming a peer
    /// that died.
    pub watch: Option<&'a crate::liveness::PeerWatch>,
    /// Reused per-step vectors.
    pub scratch: &'a mut Scratch,
}

/// Vectors reused by every step, so steps do not allocate. Empty between steps.
#[derive(Default)]
pub struct Scratch {
    streams: Vec<Stream>,
    scheds: Vec<Schedule>,
    srcs: Vec<(Rank, *const u8, bool)>,
    dsts: Vec<*mut u8>,
    tmp: Vec<u8>,
}

// SAFETY: the pointers are only held during one step; between steps both vectors are
// empty.

unsafe impl Send for Scratch {}

/// Runs a batch of calls to completion: a call alone on its plan's path, a group's calls
/// together as streams. `connected` says the links the calls use are known to be
/// connected (a repeated call), so the executor need not look.
pub fn run(ctx: &mut Ctx<'_>, calls: &[Call], connected: bool) -> Result<()> {
    if let [call] = calls
        && call.path != Path::Streams
    {
        return match call.path {
            Path::Direct => direct::run(ctx, call),
            _ => one_slot::run(ctx, call),
        };
    }
    let mut streams = std::mem::take(&mut ctx.scratch.streams);
    let mut scheds = std::mem::take(&mut ctx.scratch.scheds);
    for (i, c) in calls.iter().enumerate() {
        if c.coll.count() == 0 && c.coll != Collective::Barrier {
            continue;
        }
        algo::schedules(&c.coll, c.algo, ctx.topo, c.chunking, &mut scheds);
        streams.extend(scheds.drain(..).map(|sched| Stream::new(sched, i)));
    }
    let r = if streams.is_empty() { Ok(()) } else { streams::run(ctx, calls, &mut streams, !connected) };
    streams.clear();
    ctx.scratch.streams = streams;
    ctx.scratch.scheds = scheds;
    r
}
