//! The shared-memory link between processes of one host.
//!
//! Each rank creates one segment in `/dev/shm` holding its doorbell and the FIFOs through
//! which every other rank of the host sends to it, one per (sender, channel). Peers map
//! each other's segments at init; once all have, each rank unlinks its own, so a crash
//! leaves nothing behind. The FIFOs are the same code as between threads; only the memory
//! and the futex flavour (process-shared) differ. A FIFO's pages are faulted in by each
//! process when a collective first uses it.

use std::sync::Arc;

use super::fifo::{Fifo, FifoShape, Region};
use super::{Dir, Endpoint, LinkKey, Transport};
use crate::error::{Error, Result};
use crate::shmem::Segment;
use crate::sync::{BellWords, Doorbell};

/// Channels each pair of ranks has FIFOs for.
pub const CHANNELS: usize = 4;
const HEADER: usize = 4096;
const BELL_OFFSET: usize = 1024;
const MAGIC: u64 = 0x6f78_6363_6c53_484d; // "oxcclSHM"

#[repr(C)]
struct SegHeader {
    magic: u64,
    nlocal: u64,
    nslots: u64,
    slot_bytes: u64,
    owner: u64,
}

/// The shared-memory transport of one rank.
pub struct Shm {
    me: usize,
    /// Global ranks of this host, in local order.
    local: Vec<usize>,
    my_local: usize,
    shape: FifoShape,
    /// The mapping of every local rank's segment (ours included), by local index.
    segs: Vec<Arc<Segment>>,
    regions: Vec<Arc<Region>>,
}

fn fifo_stride(shape: FifoShape) -> usize {
    shape.region_bytes().div_ceil(4096) * 4096
}

fn seg_len(nlocal: usize, shape: FifoShape) -> usize {
    HEADER + nlocal * CHANNELS * fifo_stride(shape)
}

/// The name of `rank`'s segment in the job tagged `tag`.
pub fn segment_name(tag: &str, rank: usize) -> String {
    format!("oxccl-{tag}-r{rank}")
}

impl Shm {
    /// Creates this rank's segment. `local` lists the host's ranks; `tag` is unique to
    /// the job (derived from its secret).
    pub fn create(me: usize, local: Vec<usize>, shape: FifoShape, tag: &str) -> Result<Segment> {
        shape.validate()?;
        let my_local =
            local.iter().position(|&r| r == me).ok_or_else(|| Error::Internal("rank not on its host".into()))?;
        let n = local.len();
        let seg = Segment::create(&segment_name(tag, me), seg_len(n, shape))?;
        let base = seg.as_ptr();
        // SAFETY: the segment is at least HEADER bytes, page aligned, and ours alone until
        // peers open it after the barrier that follows.
        unsafe {
            (base as *mut SegHeader).write(SegHeader {
                magic: MAGIC,
                nlocal: n as u64,
                nslots: shape.nslots as u64,
                slot_bytes: shape.slot_bytes as u64,
                owner: me as u64,
            });
        }
        // SAFETY: the segment outlives this temporary region, which only lays out the FIFOs
        // and is dropped at the end of this function.
        let region = Arc::new(unsafe { Region::from_raw(base, seg.len(), Box::new(())) });
        for src in (0..n).filter(|&s| s != my_local) {
            for ch in 0..CHANNELS {
                Fifo::init(region.clone(), Self::fifo_offset(shape, src, ch), shape)?;
            }
        }
        Ok(seg)
    }

    fn fifo_offset(shape: FifoShape, src_local: usize, ch: usize) -> usize {
        HEADER + (src_local * CHANNELS + ch) * fifo_stride(shape)
    }

    fn region_of(keep: &Arc<dyn Send + Sync>, base: *mut u8, len: usize) -> Region {
        // SAFETY: `base..base+len` is a live shared mapping kept alive by `keep`.
        unsafe { Region::from_raw(base, len, Box::new(keep.clone())) }
    }

    /// Maps the other local ranks' segments (after they were created) and takes ownership
    /// of ours. Call [`Shm::unlink`] once every local rank has attached.
    pub fn attach(me: usize, local: Vec<usize>, shape: FifoShape, tag: &str, mine: Segment) -> Result<Shm> {
        let my_local =
            local.iter().position(|&r| r == me).ok_or_else(|| Error::Internal("rank not on its host".into()))?;
        let n = local.len();
        let len = seg_len(n, shape);
        let mut segs = Vec::with_capacity(n);
        let mut mine = Some(mine);
        for (i, &r) in local.iter().enumerate() {
            let seg = if i == my_local {
                mine.take().expect("own segment")
            } else {
                Segment::open(&segment_name(tag, r), len)?
            };
            // SAFETY: the header was written by the creator before the barrier that
            // precedes attach; it is read-only afterwards.
            let h = unsafe { &*(seg.as_ptr() as *const SegHeader) };
            if h.magic != MAGIC
                || h.nlocal != n as u64
                || h.nslots != shape.nslots as u64
                || h.slot_bytes != shape.slot_bytes as u64
                || h.owner != r as u64
            {
                return Err(Error::InvalidUsage(format!(
                    "rank {r}'s shared memory does not match this rank's configuration (slots {} x {} B vs {} x {} B): set OXCCL_NSLOTS and OXCCL_SLOT_BYTES alike on every rank",
                    h.nslots, h.slot_bytes, shape.nslots, shape.slot_bytes
                )));
            }
            segs.push(Arc::new(seg));
        }
        let regions = segs
            .iter()
            .map(|s| {
                let keep: Arc<dyn Send + Sync> = s.clone();
                Arc::new(Self::region_of(&keep, s.as_ptr(), s.len()))
            })
            .collect();
        Ok(Shm { me, local, my_local, shape, segs, regions })
    }

    /// Removes this rank's segment name (every peer has mapped it).
    pub fn unlink(&self) {
        // The segment is shared through an Arc; unlinking only touches the name.
        let s = &self.segs[self.my_local];
        if let Ok(c) = std::ffi::CString::new(format!("/{}", s.name())) {
            // SAFETY: `c` is a valid C string; unlinking a name is harmless if already gone.
            unsafe { libc::shm_unlink(c.as_ptr()) };
        }
    }

    /// The doorbell of local rank `i` (in its segment).
    fn bell(&self, i: usize) -> Doorbell {
        let keep: Arc<dyn Send + Sync> = self.segs[i].clone();
        // SAFETY: BELL_OFFSET is 64-byte aligned inside the segment's header page, which
        // is zero-initialised (a valid BellWords) and mapped while `keep` lives.
        unsafe { Doorbell::from_raw(self.segs[i].as_ptr().add(BELL_OFFSET) as *const BellWords, true, keep) }
    }

    /// This rank's doorbell, on which it waits for its local peers.
    pub fn my_bell(&self) -> Doorbell {
        self.bell(self.my_local)
    }

    fn local_index(&self, rank: usize) -> Result<usize> {
        self.local
            .iter()
            .position(|&r| r == rank)
            .ok_or_else(|| Error::Internal(format!("rank {rank} is not on rank {}'s host", self.me)))
    }
}

impl Transport for Shm {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn connect(&self, me: usize, keys: &[LinkKey]) -> Result<Vec<Endpoint>> {
        keys.iter()
            .map(|k| {
                let peer = self.local_index(k.peer)?;
                let ch = k.channel as usize;
                if ch >= CHANNELS {
                    return Err(Error::Internal(format!("channel {ch} has no shared-memory FIFO")));
                }
                let (seg, src) = match k.dir {
                    Dir::Send => (peer, self.my_local),
                    Dir::Recv => (self.my_local, peer),
                };
                let off = Self::fifo_offset(self.shape, src, ch);
                let fifo = Fifo::open(self.regions[seg].clone(), off, self.shape)?;
                self.segs[seg].prefault(off, self.shape.region_bytes());
                let _ = me;
                Ok(match k.dir {
                    Dir::Send => Endpoint::Tx(fifo.sender(self.bell(peer))),
                    Dir::Recv => Endpoint::Rx(fifo.receiver(self.bell(peer))),
                })
            })
            .collect()
    }
}
