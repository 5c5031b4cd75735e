//! Send/receive benchmark with nccl-tests' flags and output (`sendrecv_perf`): each rank
//! sends to the next and receives from the previous, in one group. Ranks are threads of
//! this process (`-t N`) or processes under a launcher (`oxccl-run`, mpirun, ...). The
//! harness is `perf_common` (its module documentation lists the flags).
//!
//! ```text
//! cargo run --release --example sendrecv_perf -- -b 8 -e 128M -f 2 -t 2
//! target/release/oxccl-run -n 4 -- target/release/examples/sendrecv_perf -b 8 -e 128M -f 2
//! ```
//!
//! busbw = algbw; no in-place form.

mod perf_common;

fn main() {
    perf_common::main(perf_common::collectives::SendRecv)
}
