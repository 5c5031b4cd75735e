//! The part of a rank's init that grows with the job, run alone on synthetic peers, so
//! that the init model (`examples/init_model.rs`) can time it at 100k ranks on one core
//! (what a real rank of such a job would do) and catch any step that grows faster than
//! the number of ranks. The same functions as [`Comm::init_rank`](super::Comm) run:
//! Bruck's framing of every rank's blocks (sent and received), decoding every rank's
//! [`PeerInfo`] and transport addresses, grouping ranks into hosts, the ring.

use std::any::Any;
use std::net::SocketAddr;
use std::time::Duration;

use super::init::topology_of;
use crate::algo::Topo;
use crate::bootstrap::msg;
use crate::error::Result;
use crate::topology::PeerInfo;
use crate::transport::setup;
use crate::transport::tcp::setup::listener_addrs;
use crate::wire::{self, Enc, Kind};

/// What one rank's share of init cost, and what it keeps.
pub struct RankWork {
    /// The thread's CPU time for the whole step.
    pub cpu: Duration,
    /// Bytes of one rank's block in the first all-gather (its encoded peer information).
    pub info_bytes: usize,
    /// Bytes of one rank's block in the second all-gather (its transport addresses).
    pub address_bytes: usize,
    /// What the rank keeps afterwards (its topology, ring and peers' addresses), to be
    /// measured while it lives and dropped after.
    pub kept: Box<dyn Any>,
}

/// A synthetic job of `n` ranks, `per_host` to a host, with host names and addresses as
/// long as real ones.
fn synthetic(n: usize, per_host: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let per_host = per_host.max(1);
    let infos = (0..n)
        .map(|r| {
            let host = format!("node-{:05}.cluster.example.com", r / per_host);
            let boot = format!("{:08x}-5f1e-4c1b-9a77-{:012x}", r / per_host, r / per_host);
            PeerInfo { host_id: format!("{host}/{boot}").into(), hostname: host.into(), pid: 100_000 + r as u32 }
                .encode()
        })
        .collect();
    let addrs = (0..n)
        .map(|r| {
            let shm = format!("oxccl-{:032x}", r as u128 * 0x9e37_79b9_7f4a_7c15);
            let ip = [10, (r >> 16) as u8, (r >> 8) as u8, r as u8];
            let mut tcp = Enc::new();
            tcp.addr(&SocketAddr::from((ip, 40_000 + (r % 20_000) as u16)));
            setup::encode(&[("shm", shm.into_bytes()), ("tcp", tcp.0)])
        })
        .collect();
    (infos, addrs)
}

/// Bruck's all-gather as one rank sees it: every block but its own framed once on the
/// way out (what it forwards) and read once on the way in.
fn gather(rank: usize, blocks: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
    let n = blocks.len();
    let mut out = Vec::new();
    for i in 1..n {
        let r = (rank + i) % n;
        let mut e = Enc::new();
        e.u32(r as u32).bytes(&blocks[r]);
        wire::frame(&mut out, Kind::Block, &e.0);
    }
    let mut held = vec![Vec::new(); n];
    held[rank] = blocks[rank].clone();
    let mut at = 0;
    while at < out.len() {
        let head: &[u8; wire::HEADER] = out[at..at + wire::HEADER].try_into().expect("a whole header");
        let (_, len) = wire::parse_head(head, usize::MAX)?;
        let body = &out[at + wire::HEADER..at + wire::HEADER + len];
        let (r, data) = msg::decode_block(body)?;
        held[r] = data.to_vec();
        at += wire::HEADER + len;
    }
    Ok(held)
}

/// Runs rank `rank`'s share of the init of a synthetic job of `n` ranks, `per_host` to a
/// host (see the module documentation).
pub fn rank_work(rank: usize, n: usize, per_host: usize) -> Result<RankWork> {
    let (infos, addrs) = synthetic(n, per_host);
    let (info_bytes, address_bytes) = (infos[rank].len(), addrs[rank].len());
    let cpu0 = crate::sys::thread_cpu_time();
    let gathered = gather(rank, &infos)?;
    let topology = topology_of(rank, &gathered, true)?;
    let tables = gather(rank, &addrs)?;
    let tables = tables.iter().map(|b| setup::decode(b)).collect::<Result<Vec<_>>>()?;
    // What the TCP transport keeps: every peer's listener, to connect on first use.
    let tcp: Vec<&[u8]> =
        tables.iter().map(|t| t.iter().find(|(k, _)| k == "tcp").map_or(&[][..], |(_, a)| a.as_slice())).collect();
    let kept_addrs = listener_addrs(&tcp)?;
    let topo = Topo::with_hosts(rank, topology.ring.clone(), topology.hosts.clone());
    let cpu = crate::sys::thread_cpu_time() - cpu0;
    Ok(RankWork { cpu, info_bytes, address_bytes, kept: Box::new((topology, topo, kept_addrs)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_synthetic_rank_sees_every_peer_and_its_host() {
        let w = rank_work(13, 64, 8).unwrap();
        let (t, _, addrs) = w.kept.downcast_ref::<(crate::topology::Topology, Topo, Vec<SocketAddr>)>().unwrap();
        assert_eq!(t.hosts.len(), 8);
        assert_eq!(t.local_ranks(), &[8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(addrs.len(), 64);
        assert_eq!(addrs[5].to_string(), "10.0.0.5:40005");
        assert!(Arc::ptr_eq(&t.peers[8].hostname, &t.peers[15].hostname), "a host's name is held once");
        assert!(w.info_bytes > 60 && w.address_bytes > 40, "{} {}", w.info_bytes, w.address_bytes);
    }
}
