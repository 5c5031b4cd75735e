//! The shared-memory link between processes of one host.
//!
//! Each rank creates one segment in `/dev/shm` holding its doorbell and the FIFOs through
//! which every other rank of the host sends to it, one per (sender, channel). Peers map
//! each other's segments at init; once all have, each rank unlinks its own, so a crash
//! leaves nothing behind. The FIFOs are the same code as between threads; only the memory
//! and the futex flavour (process-shared) differ. The segment is sparse: a FIFO is laid
//! out by whichever end connects first, and its pages are faulted in by each end when a
//! message first needs them, so links that are never used cost no memory.
//!
//! Names and identity: each rank creates its segment under a fresh random name
//! (`sys::shmem::random_name`, 128 bits from the kernel; mode 0600, `O_EXCL`) and
//! tells its peers the name through the bootstrap, whose connections present the job's
//! secret. The creator writes an identity header (magic, a digest of the job's secret,
//! its rank and pid, the FIFO shape); a peer reads it with `pread` and maps the segment
//! only if every field is what it expects, else init fails with a message naming the
//! segment. The digest tells jobs apart; it is not a MAC (only this user can open the
//! segment, and that user can read the ranks' memory anyway), and it does not reveal the
//! secret, unlike the old names, which carried 8 of its bytes in world-readable
//! `/dev/shm`.

use std::sync::Arc;

use super::fifo::{Fifo, FifoShape, Region};
use super::{Dir, Endpoint, LinkKey, Transport};
use crate::bootstrap::Secret;
use crate::error::{Error, Result};
use crate::sync::{BellWords, Doorbell};
use crate::sys::shmem::{self, Segment};

/// Channels each pair of ranks has FIFOs for.
pub const CHANNELS: usize = 4;
const HEADER: usize = 4096;
const BELL_OFFSET: usize = 1024;
const MAGIC: u64 = 0x6f78_6363_6c53_484d; // "oxcclSHM"

/// The identity header at the start of every segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegHeader {
    magic: u64,
    /// [`job_digest`] of the job's secret.
    job: [u64; 2],
    /// The creator's global rank and process id.
    owner: u64,
    pid: u64,
    nlocal: u64,
    nslots: u64,
    slot_bytes: u64,
}

impl SegHeader {
    fn to_bytes(self) -> [u8; std::mem::size_of::<SegHeader>()] {
        let mut b = [0u8; std::mem::size_of::<SegHeader>()];
        let words =
            [self.magic, self.job[0], self.job[1], self.owner, self.pid, self.nlocal, self.nslots, self.slot_bytes];
        for (c, w) in b.chunks_mut(8).zip(words) {
            c.copy_from_slice(&w.to_ne_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8]) -> Option<SegHeader> {
        let w = |i: usize| Some(u64::from_ne_bytes(b.get(8 * i..8 * i + 8)?.try_into().ok()?));
        Some(SegHeader {
            magic: w(0)?,
            job: [w(1)?, w(2)?],
            owner: w(3)?,
            pid: w(4)?,
            nlocal: w(5)?,
            nslots: w(6)?,
            slot_bytes: w(7)?,
        })
    }
}

/// 128 bits that tell one job's segments from another's, derived from its secret
/// (splitmix64 over the secret's words, two lanes): an identifier, not a MAC.
pub fn job_digest(secret: &Secret) -> [u64; 2] {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = [0x6f78_6363_6c2d_6964u64, 0x9e37_79b9_7f4a_7c15];
    for (lane, h) in out.iter_mut().enumerate() {
        for c in secret.chunks(8) {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            *h = mix(*h ^ w ^ (lane as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93));
        }
    }
    out
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
    /// Link ends connected so far.
    ends: std::sync::atomic::AtomicU64,
}

fn fifo_stride(shape: FifoShape) -> usize {
    shape.region_bytes().div_ceil(4096) * 4096
}

fn seg_len(nlocal: usize, shape: FifoShape) -> usize {
    HEADER + nlocal * CHANNELS * fifo_stride(shape)
}

impl Shm {
    /// Creates this rank's segment under a random name (see the module documentation),
    /// with its identity header. `local` lists the host's ranks.
    pub fn create(me: usize, local: Vec<usize>, shape: FifoShape, secret: &Secret) -> Result<Segment> {
        Self::create_named(&shmem::random_name()?, me, local, shape, secret)
    }

    fn create_named(name: &str, me: usize, local: Vec<usize>, shape: FifoShape, secret: &Secret) -> Result<Segment> {
        shape.validate()?;
        if !local.contains(&me) {
            return Err(Error::internal("rank not on its host"));
        }
        let n = local.len();
        let seg = Segment::create(name, seg_len(n, shape))?;
        let base = seg.as_ptr();
        let header = SegHeader {
            magic: MAGIC,
            job: job_digest(secret),
            owner: me as u64,
            pid: std::process::id() as u64,
            nlocal: n as u64,
            nslots: shape.nslots as u64,
            slot_bytes: shape.slot_bytes as u64,
        };
        let bytes = header.to_bytes();
        // SAFETY: the segment is at least HEADER bytes (more than the identity header) and
        // ours alone until peers open it after the barrier that follows.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, bytes.len()) };
        Ok(seg)
    }

    fn fifo_offset(shape: FifoShape, src_local: usize, ch: usize) -> usize {
        HEADER + (src_local * CHANNELS + ch) * fifo_stride(shape)
    }

    fn region_of(keep: &Arc<dyn Send + Sync>, base: *mut u8, len: usize) -> Region {
        // SAFETY: `base..base+len` is a live shared mapping kept alive by `keep`.
        unsafe { Region::from_raw(base, len, Box::new(keep.clone())) }
    }

    /// Maps the other local ranks' segments (after they were created), each only after
    /// its identity header matched: this job, the rank and pid that published the name,
    /// this rank's FIFO shape. `names` and `pids` are every global rank's segment name
    /// and process id, from the bootstrap. Takes ownership of our own segment. Call
    /// [`Shm::unlink`] once every local rank has attached.
    pub fn attach(
        me: usize,
        local: Vec<usize>,
        shape: FifoShape,
        secret: &Secret,
        names: &[Option<String>],
        pids: &[u32],
        mine: Arc<Segment>,
    ) -> Result<Shm> {
        let my_local = local.iter().position(|&r| r == me).ok_or_else(|| Error::internal("rank not on its host"))?;
        let n = local.len();
        let len = seg_len(n, shape);
        let mut segs = Vec::with_capacity(n);
        let mut mine = Some(mine);
        for (i, &r) in local.iter().enumerate() {
            let seg = if i == my_local {
                segs.push(mine.take().expect("own segment"));
                continue;
            } else {
                let name = names.get(r).and_then(|n| n.as_deref()).ok_or_else(|| {
                    Error::remote(format!("rank {r} shares this host but published no shared-memory segment"))
                })?;
                if !shmem::valid_name(name) {
                    return Err(Error::remote(format!("rank {r} published a malformed segment name {name:?}")));
                }
                let want = SegHeader {
                    magic: MAGIC,
                    job: job_digest(secret),
                    owner: r as u64,
                    pid: pids.get(r).copied().unwrap_or(0) as u64,
                    nlocal: n as u64,
                    nslots: shape.nslots as u64,
                    slot_bytes: shape.slot_bytes as u64,
                };
                let check = |b: &[u8]| -> Result<()> {
                    let got = SegHeader::from_bytes(b).ok_or_else(|| Error::internal("short header"))?;
                    Self::check_identity(name, r, &got, &want)
                };
                Segment::open_checked(name, len, std::mem::size_of::<SegHeader>(), &check)?
            };
            segs.push(Arc::new(seg));
        }
        let regions = segs
            .iter()
            .map(|s| {
                let keep: Arc<dyn Send + Sync> = s.clone();
                Arc::new(Self::region_of(&keep, s.as_ptr(), s.len()))
            })
            .collect();
        Ok(Shm { me, local, my_local, shape, segs, regions, ends: Default::default() })
    }

    /// Refuses a segment whose identity header `got` is not `want`, saying which field
    /// differs.
    fn check_identity(name: &str, r: usize, got: &SegHeader, want: &SegHeader) -> Result<()> {
        let whose = format!("shared memory /dev/shm/{name}, published by rank {r}");
        if got.magic != want.magic || got.job != want.job {
            return Err(Error::invalid_usage(format!(
                "{whose}, is not a segment of this job (wrong magic or job digest): refusing to map it"
            )));
        }
        if got.owner != want.owner || got.pid != want.pid {
            return Err(Error::invalid_usage(format!(
                "{whose}, was created by rank {} pid {}, not by rank {r} pid {}: refusing to map it",
                got.owner, got.pid, want.pid
            )));
        }
        if got.nlocal != want.nlocal || got.nslots != want.nslots || got.slot_bytes != want.slot_bytes {
            return Err(Error::invalid_usage(format!(
                "rank {r}'s shared memory does not match this rank's configuration ({} local ranks, slots {} x {} B vs {} local ranks, slots {} x {} B): set OXCCL_NSLOTS and OXCCL_SLOT_BYTES alike on every rank",
                got.nlocal, got.nslots, got.slot_bytes, want.nlocal, want.nslots, want.slot_bytes
            )));
        }
        Ok(())
    }

    /// Removes this rank's segment name (every peer has mapped it).
    pub fn unlink(&self) {
        shmem::unlink(self.segs[self.my_local].name());
    }

    /// The doorbell of local rank `i` (in its segment).
    fn bell(&self, i: usize) -> Doorbell {
        Self::bell_in(&self.segs[i])
    }

    /// This rank's doorbell, on which it waits for its local peers.
    pub fn my_bell(&self) -> Doorbell {
        self.bell(self.my_local)
    }

    /// The doorbell in segment `seg` (peers ring it after publishing to its owner).
    fn bell_in(seg: &Arc<Segment>) -> Doorbell {
        let keep: Arc<dyn Send + Sync> = seg.clone();
        // SAFETY: BELL_OFFSET is 64-byte aligned inside the segment's header page, which
        // is zero-initialised (a valid BellWords) and mapped while `keep` lives.
        unsafe { Doorbell::from_raw(seg.as_ptr().add(BELL_OFFSET) as *const BellWords, true, keep) }
    }

    fn local_index(&self, rank: usize) -> Result<usize> {
        self.local
            .iter()
            .position(|&r| r == rank)
            .ok_or_else(|| Error::internal(format!("rank {rank} is not on rank {}'s host", self.me)))
    }
}

impl Transport for Shm {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn mem(&self) -> super::MemStats {
        let ends = self.ends.load(std::sync::atomic::Ordering::Relaxed);
        // Each end maps its FIFO; each rank maps every local segment's header page.
        let bytes = ends * fifo_stride(self.shape) as u64 + (self.segs.len() * HEADER) as u64;
        super::MemStats { shm_bytes: bytes, ..Default::default() }
    }

    fn connect(&self, me: usize, keys: &[LinkKey], _opener: crate::call::Desc) -> Result<Vec<Endpoint>> {
        keys.iter()
            .map(|k| {
                let peer = self.local_index(k.peer)?;
                let ch = k.channel as usize;
                if ch >= CHANNELS {
                    return Err(Error::internal(format!("channel {ch} has no shared-memory FIFO")));
                }
                let (seg, src) = match k.dir {
                    Dir::Send => (peer, self.my_local),
                    Dir::Recv => (self.my_local, peer),
                };
                let off = Self::fifo_offset(self.shape, src, ch);
                let fifo = Fifo::attach(self.regions[seg].clone(), off, self.shape)?;
                self.ends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = me;
                Ok(match k.dir {
                    Dir::Send => Endpoint::Tx(fifo.sender(self.bell(peer))),
                    Dir::Recv => Endpoint::Rx(fifo.receiver(self.bell(peer))),
                })
            })
            .collect()
    }
}

/// Setting up shared memory among the ranks of this host (see [`super::setup`]): this
/// rank's segment is created at once and its name is the address; the peers' segments
/// are mapped when every name is known; once every rank has mapped, the name goes.
pub(crate) struct ShmSetup {
    me: usize,
    local: Vec<usize>,
    peers: Vec<usize>,
    shape: FifoShape,
    secret: Secret,
    seg: Arc<Segment>,
    attached: bool,
}

impl ShmSetup {
    /// This rank's side, if it shares memory with a peer.
    pub(crate) fn new(env: &super::setup::Env<'_>) -> Result<Option<ShmSetup>> {
        let peers = env.peers_by(crate::topology::Link::SharedMemory);
        if peers.is_empty() {
            return Ok(None);
        }
        let local = env.topology.local_ranks().to_vec();
        let seg = Arc::new(Shm::create(env.rank, local.clone(), env.shape, env.secret)?);
        Ok(Some(ShmSetup { me: env.rank, local, peers, shape: env.shape, secret: *env.secret, seg, attached: false }))
    }
}

impl super::setup::Setup for ShmSetup {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn peers(&self) -> &[usize] {
        &self.peers
    }

    fn address(&self) -> Vec<u8> {
        self.seg.name().as_bytes().to_vec()
    }

    fn bell(&self) -> Option<Doorbell> {
        Some(Shm::bell_in(&self.seg))
    }

    fn connect(
        &mut self,
        env: &super::setup::Env<'_>,
        addrs: &[&[u8]],
        _shared: &super::setup::Shared,
    ) -> Result<Box<dyn Transport>> {
        let names: Vec<Option<String>> =
            addrs.iter().map(|a| std::str::from_utf8(a).ok().filter(|n| !n.is_empty()).map(str::to_string)).collect();
        let pids: Vec<u32> = env.topology.peers.iter().map(|p| p.pid).collect();
        let shm = Shm::attach(self.me, self.local.clone(), self.shape, &self.secret, &names, &pids, self.seg.clone())?;
        self.attached = true;
        Ok(Box::new(shm))
    }

    fn ready(&mut self) {
        if self.attached {
            shmem::unlink(self.seg.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_with_the_wrong_identity_is_refused_before_mapping() {
        let shape = FifoShape { nslots: 2, slot_bytes: 4096 };
        let (secret, other) = ([1u8; 32], [2u8; 32]);
        assert_ne!(job_digest(&secret), job_digest(&other));
        let pid = std::process::id();
        let names_for = |n: &str| vec![None, Some(n.to_string())];
        let attach0 = |secret: &Secret, names: &[Option<String>], pids: &[u32]| {
            let mine = Shm::create(0, vec![0, 1], shape, secret).unwrap();
            Shm::attach(0, vec![0, 1], shape, secret, names, pids, Arc::new(mine)).map(|_| ())
        };
        // Rank 1's segment, of the job `secret`.
        let seg1 = Shm::create(1, vec![0, 1], shape, &secret).unwrap();
        let name = seg1.name().to_string();
        let mode = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
        attach0(&secret, &names_for(&name), &[pid, pid]).unwrap();
        // Another job's rank 0 is refused, and so is a segment claiming another pid.
        let e = attach0(&other, &names_for(&name), &[pid, pid]).unwrap_err().to_string();
        assert!(e.contains(&name) && e.contains("is not a segment of this job"), "{e}");
        let e = attach0(&secret, &names_for(&name), &[pid, pid + 1]).unwrap_err().to_string();
        assert!(e.contains("was created by rank 1 pid") && e.contains("refusing to map it"), "{e}");
        // A different shape says what to set.
        let mine = Shm::create(0, vec![0, 1], FifoShape { nslots: 4, slot_bytes: 4096 }, &secret).unwrap();
        let e = Shm::attach(
            0,
            vec![0, 1],
            FifoShape { nslots: 4, slot_bytes: 4096 },
            &secret,
            &names_for(&name),
            &[pid, pid],
            Arc::new(mine),
        );
        assert!(e.is_err());
        // A malformed or missing name never reaches shm_open.
        let e = attach0(&secret, &names_for("../../etc/passwd"), &[pid, pid]).unwrap_err().to_string();
        assert!(e.contains("malformed segment name"), "{e}");
        assert!(attach0(&secret, &[None, None], &[pid, pid]).is_err());
        drop(seg1);
    }
}
