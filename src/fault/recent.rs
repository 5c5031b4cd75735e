//! The record of this rank's recent collectives: for each, its tag (the number of
//! collectives the communicator has run, including it), its descriptor and its operation
//! number. A mismatch error names what this rank called at a peer's position from it, and
//! the sentinel reports where a stuck rank is from it.
//!
//! It is written by the thread that runs calls and read by any (the sentinel, a peer
//! thread's inquiry), without a lock: each entry's tag is cleared first, written last,
//! and read first and last, so readers never take a torn record.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::call::Desc;

/// How many recent collectives a rank remembers.
pub const RECENT: usize = 16;

/// One recorded collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its tag.
    pub tag: u64,
    /// Its descriptor.
    pub desc: Desc,
    /// Its operation number (counting point-to-point calls and empty ones too).
    pub seq: u64,
}

/// The last [`RECENT`] collectives, by tag modulo [`RECENT`].
#[derive(Default)]
pub struct Recent {
    slots: [[AtomicU64; 4]; RECENT],
    /// The tag of the collective this rank is in or last ran.
    latest: AtomicU64,
}

impl Recent {
    /// Records collective `tag` (operation `seq`) described by `d`. Five stores per
    /// call: free next to the call itself.
    #[inline]
    pub fn record(&self, tag: u64, d: Desc, seq: u64) {
        let r = &self.slots[tag as usize % RECENT];
        r[0].store(0, Ordering::Relaxed);
        r[1].store(d[0], Ordering::Relaxed);
        r[2].store(d[1], Ordering::Relaxed);
        r[3].store(seq, Ordering::Relaxed);
        r[0].store(tag, Ordering::Release);
        self.latest.store(tag, Ordering::Release);
    }

    /// The collective with tag `tag`, if it is recent.
    pub fn at(&self, tag: u64) -> Option<Entry> {
        let r = &self.slots[tag as usize % RECENT];
        for _ in 0..100 {
            let t = r[0].load(Ordering::Acquire);
            if t != tag || tag == 0 {
                return None;
            }
            let desc = [r[1].load(Ordering::Relaxed), r[2].load(Ordering::Relaxed)];
            let seq = r[3].load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if r[0].load(Ordering::Relaxed) == tag {
                return Some(Entry { tag, desc, seq });
            }
        }
        None
    }

    /// The collective this rank is in or last ran.
    pub fn latest(&self) -> Option<Entry> {
        self.at(self.latest.load(Ordering::Acquire))
    }

    /// The newest recent collective whose tag ends in the 16 bits `bits` (what a message
    /// descriptor carries of its tag).
    pub fn by_tag_bits(&self, bits: u64) -> Option<Entry> {
        let newest = self.latest.load(Ordering::Acquire);
        (0..RECENT as u64)
            .map_while(|back| newest.checked_sub(back))
            .filter(|t| t & 0xffff == bits)
            .find_map(|t| self.at(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_sixteen_by_tag_and_by_tag_bits() {
        let r = Recent::default();
        assert_eq!(r.latest(), None);
        for tag in 1..=40u64 {
            r.record(tag, [tag, tag * 10], tag + 100);
        }
        assert_eq!(r.latest(), Some(Entry { tag: 40, desc: [40, 400], seq: 140 }));
        assert_eq!(r.at(25), Some(Entry { tag: 25, desc: [25, 250], seq: 125 }));
        assert_eq!(r.at(24), None, "overwritten by tag 40");
        assert_eq!(r.at(0), None);
        assert_eq!(r.by_tag_bits(30).map(|e| e.seq), Some(130));
        assert_eq!(r.by_tag_bits(3), None, "too old");
        // Tags past 16 bits: the bits of the newest match win.
        let r = Recent::default();
        r.record(0x1_0005, [1, 1], 7);
        assert_eq!(r.by_tag_bits(5).map(|e| e.tag), Some(0x1_0005));
    }
}
