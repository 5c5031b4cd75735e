//! Sub-communicators ([`Comm::split`], like `ncclCommSplit`): every rank names a colour
//! and a key; the ranks of one colour form a new communicator, ordered by key (ties by
//! their rank in the parent).
//!
//! The colours and keys travel with an all-gather on the parent itself, so every rank
//! computes the same grouping. Then each group is connected as a fresh communicator:
//! - ranks that are threads of this process share a new in-process world, found in a
//!   process-wide table under (parent family, split number, colour);
//! - ranks that are processes get a unique id from their group's new rank 0 (a second
//!   all-gather on the parent) and join it as [`Comm::init_rank`] does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::Comm;
use crate::algo::Topo;
use crate::bootstrap::UniqueId;
use crate::bootstrap::id::UNIQUE_ID_BYTES;
use crate::error::{Error, Result};
use crate::transport::fifo::FifoShape;
use crate::transport::inproc::{InProc, World};

/// Where a communicator's ranks live, for splitting it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Family {
    /// Threads of this process; the number is unique among the in-process worlds of the
    /// process and the same on every rank of the communicator.
    Threads(u64),
    /// Processes, connected through a bootstrap.
    Processes,
}

/// A fresh number for an in-process world.
pub(crate) fn new_thread_family() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An in-process world being formed by a split: the first member to arrive creates it,
/// the last to pick it up removes the entry.
struct Pending {
    world: Arc<World>,
    family: u64,
    waiting: usize,
}

type Key = (u64, u64, u32);

fn pending() -> &'static Mutex<HashMap<Key, Pending>> {
    static TABLE: OnceLock<Mutex<HashMap<Key, Pending>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The members of each colour, ordered by (key, parent rank): `groups[colour]` lists the
/// parent ranks, and the new rank of a member is its position.
pub(crate) fn group_of(entries: &[(Option<u32>, i32)], rank: usize) -> Option<Vec<usize>> {
    let color = entries[rank].0?;
    let mut members: Vec<usize> = (0..entries.len()).filter(|&r| entries[r].0 == Some(color)).collect();
    members.sort_by_key(|&r| (entries[r].1, r));
    Some(members)
}

/// A colour and key, as they travel: i64s, with -1 for "no colour".
fn encode(color: Option<u32>, key: i32) -> [i64; 2] {
    [color.map_or(-1, i64::from), i64::from(key)]
}

fn decode(v: &[i64]) -> Result<(Option<u32>, i32)> {
    let color = match v[0] {
        -1 => None,
        c => Some(u32::try_from(c).map_err(|_| Error::internal(format!("split: colour {c} out of range")))?),
    };
    let key = i32::try_from(v[1]).map_err(|_| Error::internal(format!("split: key {} out of range", v[1])))?;
    Ok((color, key))
}

impl Comm {
    /// The largest colour [`Comm::split`] accepts (NCCL's colours are non-negative `int`s).
    pub const MAX_COLOR: u32 = i32::MAX as u32;

    /// Splits this communicator (like `ncclCommSplit`): every rank calls it with a
    /// colour and a key, and the ranks that gave the same colour form a new communicator
    /// in which they are ordered by key, ties broken by their rank here. A rank that
    /// passes `None` (NCCL's `NCCL_SPLIT_NOCOLOR`) takes part in the split but gets no
    /// communicator back. Colours run up to [`Comm::MAX_COLOR`]; a larger one fails the split
    /// on every rank. The new communicators have this one's settings and are
    /// independent of it: either may be used or dropped first.
    ///
    /// This is a collective call on this communicator: every rank must call it, in the
    /// same order relative to its other calls.
    ///
    /// ```
    /// use oxccl::{Comm, ReduceOp};
    /// let comms = Comm::init_all(4)?;
    /// std::thread::scope(|t| {
    ///     for mut comm in comms {
    ///         t.spawn(move || {
    ///             let me = comm.rank();
    ///             // Two groups of two: {0, 2} and {1, 3}.
    ///             let mut half = comm.split(Some((me % 2) as u32), me as i32).unwrap().unwrap();
    ///             assert_eq!((half.rank(), half.size()), (me / 2, 2));
    ///             let mut x = [me as u64];
    ///             half.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
    ///             assert_eq!(x[0], if me % 2 == 0 { 0 + 2 } else { 1 + 3 });
    ///         });
    ///     }
    /// });
    /// # Ok::<(), oxccl::Error>(())
    /// ```
    pub fn split(&mut self, color: Option<u32>, key: i32) -> Result<Option<Comm>> {
        let n = self.nranks;
        let mine = encode(color, key);
        let mut all = vec![0i64; 2 * n];
        self.all_gather(&mine, &mut all)?;
        let entries = all.chunks(2).map(decode).collect::<Result<Vec<_>>>()?;
        // Every rank sees every colour, so a bad one fails the split on all ranks alike.
        if let Some(r) = entries.iter().position(|e| e.0.is_some_and(|c| c > Self::MAX_COLOR)) {
            return Err(Error::invalid_argument(format!(
                "split: rank {r} gave colour {}, out of range (0..={}, or None for no colour)",
                entries[r].0.unwrap_or(0),
                Self::MAX_COLOR
            )));
        }
        let seq = self.splits;
        self.splits += 1;
        let members = group_of(&entries, self.rank);
        match self.family {
            Family::Threads(family) => {
                let (Some(color), Some(members)) = (color, members) else { return Ok(None) };
                let new_rank = members.iter().position(|&r| r == self.rank).expect("a member of its own group");
                self.join_thread_world((family, seq, color), members.len(), new_rank).map(Some)
            }
            Family::Processes => {
                // The new rank 0 of each group makes the group's unique id; a second
                // all-gather hands it to the group.
                let leads = members.as_ref().is_some_and(|m| m[0] == self.rank);
                let id = if leads { Some(UniqueId::new_with(&self.settings)?) } else { None };
                let mut mine = [0u8; UNIQUE_ID_BYTES];
                if let Some(id) = &id {
                    mine = id.to_bytes();
                }
                let mut ids = vec![0u8; UNIQUE_ID_BYTES * n];
                self.all_gather(&mine, &mut ids)?;
                let Some(members) = members else { return Ok(None) };
                let lead = members[0];
                let id = UniqueId::from_bytes(&ids[lead * UNIQUE_ID_BYTES..(lead + 1) * UNIQUE_ID_BYTES])?;
                let new_rank = members.iter().position(|&r| r == self.rank).expect("a member of its own group");
                Comm::init_rank_settings(&id, new_rank, members.len(), self.settings.clone()).map(Some)
            }
        }
    }

    /// Joins (creating it if first) the in-process world of a split's group.
    fn join_thread_world(&self, key: Key, size: usize, new_rank: usize) -> Result<Comm> {
        let (world, family) = {
            let mut t = pending().lock().map_err(|_| Error::internal("split table poisoned"))?;
            let p = match t.entry(key) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let shape = FifoShape { nslots: self.settings.nslots, slot_bytes: self.settings.slot_bytes };
                    v.insert(Pending { world: World::new(size, shape)?, family: new_thread_family(), waiting: size })
                }
            };
            p.waiting -= 1;
            let got = (p.world.clone(), p.family);
            if p.waiting == 0 {
                t.remove(&key);
            }
            got
        };
        let transport = Box::new(InProc::new(world.clone(), new_rank));
        let topo = Topo::new(new_rank, (0..size).collect());
        let mut c =
            Comm::assemble(new_rank, size, self.settings.clone(), topo, transport, world.bell(new_rank).clone(), size);
        c.family = Family::Threads(family);
        c.join_board(world.board());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_order_by_key_then_rank() {
        let e = [(Some(1), 5), (Some(0), 0), (Some(1), -3), (None, 0), (Some(1), 5)];
        assert_eq!(group_of(&e, 0), Some(vec![2, 0, 4]));
        assert_eq!(group_of(&e, 4), Some(vec![2, 0, 4]));
        assert_eq!(group_of(&e, 1), Some(vec![1]));
        assert_eq!(group_of(&e, 3), None);
    }

    #[test]
    fn colours_round_trip() {
        for (c, k) in [(None, 0), (Some(0), i32::MIN), (Some(u32::MAX), i32::MAX)] {
            assert_eq!(decode(&encode(c, k)).unwrap(), (c, k));
        }
        assert!(decode(&[-2, 0]).is_err());
        assert!(decode(&[1 << 32, 0]).is_err());
        assert!(decode(&[0, i64::from(i32::MAX) + 1]).is_err());
    }
}
