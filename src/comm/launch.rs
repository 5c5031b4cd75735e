//! What the launcher's environment says about the job: this process's rank and the
//! number of ranks (oxccl-run's, torchrun's, Open MPI's, MPICH's or Slurm's variables),
//! and where rank 0 listens (`OXCCL_COMM_ID`, `OXCCL_UNIQUE_ID`, `MASTER_ADDR` and
//! `MASTER_PORT`). One copy of the launchers' variable names, for the library, the
//! `oxccl-run` launcher and the perf examples.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::bootstrap::{self, UniqueId};
use crate::error::{Error, Result};

/// `host:port` where rank 0 listens (oxccl-run sets it).
pub const COMM_ID: &str = "OXCCL_COMM_ID";
/// This process's rank (oxccl-run sets it).
pub const RANK: &str = "OXCCL_RANK";
/// The number of ranks (oxccl-run sets it).
pub const NRANKS: &str = "OXCCL_NRANKS";
/// This process's rank among those of its host (oxccl-run sets it, for programs that
/// pick a device by it, as torchrun's `LOCAL_RANK`).
pub const LOCAL_RANK: &str = "OXCCL_LOCAL_RANK";
/// The number of ranks on this host (oxccl-run sets it, as torchrun's
/// `LOCAL_WORLD_SIZE`).
pub const LOCAL_SIZE: &str = "OXCCL_LOCAL_SIZE";

/// The (rank, size) variables of each launcher, in the order they are looked at:
/// oxccl-run's, torchrun's, Open MPI's, MPICH's (hydra's PMI), Slurm's.
pub const RANK_SIZE_VARS: [(&str, &str); 5] = [
    (RANK, NRANKS),
    ("RANK", "WORLD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
];

/// The variables that name where rank 0 listens, or the job's unique id.
pub const ADDRESS_VARS: [&str; 3] = [COMM_ID, "OXCCL_UNIQUE_ID", "MASTER_ADDR"];

/// This process's rank and the job's size, and the variables they came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankSize {
    /// This process's rank.
    pub rank: usize,
    /// The number of ranks.
    pub nranks: usize,
    /// The variable that gave the rank.
    pub rank_var: &'static str,
    /// The variable that gave the size.
    pub size_var: &'static str,
}

/// The first launcher pair of [`RANK_SIZE_VARS`] that `env` sets; `None` if none is set;
/// an error if a pair is half set or not a number.
pub fn rank_and_size(env: impl Fn(&str) -> Option<String>) -> Result<Option<RankSize>> {
    let num = |k: &str| -> Result<Option<usize>> {
        match env(k).filter(|v| !v.trim().is_empty()) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::invalid_argument(format!("{k}={v} is not a non-negative integer"))),
        }
    };
    for (rk, sk) in RANK_SIZE_VARS {
        match (num(rk)?, num(sk)?) {
            (Some(rank), Some(nranks)) => return Ok(Some(RankSize { rank, nranks, rank_var: rk, size_var: sk })),
            (Some(_), None) => return Err(Error::invalid_argument(format!("{rk} is set but {sk} is not"))),
            (None, Some(_)) => return Err(Error::invalid_argument(format!("{sk} is set but {rk} is not"))),
            (None, None) => {}
        }
    }
    Ok(None)
}

/// Whether a launcher started this process: any variable of [`RANK_SIZE_VARS`] or
/// [`ADDRESS_VARS`] is set in `env`, whatever the number of ranks it says.
pub fn launched(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    RANK_SIZE_VARS.iter().any(|(r, n)| set(r) || set(n)) || ADDRESS_VARS.iter().any(|k| set(k))
}

/// What the environment says about the job.
#[derive(Debug)]
pub(crate) struct Rendezvous {
    pub id: UniqueId,
    pub rank: usize,
    pub nranks: usize,
    /// Rank 0 must start the root (an address was given rather than a unique id).
    pub start_root: bool,
}

impl Rendezvous {
    /// Reads the job from `env` (a variable's value, if set).
    pub(crate) fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Rendezvous> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let Some(RankSize { rank, nranks, rank_var: rk, size_var: sk }) = rank_and_size(&env)? else {
            return Err(Error::invalid_argument(
                "Comm::from_env: no rank and size in the environment: set OXCCL_RANK and OXCCL_NRANKS (with OXCCL_COMM_ID=host:port), or RANK and WORLD_SIZE (with MASTER_ADDR and MASTER_PORT, as torchrun does), or run under mpirun or srun",
            ));
        };
        if rank >= nranks {
            return Err(Error::invalid_argument(format!("{rk}={rank} is out of range for {sk}={nranks}")));
        }
        if let Some(text) = get("OXCCL_UNIQUE_ID") {
            let id: UniqueId = text.parse()?;
            return Ok(Rendezvous { id, rank, nranks, start_root: false });
        }
        let addr = if let Some(v) = get("OXCCL_COMM_ID") {
            resolve(&v, "OXCCL_COMM_ID")?
        } else {
            match (get("MASTER_ADDR"), get("MASTER_PORT")) {
                (Some(a), Some(p)) => resolve(&format!("{a}:{p}"), "MASTER_ADDR:MASTER_PORT")?,
                (Some(_), None) => {
                    return Err(Error::invalid_argument("MASTER_ADDR is set but MASTER_PORT is not"));
                }
                (None, Some(_)) => {
                    return Err(Error::invalid_argument("MASTER_PORT is set but MASTER_ADDR is not"));
                }
                (None, None) => {
                    return Err(Error::invalid_argument(format!(
                        "Comm::from_env: found the rank and size in {rk}/{sk} but no address of rank 0: set OXCCL_COMM_ID=host:port (or MASTER_ADDR and MASTER_PORT), the same on every rank"
                    )));
                }
            }
        };
        let secret = derive_secret(get("OXCCL_SECRET").as_deref(), &addr);
        Ok(Rendezvous { id: UniqueId::with_secret(addr, secret), rank, nranks, start_root: true })
    }
}

fn resolve(hostport: &str, what: &str) -> Result<SocketAddr> {
    hostport
        .to_socket_addrs()
        .map_err(|e| Error::invalid_argument(format!("{what}={hostport}: cannot resolve ({e}); expected host:port")))?
        .find(|a| a.is_ipv4())
        .or_else(|| hostport.to_socket_addrs().ok().and_then(|mut i| i.next()))
        .ok_or_else(|| Error::invalid_argument(format!("{what}={hostport}: no address")))
}

/// 32 bytes every rank derives alike from `OXCCL_SECRET` (or from the address alone).
fn derive_secret(text: Option<&str>, addr: &SocketAddr) -> bootstrap::Secret {
    // FNV-1a over four lanes; an identifier, not cryptography: with OXCCL_SECRET the
    // strength is the text's.
    let input = format!("oxccl/{}/{}", text.unwrap_or(""), addr);
    let mut out = [0u8; 32];
    for (lane, chunk) in out.chunks_mut(8).enumerate() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in input.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(v: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| v.iter().find(|(n, _)| *n == k).map(|(_, x)| x.to_string())
    }

    #[test]
    fn rendezvous_from_each_launcher() {
        let r = Rendezvous::from_env(env(&[
            ("OXCCL_COMM_ID", "127.0.0.1:29500"),
            ("OXCCL_RANK", "1"),
            ("OXCCL_NRANKS", "4"),
        ]))
        .unwrap();
        assert_eq!((r.rank, r.nranks, r.id.root().port(), r.start_root), (1, 4, 29500, true));
        let r = Rendezvous::from_env(env(&[
            ("MASTER_ADDR", "localhost"),
            ("MASTER_PORT", "1234"),
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
        ]))
        .unwrap();
        assert_eq!((r.rank, r.nranks, r.id.root().port()), (0, 2, 1234));
        let r = Rendezvous::from_env(env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("OXCCL_COMM_ID", "127.0.0.1:5"),
        ]))
        .unwrap();
        assert_eq!((r.rank, r.nranks), (3, 8));
        let id = UniqueId::for_root("127.0.0.1:9".parse().unwrap()).unwrap();
        let s = id.to_string();
        let r = Rendezvous::from_env(env(&[("OXCCL_UNIQUE_ID", &s), ("PMI_RANK", "0"), ("PMI_SIZE", "1")])).unwrap();
        assert_eq!((r.id, r.start_root), (id, false));
        // Same inputs, same secret; another secret text, another secret.
        let a =
            Rendezvous::from_env(env(&[("OXCCL_COMM_ID", "127.0.0.1:5"), ("OXCCL_RANK", "0"), ("OXCCL_NRANKS", "2")]))
                .unwrap();
        let b =
            Rendezvous::from_env(env(&[("OXCCL_COMM_ID", "127.0.0.1:5"), ("OXCCL_RANK", "1"), ("OXCCL_NRANKS", "2")]))
                .unwrap();
        let c = Rendezvous::from_env(env(&[
            ("OXCCL_COMM_ID", "127.0.0.1:5"),
            ("OXCCL_RANK", "1"),
            ("OXCCL_NRANKS", "2"),
            ("OXCCL_SECRET", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id.secret(), c.id.secret());
    }

    #[test]
    fn missing_pieces_are_named() {
        let msg = |v: &[(&str, &str)]| Rendezvous::from_env(env(v)).unwrap_err().to_string();
        assert!(msg(&[]).contains("OXCCL_RANK"));
        assert!(msg(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("OXCCL_COMM_ID"));
        assert!(msg(&[("RANK", "0")]).contains("WORLD_SIZE is not"));
        assert!(msg(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).contains("MASTER_PORT"));
        assert!(msg(&[("OXCCL_RANK", "x"), ("OXCCL_NRANKS", "2")]).contains("not a non-negative integer"));
        assert!(
            msg(&[("OXCCL_RANK", "2"), ("OXCCL_NRANKS", "2"), ("OXCCL_COMM_ID", "127.0.0.1:1")])
                .contains("out of range")
        );
        assert!(
            msg(&[("OXCCL_RANK", "0"), ("OXCCL_NRANKS", "2"), ("OXCCL_COMM_ID", "nohost")]).contains("OXCCL_COMM_ID")
        );
    }
}
