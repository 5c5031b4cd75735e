//! Creating communicators whose ranks are processes: from a unique id
//! ([`Comm::init_rank`], like `ncclCommInitRank`) or from the launcher's environment
//! ([`Comm::from_env`]). Bootstrap, topology, then one transport per kind of link.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

use super::Comm;
use super::launch::Rendezvous;
use crate::algo::Topo;
use crate::bootstrap::{self, Bootstrap, UniqueId};
use crate::error::{Error, Result};
use crate::log;
use crate::settings::{Config, Settings};
use crate::topology::{Link, PeerInfo, Topology};
use crate::transport::Transport;
use crate::transport::fifo::FifoShape;
use crate::transport::setup::{self, Env};

impl UniqueId {
    /// Creates a unique id and starts its bootstrap root in this process (like
    /// `ncclGetUniqueId`): the root listens on the interface `OXCCL_SOCKET_IFNAME`
    /// selects and serves one job, for at most the timeout (`OXCCL_TIMEOUT`).
    pub fn new() -> Result<UniqueId> {
        Self::new_with(&Config::new().resolve()?)
    }

    /// As [`UniqueId::new`], with resolved settings (interface and timeout).
    pub(crate) fn new_with(s: &Settings) -> Result<UniqueId> {
        let ip = crate::sys::netif::pick(s.socket_ifname.as_deref())?.ip;
        let l = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| Error::system(format!("binding the bootstrap root on {ip}"), e))?;
        let addr = l.local_addr().map_err(|e| Error::system("reading the root address", e))?;
        let id = UniqueId::for_root(addr)?;
        bootstrap::spawn_root(l, *id.secret(), s.timeout)?;
        Ok(id)
    }
}

/// What a rank derives from every rank's gathered [`PeerInfo`]: the part of init that
/// grows with the job without talking to anyone (the init model times it at scale).
pub(crate) fn topology_of(rank: usize, infos: &[Vec<u8>], shm: bool) -> Result<Topology> {
    let peers = infos.iter().map(|b| PeerInfo::decode(b)).collect::<Result<Vec<_>>>()?;
    Ok(Topology::new(rank, peers, shm))
}

/// Where this rank listens: loopback for a job whose root is loopback (one host), else
/// the selected interface.
fn local_ip(root: SocketAddr, s: &Settings) -> Result<IpAddr> {
    if root.ip().is_loopback() && s.socket_ifname.is_none() {
        return Ok(root.ip());
    }
    Ok(crate::sys::netif::pick(s.socket_ifname.as_deref())?.ip)
}

impl Comm {
    /// Joins the job described by `id` as `rank` of `nranks` (like `ncclCommInitRank`).
    /// Every rank calls it with the same id and `nranks`; it returns once all ranks have
    /// joined, or fails on every rank with a message when the job is inconsistent (a
    /// duplicate or out-of-range rank, different `nranks`) or a rank does not arrive
    /// within the timeout.
    pub fn init_rank(id: &UniqueId, rank: usize, nranks: usize, config: &Config) -> Result<Comm> {
        Self::init_rank_settings(id, rank, nranks, Arc::new(config.resolve()?))
    }

    /// As [`Comm::init_rank`], with resolved settings.
    pub(crate) fn init_rank_settings(
        id: &UniqueId,
        rank: usize,
        nranks: usize,
        settings: Arc<Settings>,
    ) -> Result<Comm> {
        if nranks == 0 || rank >= nranks {
            return Err(Error::invalid_argument(format!("rank {rank} is out of range for a job of {nranks} ranks")));
        }
        log::settings_once(&settings);
        let timeout = settings.timeout;
        let ip = local_ip(id.root(), &settings)?;
        let t0 = std::time::Instant::now();
        let cpu0 = crate::sys::thread_cpu_time();
        let mut boot = Bootstrap::join(id, rank, nranks, ip, timeout)?;
        let joined = t0.elapsed();
        let infos = boot.all_gather(&PeerInfo::local().encode())?;
        let gathered = t0.elapsed();
        let topology = topology_of(rank, &infos, !settings.shm_disable)?;
        let shape = FifoShape { nslots: settings.nslots, slot_bytes: settings.slot_bytes };
        let env = Env { rank, nranks, settings: &settings, topology: &topology, secret: id.secret(), ip, shape };
        let mapped = t0.elapsed();
        let (transport, shared) = setup::wire_up(&env, &mut boot)?;
        let wired = t0.elapsed();
        let local = topology.local_ranks().to_vec();
        let sockets = transport.has_sockets();
        if settings.debug || log::info_enabled() {
            log::info(true, &format!("rank {rank}/{nranks}: {}", topology.describe()));
        }
        let topo = Topo::with_hosts(rank, topology.ring.clone(), topology.hosts.clone());
        let watch = shared.watch.clone();
        let mut comm = Comm::assemble_with(
            rank,
            nranks,
            settings,
            topo,
            Box::new(transport),
            shared.bell,
            local.len(),
            shared.fault,
        );
        {
            let mut e = comm.engine()?;
            e.sockets = sockets;
            // (InfiniBand too: measured in the Soft-RoCE VM, a longer yield did not help
            // the 8 B latency, see BENCHMARKS.md; to measure again on a real adapter.)
            if sockets && e.settings.yield_for.is_none() {
                // Sockets get their own wait (poll): yielding long only burns the core the
                // peer's kernel needs to move the data.
                e.backoff.yield_for = std::time::Duration::from_micros(50);
            }
        }
        // Waits watch the peers behind shared memory: what they wrote is there, so a dead
        // one sends nothing more. A socket peer's death shows as its connection closing
        // (data it wrote before dying may still be on the way).
        // With shared memory, every other rank of the host is behind it: the transports'
        // watch of the host's processes is the one the waits need (one pidfd per peer).
        if local.iter().any(|&r| topology.links[r] == Link::SharedMemory) && !watch.is_empty() {
            comm.engine()?.watch = Some(watch);
        }
        if let Some((prev, next)) = boot.into_ring() {
            let (p, n) = ((rank + nranks - 1) % nranks, (rank + 1) % nranks);
            let side = |r: usize, sock| crate::fault::Neighbour { rank: r, info: topology.peers[r].clone(), sock };
            comm.start_sentinel(vec![side(p, prev), side(n, next)])?;
        }
        comm.family = super::split::Family::Processes;
        comm.topology = Some(topology);
        if comm.settings.debug || log::info_enabled() {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            log::info(
                true,
                &format!(
                    "rank {rank}/{nranks}: init {:.1} ms (cpu {:.2} ms): bootstrap {:.1} ms (root and partners {:.1}, peers {:.1}), topology {:.1} ms, transports {:.1} ms, fault watch {:.1} ms; holds {}",
                    ms(t0.elapsed()),
                    ms(crate::sys::thread_cpu_time() - cpu0),
                    ms(gathered),
                    ms(joined),
                    ms(gathered - joined),
                    ms(mapped - gathered),
                    ms(wired - mapped),
                    ms(t0.elapsed() - wired),
                    comm.mem_stats()
                ),
            );
        }
        if rank == 0 && (comm.settings.debug || log::info_enabled()) {
            comm.log_topology();
        }
        Ok(comm)
    }

    /// Joins a job described by the environment, as launchers set it:
    /// - `OXCCL_UNIQUE_ID` (a unique id as text) or `OXCCL_COMM_ID=host:port` (rank 0
    ///   listens there, as with NCCL_COMM_ID), with `OXCCL_RANK` and `OXCCL_NRANKS`;
    /// - torchrun's `MASTER_ADDR`, `MASTER_PORT`, `RANK` and `WORLD_SIZE`;
    /// - under mpirun or srun, the rank and size come from `OMPI_COMM_WORLD_RANK`/`_SIZE`,
    ///   `PMI_RANK`/`PMI_SIZE` or `SLURM_PROCID`/`SLURM_NTASKS`, and the address from
    ///   `OXCCL_COMM_ID` or `MASTER_ADDR`/`MASTER_PORT`.
    ///
    /// With an address rather than a unique id, the secret comes from `OXCCL_SECRET`
    /// (any text, the same on every rank); without it, any process that can reach the
    /// address can join, as with torchrun's store.
    pub fn from_env() -> Result<Comm> {
        Self::from_env_with(&Config::new())
    }

    /// As [`Comm::from_env`], with a configuration.
    pub fn from_env_with(config: &Config) -> Result<Comm> {
        let r = Rendezvous::from_env(crate::settings::env::var)?;
        if r.rank == 0 && r.start_root {
            start_fixed_root(&r.id, config)?;
        }
        Comm::init_rank(&r.id, r.rank, r.nranks, config)
    }
}

/// Rank 0's root at the fixed address of `OXCCL_COMM_ID` or `MASTER_ADDR`.
fn start_fixed_root(id: &UniqueId, config: &Config) -> Result<()> {
    let s = config.resolve()?;
    let l = TcpListener::bind(id.root())
        .or_else(|_| TcpListener::bind(SocketAddr::new([0, 0, 0, 0].into(), id.root().port())))
        .map_err(|e| Error::system(format!("rank 0: listening at {} for the other ranks", id.root()), e))?;
    bootstrap::spawn_root(l, *id.secret(), s.timeout)
}
