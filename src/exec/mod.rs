//! The executor: runs schedules over connected FIFOs. It is the only place that moves
//! bytes between ranks.
//!
//! One call (or one group of calls) is a set of streams. The executor advances every
//! stream whose next step is ready (each incoming message has arrived, each outgoing slot
//! is free), so streams that depend on each other across ranks (a ring of sends and
//! receives, the up and down halves of a tree) never deadlock. When no stream can move it
//! waits on the rank's doorbell, bounded by the communicator's timeout and its abort flag.
//!
//! A step's data path: the result is computed straight into the first outgoing slot (or
//! the output when nothing is sent), from the incoming slots and the local input, then
//! copied to the other destinations. Large outputs are written with non-temporal stores.

pub mod direct;

use std::time::Duration;

use crate::algo::{Buf, Peers, Schedule, Span, Step};
use crate::call::{Desc, Rank, desc};
use crate::error::{Error, Result};
use crate::fault::recent::Entry;
use crate::fault::{Fault, STALL, mismatched};
use crate::reduce::{self, Reducer};
use crate::sync::{self, BackoffConfig, Doorbell, WaitError};
use crate::transport::{Dir, LinkKey, Links, Transport};

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
}

/// A schedule being run for one call of the batch.
pub struct Stream {
    /// The schedule.
    pub sched: Schedule,
    /// Index of its call in the batch.
    pub call: usize,
    cur: Option<Step>,
    after: Vec<usize>,
}

impl Stream {
    /// A stream of `sched` for call number `call` of the batch.
    pub fn new(sched: Schedule, call: usize) -> Stream {
        Stream { sched, call, cur: None, after: Vec::new() }
    }
}

/// What the executor needs from the communicator.
pub struct Ctx<'a> {
    /// This rank.
    pub me: Rank,
    /// Number of ranks.
    pub n: usize,
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

/// Connects every link the streams use (lazily: only the first call that needs a link
/// pays for it).
pub fn connect(ctx: &mut Ctx<'_>, streams: &[Stream], opener: Desc) -> Result<()> {
    let (me, n) = (ctx.me, ctx.n);
    let mut missing = false;
    for s in streams {
        s.sched.links(me, n, &mut |p, c, send| {
            let dir = if send { Dir::Send } else { Dir::Recv };
            missing |= !ctx.links.has(LinkKey { peer: p, channel: c, dir });
        });
    }
    if !missing {
        return Ok(());
    }
    let mut keys = Vec::new();
    for s in streams {
        s.sched.links(me, n, &mut |p, c, send| {
            keys.push(LinkKey { peer: p, channel: c, dir: if send { Dir::Send } else { Dir::Recv } });
        });
    }
    ctx.links.ensure(ctx.transport, me, &keys, opener)
}

/// Orders streams of different calls that share a link: a later one waits for the
/// earlier ones, so their messages cannot interleave on the FIFO.
fn order_shared_links(me: Rank, n: usize, streams: &mut [Stream]) {
    let keys: Vec<Vec<(Rank, u8, bool)>> = streams
        .iter()
        .map(|s| {
            let mut v = Vec::new();
            s.sched.links(me, n, &mut |p, c, send| v.push((p, c, send)));
            v
        })
        .collect();
    for i in 0..streams.len() {
        for j in 0..i {
            if streams[j].call != streams[i].call && keys[i].iter().any(|k| keys[j].contains(k)) {
                streams[i].after.push(j);
            }
        }
    }
}

#[inline]
fn ready(links: &Links, me: Rank, n: usize, s: &Step) -> bool {
    s.recv.all(me, n, |p| links.rx_ref(p, s.channel).can_recv())
        && s.send.all(me, n, |p| links.tx_ref(p, s.channel).can_send())
}

/// Runs `streams` (over `calls`) to completion, first connecting their links unless the
/// caller knows they are connected.
pub fn run(ctx: &mut Ctx<'_>, calls: &[Call], streams: &mut [Stream], connect_links: bool) -> Result<()> {
    if connect_links {
        connect(ctx, streams, calls.first().map_or([0; 2], |c| c.desc))?;
    }
    let grouped = calls.len() > 1;
    if grouped {
        order_shared_links(ctx.me, ctx.n, streams);
    }
    for s in streams.iter_mut() {
        s.cur = s.sched.next_step();
    }
    loop {
        let mut progressed = ctx.transport.progress().map_err(|e| announced(ctx.fault).unwrap_or(e))?;
        let mut live = false;
        for i in 0..streams.len() {
            if streams[i].cur.is_none() {
                continue;
            }
            if grouped && streams[i].after.iter().any(|&j| streams[j].cur.is_some()) {
                live = true;
                continue;
            }
            let mut budget = 64;
            while let Some(step) = streams[i].cur {
                if !ready(ctx.links, ctx.me, ctx.n, &step) {
                    break;
                }
                execute(ctx, &calls[streams[i].call], &step)?;
                progressed = true;
                streams[i].cur = streams[i].sched.next_step();
                budget -= 1;
                if budget == 0 {
                    break;
                }
            }
            live |= streams[i].cur.is_some();
        }
        if !live {
            return Ok(());
        }
        if !progressed {
            wait(ctx, calls, streams)?;
        }
    }
}

/// A message waiting on any link that comes from a different collective at the
/// position of `calls` (or from one this rank already finished): a mismatch that no step
/// of the current calls would see when the peer sent it on a link they do not read (say
/// an all-gather's ring step arriving where an all-reduce expects a different peer).
/// Point-to-point messages are left alone (they need not be symmetric), as are
/// messages from peers already in a later collective.
fn stray(fault: &Fault, me: Rank, links: &Links, transport: &dyn Transport, calls: &[Call]) -> Option<Error> {
    let mut colls = calls.iter().filter(|c| !desc::is_p2p(c.desc));
    let first = colls.next()?;
    let last = colls.next_back().unwrap_or(first);
    let mut found = None;
    let mut look = |p: Rank, d: Desc| {
        if found.is_some() || desc::is_p2p(d) || calls.iter().any(|c| c.desc == d) {
            return;
        }
        let ahead = desc::tag_bits(d).wrapping_sub(desc::tag_bits(last.desc)) & 0xffff;
        if ahead != 0 && ahead < 0x8000 {
            return;
        }
        let call = calls.iter().find(|c| desc::tag_bits(c.desc) == desc::tag_bits(d)).unwrap_or(first);
        found = Some(mismatch(fault, me, p, call, d, 0, 0));
    };
    links.for_each_rx(|p, rx| {
        if rx.can_recv() {
            look(p, rx.message().desc);
        }
    });
    transport.unclaimed(&mut look);
    found
}

/// How long a wait that found its peer gone gives that peer's fault announcement to
/// arrive: a rank that failed (a mismatch, a timeout) and then left says why, and its
/// reason is more use to the user than "closed its connection".
const ANNOUNCEMENT_GRACE: Duration = Duration::from_millis(200);

/// The fault that broke the communicator, given [`ANNOUNCEMENT_GRACE`] to arrive.
pub(crate) fn announced(fault: &Fault) -> Option<Error> {
    let t = std::time::Instant::now();
    while !fault.tripped() && t.elapsed() < ANNOUNCEMENT_GRACE {
        std::thread::sleep(Duration::from_millis(1));
    }
    fault.error()
}

/// Waits, with the communicator's backoff, until `ready(links)` holds, moving network
/// bytes meanwhile. On timeout, `timed_out(links)` says what the rank was waiting for.
/// Before each sleep, messages of `calls`' position from other collectives end the wait
/// with a mismatch.
fn wait_on(
    ctx: &mut Ctx<'_>,
    calls: &[Call],
    ready: &mut dyn FnMut(&Links) -> bool,
    timed_out: &dyn Fn(&Links) -> (String, Vec<Rank>),
) -> Result<()> {
    let links: &Links = ctx.links;
    let (fault, transport, watch, me) = (ctx.fault, ctx.transport, ctx.watch, ctx.me);
    let mut mismatched = None;
    let mut failed = None;
    let mut stuck_since = None;
    let mut asked = false;
    let mut dead = None;
    let io = |d: Duration| transport.wait_io(d);
    let io: Option<&dyn Fn(Duration)> = if transport.has_sockets() { Some(&io) } else { None };
    let r = sync::wait_until(
        &ctx.backoff,
        ctx.bell,
        ctx.timeout,
        &|| fault.tripped(),
        &mut || match transport.progress() {
            Err(e) => {
                failed = Some(e);
                true
            }
            Ok(_) => ready(links),
        },
        &mut || {
            mismatched = stray(fault, me, links, transport, calls);
            if mismatched.is_some() {
                return true;
            }
            // Stuck for a while: a mismatch may leave no message to see. Ask once.
            let since = *stuck_since.get_or_insert_with(std::time::Instant::now);
            if !asked && !calls.is_empty() && since.elapsed() >= STALL {
                asked = true;
                fault.stalled();
            }
            // Only the peers this rank waits for: one that finished and left is fine.
            let (_, peers) = timed_out(links);
            dead = peers.into_iter().find_map(|p| {
                if let Some(info) = watch.and_then(|w| w.dead_peer(p)) {
                    let e = Error::remote(format!("rank {p} ({}) died", info.describe()));
                    Some(e.with_peer(p, Some(&info.hostname), Some(info.pid)))
                } else {
                    transport.peer_gone(p).map(|why| Error::remote(why).with_peer(p, None, None))
                }
            });
            dead.is_some()
        },
        io,
    );
    if let Some(e) = failed {
        // A broken connection usually means the peer failed and left: prefer its reason.
        return Err(announced(fault).unwrap_or(e));
    }
    if let Some(e) = mismatched {
        return Err(e);
    }
    if let Some(gone) = dead {
        // A peer that finished its part and exited is no failure: what it sent may still
        // wait in a socket or a FIFO. Take all of it before giving up.
        while transport.progress().map_err(|e| announced(fault).unwrap_or(e))? {}
        if ready(links) {
            return Ok(());
        }
        if let Some(e) = announced(fault) {
            return Err(e);
        }
        // The engine names the operation.
        return Err(gone);
    }
    match r {
        Ok(()) => Ok(()),
        Err(WaitError::Stopped) => Err(Error::internal("a wait stopped without a reason")),
        Err(WaitError::Aborted) => {
            // A fault elsewhere may race with the last messages of a call that is
            // complete here: take what arrived before failing.
            if fault.origin().is_some_and(|o| o != ctx.me) {
                while transport.progress().map_err(|e| announced(fault).unwrap_or(e))? {}
                if ready(links) {
                    return Ok(());
                }
            }
            Err(fault.error().unwrap_or_else(|| Error::internal("a wait ended for a fault that is not recorded")))
        }
        Err(WaitError::Timeout) => {
            let (op, mut peers) = timed_out(links);
            peers.sort_unstable();
            peers.dedup();
            Err(Error::timeout(op, ctx.timeout.unwrap_or_default(), peers))
        }
    }
}

fn wait(ctx: &mut Ctx<'_>, calls: &[Call], streams: &[Stream]) -> Result<()> {
    let (me, n) = (ctx.me, ctx.n);
    wait_on(
        ctx,
        calls,
        &mut |links| streams.iter().any(|s| s.cur.is_some_and(|st| ready(links, me, n, &st))),
        &|links| {
            let mut peers = Vec::new();
            let mut what = String::new();
            for s in streams {
                if let Some(st) = s.cur {
                    st.recv.for_each(me, n, |p| {
                        if !links.rx_ref(p, st.channel).can_recv() {
                            peers.push(p);
                        }
                    });
                    st.send.for_each(me, n, |p| {
                        if !links.tx_ref(p, st.channel).can_send() {
                            peers.push(p);
                        }
                    });
                    if what.is_empty() {
                        let c = &calls[s.call];
                        what = format!("rank {me}: {} #{}", desc::describe(c.desc), c.seq);
                    }
                }
            }
            (what, peers)
        },
    )
}

/// Vectors reused by every step, so steps do not allocate. Empty between steps.
#[derive(Default)]
pub struct Scratch {
    srcs: Vec<(Rank, *const u8, bool)>,
    dsts: Vec<*mut u8>,
    tmp: Vec<u8>,
}

// SAFETY: the pointers are only held during one step; between steps both vectors are
// empty.
unsafe impl Send for Scratch {}

fn span_ptr(call: &Call, sp: Span, count: usize) -> Result<*mut u8> {
    let (base, len) = match sp.buf {
        Buf::Send => (call.send as *mut u8, call.send_len),
        Buf::Recv => (call.recv, call.recv_len),
    };
    if sp.offset.checked_add(count).is_none_or(|e| e > len) {
        return Err(Error::internal(format!(
            "schedule span {sp:?} of {count} elements exceeds a buffer of {len} elements"
        )));
    }
    // SAFETY: offset + count <= len (checked), and the caller guarantees the buffer holds
    // `len` elements of `elem` bytes.
    Ok(unsafe { base.add(sp.offset * call.elem) })
}

/// The error for a message from `peer` that does not fit `call`: a mismatched call
/// (named on both sides), or, when the peer's call is the same, a size that the
/// schedules cannot produce.
pub(crate) fn mismatch(
    fault: &Fault,
    me: Rank,
    peer: Rank,
    call: &Call,
    got: Desc,
    bytes: usize,
    want: usize,
) -> Error {
    let theirs = desc::tag_bits(got);
    let current = Entry { tag: 0, desc: call.desc, seq: call.seq };
    if theirs != desc::tag_bits(call.desc) {
        // The peer's message comes from another call: name what this rank called then.
        return mismatched(me, fault.recent().by_tag_bits(theirs), current, peer, got, None);
    }
    if got == call.desc {
        return Error::internal(format!(
            "rank {me}: message from rank {peer} holds {bytes} bytes, expected {want} in {} #{}",
            desc::describe(call.desc),
            call.seq
        ));
    }
    mismatched(me, Some(current), current, peer, got, None)
}

/// Executes one ready step.
fn execute(ctx: &mut Ctx<'_>, call: &Call, step: &Step) -> Result<()> {
    let (me, n, ch) = (ctx.me, ctx.n, step.channel);
    let bytes = step.count * call.elem;
    let links = &mut *ctx.links;
    let sc = &mut *ctx.scratch;
    let fault = ctx.fault;
    sc.srcs.clear();
    sc.dsts.clear();
    let mut err = None;
    step.recv.for_each(me, n, |p| {
        let m = links.rx_ref(p, ch).message();
        if m.desc != call.desc || m.bytes != bytes {
            err.get_or_insert_with(|| mismatch(fault, me, p, call, m.desc, m.bytes, bytes));
        }
        sc.srcs.push((p, m.ptr, false));
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some(sp) = step.input {
        // A partial result (hierarchical stages) combines like a received message.
        sc.srcs.push((me, span_ptr(call, sp, step.count)?, !step.partial));
    }
    let out = match step.output {
        Some(sp) => Some(span_ptr(call, sp, step.count)?),
        None => None,
    };
    // A single link that takes references (TCP) sends straight from the caller's
    // buffers instead of a copy in its slot: from the output this step writes, or from
    // the raw input it only forwards. Only for schedules that write each output region
    // once per call, so the data cannot change before the send completes (every call
    // ends with a flush).
    let mut by_ref: Option<*const u8> = None;
    if call.by_ref
        && step.count > 0
        && let Peers::One(p) = step.send
        && links.tx_ref(p, ch).by_reference()
    {
        by_ref = match (out, step.input, step.recv) {
            (Some(o), _, _) => Some(o as *const u8),
            (None, Some(_), Peers::None) if !step.partial && call.reducer.is_none_or(|r| !r.has_pre()) => {
                sc.srcs.last().map(|s| s.1)
            }
            _ => None,
        };
    }
    let mut too_big = false;
    step.send.for_each(me, n, |p| {
        let tx = links.tx_ref(p, ch);
        too_big |= bytes > tx.max_bytes();
        if by_ref.is_none() {
            sc.dsts.push(tx.buffer(bytes.min(tx.max_bytes())));
        }
    });
    if too_big {
        sc.srcs.clear();
        sc.dsts.clear();
        return Err(Error::internal(format!("a step of {bytes} bytes exceeds the slot size")));
    }
    if step.count > 0 {
        // SAFETY: every source and destination holds `step.count` elements: outgoing
        // slots were checked above, incoming messages against `bytes`; spans were
        // bounds-checked by `span_ptr`. Incoming slots are ours until released, outgoing
        // slots until posted. Destinations are distinct from each other and from the
        // incoming slots; a span may equal the input span exactly (in-place calls).
        unsafe { compute(call, step, sc, out) };
    }
    sc.srcs.clear();
    sc.dsts.clear();
    match by_ref {
        Some(src) => step.send.for_each(me, n, |p| links.tx(p, ch).post_ref(src, bytes, call.desc)),
        None => step.send.for_each(me, n, |p| links.tx(p, ch).post(bytes, call.desc)),
    }
    step.recv.for_each(me, n, |p| links.rx(p, ch).release());
    Ok(())
}

/// The arithmetic of a step: combine the sources into the first destination, finalize,
/// copy to the others.
///
/// # Safety
/// See the caller: all pointers valid for the step's elements, destinations disjoint.
unsafe fn compute(call: &Call, step: &Step, sc: &mut Scratch, out: Option<*mut u8>) {
    let count = step.count;
    let bytes = count * call.elem;
    let (d0, d0_is_out) = match sc.dsts.first() {
        Some(&d) => (d, false),
        None => match out {
            Some(o) => (o, true),
            None => return,
        },
    };
    let nt0 = d0_is_out && call.nt;
    let Some((_, first, _)) = sc.srcs.first().copied() else {
        return;
    };
    // SAFETY (whole body): forwarded from the caller's contract.
    unsafe {
        match &call.reducer {
            Some(r) if step.raw => {
                if sc.dsts.is_empty() && sc.srcs.len() > 1 {
                    sc.srcs.sort_unstable_by_key(|s| s.0);
                    if let Some(i) = sc.srcs.iter().position(|s| s.2 && std::ptr::eq(s.1, d0)) {
                        // In place: keep our contribution before the output is written.
                        sc.tmp.clear();
                        sc.tmp.extend_from_slice(std::slice::from_raw_parts(sc.srcs[i].1, bytes));
                        sc.srcs[i].1 = sc.tmp.as_ptr();
                    }
                    fold_raw(r, d0, &sc.srcs, count, nt0);
                } else {
                    for &d in sc.dsts.iter() {
                        reduce::copy(d, first, bytes, false);
                    }
                    if let Some(o) = out
                        && !std::ptr::eq(o, first)
                    {
                        r.load_input(o, first, count, call.nt);
                        if step.finalize {
                            r.finalize(o, o, count);
                        }
                    }
                }
            }
            Some(r) => {
                let (_, a, a_in) = sc.srcs[0];
                if sc.srcs.len() == 1 {
                    if a_in {
                        r.load_input(d0, a, count, nt0);
                    } else {
                        reduce::copy(d0, a, bytes, nt0);
                    }
                } else {
                    let (_, b, b_in) = sc.srcs[1];
                    match (a_in, b_in) {
                        (true, _) => r.combine_input(d0, b, a, count, nt0),
                        (_, true) => r.combine_input(d0, a, b, count, nt0),
                        _ => r.combine(d0, a, b, count, nt0),
                    }
                    for &(_, s, s_in) in &sc.srcs[2..] {
                        if s_in {
                            r.combine_input(d0, d0, s, count, nt0);
                        } else {
                            r.combine(d0, d0, s, count, nt0);
                        }
                    }
                }
                if step.finalize && r.has_post() {
                    r.finalize(d0, d0, count);
                }
                for &d in sc.dsts.iter().skip(1) {
                    reduce::copy(d, d0, bytes, false);
                }
                if let Some(o) = out
                    && !d0_is_out
                {
                    reduce::copy(o, d0, bytes, call.nt);
                }
            }
            None => {
                for &d in sc.dsts.iter() {
                    reduce::copy(d, first, bytes, false);
                }
                if let Some(o) = out
                    && !std::ptr::eq(o, first)
                {
                    reduce::copy(o, first, bytes, call.nt);
                }
            }
        }
        if call.nt {
            reduce::store_fence();
        }
    }
}

/// The small-message fast path of the one-shot all-reduce: the same messages and the
/// same arithmetic (raw inputs folded in rank order) as the `Exchange` schedule's two
/// steps, for a call that fits one slot, without the stream machinery. Links must be
/// connected and the output must hold `count` elements.
pub fn all_reduce_one_slot(ctx: &mut Ctx<'_>, call: &Call, count: usize) -> Result<()> {
    let (me, n) = (ctx.me, ctx.n);
    let bytes = count * call.elem;
    let r = call.reducer.as_ref().ok_or_else(|| Error::internal("one-shot all-reduce without a reducer"))?;
    if bytes > ctx.links.tx_ref((me + 1) % n, 0).max_bytes() || call.send_len < count || call.recv_len < count {
        return Err(Error::internal(format!("one-slot all-reduce of {bytes} B does not fit")));
    }
    if !(0..n).filter(|&p| p != me).all(|p| ctx.links.tx_ref(p, 0).can_send()) {
        wait_for(ctx, call, &|l: &Links, p| l.tx_ref(p, 0).can_send())?;
    }
    // Our own contribution is read back from the copy in a slot we send, so an in-place
    // output can be overwritten before our turn in the rank order comes.
    let mine = ctx.links.tx_ref((me + 1) % n, 0).buffer(bytes) as *const u8;
    for p in (0..n).filter(|&p| p != me) {
        let tx = ctx.links.tx(p, 0);
        // SAFETY: the slot is ours (can_send) and holds `bytes` (checked above); the input
        // holds `count` elements.
        unsafe { reduce::copy(tx.buffer(bytes), call.send, bytes, false) };
    }
    for p in (0..n).filter(|&p| p != me) {
        ctx.links.tx(p, 0).post(bytes, call.desc);
    }
    if !(0..n).filter(|&p| p != me).all(|p| ctx.links.rx_ref(p, 0).can_recv()) {
        wait_for(ctx, call, &|l: &Links, p| l.rx_ref(p, 0).can_recv())?;
    }
    let sc = &mut *ctx.scratch;
    sc.srcs.clear();
    for p in 0..n {
        if p == me {
            sc.srcs.push((p, mine, true));
        } else {
            let m = ctx.links.rx_ref(p, 0).message();
            if m.desc != call.desc || m.bytes != bytes {
                sc.srcs.clear();
                return Err(mismatch(ctx.fault, me, p, call, m.desc, m.bytes, bytes));
            }
            sc.srcs.push((p, m.ptr, false));
        }
    }
    // SAFETY: the output holds `count` elements (checked above); every source holds
    // `bytes`: incoming slots stay ours until released below, and `mine` is a slot we
    // posted, which only we write, after this call. No source aliases the output.
    unsafe { fold_raw(r, call.recv, &sc.srcs, count, call.nt) };
    sc.srcs.clear();
    for p in (0..n).filter(|&p| p != me) {
        ctx.links.rx(p, 0).release();
    }
    Ok(())
}

/// Folds raw contributions, already in rank order, into `dst`: `pre(s0) op pre(s1) op
/// ...`, then the post-operation. Every rank evaluates the same expression, so all get
/// identical bits.
///
/// # Safety
/// `dst` writable and each source readable for `count` elements; no source aliases `dst`.
unsafe fn fold_raw(r: &Reducer, dst: *mut u8, srcs: &[(Rank, *const u8, bool)], count: usize, nt: bool) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        let mut rest = &srcs[1..];
        if r.has_pre() {
            r.load_input(dst, srcs[0].1, count, false);
        } else if let Some(s1) = rest.first() {
            r.combine(dst, srcs[0].1, s1.1, count, nt && rest.len() == 1);
            rest = &rest[1..];
        } else {
            reduce::copy(dst, srcs[0].1, count * r.dtype().size(), false);
        }
        for (i, s) in rest.iter().enumerate() {
            r.combine_input(dst, dst, s.1, count, nt && i + 1 == rest.len());
        }
        if r.has_post() {
            r.finalize(dst, dst, count);
        }
    }
}

/// Waits until every message this rank posted has left it (network links send from the
/// executor's thread, so a call must not return with data still queued).
pub fn flush(ctx: &mut Ctx<'_>, op: &str) -> Result<()> {
    let transport = ctx.transport;
    if transport.flushed() {
        return Ok(());
    }
    let me = ctx.me;
    wait_on(ctx, &[], &mut |_| transport.flushed(), &|_| {
        (format!("rank {me}: {op}: sending the last messages"), vec![])
    })
}

/// Waits until `ok(links, peer)` holds for every peer.
pub(crate) fn wait_for(ctx: &mut Ctx<'_>, call: &Call, ok: &dyn Fn(&Links, Rank) -> bool) -> Result<()> {
    let (me, n) = (ctx.me, ctx.n);
    wait_on(ctx, std::slice::from_ref(call), &mut |links| (0..n).filter(|&p| p != me).all(|p| ok(links, p)), &|links| {
        let what = format!("rank {me}: {} #{}", desc::describe(call.desc), call.seq);
        (what, (0..n).filter(|&p| p != me && !ok(links, p)).collect())
    })
}
