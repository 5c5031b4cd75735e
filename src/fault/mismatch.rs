//! Mismatched calls: the one error that names both ranks' calls, and the inquiry that
//! finds a mismatch where no message flows.
//!
//! A receiver compares every message's descriptor with its own call's, so most
//! mismatches surface where the data arrives ([`mismatched`]). Some leave nothing to
//! compare: a rank waits for a message that a peer in another collective will never
//! send. A wait stuck for [`STALL`] asks the other ranks where they are
//! ([`Fault::stalled`]); a rank whose call at that position differs records the
//! mismatch, and the fault reaches everyone.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::msg::Where;
use super::recent::Entry;
use super::{Fault, Herald};
use crate::call::{Desc, Rank, desc};
use crate::error::Error;

/// How long a wait is stuck before the rank asks the others where they are (see
/// [`Fault::stalled`]). Harmless when the calls match, so it can be short.
pub const STALL: Duration = Duration::from_millis(500);

/// The error for a peer whose call differs from this rank's at the same position.
/// `mine` is what this rank called there, if it is recent; else `current` (the call
/// this rank is in) is named, with the peer's later call. `their_seq` is the peer's own
/// operation number, where it is known.
pub fn mismatched(
    me: Rank,
    mine: Option<Entry>,
    current: Entry,
    peer: Rank,
    theirs: Desc,
    their_seq: Option<u64>,
) -> Error {
    let rule = "every rank must make the same calls in the same order";
    let their_op = their_seq.map_or(String::new(), |s| format!(" (its op #{s})"));
    Error::invalid_usage(match mine {
        Some(m) => format!(
            "mismatched collective calls: rank {me} called {} as op #{}, but rank {peer} called {} as that op{their_op}; {rule}",
            desc::describe(m.desc),
            m.seq,
            desc::describe(theirs)
        ),
        None => format!(
            "mismatched collective calls: rank {me} called {} as op #{}, but rank {peer} made a different call (or none) there and went on to {}; {rule}",
            desc::describe(current.desc),
            current.seq,
            desc::describe(theirs)
        ),
    })
    .with_peer(peer, None, None)
}

impl Fault {
    /// A wait of this rank's current collective has been stuck for a while: ask the
    /// other ranks whether they are in a different collective at this position (a
    /// mismatch where no message flows, so no receiver can see it).
    pub fn stalled(&self) {
        let herald = self.lock().herald.as_ref().map(Herald::handle);
        match herald {
            Some(Herald::Board(b)) => {
                if let Some(w) = self.position() {
                    b.compare(self, w);
                }
            }
            Some(Herald::Sentinel(e)) => {
                self.stalled.store(true, Ordering::SeqCst);
                e.notify();
            }
            None => {}
        }
    }

    /// Where this rank is: the collective it is in or last ran.
    pub(super) fn position(&self) -> Option<Where> {
        let e = self.recent.latest()?;
        Some(Where { origin: self.rank as u32, hops: 0, tag: e.tag, desc: e.desc, seq: e.seq })
    }

    /// Compares a stuck rank's position with this rank's; on a mismatch, records it
    /// (and so announces it). Returns whether it did.
    pub(super) fn check_where(&self, w: &Where) -> bool {
        // This rank may have moved on (a call with nothing to send, say): compare what
        // it called at that position.
        let Some(mine) = self.recent.at(w.tag) else { return false };
        if mine.desc == w.desc || self.tripped() {
            return false;
        }
        self.fail(&mismatched(self.rank, Some(mine), mine, w.origin as Rank, w.desc, Some(w.seq)));
        true
    }
}
