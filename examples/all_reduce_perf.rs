//! All-reduce benchmark with nccl-tests' flags and output (`all_reduce_perf`), ranks as
//! threads of this process, or as processes under a launcher (one rank each).
//!
//! ```text
//! cargo run --release --example all_reduce_perf -- -b 8 -e 128M -f 2 -t 2
//! cargo run --release --example all_reduce_perf -- -d all -o all -b 8 -e 1M -f 4 -t 3
//! cargo build --release --example all_reduce_perf --bin oxccl-run
//! target/release/oxccl-run -n 4 -- target/release/examples/all_reduce_perf -b 8 -e 128M -f 2
//! ```
//!
//! Under `oxccl-run`, mpirun, srun or torchrun (`OXCCL_RANK`/`OXCCL_NRANKS` with
//! `OXCCL_COMM_ID`, `RANK`/`WORLD_SIZE`, ...), each process joins the job with
//! `Comm::from_env_with`, rank 0 prints the table, and every rank exits with status 1
//! when any rank saw a wrong value.
//!
//! busbw = algbw x 2(n-1)/n: each rank sends and receives 2(n-1)/n of the buffer in a
//! bandwidth-optimal all-reduce, so busbw compares with the link (or memory) bandwidth.

mod perf_common;

use oxccl::{Comm, Element, ReduceOp};
use perf_common::{CallCtx, Collective, Layout, Segment, Src};

struct AllReduce;

impl Collective for AllReduce {
    const NAME: &'static str = "all_reduce_perf";
    const REDUCES: bool = true;
    const SAME_OUTPUT: bool = true;

    fn layout(&self, count: usize, _nranks: usize) -> Layout {
        Layout { send: count, recv: count, in_place: count, count, size: count }
    }

    fn bus_factor(&self, nranks: usize) -> f64 {
        2.0 * (nranks - 1) as f64 / nranks as f64
    }

    fn run<T: Element>(
        &self,
        comm: &mut Comm,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
        _ctx: CallCtx,
    ) -> oxccl::Result<()> {
        comm.all_reduce(send, recv, op)
    }

    fn run_in_place<T: Element>(
        &self,
        comm: &mut Comm,
        buf: &mut [T],
        op: ReduceOp,
        _ctx: CallCtx,
    ) -> oxccl::Result<()> {
        comm.all_reduce_in_place(buf, op)
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count, Src::Input(ctx.rank), 0)]
    }

    fn outputs(&self, lay: &Layout, _ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count, Src::Reduced, 0)]
    }
}

fn main() {
    perf_common::main(AllReduce)
}
