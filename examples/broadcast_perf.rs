//! Broadcast benchmark with nccl-tests' flags and output (`broadcast_perf`), ranks as threads of this
//! process (`-t N`) or as processes under a launcher (`oxccl-run`, mpirun, ...). The
//! harness is `perf_common` (its module documentation lists the flags).
//!
//! ```text
//! cargo run --release --example broadcast_perf -- -b 8 -e 128M -f 2 -t 2
//! target/release/oxccl-run -n 4 -- target/release/examples/broadcast_perf -b 8 -e 128M -f 2
//! ```
//!
//! The root is `-r` (`-r all`: every rank in turn); busbw = algbw.

mod perf_common;

fn main() {
    perf_common::main(perf_common::collectives::Broadcast)
}
