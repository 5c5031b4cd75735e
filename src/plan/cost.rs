//! The cost model: `time = latency + bytes / bandwidth` per algorithm, from which the
//! planner ranks the algorithms that can run a call.
//!
//! The constants were calibrated on a 2-core x86 VM with ranks as threads (see the
//! `all_reduce_perf` example); they only need to rank the algorithms correctly.

use crate::call::Algo;

/// Latency of one step (a message hop), in microseconds.
const STEP_US: f64 = 0.35;
/// Bandwidth of one link in bytes per microsecond (≈ GB/s × 1000).
const LINK_BPUS: f64 = 8_000.0;
/// Reduction throughput of one rank (bytes of input per microsecond).
const REDUCE_BPUS: f64 = 10_000.0;

/// Estimated microseconds for an all-reduce of `bytes` among `n` ranks.
pub fn all_reduce_cost(algo: Algo, bytes: usize, n: usize, chunk_bytes: usize) -> f64 {
    let (b, nf) = (bytes as f64, n as f64);
    let pipeline = |steps: f64, per_step: f64| {
        // Steps of the first chunk, then one step per further chunk.
        let chunks = (per_step / chunk_bytes as f64).ceil().max(1.0);
        (steps + chunks - 1.0) * STEP_US + per_step * steps.min(chunks) / LINK_BPUS
    };
    match algo {
        Algo::Ring => {
            let part = b / nf;
            pipeline(2.0 * (nf - 1.0), part) + 2.0 * (nf - 1.0) * part / LINK_BPUS
        }
        Algo::Tree => {
            let depth = (nf.log2().ceil()).max(1.0);
            pipeline(2.0 * depth, b / 2.0) + b / LINK_BPUS + b / REDUCE_BPUS
        }
        Algo::OneShot => STEP_US + (nf - 1.0) * b / LINK_BPUS + nf * b / REDUCE_BPUS,
        Algo::Direct => 2.0 * STEP_US + 2.0 * b / REDUCE_BPUS,
        Algo::Doubling => {
            let rounds = nf.log2().ceil().max(1.0);
            rounds * (STEP_US + b / LINK_BPUS + b / REDUCE_BPUS)
        }
        Algo::Hier | Algo::P2p | Algo::Bruck => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_rules_small_calls_and_bandwidth_large_ones() {
        let chunk = 256 << 10;
        // 16 ranks, 8 bytes: a tree's 2 log n steps beat a ring's 2 (n - 1).
        assert!(all_reduce_cost(Algo::Tree, 8, 16, chunk) < all_reduce_cost(Algo::Ring, 8, 16, chunk));
        // 16 ranks, 256 MiB: the ring moves 2 (n - 1) / n of the data per rank, the tree more.
        let big = 256 << 20;
        assert!(all_reduce_cost(Algo::Ring, big, 16, chunk) < all_reduce_cost(Algo::Tree, big, 16, chunk));
        // Costs grow with the size, and algorithms that cannot run a call cost infinity.
        assert!(all_reduce_cost(Algo::Ring, 1 << 20, 4, chunk) > all_reduce_cost(Algo::Ring, 1 << 10, 4, chunk));
        assert!(all_reduce_cost(Algo::P2p, 8, 4, chunk).is_infinite());
    }
}
