//! Chooses, per call, the algorithm, the chunking and the executor's path: measured
//! crossovers and a cost model ([`cost`]) rank the algorithms, `OXCCL_ALGO` (or
//! `Config::algo`) overrides them. [`cache`] keeps the plans of recent calls, so
//! repeated calls (training loops, benchmarks) skip planning.

pub mod cache;
pub mod cost;

pub use cost::all_reduce_cost;

use crate::algo::Chunking;
use crate::call::{Algo, Collective};
use crate::error::{Error, Result};
use crate::exec::Path;
use crate::settings::Settings;
use crate::types::DataType;

/// What a call will run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The algorithm.
    pub algo: Algo,
    /// How data is cut into messages.
    pub chunking: Chunking,
    /// Write outputs with non-temporal stores.
    pub nt: bool,
    /// How the executor runs it.
    pub path: Path,
}

/// What the plan needs to know about the communicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Number of ranks.
    pub n: usize,
    /// The call runs alone (not in a group), in ranks that share an address space
    /// (direct algorithms need both).
    pub shared: bool,
    /// Several hosts, one with several ranks (hierarchical all-reduce applies).
    pub hierarchical: bool,
    /// Some links are network sockets (messages cost microseconds each).
    pub network: bool,
    /// The call runs alone, not in a group (the executor's fast paths need it).
    pub alone: bool,
    /// Payload bytes of one FIFO slot (the one-slot path needs the call to fit).
    pub slot_bytes: usize,
}

/// The plan for `coll` on `dtype` in a communicator of `shape`.
pub fn plan(coll: &Collective, dtype: DataType, shape: Shape, s: &Settings) -> Result<Plan> {
    let Shape { n, shared, hierarchical, .. } = shape;
    let elem = dtype.size();
    // Over sockets every hop waits for a whole chunk, so smaller chunks pipeline better
    // (4 processes over TCP, 1 MiB: 2.6 ms with 64 KiB chunks against 3.5 ms with 256 KiB).
    let chunk_bytes = if shape.network { s.slot_bytes.min(NETWORK_CHUNK) } else { s.slot_bytes };
    let chunking = Chunking { chunk: (chunk_bytes / elem).max(1), align: (64 / elem).max(1) };
    let out_bytes = match *coll {
        Collective::AllGather { count } | Collective::AllToAll { count } | Collective::Gather { count, .. } => {
            count.saturating_mul(n)
        }
        c => c.count(),
    }
    .saturating_mul(elem);
    let nt = out_bytes >= s.nt_threshold;
    let algo = match s.algo.forced(coll) {
        Some(a) => {
            if !a.applies_to(coll) {
                return Err(Error::invalid_usage(format!(
                    "algorithm '{}' is forced (OXCCL_ALGO or Config::algo) but cannot run {}; force it for the collectives it applies to, e.g. OXCCL_ALGO=all_reduce:{}",
                    a.name(),
                    coll.name(),
                    a.name()
                )));
            }
            if a == Algo::Hier && !hierarchical {
                return Err(Error::invalid_usage(
                    "algorithm 'hier' is forced, but the ranks are not spread over several hosts with several ranks on one of them",
                ));
            }
            if a == Algo::Direct && !shared {
                return Err(Error::invalid_usage(format!(
                    "algorithm 'direct' is forced for {}, but it runs only between threads of one process, and not inside a group",
                    coll.name()
                )));
            }
            a
        }
        None => choose(coll, elem, shape, s),
    };
    let path = match algo {
        Algo::Direct => Path::Direct,
        Algo::OneShot if shape.alone && n > 1 && coll.count().saturating_mul(elem) <= shape.slot_bytes => Path::OneSlot,
        _ => Path::Streams,
    };
    Ok(Plan { algo, chunking, nt, path })
}

/// Chunk size on communicators with network links.
const NETWORK_CHUNK: usize = 64 << 10;

/// Smallest call (bytes per rank) for which direct algorithms beat staging through slots.
const DIRECT_MIN_BYTES: usize = 8 << 10;

/// Smallest all-reduce for which the hierarchical algorithm is chosen: below it, the
/// extra stages cost more latency than the inter-host bandwidth they save.
const HIER_MIN_BYTES: usize = 256 << 10;

/// Fewest ranks for which a tree (broadcast, reduce) or Bruck's all-gather beats the
/// ring for small messages: the ring's `n - 1` hops against `log2 n`.
const LOG_MIN_RANKS: usize = 8;

/// Most thread ranks for which a small all-reduce is one-shot (every rank linked to every
/// other) rather than recursive doubling (`log2 n` partners).
const ONE_SHOT_MAX_THREADS: usize = 8;

/// Largest broadcast or reduce that takes a tree rather than the ring.
const TREE_MAX_BYTES: usize = 64 << 10;

fn choose(coll: &Collective, elem: usize, shape: Shape, s: &Settings) -> Algo {
    let Shape { n, shared, hierarchical, network, .. } = shape;
    let bytes = coll.count() * elem;
    let chunk_bytes = if network { s.slot_bytes.min(NETWORK_CHUNK) } else { s.slot_bytes };
    if shared && n > 1 && Algo::Direct.applies_to(coll) && bytes >= DIRECT_MIN_BYTES {
        return Algo::Direct;
    }
    if hierarchical && matches!(coll, Collective::AllReduce { .. }) && bytes >= HIER_MIN_BYTES {
        return Algo::Hier;
    }
    match coll {
        Collective::AllReduce { .. } => {
            // Measured crossovers (scripts/compare-peers.sh, forced algorithms, 2-core VM):
            // small messages want one step (2 ranks) or log2(n) steps, never a ring's
            // 2(n-1); threads do best with the one-slot one-shot; sockets make every
            // message dear, so the small range is wider there.
            let small = match (network, n) {
                (true, 2) => 256 << 10,
                (true, _) => 64 << 10,
                (false, _) => 32 << 10,
            };
            if bytes <= small {
                // One-shot links every rank to every other: for threads (no copies to
                // stage) it wins while the ranks are few.
                return if n == 2 || (shared && n <= ONE_SHOT_MAX_THREADS) { Algo::OneShot } else { Algo::Doubling };
            }
            if n < 16 {
                return Algo::Ring;
            }
            // Many ranks: a tree's log(n) latency can beat the ring until bandwidth rules.
            [Algo::Ring, Algo::Tree]
                .into_iter()
                .min_by(|a, b| {
                    all_reduce_cost(*a, bytes, n, s.slot_bytes).total_cmp(&all_reduce_cost(*b, bytes, n, s.slot_bytes))
                })
                .unwrap_or(Algo::Ring)
        }
        Collective::Broadcast { .. } | Collective::Reduce { .. } if n >= LOG_MIN_RANKS && bytes <= TREE_MAX_BYTES => {
            Algo::Tree
        }
        // The whole gathered output in one slot: every round's messages fit the FIFOs.
        Collective::AllGather { .. } if n >= LOG_MIN_RANKS && bytes.saturating_mul(n) <= chunk_bytes => Algo::Bruck,
        c if Algo::Ring.applies_to(c) => Algo::Ring,
        _ => Algo::P2p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::settings::Config;

    #[test]
    fn forced_algorithms_apply_or_fail() {
        let s = Config::new().algo(Algo::Doubling).resolve_with(|_| None).unwrap();
        let p = plan(
            &Collective::AllReduce { count: 10 },
            DataType::Float32,
            Shape { n: 4, shared: true, hierarchical: false, network: false, alone: true, slot_bytes: 1 << 18 },
            &s,
        )
        .unwrap();
        assert_eq!(p.algo, Algo::Doubling);
        let e = plan(
            &Collective::Broadcast { count: 10, root: 0 },
            DataType::Float32,
            Shape { n: 4, shared: true, hierarchical: false, network: false, alone: true, slot_bytes: 1 << 18 },
            &s,
        )
        .unwrap_err();
        assert!(e.kind() == ErrorKind::InvalidUsage, "{e}");
    }

    #[test]
    fn small_messages_take_one_step_large_ones_the_ring() {
        let s = Settings::default();
        let p = |bytes: usize, n| {
            plan(
                &Collective::AllReduce { count: bytes / 4 },
                DataType::Float32,
                Shape { n, shared: false, hierarchical: false, network: false, alone: true, slot_bytes: 1 << 18 },
                &s,
            )
            .unwrap()
            .algo
        };
        assert_eq!(p(8, 2), Algo::OneShot);
        assert_eq!(
            plan(
                &Collective::AllReduce { count: 2 },
                DataType::Float32,
                Shape { n: 4, shared: false, hierarchical: false, network: false, alone: true, slot_bytes: 1 << 18 },
                &s
            )
            .unwrap()
            .algo,
            Algo::Doubling
        );
        assert_eq!(p(64 << 20, 4), Algo::Ring);
        assert_eq!(
            plan(
                &Collective::AllToAll { count: 5 },
                DataType::Int8,
                Shape { n: 4, shared: false, hierarchical: false, network: false, alone: true, slot_bytes: 1 << 18 },
                &s
            )
            .unwrap()
            .algo,
            Algo::P2p
        );
        let shared = plan(
            &Collective::AllReduce { count: 1 << 20 },
            DataType::Float32,
            Shape { n: 4, shared: true, hierarchical: false, network: false, alone: true, slot_bytes: 1 << 18 },
            &s,
        )
        .unwrap();
        assert_eq!(shared.algo, Algo::Direct);
        let s = Config::new().algo(Algo::Direct).resolve_with(|_| None).unwrap();
        assert!(
            plan(
                &Collective::AllReduce { count: 8 },
                DataType::Float32,
                Shape { n: 2, shared: false, hierarchical: false, network: false, alone: true, slot_bytes: 1 << 18 },
                &s
            )
            .is_err()
        );
    }
}
