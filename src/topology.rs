//! Who shares what with whom: which ranks share a host (hostname plus boot id, so two
//! containers with the same hostname on different machines are told apart; `OXCCL_HOSTID`
//! overrides), the link for each pair of ranks, and a ring order that keeps the ranks of
//! a host next to each other.

use crate::error::{Error, Result};
use crate::sys::{boot_id, hostname};
use crate::wire::{Dec, Enc};

/// An identity of this host: `OXCCL_HOSTID` if set, else hostname + kernel boot id.
pub fn host_id() -> String {
    if let Some(v) = &crate::settings::process().host_id {
        return v.clone();
    }
    format!("{}/{}", hostname(), boot_id())
}

/// What a rank tells the others about itself at init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Host identity (see [`host_id`]).
    pub host_id: String,
    /// Hostname, for messages.
    pub hostname: String,
    /// Process id.
    pub pid: u32,
}

impl PeerInfo {
    /// This process's information.
    pub fn local() -> PeerInfo {
        PeerInfo { host_id: host_id(), hostname: hostname(), pid: std::process::id() }
    }

    /// Encodes for the bootstrap all-gather.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.bytes(self.host_id.as_bytes()).bytes(self.hostname.as_bytes()).u32(self.pid);
        e.0
    }

    /// Decodes what [`PeerInfo::encode`] wrote.
    pub fn decode(b: &[u8]) -> Result<PeerInfo> {
        // Strict UTF-8 (what `encode` writes): a lossy decode would grow each bad byte to
        // three, and the value would no longer fit its own limit when sent on. 1024 bytes
        // each: a 255-byte hostname that `hostname()` made valid UTF-8 can triple.
        let mut d = Dec::new(b, "peer info");
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec())
                .map_err(|_| Error::remote(format!("malformed peer info: {what} is not UTF-8")))
        };
        let host_id = text(d.bytes(1024)?, "host id")?;
        let hostname = text(d.bytes(1024)?, "hostname")?;
        let pid = d.u32()?;
        d.end()?;
        Ok(PeerInfo { host_id, hostname, pid })
    }

    /// `host hostname, pid N`, for messages.
    pub fn describe(&self) -> String {
        format!("host {}, pid {}", self.hostname, self.pid)
    }
}

/// The link between two ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Threads of one process created together (`Comm::init_all`), or the rank itself.
    /// Ranks of one process created separately with `Comm::init_rank` use shared memory.
    InProcess,
    /// Processes of one host.
    SharedMemory,
    /// Different hosts (or shared memory disabled).
    Tcp,
}

/// The job's layout as one rank sees it.
#[derive(Clone, Debug)]
pub struct Topology {
    /// This rank.
    pub rank: usize,
    /// Host index of every rank (hosts numbered by their lowest rank).
    pub host_of: Vec<usize>,
    /// Ranks of each host, ascending.
    pub hosts: Vec<Vec<usize>>,
    /// Ring order: hosts in order, each host's ranks together.
    pub ring: Vec<usize>,
    /// The link to every rank (`InProcess` for this rank itself).
    pub links: Vec<Link>,
    /// What every rank said about itself.
    pub peers: Vec<PeerInfo>,
}

impl Topology {
    /// The layout from every rank's [`PeerInfo`]; `shm` is false when shared memory is
    /// disabled (`OXCCL_SHM_DISABLE=1`).
    pub fn new(rank: usize, peers: Vec<PeerInfo>, shm: bool) -> Topology {
        let n = peers.len();
        let mut host_ids: Vec<&str> = Vec::new();
        let mut host_of = Vec::with_capacity(n);
        for p in &peers {
            let h = match host_ids.iter().position(|h| *h == p.host_id) {
                Some(h) => h,
                None => {
                    host_ids.push(&p.host_id);
                    host_ids.len() - 1
                }
            };
            host_of.push(h);
        }
        let mut hosts = vec![Vec::new(); host_ids.len()];
        for (r, h) in host_of.iter().enumerate() {
            hosts[*h].push(r);
        }
        let ring = hosts.iter().flatten().copied().collect();
        let links = (0..n)
            .map(|r| {
                if r == rank {
                    Link::InProcess
                } else if host_of[r] == host_of[rank] && shm {
                    Link::SharedMemory
                } else {
                    Link::Tcp
                }
            })
            .collect();
        Topology { rank, host_of, hosts, ring, links, peers }
    }

    /// The ranks on this rank's host.
    pub fn local_ranks(&self) -> &[usize] {
        &self.hosts[self.host_of[self.rank]]
    }

    /// One line per host and the links, for `OXCCL_DEBUG=INFO`.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> =
            self.hosts.iter().map(|rs| format!("{}: {:?}", self.peers[rs[0]].hostname, rs)).collect();
        let links: Vec<String> = self
            .links
            .iter()
            .enumerate()
            .filter(|(r, _)| *r != self.rank)
            .map(|(r, l)| {
                format!(
                    "{r}:{}",
                    match l {
                        Link::InProcess => "proc",
                        Link::SharedMemory => "shm",
                        Link::Tcp => "tcp",
                    }
                )
            })
            .collect();
        format!(
            "hosts [{}]; ring {:?}; links from rank {}: {}",
            hosts.join("; "),
            self.ring,
            self.rank,
            links.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str, pid: u32) -> PeerInfo {
        PeerInfo { host_id: host.into(), hostname: host.into(), pid }
    }

    #[test]
    fn hosts_rings_and_links() {
        // Ranks 0 and 2 on host a, 1 and 3 on host b (as a scheduler might place them).
        let peers = vec![info("a", 10), info("b", 20), info("a", 11), info("b", 21)];
        let t = Topology::new(0, peers.clone(), true);
        assert_eq!(t.hosts, vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(t.ring, vec![0, 2, 1, 3], "a host's ranks are neighbours on the ring");
        assert_eq!(t.links, vec![Link::InProcess, Link::Tcp, Link::SharedMemory, Link::Tcp]);
        assert_eq!(t.local_ranks(), &[0, 2]);
        let t = Topology::new(0, peers, false);
        assert_eq!(t.links[2], Link::Tcp, "OXCCL_SHM_DISABLE");
        let p = info("h/boot", 7);
        assert_eq!(PeerInfo::decode(&p.encode()).unwrap(), p);
        assert!(PeerInfo::decode(&p.encode()[..5]).is_err());
        // Found by the peer_info fuzz target: invalid UTF-8 decoded lossily into a value
        // too long to decode again once re-encoded. Now refused.
        let mut e = Enc::new();
        e.bytes(b"id").bytes(&[0xff; 200]).u32(1);
        let err = PeerInfo::decode(&e.0).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
        let long = PeerInfo { host_id: "h".into(), hostname: "\u{fffd}".repeat(255), pid: 1 };
        assert_eq!(PeerInfo::decode(&long.encode()).unwrap(), long);
    }
}
