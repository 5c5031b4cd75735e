//! The seven collectives of the `*_perf` examples, as [`Collective`]s: buffer sizes, bus
//! factor, the oxccl call, and what goes in and must come out.
//!
//! Sizes follow nccl-tests: `-b`/`-e` is the size of the largest buffer, i.e. the total
//! (all ranks' blocks) for all-gather, reduce-scatter and all-to-all, whose per-rank
//! block (the `count` column) is that divided by the ranks (for all-gather and
//! reduce-scatter also rounded down to 16 bytes, as nccl-tests does). algbw is that
//! total size over the time; busbw = algbw x [`Collective::bus_factor`], nccl-tests'
//! factors (its `doc/PERFORMANCE.md`).

use oxccl::{Comm, Element, ReduceOp};

use super::{CallCtx, Collective, Layout, Segment, Src};

/// `count / n` rounded down to a multiple of 16 bytes of elements (nccl-tests' `base`
/// of all-gather and reduce-scatter).
fn block_16(count: usize, n: usize, elem_size: usize) -> usize {
    let per = count / n.max(1);
    let align = (16 / elem_size).max(1);
    per - per % align
}

/// `ncclAllReduce`: busbw factor 2(n-1)/n.
pub struct AllReduce;

impl Collective for AllReduce {
    const NAME: &'static str = "all_reduce_perf";
    const REDUCES: bool = true;
    const SAME_OUTPUT: bool = true;

    fn layout(&self, count: usize, _n: usize, _es: usize) -> Layout {
        Layout { send: count, recv: count, in_place: count, count, size: count }
    }

    fn bus_factor(&self, n: usize) -> f64 {
        2.0 * (n - 1) as f64 / n as f64
    }

    fn run<T: Element>(&self, c: &mut Comm, s: &[T], r: &mut [T], op: ReduceOp, _: CallCtx) -> oxccl::Result<()> {
        c.all_reduce(s, r, op)
    }

    fn run_in_place<T: Element>(&self, c: &mut Comm, b: &mut [T], op: ReduceOp, _: CallCtx) -> oxccl::Result<()> {
        c.all_reduce_in_place(b, op)
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count, Src::Input(ctx.rank), 0)]
    }

    fn outputs(&self, lay: &Layout, _ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count, Src::Reduced, 0)]
    }
}

/// `ncclAllGather`: `-b`/`-e` is the gathered (total) size; busbw factor (n-1)/n.
pub struct AllGather;

impl Collective for AllGather {
    const NAME: &'static str = "all_gather_perf";
    const REDUCES: bool = false;
    const SAME_OUTPUT: bool = true;

    fn layout(&self, count: usize, n: usize, es: usize) -> Layout {
        let per = block_16(count, n, es);
        Layout { send: per, recv: per * n, in_place: per * n, count: per, size: per * n }
    }

    fn bus_factor(&self, n: usize) -> f64 {
        (n - 1) as f64 / n as f64
    }

    fn run<T: Element>(&self, c: &mut Comm, s: &[T], r: &mut [T], _: ReduceOp, _: CallCtx) -> oxccl::Result<()> {
        c.all_gather(s, r)
    }

    fn run_in_place<T: Element>(&self, c: &mut Comm, b: &mut [T], _: ReduceOp, _: CallCtx) -> oxccl::Result<()> {
        c.all_gather_in_place(b)
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, in_place: bool) -> Vec<Segment> {
        let at = if in_place { ctx.rank * lay.count } else { 0 };
        vec![Segment::new(at, lay.count, Src::Input(ctx.rank), 0)]
    }

    fn outputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        (0..ctx.nranks).map(|j| Segment::new(j * lay.count, lay.count, Src::Input(j), 0)).collect()
    }
}

/// `ncclReduceScatter`: `-b`/`-e` is the reduced (total) size; busbw factor (n-1)/n.
pub struct ReduceScatter;

impl Collective for ReduceScatter {
    const NAME: &'static str = "reduce_scatter_perf";
    const REDUCES: bool = true;

    fn layout(&self, count: usize, n: usize, es: usize) -> Layout {
        let per = block_16(count, n, es);
        Layout { send: per * n, recv: per, in_place: per * n, count: per, size: per * n }
    }

    fn bus_factor(&self, n: usize) -> f64 {
        (n - 1) as f64 / n as f64
    }

    fn run<T: Element>(&self, c: &mut Comm, s: &[T], r: &mut [T], op: ReduceOp, _: CallCtx) -> oxccl::Result<()> {
        c.reduce_scatter(s, r, op)
    }

    fn run_in_place<T: Element>(&self, c: &mut Comm, b: &mut [T], op: ReduceOp, _: CallCtx) -> oxccl::Result<()> {
        c.reduce_scatter_in_place(b, op)
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count * ctx.nranks, Src::Input(ctx.rank), 0)]
    }

    fn outputs(&self, lay: &Layout, ctx: CallCtx, in_place: bool) -> Vec<Segment> {
        let phase = ctx.rank * lay.count;
        vec![Segment::new(if in_place { phase } else { 0 }, lay.count, Src::Reduced, phase)]
    }
}

/// `ncclBroadcast` from `-r`: busbw factor 1.
pub struct Broadcast;

impl Collective for Broadcast {
    const NAME: &'static str = "broadcast_perf";
    const REDUCES: bool = false;
    const ROOTED: bool = true;
    const SAME_OUTPUT: bool = true;

    fn layout(&self, count: usize, _n: usize, _es: usize) -> Layout {
        Layout { send: count, recv: count, in_place: count, count, size: count }
    }

    fn bus_factor(&self, _n: usize) -> f64 {
        1.0
    }

    fn run<T: Element>(&self, c: &mut Comm, s: &[T], r: &mut [T], _: ReduceOp, x: CallCtx) -> oxccl::Result<()> {
        c.broadcast(s, r, x.root)
    }

    fn run_in_place<T: Element>(&self, c: &mut Comm, b: &mut [T], _: ReduceOp, x: CallCtx) -> oxccl::Result<()> {
        c.broadcast_in_place(b, x.root)
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        if ctx.rank == ctx.root { vec![Segment::new(0, lay.count, Src::Input(ctx.root), 0)] } else { Vec::new() }
    }

    fn outputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count, Src::Input(ctx.root), 0)]
    }
}

/// `ncclReduce` onto `-r`: busbw factor 1. Only the root's output is checked.
pub struct Reduce;

impl Collective for Reduce {
    const NAME: &'static str = "reduce_perf";
    const REDUCES: bool = true;
    const ROOTED: bool = true;

    fn layout(&self, count: usize, _n: usize, _es: usize) -> Layout {
        Layout { send: count, recv: count, in_place: count, count, size: count }
    }

    fn bus_factor(&self, _n: usize) -> f64 {
        1.0
    }

    fn run<T: Element>(&self, c: &mut Comm, s: &[T], r: &mut [T], op: ReduceOp, x: CallCtx) -> oxccl::Result<()> {
        c.reduce(s, r, op, x.root)
    }

    fn run_in_place<T: Element>(&self, c: &mut Comm, b: &mut [T], op: ReduceOp, x: CallCtx) -> oxccl::Result<()> {
        c.reduce_in_place(b, op, x.root)
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count, Src::Input(ctx.rank), 0)]
    }

    fn outputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        if ctx.rank == ctx.root { vec![Segment::new(0, lay.count, Src::Reduced, 0)] } else { Vec::new() }
    }
}

/// `ncclAlltoAll`: `-b`/`-e` is the size of each rank's whole send (and receive) buffer;
/// busbw factor (n-1)/n. No in-place form (the Rust call takes two slices).
pub struct AllToAll;

impl Collective for AllToAll {
    const NAME: &'static str = "alltoall_perf";
    const REDUCES: bool = false;
    const IN_PLACE: bool = false;

    fn layout(&self, count: usize, n: usize, _es: usize) -> Layout {
        let per = count / n.max(1);
        Layout { send: per * n, recv: per * n, in_place: 0, count: per, size: per * n }
    }

    fn bus_factor(&self, n: usize) -> f64 {
        (n - 1) as f64 / n as f64
    }

    fn run<T: Element>(&self, c: &mut Comm, s: &[T], r: &mut [T], _: ReduceOp, _: CallCtx) -> oxccl::Result<()> {
        c.all_to_all(s, r)
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.send, Src::Input(ctx.rank), 0)]
    }

    /// Block `i` of the output is block `rank` of rank `i`'s input.
    fn outputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        let c = lay.count;
        (0..ctx.nranks).map(|i| Segment::new(i * c, c, Src::Input(i), ctx.rank * c)).collect()
    }
}

/// `ncclSend`/`ncclRecv` in a ring (to rank + 1, from rank - 1, in one group): busbw
/// factor 1. No in-place form (the send and the receive are two slices).
pub struct SendRecv;

impl Collective for SendRecv {
    const NAME: &'static str = "sendrecv_perf";
    const REDUCES: bool = false;
    const IN_PLACE: bool = false;

    fn layout(&self, count: usize, _n: usize, _es: usize) -> Layout {
        Layout { send: count, recv: count, in_place: 0, count, size: count }
    }

    fn bus_factor(&self, _n: usize) -> f64 {
        1.0
    }

    fn run<T: Element>(&self, c: &mut Comm, s: &[T], r: &mut [T], _: ReduceOp, x: CallCtx) -> oxccl::Result<()> {
        let n = x.nranks;
        c.group(|g| {
            g.send(s, (x.rank + 1) % n)?;
            g.recv(r, (x.rank + n - 1) % n)
        })
    }

    fn inputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        vec![Segment::new(0, lay.count, Src::Input(ctx.rank), 0)]
    }

    fn outputs(&self, lay: &Layout, ctx: CallCtx, _in_place: bool) -> Vec<Segment> {
        let from = (ctx.rank + ctx.nranks - 1) % ctx.nranks;
        vec![Segment::new(0, lay.count, Src::Input(from), 0)]
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{CheckResult, OpKind, Tables};
    use super::*;

    #[test]
    fn bus_factors_are_nccl_tests() {
        for n in [2usize, 3, 4, 8] {
            let nf = n as f64;
            assert_eq!(AllReduce.bus_factor(n), 2.0 * (nf - 1.0) / nf);
            assert_eq!(AllGather.bus_factor(n), (nf - 1.0) / nf);
            assert_eq!(ReduceScatter.bus_factor(n), (nf - 1.0) / nf);
            assert_eq!(AllToAll.bus_factor(n), (nf - 1.0) / nf);
            assert_eq!(Broadcast.bus_factor(n), 1.0);
            assert_eq!(Reduce.bus_factor(n), 1.0);
            assert_eq!(SendRecv.bus_factor(n), 1.0);
        }
    }

    #[test]
    fn sizes_are_totals_for_the_gathering_collectives() {
        // 1 MiB of floats over 4 ranks: 64Ki elements per rank, 1 MiB in all.
        let (count, n, es) = ((1 << 20) / 4, 4, 4);
        let ag = AllGather.layout(count, n, es);
        assert_eq!((ag.send, ag.recv, ag.count, ag.size), (count / 4, count, count / 4, count));
        let rs = ReduceScatter.layout(count, n, es);
        assert_eq!((rs.send, rs.recv, rs.count, rs.size), (count, count / 4, count / 4, count));
        let a2a = AllToAll.layout(count, n, es);
        assert_eq!((a2a.send, a2a.recv, a2a.count, a2a.size), (count, count, count / 4, count));
        assert_eq!(AllGather.alg_bytes(&ag, es, n), (1 << 20) as f64);
        let ar = AllReduce.layout(count, n, es);
        assert_eq!((ar.count, ar.size, AllReduce.alg_bytes(&ar, es, n)), (count, count, (1 << 20) as f64));
        // Per-rank blocks of all-gather are whole 16-byte units, as in nccl-tests.
        assert_eq!(AllGather.layout(100, 3, 4).count, 32);
        assert_eq!(AllGather.layout(2, 3, 4).size, 0);
        assert_eq!(AllToAll.layout(100, 3, 4).count, 33);
    }

    /// Every collective's outputs, built from its inputs by a host model of the call,
    /// match what it declares: the segments tell the checker the truth.
    #[test]
    fn declared_outputs_follow_from_inputs() {
        fn model<C: Collective>(c: &C, n: usize, root: usize, in_place: bool) {
            let lay = c.layout(40 * n, n, 4);
            let t = Tables::<i32>::new(if C::REDUCES { OpKind::Sum } else { OpKind::None }, n, 7);
            let ctx = |rank| CallCtx { rank, nranks: n, root };
            let len_in = if in_place { lay.in_place } else { lay.send };
            let ins: Vec<Vec<i32>> = (0..n)
                .map(|r| {
                    let mut b = vec![0i32; len_in];
                    for s in c.inputs(&lay, ctx(r), in_place) {
                        t.fill(&mut b, &s);
                    }
                    b
                })
                .collect();
            let per = lay.count;
            for r in 0..n {
                let out: Vec<i32> = match C::NAME {
                    "all_reduce_perf" => {
                        (0..per).map(|j| ins.iter().map(|b| b[j]).fold(0, i32::wrapping_add)).collect()
                    }
                    "reduce_perf" => (0..per).map(|j| ins.iter().map(|b| b[j]).fold(0, i32::wrapping_add)).collect(),
                    "broadcast_perf" => ins[root].clone(),
                    "all_gather_perf" => {
                        let at = |q: usize| if in_place { q * per } else { 0 };
                        (0..n).flat_map(|q| ins[q][at(q)..at(q) + per].to_vec()).collect()
                    }
                    "reduce_scatter_perf" => {
                        let red = (r * per..(r + 1) * per).map(|j| ins.iter().map(|b| b[j]).fold(0, i32::wrapping_add));
                        let mut o = if in_place { vec![0; lay.in_place] } else { Vec::new() };
                        let at = if in_place { r * per } else { 0 };
                        o.splice(at..at, red);
                        o
                    }
                    "alltoall_perf" => (0..n).flat_map(|q| ins[q][r * per..(r + 1) * per].to_vec()).collect(),
                    "sendrecv_perf" => ins[(r + n - 1) % n].clone(),
                    other => panic!("no model of {other}"),
                };
                let mut res = CheckResult::default();
                for s in c.outputs(&lay, ctx(r), in_place) {
                    t.check(&out, &s, &mut res);
                }
                assert_eq!(res.wrong, 0, "{} rank {r} of {n}, in-place {in_place}: {:?}", C::NAME, res.first);
            }
        }
        fn all<C: Collective>(c: &C) {
            for n in [1, 2, 3, 4] {
                for in_place in [false, true] {
                    if !in_place || C::IN_PLACE {
                        model(c, n, n - 1, in_place);
                    }
                }
            }
        }
        all(&AllReduce);
        all(&Reduce);
        all(&Broadcast);
        all(&AllGather);
        all(&ReduceScatter);
        all(&AllToAll);
        all(&SendRecv);
    }
}
