//! Timing, nccl-tests' TimeTest and BenchTime: one rank's sweep over types, ops, roots and
//! sizes ([`rank_main`], [`run_test`]); for each size, out-of-place then in-place,
//! warm-up calls, a barrier and `iters` timed back-to-back calls, the ranks' times
//! aggregated as `-a` asks, the checks ([`super::check::check_call`]) and the row's
//! figures ([`bench()`]); and, once before the first size, ~20 ms of small all-reduces so
//! the ranks are spread over the cores ([`settle`]).

use std::time::{Duration, Instant};

use oxccl::{Comm, DataType, ReduceOp};

use super::args::Opts;
use super::buffers::Buf;
use super::check::{CallSpec, OpKind, PerfElem, Tables, check_call, with_elem};
use super::collective::{CallCtx, Collective, Layout};
use super::output::{c_g, fail, float_str, out, progress};
use super::ranks::{Fold, Ranks};
use super::report;

/// How long the ranks run small all-reduces once before the first size: enough for the
/// scheduler to have placed the rank threads (or processes) apart, so that the first
/// row is not timed while they still share a core (it came out 3x slower).
pub(super) const SETTLE: Duration = Duration::from_millis(20);

/// The global warm-up: 8-byte all-reduces until some rank has run for [`SETTLE`]. Each
/// call carries whether a rank is done (max over ranks), so all stop after the same one.
pub(super) fn settle(comm: &mut Comm) {
    let start = Instant::now();
    let mut done = [0u64];
    while done[0] == 0 {
        done[0] = u64::from(start.elapsed() >= SETTLE);
        if let Err(e) = comm.all_reduce_in_place(&mut done, ReduceOp::Max) {
            fail(e, "the warm-up before the first size");
        }
    }
}

pub(super) struct Plan<'a, C> {
    pub(super) coll: &'a C,
    pub(super) opts: &'a Opts,
    pub(super) types: Vec<DataType>,
    pub(super) ops: Vec<OpKind>,
    pub(super) roots: Vec<usize>,
    pub(super) sizes: Vec<usize>,
    pub(super) ranks: Ranks,
}

impl<C> Plan<'_, C> {
    /// Rows of the whole run (`None`: `-N 0` runs forever).
    fn rows(&self) -> Option<usize> {
        let per_cycle = self.types.len() * self.ops.len() * self.roots.len() * self.sizes.len();
        (self.opts.cycles > 0).then(|| per_cycle * self.opts.cycles)
    }
}

/// What one rank brings back.
#[derive(Default)]
pub(super) struct RankStats {
    /// Checks that found wrong values on this rank (nccl-tests' "Out of bounds values").
    pub(super) errors: u64,
    /// Sum and number of busbw values (rank 0 only).
    pub(super) bw_sum: f64,
    pub(super) bw_count: u64,
    /// Rows started (rank 0 only), for the progress note.
    pub(super) rows: usize,
}

/// The outcome of a run, the same on every rank.
#[derive(Clone, Copy, Debug)]
pub(super) struct Summary {
    /// Checks that found wrong values, summed over ranks.
    pub(super) errors: u64,
    /// Average busbw (rank 0's).
    pub(super) bw: f64,
}

/// One rank's whole run, whether a thread or a process: every type, op and size; then
/// the totals every rank agrees on.
pub(super) fn rank_main<C: Collective>(
    plan: &Plan<'_, C>,
    mut comm: Comm,
    send_cap: usize,
    recv_cap: usize,
) -> Summary {
    let mut st = RankStats::default();
    let mut send = Buf::new(send_cap);
    let mut recv = Buf::new(recv_cap);
    settle(&mut comm);
    let mut rep = 0u64;
    for &dt in &plan.types {
        for &op in &plan.ops {
            for &root in &plan.roots {
                with_elem!(dt, T => run_test::<C, T>(
                    plan, &mut comm, &mut send, &mut recv, op, root, &mut rep, &mut st
                ));
            }
        }
    }
    // Every rank ends with the totals, so that every process of a job exits alike.
    let mut errors = [st.errors];
    plan.ranks.fold_u64(&mut comm, &mut errors, Fold::Sum, &|| "error counts".into());
    let bw = if st.bw_count > 0 { st.bw_sum / st.bw_count as f64 } else { 0.0 };
    let bw = plan.ranks.fold_f64(&mut comm, bw, Fold::Rank0, &|| "bandwidths".into());
    Summary { errors: errors[0], bw }
}

/// nccl-tests' TimeTest: every size of one type, op and root.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_test<C: Collective, T: PerfElem>(
    plan: &Plan<'_, C>,
    comm: &mut Comm,
    send: &mut Buf,
    recv: &mut Buf,
    op: OpKind,
    root: usize,
    rep: &mut u64,
    st: &mut RankStats,
) {
    let (opts, coll) = (plan.opts, plan.coll);
    let (rank, n) = (comm.rank(), comm.size());
    let ctx = CallCtx { rank, nranks: n, root };
    let es = std::mem::size_of::<T>();
    let u = opts.unalign;
    let rop = op.reduce_op::<T>();

    // Realistic data for the timed calls (the checks refill what they use).
    let t0 = Tables::<T>::new(op, n, 0);
    let max_lay = coll.layout(opts.max_bytes / es, n, es);
    for seg in coll.inputs(&max_lay, ctx, false) {
        t0.fill(send.view_mut::<T>(u, max_lay.send), &seg);
    }

    let mut cycle = 0;
    loop {
        for &bytes in &plan.sizes {
            let lay = coll.layout(bytes / es, n, es);
            let root_col = if C::ROOTED { root as i64 } else { -1 };
            if rank == 0 {
                out(&format!(
                    "{:>12}  {:>12}  {:>8}  {:>6}  {:>6}",
                    lay.size * es,
                    lay.count,
                    T::DTYPE.name(),
                    op.name(),
                    root_col
                ));
                report::start_row(report::Row {
                    size: lay.size * es,
                    count: lay.count,
                    dtype: T::DTYPE.name(),
                    op: op.name(),
                    root: root_col,
                    out_of_place: None,
                    in_place: None,
                });
                st.rows += 1;
            }
            for in_place in [false, true] {
                if in_place && !C::IN_PLACE {
                    if rank == 0 {
                        out(&format!("  {:>7}  {:>6}  {:>6}  {:>6}", "N/A", "N/A", "N/A", "N/A"));
                    }
                    continue;
                }
                if rank == 0 {
                    let total = plan.rows().map_or("?".to_string(), |t| t.to_string());
                    let half = if in_place { "in-place" } else { "out-of-place" };
                    progress(&format!("  [row {}/{total}, {half}]", st.rows));
                }
                bench::<C, T>(plan, comm, send, recv, &lay, ctx, op, rop, in_place, rep, st);
            }
            if rank == 0 {
                out("\n");
            }
        }
        cycle += 1;
        if opts.cycles != 0 && cycle >= opts.cycles {
            break;
        }
    }
}

/// nccl-tests' BenchTime: time one size, then check it.
#[allow(clippy::too_many_arguments)]
pub(super) fn bench<C: Collective, T: PerfElem>(
    plan: &Plan<'_, C>,
    comm: &mut Comm,
    send: &mut Buf,
    recv: &mut Buf,
    lay: &Layout,
    ctx: CallCtx,
    op: OpKind,
    rop: ReduceOp,
    in_place: bool,
    rep: &mut u64,
    st: &mut RankStats,
) {
    let (opts, coll) = (plan.opts, plan.coll);
    let (rank, n) = (ctx.rank, ctx.nranks);
    let es = std::mem::size_of::<T>();
    let u = opts.unalign;
    let what = || {
        format!(
            "{} {} {} of {} bytes, {}, rank {rank}",
            C::NAME,
            T::DTYPE.name(),
            op.name(),
            lay.size * es,
            if in_place { "in-place" } else { "out-of-place" }
        )
    };
    let call = |comm: &mut Comm, send: &Buf, recv: &mut Buf| {
        let r = if in_place {
            coll.run_in_place(comm, recv.view_mut::<T>(u, lay.in_place), rop, ctx)
        } else {
            coll.run(comm, send.view::<T>(u, lay.send), recv.view_mut::<T>(u, lay.recv), rop, ctx)
        };
        if let Err(e) = r {
            fail(e, &what());
        }
    };

    // Timing.
    for _ in 0..opts.warmup {
        call(comm, send, recv);
    }
    if let Err(e) = comm.barrier() {
        fail(e, &format!("the barrier before timing {}", what()));
    }
    let start = Instant::now();
    for _ in 0..opts.iters {
        call(comm, send, recv);
        if opts.blocking != 0
            && let Err(e) = comm.barrier()
        {
            fail(e, &format!("the barrier after {}", what()));
        }
    }
    let sec = start.elapsed().as_secs_f64() / opts.iters as f64;
    let how = Fold::of_average(opts.average);
    let mut sec = plan.ranks.fold_f64(comm, sec, how, &|| format!("times of {}", what()));
    if how == Fold::Sum {
        sec /= n as f64;
    }
    let algbw = coll.alg_bytes(lay, es, n) / 1e9 / sec;
    let busbw = algbw * coll.bus_factor(n);

    // Checks.
    let spec = CallSpec { coll, lay, ctx, op, in_place, unalign: u, what: &what };
    let (wrong_total, found) = check_call::<C, T>(&spec, &plan.ranks, opts.check, comm, send, recv, rep, &call);
    if found {
        st.errors += 1;
    }

    if rank == 0 {
        // nccl-tests: "%6g" after two spaces, or "    N/A" (one column narrower).
        let wrong = if opts.check > 0 { format!("  {:>6}", c_g(wrong_total as f64)) } else { "    N/A".to_string() };
        out(&format!(
            "  {:>7}  {:>6}  {:>6}{wrong}",
            float_str(sec * 1e6, 7),
            float_str(algbw, 6),
            float_str(busbw, 6)
        ));
        st.bw_sum += busbw;
        st.bw_count += 1;
        let wrong = (opts.check > 0).then_some(wrong_total);
        report::set_meas(in_place, report::Meas { time_us: sec * 1e6, algbw, busbw, wrong });
    }
}
