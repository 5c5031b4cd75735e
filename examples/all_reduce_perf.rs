//! All-reduce benchmark with nccl-tests' flags and output (`all_reduce_perf`), ranks as
//! threads of this process, or as processes under a launcher (one rank each). The
//! harness is `perf_common` (its module documentation lists the flags).
//!
//! ```text
//! cargo run --release --example all_reduce_perf -- -b 8 -e 128M -f 2 -t 2
//! cargo run --release --example all_reduce_perf -- -d all -o all -b 8 -e 1M -f 4 -t 3
//! cargo build --release --example all_reduce_perf --bin oxccl-run
//! target/release/oxccl-run -n 4 -- target/release/examples/all_reduce_perf -b 8 -e 128M -f 2
//! ```
//!
//! busbw = algbw x 2(n-1)/n: each rank sends and receives 2(n-1)/n of the buffer in a
//! bandwidth-optimal all-reduce, so busbw compares with the link (or memory) bandwidth.

mod perf_common;

fn main() {
    perf_common::main(perf_common::collectives::AllReduce)
}
