//! Reduce-scatter benchmark with nccl-tests' flags and output (`reduce_scatter_perf`), ranks as threads of this
//! process (`-t N`) or as processes under a launcher (`oxccl-run`, mpirun, ...). The
//! harness is `perf_common` (its module documentation lists the flags).
//!
//! ```text
//! cargo run --release --example reduce_scatter_perf -- -b 8 -e 128M -f 2 -t 2
//! target/release/oxccl-run -n 4 -- target/release/examples/reduce_scatter_perf -b 8 -e 128M -f 2
//! ```
//!
//! `-b`/`-e` is the reduced (total) size; busbw = algbw x (n-1)/n.

mod perf_common;

fn main() {
    perf_common::main(perf_common::collectives::ReduceScatter)
}
