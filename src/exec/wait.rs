//! Waiting inside a call: every wait spins, yields, then sleeps on the rank's doorbell
//! (or polls its sockets), bounded by the communicator's timeout, and ends early when the
//! communicator breaks, a peer it waits for dies, or a message from a different call
//! shows a mismatch. Errors name what was waited for.

use std::time::Duration;

use crate::call::{Desc, Rank, desc};
use crate::error::{Error, Result};
use crate::fault::recent::Entry;
use crate::fault::{Fault, STALL, mismatched};
use crate::sync::{self, WaitError};
use crate::transport::{Links, Transport};

use super::{Call, Ctx};

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
pub(super) fn wait_on(
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::Path;
    use super::super::testing::{input, ranks};
    use crate::call::{Algo, Collective};
    use crate::error::ErrorKind;

    #[test]
    fn a_peer_that_never_comes_is_a_timeout_naming_it() {
        let out = ranks(2, |r| {
            if r.me == 1 {
                return None;
            }
            r.timeout = Some(Duration::from_millis(200));
            let send = input(0, 64);
            let mut recv = vec![0f32; 64];
            let c = r.call(Collective::AllReduce { count: 64 }, Algo::Ring, Path::Streams, &send, &mut recv);
            let t = Instant::now();
            let e = r.run(&[c]).unwrap_err();
            Some((e, t.elapsed()))
        });
        let (e, took) = out[0].as_ref().unwrap();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert_eq!((e.waiting_for(), e.peer()), (&[1][..], Some(1)));
        assert!(*took >= Duration::from_millis(200) && *took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn an_abort_on_another_rank_ends_the_wait_with_its_reason() {
        let out = ranks(2, |r| {
            if r.me == 1 {
                std::thread::sleep(Duration::from_millis(50));
                r.fault.abort();
                return None;
            }
            let send = input(0, 64);
            let mut recv = vec![0f32; 64];
            let c = r.call(Collective::AllReduce { count: 64 }, Algo::Ring, Path::Streams, &send, &mut recv);
            Some(r.run(&[c]).unwrap_err())
        });
        let e = out[0].as_ref().unwrap();
        assert_eq!(e.kind(), ErrorKind::Remote, "{e}");
        assert!(e.message().contains("rank 1") && e.message().contains("aborted"), "{e}");
        assert_eq!(e.peer(), Some(1));
    }
}
