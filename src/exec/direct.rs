//! Direct collectives for ranks that share an address space (threads of one process).
//!
//! Each rank publishes its buffer addresses to the others over the FIFOs, then works on
//! one block of the data straight in the peers' buffers: an all-reduce rank reads its
//! block from every input and writes the reduced block into every output, so every byte
//! is read once and written once, the memory system's floor. A final exchange of empty
//! messages tells each rank that no peer touches its buffers any more.
//!
//! Blocks are processed in cache-sized pieces accumulated in a scratch buffer, which
//! keeps the arithmetic in L1/L2, orders the fold by rank (identical bits on every rank)
//! and makes in-place calls safe (every input of a piece is read before any output of it
//! is written).

use super::wait::{mismatch, wait_for};
use super::{Call, Ctx};
use crate::algo::block;
use crate::call::{Collective, Rank};
use crate::error::Result;
use crate::reduce::{self, Reducer};
use crate::transport::{Dir, LinkKey, Links};

/// The channel of the control messages (addresses, then completion).
pub const CHANNEL: u8 = 3;
/// Bytes per piece: small enough that the accumulator stays in L1/L2.
const PIECE_BYTES: usize = 32 << 10;

/// Runs the call (all-reduce, reduce, broadcast, all-gather or reduce-scatter) directly
/// in the peers' buffers.
pub fn run(ctx: &mut Ctx<'_>, call: &Call) -> Result<()> {
    let coll = &call.coll;
    let (me, n) = (ctx.me, ctx.n);
    let keys: Vec<LinkKey> = (0..n)
        .filter(|&p| p != me)
        .flat_map(|p| [Dir::Send, Dir::Recv].map(|dir| LinkKey { peer: p, channel: CHANNEL, dir }))
        .collect();
    if !keys.iter().all(|k| ctx.links.has(*k)) {
        ctx.links.ensure(ctx.transport, me, &keys, call.desc)?;
    }
    let peers = exchange(ctx, call, Some([call.send as u64, call.recv as u64]))?;
    // SAFETY: every peer is blocked in this same call until the completion exchange
    // below, with buffers valid for its counts (the descriptor check matched the call);
    // each rank writes only its own block of every buffer.
    unsafe { work(ctx, call, coll, &peers) };
    exchange(ctx, call, None)?;
    Ok(())
}

/// Sends `payload` (or an empty message) to every peer and receives theirs; returns
/// the peers' payloads indexed by rank (our own addresses at our rank).
fn exchange(ctx: &mut Ctx<'_>, call: &Call, payload: Option<[u64; 2]>) -> Result<Vec<[u64; 2]>> {
    let (me, n) = (ctx.me, ctx.n);
    let bytes = if payload.is_some() { 16 } else { 0 };
    if !(0..n).filter(|&p| p != me).all(|p| ctx.links.tx_ref(p, CHANNEL).can_send()) {
        wait_for(ctx, call, &|l: &Links, p| l.tx_ref(p, CHANNEL).can_send())?;
    }
    for p in (0..n).filter(|&p| p != me) {
        let tx = ctx.links.tx(p, CHANNEL);
        if let Some(v) = payload {
            // SAFETY: the slot is ours after can_send and holds at least 16 bytes inline.
            unsafe { (tx.buffer(16) as *mut [u64; 2]).write_unaligned(v) };
        }
        tx.post(bytes, call.desc);
    }
    if !(0..n).filter(|&p| p != me).all(|p| ctx.links.rx_ref(p, CHANNEL).can_recv()) {
        wait_for(ctx, call, &|l: &Links, p| l.rx_ref(p, CHANNEL).can_recv())?;
    }
    let mut out = vec![payload.unwrap_or_default(); n];
    for (p, slot) in out.iter_mut().enumerate().filter(|(p, _)| *p != me) {
        let m = ctx.links.rx_ref(p, CHANNEL).message();
        if m.desc != call.desc || m.bytes != bytes {
            return Err(mismatch(ctx.fault, me, p, call, m.desc, m.bytes, bytes));
        }
        if payload.is_some() {
            // SAFETY: the message holds 16 bytes (checked) and is ours until released.
            *slot = unsafe { (m.ptr as *const [u64; 2]).read_unaligned() };
        }
        ctx.links.rx(p, CHANNEL).release();
    }
    Ok(out)
}

/// This rank's share of the work.
///
/// # Safety
/// `bufs[r]` holds rank r's (send, recv) addresses, valid for the call's counts, and
/// no other rank writes the parts of them this rank writes.
unsafe fn work(ctx: &mut Ctx<'_>, call: &Call, coll: &Collective, bufs: &[[u64; 2]]) {
    let (me, n, e) = (ctx.me, ctx.n, call.elem);
    let send = |r: Rank, off: usize| (bufs[r][0] as usize + off * e) as *const u8;
    let recv = |r: Rank, off: usize| (bufs[r][1] as usize + off * e) as *mut u8;
    let align = (64 / e).max(1);
    let piece = (PIECE_BYTES / e).max(1);
    let tmp = &mut ctx.scratch.tmp;
    if tmp.len() < piece * e + 64 {
        tmp.resize(piece * e + 64, 0);
    }
    // 64-byte aligned accumulator inside the scratch vector.
    let acc = {
        let p = tmp.as_mut_ptr();
        // SAFETY: the vector has 64 spare bytes for the alignment shift.
        unsafe { p.add(p.align_offset(64)) }
    };
    // SAFETY (whole body): pointers come from `bufs`, offsets stay within each buffer's
    // count for the collective (blocks and pieces are clamped to the counts).
    unsafe {
        match *coll {
            Collective::AllReduce { count } => {
                let r = call.reducer.as_ref().expect("all-reduce reduces");
                let (lo, hi) = block(count, n, me, align);
                // Streaming stores only pay off when the outputs are not the inputs we
                // just read (those lines are in the cache already).
                let nt = call.nt && (0..n).all(|k| !std::ptr::eq(recv(k, 0), send(k, 0)));
                let fused = !r.has_pre() && !r.has_post();
                for a in (lo..hi).step_by(piece) {
                    let len = piece.min(hi - a);
                    if fused {
                        // The last combine writes every output in the same pass.
                        let outs = &mut ctx.scratch.dsts;
                        outs.clear();
                        outs.extend((0..n).map(|k| recv(k, a)));
                        if n == 2 {
                            r.combine_multi(outs, send(0, a), send(1, a), len, nt);
                        } else {
                            fold(r, acc, (0..n - 1).map(|k| send(k, a)), len);
                            r.combine_multi(outs, acc, send(n - 1, a), len, nt);
                        }
                        outs.clear();
                    } else {
                        fold(r, acc, (0..n).map(|k| send(k, a)), len);
                        for k in 0..n {
                            reduce::copy(recv(k, a), acc, len * e, nt);
                        }
                    }
                }
            }
            Collective::Reduce { count, root } => {
                let r = call.reducer.as_ref().expect("reduce reduces");
                let (lo, hi) = block(count, n, me, align);
                for a in (lo..hi).step_by(piece) {
                    let len = piece.min(hi - a);
                    fold(r, acc, (0..n).map(|k| send(k, a)), len);
                    reduce::copy(recv(root, a), acc, len * e, call.nt);
                }
            }
            Collective::ReduceScatter { count } => {
                let r = call.reducer.as_ref().expect("reduce-scatter reduces");
                for a in (0..count).step_by(piece) {
                    let len = piece.min(count - a);
                    fold(r, acc, (0..n).map(|k| send(k, me * count + a)), len);
                    reduce::copy(recv(me, a), acc, len * e, call.nt);
                }
            }
            Collective::AllGather { count } => {
                // Push: our block goes into every output (read once, written n times).
                for k in 0..n {
                    let dst = recv(k, me * count);
                    if !std::ptr::eq(dst, send(me, 0)) {
                        reduce::copy(dst, send(me, 0), count * e, call.nt);
                    }
                }
            }
            Collective::Broadcast { count, root } => {
                // Pull: every rank copies the root's data, in parallel.
                let dst = recv(me, 0);
                if !std::ptr::eq(dst, send(root, 0)) {
                    reduce::copy(dst, send(root, 0), count * e, call.nt);
                }
            }
            _ => unreachable!("direct runs reducing and gathering collectives only"),
        }
        if call.nt {
            reduce::store_fence();
        }
    }
}

/// `acc = pre(s0) op pre(s1) op ...` for `len` elements, then the post-operation.
///
/// # Safety
/// `acc` writable and every source readable for `len` elements; no source aliases `acc`.
unsafe fn fold(r: &Reducer, acc: *mut u8, mut srcs: impl Iterator<Item = *const u8>, len: usize) {
    let first = srcs.next().expect("at least one rank");
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        match (r.has_pre(), srcs.next()) {
            (false, Some(second)) => r.combine(acc, first, second, len, false),
            (_, second) => {
                r.load_input(acc, first, len, false);
                if let Some(s) = second {
                    r.combine_input(acc, acc, s, len, false);
                }
            }
        }
        for s in srcs {
            r.combine_input(acc, acc, s, len, false);
        }
        if r.has_post() {
            r.finalize(acc, acc, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Path;
    use super::super::testing::{input, ranks, sum};
    use crate::call::{Algo, Collective};

    #[test]
    fn each_rank_reduces_its_block_in_the_peers_buffers() {
        for n in [2, 3] {
            let len = 20_000; // more than one piece per block
            let out = ranks(n, |r| {
                let mut buf = input(r.me, len);
                let send = buf.clone();
                let c = r.call(Collective::AllReduce { count: len }, Algo::Direct, Path::Direct, &send, &mut buf);
                r.run(&[c]).unwrap();
                buf
            });
            assert!(out.iter().all(|o| *o == sum(n, len)), "n = {n}");
        }
    }

    #[test]
    fn broadcast_and_all_gather_copy_from_the_right_ranks() {
        let n = 3;
        let out = ranks(n, |r| {
            let send = input(r.me, 500);
            let mut b = vec![0f32; 500];
            let c = r.call(Collective::Broadcast { count: 500, root: 2 }, Algo::Direct, Path::Direct, &send, &mut b);
            r.run(&[c]).unwrap();
            let mut g = vec![0f32; 500 * n];
            let c = r.call(Collective::AllGather { count: 500 }, Algo::Direct, Path::Direct, &send, &mut g);
            r.run(&[c]).unwrap();
            (b, g)
        });
        let gathered: Vec<f32> = (0..n).flat_map(|p| input(p, 500)).collect();
        assert!(out.iter().all(|(b, g)| *b == input(2, 500) && *g == gathered));
    }
}
