//! Who shares what with whom: which ranks share a host (hostname plus boot id, so two
//! containers with the same hostname on different machines are told apart; `OXCCL_HOSTID`
//! overrides), the link for each pair of ranks, and a ring order that keeps the ranks of
//! a host next to each other.

use std::sync::Arc;

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
    /// Host identity (see [`host_id`]); one allocation shared by a host's ranks.
    pub host_id: Arc<str>,
    /// Hostname, for messages; shared like `host_id`.
    pub hostname: Arc<str>,
    /// Process id.
    pub pid: u32,
}

impl PeerInfo {
    /// This process's information.
    pub fn local() -> PeerInfo {
        PeerInfo { host_id: host_id().into(), hostname: hostname().into(), pid: std::process::id() }
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
        let text = |b: &[u8], what: &str| -> Result<Arc<str>> {
            std::str::from_utf8(b)
                .map(Arc::from)
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
    pub fn new(rank: usize, mut peers: Vec<PeerInfo>, shm: bool) -> Topology {
        let n = peers.len();
        // Hosts are numbered in order of their first rank; a map, not a search, so that
        // 100k ranks on 12k hosts cost milliseconds rather than a billion comparisons.
        // A host's ranks share its first rank's strings: a few bytes per peer.
        let mut first_of: std::collections::HashMap<Arc<str>, usize> = std::collections::HashMap::new();
        let mut host_of = Vec::with_capacity(n);
        let mut firsts: Vec<usize> = Vec::new();
        for r in 0..n {
            let next = firsts.len();
            let h = *first_of.entry(peers[r].host_id.clone()).or_insert(next);
            if h == next {
                firsts.push(r);
            } else {
                let first = &peers[firsts[h]];
                let (id, name) = (first.host_id.clone(), first.hostname.clone());
                peers[r].host_id = id;
                if peers[r].hostname == name {
                    peers[r].hostname = name;
                }
            }
            host_of.push(h);
        }
        drop(first_of);
        let mut hosts = vec![Vec::new(); firsts.len()];
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

    /// One line for `OXCCL_DEBUG=INFO`: the hosts and their ranks, the ring and this
    /// rank's links, with runs of ranks written as ranges and at most [`DESCRIBE_HOSTS`]
    /// hosts named, so the line stays short at any scale.
    pub fn describe(&self) -> String {
        let mut hosts: Vec<String> = self
            .hosts
            .iter()
            .take(DESCRIBE_HOSTS)
            .map(|rs| format!("{}: {}", self.peers[rs[0]].hostname, ranges(rs)))
            .collect();
        if self.hosts.len() > DESCRIBE_HOSTS {
            hosts.push(format!("and {} more hosts", self.hosts.len() - DESCRIBE_HOSTS));
        }
        let of = |kind: Link| -> Vec<usize> {
            (0..self.links.len()).filter(|&r| r != self.rank && self.links[r] == kind).collect()
        };
        let (shm, tcp) = (of(Link::SharedMemory), of(Link::Tcp));
        format!(
            "hosts [{}]; ring {}; links from rank {}: shm {} ({}), tcp {} ({})",
            hosts.join("; "),
            ranges(&self.ring),
            self.rank,
            shm.len(),
            ranges(&shm),
            tcp.len(),
            ranges(&tcp)
        )
    }
}

/// Hosts named in full by [`Topology::describe`].
pub const DESCRIBE_HOSTS: usize = 16;

/// `ranks` with runs of consecutive ranks as `a-b`, and at most 32 runs: `0-3 8 10-12`.
fn ranges(ranks: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &r in ranks {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == r => *end = r,
            _ => runs.push((r, r)),
        }
    }
    let mut out: Vec<String> =
        runs.iter().take(32).map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    if runs.len() > 32 {
        out.push(format!("... ({} ranks in all)", ranks.len()));
    }
    if out.is_empty() { "none".into() } else { out.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str, pid: u32) -> PeerInfo {
        PeerInfo { host_id: host.into(), hostname: host.into(), pid }
    }

    #[test]
    fn described_briefly_at_any_scale() {
        assert_eq!(ranges(&[0, 1, 2, 3, 8, 10, 11, 12]), "0-3 8 10-12");
        assert_eq!(ranges(&[]), "none");
        let peers: Vec<PeerInfo> = (0..1000).map(|r| info(&format!("h{}", r / 8), r as u32)).collect();
        let t = Topology::new(9, peers, true);
        let d = t.describe();
        assert!(d.starts_with("hosts [h0: 0-7; h1: 8-15;"), "{d}");
        assert!(d.contains("and 109 more hosts"), "{d}");
        assert!(d.contains("ring 0-999;"), "{d}");
        assert!(d.contains("links from rank 9: shm 7 (8 10-15), tcp 992 (0-7 16-999)"), "{d}");
        assert!(d.len() < 600, "{} bytes", d.len());
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
        let long = PeerInfo { host_id: "h".into(), hostname: "\u{fffd}".repeat(255).into(), pid: 1 };
        assert_eq!(PeerInfo::decode(&long.encode()).unwrap(), long);
    }
}
