//! Knowing that a peer process died, without waiting for a timeout.
//!
//! Peers on this host are watched as processes ([`crate::sys::process`]): one `poll`
//! with a zero timeout tells whether any watched peer is gone (a recycled pid can hide a
//! death where pidfds are unavailable; the timeout still catches it). Peers on other
//! hosts are the transports' business (end of stream or reset on their sockets).

use crate::sys::process::Process;
use crate::topology::PeerInfo;

/// One watched peer.
struct Watched {
    rank: usize,
    info: PeerInfo,
    process: Process,
}

/// The processes of this host's peers, watched for exit.
pub struct PeerWatch {
    peers: Vec<Watched>,
}

impl PeerWatch {
    /// Watches `peers` (rank and identity), skipping this process itself.
    pub fn new(peers: impl IntoIterator<Item = (usize, PeerInfo)>) -> PeerWatch {
        let me = std::process::id();
        let peers = peers
            .into_iter()
            .filter(|(_, info)| info.pid != me)
            .map(|(rank, info)| Watched { rank, process: Process::watch(info.pid), info })
            .collect();
        PeerWatch { peers }
    }

    /// Whether no peer is watched.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether `rank` is a watched peer whose process has exited.
    pub fn is_dead(&self, rank: usize) -> bool {
        self.dead_peer(rank).is_some()
    }

    /// `rank`'s identity, if it is a watched peer whose process has exited.
    pub fn dead_peer(&self, rank: usize) -> Option<&PeerInfo> {
        let p = self.peers.iter().find(|p| p.rank == rank)?;
        p.process.exited().then_some(&p.info)
    }

    /// The first watched peer whose process has exited, as (rank, identity).
    pub fn dead(&self) -> Option<(usize, &PeerInfo)> {
        let i = Process::first_exited(self.peers.iter().map(|p| &p.process))?;
        Some((self.peers[i].rank, &self.peers[i].info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32) -> PeerInfo {
        PeerInfo { host_id: "h".into(), hostname: "h".into(), pid }
    }

    #[test]
    fn a_child_that_exits_is_seen_dead() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().expect("sleep");
        let w = PeerWatch::new([(3, info(child.id()))]);
        assert!(w.dead().is_none(), "alive at first");
        child.wait().unwrap();
        let (rank, who) = w.dead().expect("dead after exit");
        assert_eq!((rank, who.pid), (3, child.id()));
    }

    #[test]
    fn this_process_is_not_watched() {
        let w = PeerWatch::new([(0, info(std::process::id()))]);
        assert!(w.is_empty() && w.dead().is_none());
    }
}
