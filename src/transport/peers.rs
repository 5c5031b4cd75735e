//! What a network transport (TCP, InfiniBand) knows of the ranks it links to: how to name
//! them in an error, whether one died, whether the communicator broke, and how long a
//! wait for a connection may last. One copy, so that both transports say the same and
//! stop waiting for the same reasons.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::liveness::PeerWatch;
use crate::topology::PeerInfo;
use crate::transport::LinkKey;

/// The ranks of a network transport, and what ends its waits.
pub(crate) struct NetPeers {
    peers: Vec<PeerInfo>,
    /// The operation timeout: a wait for a connection lasts at most this long.
    pub(crate) timeout: Option<Duration>,
    /// This host's peer processes: a wait for a connection ends if one died.
    pub(crate) watch: Option<Arc<PeerWatch>>,
    /// The communicator's fault state: a wait for a connection ends if it breaks.
    pub(crate) fault: Option<Arc<Fault>>,
}

/// One wait for a peer's connection (see [`NetPeers::keep_waiting`]).
pub(crate) struct ConnWait {
    since: Instant,
    asked: bool,
}

impl ConnWait {
    /// A wait starting now.
    pub(crate) fn new() -> ConnWait {
        ConnWait { since: Instant::now(), asked: false }
    }
}

impl NetPeers {
    /// Every rank's description (indexed by rank) and the operation timeout.
    pub(crate) fn new(peers: Vec<PeerInfo>, timeout: Option<Duration>) -> NetPeers {
        NetPeers { peers, timeout, watch: None, fault: None }
    }

    /// `rank 3 (host h, pid p)`.
    pub(crate) fn who(&self, r: usize) -> String {
        match self.peers.get(r) {
            Some(p) => format!("rank {r} ({})", p.describe()),
            None => format!("rank {r}"),
        }
    }

    /// "rank R (host H, pid P) died", when `peer` is a watched process that has exited.
    pub(crate) fn died(&self, peer: usize) -> Option<String> {
        self.watch.as_ref()?.is_dead(peer).then(|| format!("{} died", self.who(peer)))
    }

    /// The error that broke the communicator, if it is broken.
    pub(crate) fn broken_comm(&self) -> Result<()> {
        match self.fault.as_ref().and_then(|f| f.error()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `e`, naming `peer` (with its host and process) as the rank at fault.
    pub(crate) fn blame(&self, peer: usize, e: Error) -> Error {
        match self.peers.get(peer) {
            Some(p) => e.with_peer(peer, Some(&p.hostname), Some(p.pid)),
            None => e.with_peer(peer, None, None),
        }
    }

    /// `peer` closed its `link` ("connection", "InfiniBand link") while `what`.
    pub(crate) fn closed(&self, peer: usize, link: &str, what: &str) -> Error {
        let e = match self.died(peer) {
            Some(m) => Error::remote(format!("{m} (its {link} closed while {what})")),
            None => Error::remote(format!("{} closed its {link} while {what}", self.who(peer))),
        };
        self.blame(peer, e)
    }

    /// Why `peer`'s closed link is no failure of ours to wait on (see
    /// [`Transport::peer_gone`](crate::transport::Transport::peer_gone)).
    pub(crate) fn gone(&self, peer: usize) -> String {
        self.died(peer).unwrap_or_else(|| format!("{} closed its connection", self.who(peer)))
    }

    /// When a wait for connections starting now must end.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    /// Rank `me` waits for `k.peer` to connect on `k.channel`: `Ok` while it may go on,
    /// else why not (the communicator broke, a watched process died, the deadline
    /// passed). After [`STALL`](crate::fault::STALL) it asks the ranks, once, where they
    /// are: a peer that never connects may be in another collective.
    pub(crate) fn keep_waiting(
        &self,
        me: usize,
        k: &LinkKey,
        wait: &mut ConnWait,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.broken_comm()?;
        if !wait.asked && wait.since.elapsed() >= crate::fault::STALL {
            wait.asked = true;
            if let Some(f) = &self.fault {
                f.stalled();
            }
        }
        let waiting = || format!("rank {me}: waiting for {} to connect (channel {})", self.who(k.peer), k.channel);
        if let Some((r, who)) = self.watch.as_ref().and_then(|w| w.dead()) {
            return Err(Error::remote(format!("{}: rank {r} ({}) died", waiting(), who.describe())));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::timeout(waiting(), self.timeout.unwrap_or_default(), vec![k.peer]));
        }
        Ok(())
    }
}
