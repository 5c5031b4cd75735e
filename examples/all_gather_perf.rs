//! All-gather benchmark with nccl-tests' flags and output (`all_gather_perf`), ranks as threads of this
//! process (`-t N`) or as processes under a launcher (`oxccl-run`, mpirun, ...). The
//! harness is `perf_common` (its module documentation lists the flags).
//!
//! ```text
//! cargo run --release --example all_gather_perf -- -b 8 -e 128M -f 2 -t 2
//! target/release/oxccl-run -n 4 -- target/release/examples/all_gather_perf -b 8 -e 128M -f 2
//! ```
//!
//! `-b`/`-e` is the gathered (total) size; busbw = algbw x (n-1)/n.

mod perf_common;

fn main() {
    perf_common::main(perf_common::collectives::AllGather)
}
