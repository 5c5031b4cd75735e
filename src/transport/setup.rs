//! How the transports of a communicator of processes are set up: each kind of link
//! (shared memory, InfiniBand, TCP) implements [`Setup`], and [`wire_up`] runs them
//! all through the same steps:
//!
//! 1. each kind that has peers to serve prepares this rank's side (a segment, a
//!    listener) and says what the others need to reach it (its *address*);
//! 2. one bootstrap all-gather hands every rank every rank's addresses;
//! 3. in order of preference, each kind decides from the addresses whether it serves
//!    (every rank decides alike, from the same table), and takes the peers that no
//!    kind before it took;
//! 4. the kinds that serve connect (lazily: links open on first use) and become the
//!    rank's transports, routed by peer;
//! 5. after a bootstrap barrier (every rank has connected) each kind may tidy up (shared
//!    memory unlinks its segment's name).
//!
//! A new transport is one file implementing [`Setup`] and one line in [`kinds`].

use std::net::IpAddr;
use std::sync::Arc;

use super::Transport;
use super::mux::Mux;
use crate::bootstrap::{Bootstrap, Secret};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::liveness::PeerWatch;
use crate::settings::Settings;
use crate::sync::Doorbell;
use crate::topology::{Link, Topology};
use crate::transport::fifo::FifoShape;
use crate::wire::{Dec, Enc};

/// What every kind needs to know about the rank it sets up.
pub(crate) struct Env<'a> {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub nranks: usize,
    /// The communicator's settings.
    pub settings: &'a Settings,
    /// Who shares what with whom.
    pub topology: &'a Topology,
    /// The job's secret: connections present it.
    pub secret: &'a Secret,
    /// The address this rank listens on.
    pub ip: IpAddr,
    /// Every FIFO's geometry.
    pub shape: FifoShape,
}

impl Env<'_> {
    /// The peers whose link (from the topology) is `link`.
    pub fn peers_by(&self, link: Link) -> Vec<usize> {
        (0..self.nranks).filter(|&r| r != self.rank && self.topology.links[r] == link).collect()
    }
}

/// What the transports of one rank share once they connect: the doorbell its waits
/// sleep on, its fault state, and its host's peer processes.
pub(crate) struct Shared {
    /// This rank's doorbell.
    pub bell: Doorbell,
    /// This rank's fault state.
    pub fault: Arc<Fault>,
    /// This host's peer processes, watched for exit.
    pub watch: Arc<PeerWatch>,
}

/// One kind of link being set up on this rank (see the module documentation).
pub(crate) trait Setup {
    /// The name that tags its address in the all-gather, and that logs show.
    fn name(&self) -> &'static str;

    /// The peers it would link this rank to.
    fn peers(&self) -> &[usize];

    /// This rank's address: what the other ranks need to connect to it.
    fn address(&self) -> Vec<u8>;

    /// Whether it serves, given every rank's address for it (empty where a rank
    /// published none). Every rank gets the same table, so all decide alike.
    fn serves(&mut self, addrs: &[&[u8]]) -> Result<bool> {
        let _ = addrs;
        Ok(true)
    }

    /// The doorbell that its peers ring in shared memory, which this rank must then
    /// sleep on (the first kind that has one gives the rank's).
    fn bell(&self) -> Option<Doorbell> {
        None
    }

    /// The transport for [`Setup::peers`].
    fn connect(&mut self, env: &Env<'_>, addrs: &[&[u8]], shared: &Shared) -> Result<Box<dyn Transport>>;

    /// Every rank has connected.
    fn ready(&mut self) {}
}

/// The kinds of link this rank may use, in order of preference.
pub(crate) fn kinds(env: &Env<'_>) -> Result<Vec<Box<dyn Setup>>> {
    let mut v: Vec<Box<dyn Setup>> = Vec::new();
    if let Some(s) = super::shm::ShmSetup::new(env)? {
        v.push(Box::new(s));
    }
    #[cfg(feature = "ib")]
    if let Some(s) = super::ib::IbSetup::new(env)? {
        v.push(Box::new(s));
    }
    if let Some(s) = super::tcp::TcpSetup::new(env)? {
        v.push(Box::new(s));
    }
    Ok(v)
}

/// A rank's addresses: a table of (kind, address).
pub(crate) fn encode<S: AsRef<str>>(addrs: &[(S, Vec<u8>)]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(addrs.len() as u32);
    for (name, a) in addrs {
        e.bytes(name.as_ref().as_bytes()).bytes(a);
    }
    e.0
}

/// Decodes what [`encode`] wrote (a peer's bytes: every field is checked).
pub(crate) fn decode(b: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut d = Dec::new(b, "transport addresses");
    let n = d.u32()? as usize;
    if n > 16 {
        return Err(Error::remote(format!("malformed transport addresses: {n} kinds")));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = std::str::from_utf8(d.bytes(32)?)
            .map_err(|_| Error::remote("malformed transport addresses: a kind's name is not UTF-8"))?
            .to_string();
        out.push((name, d.bytes(4096)?.to_vec()));
    }
    d.end()?;
    Ok(out)
}

/// The transports of this rank, set up with its peers through the bootstrap `boot`, and
/// its doorbell, fault state and watched peers.
pub(crate) fn wire_up(env: &Env<'_>, boot: &mut Bootstrap) -> Result<(Mux, Shared)> {
    let mut kinds = kinds(env)?;
    let mine: Vec<(&'static str, Vec<u8>)> = kinds.iter().map(|k| (k.name(), k.address())).collect();
    let table = boot.all_gather(&encode(&mine))?;
    let table = table.iter().map(|b| decode(b)).collect::<Result<Vec<_>>>()?;
    let addrs_of = |name: &str| -> Vec<&[u8]> {
        table.iter().map(|t| t.iter().find(|(n, _)| n == name).map_or(&[][..], |(_, a)| a.as_slice())).collect()
    };
    let mut serving = Vec::new();
    for (i, k) in kinds.iter_mut().enumerate() {
        if k.serves(&addrs_of(k.name()))? {
            serving.push(i);
        }
    }
    let bell = serving.iter().find_map(|&i| kinds[i].bell()).unwrap_or_else(Doorbell::new_private);
    let local = env.topology.local_ranks();
    let watch = Arc::new(PeerWatch::new(local.iter().map(|&r| (r, env.topology.peers[r].clone()))));
    let shared = Shared { fault: Fault::new(env.rank, bell.clone()), bell, watch };
    let mut transports: Vec<Box<dyn Transport>> = Vec::new();
    let mut route = vec![None; env.nranks];
    for &i in &serving {
        let k = &mut kinds[i];
        let peers: Vec<usize> = k.peers().iter().copied().filter(|&p| route[p].is_none()).collect();
        if peers.is_empty() {
            continue;
        }
        let t = std::time::Instant::now();
        transports.push(k.connect(env, &addrs_of(k.name()), &shared)?);
        crate::log::info(
            false,
            &format!("rank {}: {} connected in {:.1} ms", env.rank, k.name(), t.elapsed().as_secs_f64() * 1e3),
        );
        for p in peers {
            route[p] = Some(transports.len() - 1);
        }
    }
    boot.barrier()?;
    for k in &mut kinds {
        k.ready();
    }
    Ok((Mux::new(transports, route), shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_bad_tables_are_errors() {
        let t = vec![("shm", b"oxccl-0123".to_vec()), ("tcp", vec![1, 2, 3])];
        let back = decode(&encode(&t)).unwrap();
        assert_eq!(back, vec![("shm".to_string(), b"oxccl-0123".to_vec()), ("tcp".to_string(), vec![1, 2, 3])]);
        assert!(decode(&encode::<&str>(&[])).unwrap().is_empty());
        let mut long = encode(&t);
        long.push(0);
        assert!(decode(&long).is_err(), "trailing bytes");
        assert!(decode(&[255, 255, 255, 255]).is_err(), "too many kinds");
        assert!(decode(&[1, 0, 0]).is_err(), "truncated");
    }
}
