//! Links between ranks. Every link, whatever carries it, ends in a [`fifo`] on each side:
//! the executor writes into a [`FifoTx`] and reads from a [`FifoRx`] and never learns how
//! the bytes travel.
//!
//! A transport is one file here implementing [`Transport`]: it turns a list of wanted
//! links into connected FIFO ends. `inproc` serves ranks that are threads of one process
//! (the FIFO is ordinary memory both ends share).

#[cfg(feature = "cuda")]
pub mod cuda_ipc;
pub mod fifo;
pub mod hello;
pub mod ib;
pub mod inproc;
pub mod mux;
mod peers;
pub(crate) mod setup;
pub mod shm;
pub mod tcp;

pub use fifo::{FifoRx, FifoShape, FifoTx, Msg};

use std::time::Duration;

use crate::call::Desc;
use crate::error::{Error, Result};

/// The memory a communicator holds, by kind, and its links (`Comm::mem_stats`,
/// `ncclCommMemStats`). Bytes are what is set aside for the links connected so far; a
/// link's pages are faulted in when a message first needs them, so a link used only for
/// small messages holds far less than it reserves. Links connect on first use, so the
/// figures grow with the peers a job talks to, not with the number of ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Shared memory mapped for links with the ranks of this host (FIFOs and doorbells).
    pub shm_bytes: u64,
    /// Page-locked memory: InfiniBand-registered FIFOs, CUDA staging buffers.
    pub pinned_bytes: u64,
    /// Private memory: FIFOs and read-ahead buffers of socket links, the link tables.
    pub heap_bytes: u64,
    /// Connected link ends (one per peer, channel and direction).
    pub links: u64,
    /// Peers with at least one connected link.
    pub peers: u64,
}

impl std::ops::Add for MemStats {
    type Output = MemStats;

    fn add(self, o: MemStats) -> MemStats {
        MemStats {
            shm_bytes: self.shm_bytes + o.shm_bytes,
            pinned_bytes: self.pinned_bytes + o.pinned_bytes,
            heap_bytes: self.heap_bytes + o.heap_bytes,
            links: self.links + o.links,
            peers: self.peers + o.peers,
        }
    }
}

impl std::fmt::Display for MemStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "shared {:.1} MiB, pinned {:.1} MiB, private {:.1} MiB; {} links with {} peers",
            mib(self.shm_bytes),
            mib(self.pinned_bytes),
            mib(self.heap_bytes),
            self.links,
            self.peers
        )
    }
}

/// Direction of a link, seen from the local rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Local rank writes.
    Send,
    /// Local rank reads.
    Recv,
}

/// One directed connection to a peer on a channel (independent FIFOs between the same
/// pair, so that concurrent streams of one call never share a FIFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkKey {
    /// The peer rank.
    pub peer: usize,
    /// The channel.
    pub channel: u8,
    /// Direction.
    pub dir: Dir,
}

/// A connected FIFO end.
pub enum Endpoint {
    /// Sending end.
    Tx(FifoTx),
    /// Receiving end.
    Rx(FifoRx),
}

/// A way of connecting ranks.
pub trait Transport: Send + Sync {
    /// Short name for logs ("inproc", "shm", "tcp").
    fn name(&self) -> &'static str;

    /// Connects the links in `keys` for rank `me`, returning one endpoint per key in the
    /// same order; `opener` describes the call that needs them (a peer in another call
    /// can tell from it). Every peer named must call `connect` with the mirrored keys during the
    /// same collective call (connections are made lazily, the first time a call needs
    /// them).
    fn connect(&self, me: usize, keys: &[LinkKey], opener: Desc) -> Result<Vec<Endpoint>>;

    /// Whether every rank of this transport lives in one address space, so that a buffer
    /// address published by a peer can be read and written directly.
    fn shares_address_space(&self) -> bool {
        false
    }

    /// Moves bytes between the FIFOs and the network, without blocking; returns whether
    /// anything moved. The executor calls it whenever it looks for work. Links whose
    /// FIFOs are shared memory have nothing to do here.
    fn progress(&self) -> Result<bool> {
        Ok(false)
    }

    /// Whether all posted messages have left this rank (are in the kernel's hands).
    fn flushed(&self) -> bool {
        true
    }

    /// Whether some links are network sockets, whose arrivals do not ring doorbells (the
    /// executor then sleeps only briefly between polls).
    fn has_sockets(&self) -> bool {
        false
    }

    /// Why waiting for more from `peer` is pointless, if it is: it ended its connection
    /// to this rank (it exited) after everything it sent was taken in.
    fn peer_gone(&self, peer: usize) -> Option<String> {
        let _ = peer;
        None
    }

    /// Calls `f` with (peer, descriptor) of the first message waiting on each connection a
    /// peer opened that no call of this rank has claimed yet (links are connected by the
    /// first call that needs them, so a peer in a different call may be writing to one).
    fn unclaimed(&self, f: &mut dyn FnMut(usize, Desc)) {
        let _ = f;
    }

    /// Blocks until a socket is ready or `timeout` passes (for transports with sockets;
    /// others return at once).
    fn wait_io(&self, timeout: Duration) {
        let _ = timeout;
    }

    /// The memory this transport holds for its links (see [`MemStats`]; the link counts
    /// come from the [`Links`] table).
    fn mem(&self) -> MemStats {
        MemStats::default()
    }
}

/// The connected FIFO ends of one rank, indexed by peer and channel.
#[derive(Default)]
pub struct Links {
    tx: Vec<Vec<Option<FifoTx>>>,
    rx: Vec<Vec<Option<FifoRx>>>,
}

impl Links {
    /// An empty table for `nranks` ranks.
    pub fn new(nranks: usize) -> Links {
        Links { tx: (0..nranks).map(|_| Vec::new()).collect(), rx: (0..nranks).map(|_| Vec::new()).collect() }
    }

    /// Whether `key` is connected.
    pub fn has(&self, key: LinkKey) -> bool {
        let c = key.channel as usize;
        match key.dir {
            Dir::Send => self.tx.get(key.peer).and_then(|v| v.get(c)).is_some_and(|s| s.is_some()),
            Dir::Recv => self.rx.get(key.peer).and_then(|v| v.get(c)).is_some_and(|s| s.is_some()),
        }
    }

    /// Connects, through `t`, every key in `wanted` that is not connected yet, for the
    /// call described by `opener`.
    pub fn ensure(&mut self, t: &dyn Transport, me: usize, wanted: &[LinkKey], opener: Desc) -> Result<()> {
        let mut missing: Vec<LinkKey> = wanted.iter().copied().filter(|k| !self.has(*k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_by_key(|k| (k.peer, k.channel, k.dir == Dir::Recv));
        missing.dedup();
        for k in &missing {
            if k.peer >= self.tx.len() || k.peer == me {
                return Err(Error::internal(format!("rank {me} asked for a link to rank {}", k.peer)));
            }
        }
        let eps = t.connect(me, &missing, opener)?;
        for (k, ep) in missing.iter().zip(eps) {
            let c = k.channel as usize;
            match (k.dir, ep) {
                (Dir::Send, Endpoint::Tx(e)) => {
                    let v = &mut self.tx[k.peer];
                    if v.len() <= c {
                        v.resize_with(c + 1, || None);
                    }
                    v[c] = Some(e);
                }
                (Dir::Recv, Endpoint::Rx(e)) => {
                    let v = &mut self.rx[k.peer];
                    if v.len() <= c {
                        v.resize_with(c + 1, || None);
                    }
                    v[c] = Some(e);
                }
                _ => {
                    return Err(Error::internal(format!("transport returned the wrong end for {k:?}")));
                }
            }
        }
        Ok(())
    }

    /// The sending end to `peer` on `channel`; it must be connected.
    #[inline]
    pub fn tx(&mut self, peer: usize, channel: u8) -> &mut FifoTx {
        self.tx[peer][channel as usize].as_mut().expect("link connected before use")
    }

    /// The receiving end from `peer` on `channel`; it must be connected.
    #[inline]
    pub fn rx(&mut self, peer: usize, channel: u8) -> &mut FifoRx {
        self.rx[peer][channel as usize].as_mut().expect("link connected before use")
    }

    /// Read-only access for readiness checks.
    #[inline]
    pub fn tx_ref(&self, peer: usize, channel: u8) -> &FifoTx {
        self.tx[peer][channel as usize].as_ref().expect("link connected before use")
    }

    /// How many link ends are connected, to how many peers, and the table's own memory.
    pub fn mem(&self) -> MemStats {
        let (mut links, mut peers) = (0u64, 0u64);
        let mut heap = std::mem::size_of_val(&self.tx[..]) + std::mem::size_of_val(&self.rx[..]);
        for (t, r) in self.tx.iter().zip(&self.rx) {
            let n = (t.iter().flatten().count() + r.iter().flatten().count()) as u64;
            links += n;
            peers += u64::from(n > 0);
            heap += (t.capacity() + r.capacity()) * std::mem::size_of::<Option<FifoTx>>();
        }
        MemStats { heap_bytes: heap as u64, links, peers, ..MemStats::default() }
    }

    /// Calls `f` with every connected receiving end and its peer.
    pub fn for_each_rx(&self, mut f: impl FnMut(usize, &FifoRx)) {
        for (p, chans) in self.rx.iter().enumerate() {
            for rx in chans.iter().flatten() {
                f(p, rx);
            }
        }
    }

    /// Read-only access for readiness checks.
    #[inline]
    pub fn rx_ref(&self, peer: usize, channel: u8) -> &FifoRx {
        self.rx[peer][channel as usize].as_ref().expect("link connected before use")
    }
}
