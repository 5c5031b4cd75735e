//! The small-message fast path of the one-shot all-reduce: the same messages and the
//! same arithmetic (raw inputs folded in rank order) as the `Exchange` schedule's two
//! steps, for a call that fits one slot, without the stream machinery.

use crate::error::{Error, Result};
use crate::reduce;
use crate::transport::{Dir, LinkKey, Links};

use super::step::fold_raw;
use super::wait::{mismatch, wait_for};
use super::{Call, Ctx};

/// Runs a one-shot all-reduce that fits one slot: every rank copies its input into a
/// slot for each peer, then folds every rank's contribution in rank order into its
/// output. Connects the links (channel 0 to every peer) on first use.
pub fn run(ctx: &mut Ctx<'_>, call: &Call) -> Result<()> {
    let (me, n) = (ctx.me, ctx.n);
    let count = call.coll.count();
    let keys: Vec<LinkKey> = (0..n)
        .filter(|&p| p != me)
        .flat_map(|p| [Dir::Send, Dir::Recv].map(|dir| LinkKey { peer: p, channel: 0, dir }))
        .collect();
    if !keys.iter().all(|k| ctx.links.has(*k)) {
        ctx.links.ensure(ctx.transport, me, &keys, call.desc)?;
    }
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

#[cfg(test)]
mod tests {
    use super::super::Path;
    use super::super::testing::{input, ranks, sum};
    use crate::call::{Algo, Collective};

    #[test]
    fn connects_on_first_use_and_gives_every_rank_the_same_bits() {
        for n in [2, 3, 4] {
            let out = ranks(n, |r| {
                let mut results = Vec::new();
                for round in 0..3 {
                    let send = input(r.me + round, 40);
                    let mut recv = vec![0f32; 40];
                    let c = r.call(Collective::AllReduce { count: 40 }, Algo::OneShot, Path::OneSlot, &send, &mut recv);
                    r.run(&[c]).unwrap();
                    results.push(recv);
                }
                results
            });
            for round in 0..3 {
                let want: Vec<f32> = (0..40).map(|i| (0..n).map(|p| input(p + round, 40)[i]).sum()).collect();
                assert!(out.iter().all(|o| o[round] == want), "n = {n}, round {round}");
            }
            let _ = sum(n, 1);
        }
    }

    #[test]
    fn a_call_larger_than_a_slot_is_refused() {
        let out = ranks(2, |r| {
            let send = input(r.me, 100); // 400 bytes, slots hold 256
            let mut recv = vec![0f32; 100];
            let c = r.call(Collective::AllReduce { count: 100 }, Algo::OneShot, Path::OneSlot, &send, &mut recv);
            r.run(&[c]).unwrap_err().to_string()
        });
        assert!(out.iter().all(|e| e.contains("does not fit")), "{out:?}");
    }
}
