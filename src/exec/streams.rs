//! Schedules as streams: one call (or one group of calls) is a set of streams, one per
//! schedule. The executor advances every stream whose next step is ready (each incoming
//! message has arrived, each outgoing slot is free), so streams that depend on each other
//! across ranks (a ring of sends and receives, the up and down halves of a tree) never
//! deadlock. When no stream can move it waits ([`super::wait`]).
//!
//! A step's data path: the result is computed straight into the first outgoing slot (or
//! the output when nothing is sent), from the incoming slots and the local input, then
//! copied to the other destinations ([`super::step`]). Large outputs are written with
//! non-temporal stores.

use crate::algo::{Peers, Schedule, Step};
use crate::call::{Desc, Rank, desc};
use crate::error::{Error, Result};
use crate::transport::{Dir, LinkKey, Links};

use super::step::{compute, span_ptr};
use super::wait::{announced, mismatch, wait_on};
use super::{Call, Ctx};

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

#[cfg(test)]
mod tests {
    use super::super::Path;
    use super::super::testing::{input, ranks, sum};
    use crate::call::{Algo, Collective};

    #[test]
    fn a_ring_all_reduce_sums_every_rank_across_many_messages() {
        for n in [2, 3, 5] {
            let len = 1000; // 4000 bytes: many 256-byte messages per link
            let out = ranks(n, |r| {
                let send = input(r.me, len);
                let mut recv = vec![0f32; len];
                let c = r.call(Collective::AllReduce { count: len }, Algo::Ring, Path::Streams, &send, &mut recv);
                r.run(&[c]).unwrap();
                recv
            });
            assert!(out.iter().all(|o| *o == sum(n, len)), "n = {n}");
        }
    }

    #[test]
    fn a_group_runs_its_calls_together() {
        let n = 3;
        let out = ranks(n, |r| {
            let (a, b) = (input(r.me, 300), input(r.me, 90));
            let (mut ra, mut rb) = (vec![0f32; 300], vec![0f32; 90 * n]);
            let ca = r.call(Collective::AllReduce { count: 300 }, Algo::Ring, Path::Streams, &a, &mut ra);
            let cb = r.call(Collective::AllGather { count: 90 }, Algo::Ring, Path::Streams, &b, &mut rb);
            r.run(&[ca, cb]).unwrap();
            (ra, rb)
        });
        let gathered: Vec<f32> = (0..n).flat_map(|p| input(p, 90)).collect();
        assert!(out.iter().all(|(a, b)| *a == sum(n, 300) && *b == gathered));
    }

    #[test]
    fn a_rank_in_another_call_is_a_mismatch_naming_both() {
        let out = ranks(2, |r| {
            let send = input(r.me, 64);
            let mut recv = vec![0f32; 64 * 2];
            let coll =
                if r.me == 0 { Collective::AllReduce { count: 64 } } else { Collective::AllGather { count: 64 } };
            let c = r.call(coll, Algo::Ring, Path::Streams, &send, &mut recv);
            r.run(&[c]).unwrap_err()
        });
        let e = out.iter().find(|e| e.message().contains("mismatched")).expect("a mismatch");
        assert!(e.message().contains("all_reduce") && e.message().contains("all_gather"), "{e}");
    }
}
