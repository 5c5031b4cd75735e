//! Draws the busbw of several runs (JSON from the `*_perf` examples' `-J`, nccl-tests'
//! `-J`, or CSV with `size,busbw` columns) into one SVG picture, one line per run.
//!
//! ```text
//! target/release/examples/all_reduce_perf -b 8 -e 64M -f 2 -t 4 -J ar.json
//! target/release/examples/all_gather_perf -b 8 -e 64M -f 2 -t 4 -J ag.json
//! target/release/examples/perf_plot -o busbw.svg ar.json ag.json nccl.csv:NCCL
//! ```

mod perf_common;

fn main() {
    perf_common::plot::plot_main()
}
