//! All-to-all benchmark with nccl-tests' flags and output (`alltoall_perf`), ranks as threads of this
//! process (`-t N`) or as processes under a launcher (`oxccl-run`, mpirun, ...). The
//! harness is `perf_common` (its module documentation lists the flags).
//!
//! ```text
//! cargo run --release --example alltoall_perf -- -b 8 -e 128M -f 2 -t 2
//! target/release/oxccl-run -n 4 -- target/release/examples/alltoall_perf -b 8 -e 128M -f 2
//! ```
//!
//! `-b`/`-e` is each rank's whole send buffer; busbw = algbw x (n-1)/n; no in-place form.

mod perf_common;

fn main() {
    perf_common::main(perf_common::collectives::AllToAll)
}
