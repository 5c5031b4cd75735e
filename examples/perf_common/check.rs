//! Checking results: the reductions (`-o`) and element types (`-d`) with a host
//! reference of each ([`OpKind`], [`PerfElem`], [`with_elem!`]), the data every rank
//! sends (periodic [`Tables`] whose reduction is exact in any order), the comparison of
//! an output with what its [`Segment`]s declare ([`CheckResult`]), and the `-c` checks of
//! one measured call, summed over the ranks ([`check_call`]).
//!
//! Data are periodic with a prime period ([`PERIOD`]), so filling and checking are copies
//! and comparisons of short tables (memory speed), and a block landing at the wrong offset
//! (a multiple of a power of two) is still caught.

use std::borrow::Cow;
use std::sync::OnceLock;

use half::{bf16, f16};
use oxccl::{Element, F8E4M3, F8E5M2, ReduceOp};

use oxccl::Comm;

use super::buffers::{Buf, GUARD_ELEMS, POISON, as_bytes};
use super::collective::{CallCtx, Collective, Layout, Segment, Src};
use super::output::err;
use super::ranks::{Fold, Ranks};

/// Period of the data patterns, in elements: prime, so that it divides no chunk size.
pub const PERIOD: usize = 1021;

/// A reduction as the command line names it (`-o`), or none for data movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `sum`.
    Sum,
    /// `prod`.
    Prod,
    /// `max`.
    Max,
    /// `min`.
    Min,
    /// `avg`.
    Avg,
    /// `mulsum`: PreMulSum with the scalar [`MULSUM_SCALAR`] in the call's type.
    MulSum,
    /// No reduction (broadcast, all-gather, ...).
    None,
}

/// The PreMulSum scalar: 2 keeps every product exact in every type (also integers).
pub const MULSUM_SCALAR: i64 = 2;

impl OpKind {
    /// Every reduction, in nccl-tests' order (what `-o all` runs).
    pub const ALL: [OpKind; 6] = [OpKind::Sum, OpKind::Prod, OpKind::Max, OpKind::Min, OpKind::Avg, OpKind::MulSum];

    /// nccl-tests' name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Sum => "sum",
            OpKind::Prod => "prod",
            OpKind::Max => "max",
            OpKind::Min => "min",
            OpKind::Avg => "avg",
            OpKind::MulSum => "mulsum",
            OpKind::None => "none",
        }
    }

    pub(super) fn parse(s: &str) -> Option<OpKind> {
        OpKind::ALL.iter().copied().find(|o| o.name() == s)
    }

    /// The oxccl op for element type `T`.
    pub fn reduce_op<T: PerfElem>(self) -> ReduceOp {
        match self {
            OpKind::Sum | OpKind::None => ReduceOp::Sum,
            OpKind::Prod => ReduceOp::Prod,
            OpKind::Max => ReduceOp::Max,
            OpKind::Min => ReduceOp::Min,
            OpKind::Avg => ReduceOp::Avg,
            OpKind::MulSum => ReduceOp::pre_mul_sum(T::from_i64(MULSUM_SCALAR)),
        }
    }
}

/// An element type with what the checker needs: exact conversions of small integers and
/// a host reference of each reduction.
pub trait PerfElem: Element {
    /// Integer type (arithmetic wraps).
    const IS_INT: bool;
    /// Floats: every integer in `[-MAX_EXACT, MAX_EXACT]` is exactly representable.
    const MAX_EXACT: i64;
    /// Floats: 2^MAX_POW2 is finite.
    const MAX_POW2: u32;
    /// `v` as this type: wrapping for integers, exact for floats (|v| <= MAX_EXACT).
    fn from_i64(v: i64) -> Self;
    /// The reduction of `vals` (one per rank) as oxccl defines it: wrapping integer
    /// arithmetic; for floats, exact inputs folded in f64, Avg divided once at the end
    /// (in f32 for f32 and narrower, then rounded to the type).
    fn reduce_ref(op: OpKind, vals: &[Self]) -> Self;
    /// Equal values (for floats: numerically, so -0 == +0; NaN equals NaN).
    fn same(a: Self, b: Self) -> bool;
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl PerfElem for $t {
            const IS_INT: bool = true;
            const MAX_EXACT: i64 = i64::MAX;
            const MAX_POW2: u32 = 63;
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn reduce_ref(op: OpKind, vals: &[Self]) -> Self {
                let it = vals.iter().copied();
                match op {
                    OpKind::Sum => it.fold(0, |a: $t, b| a.wrapping_add(b)),
                    OpKind::Prod => it.fold(1, |a: $t, b| a.wrapping_mul(b)),
                    OpKind::Max => it.max().unwrap_or_default(),
                    OpKind::Min => it.min().unwrap_or_default(),
                    OpKind::Avg => {
                        let s = it.fold(0, |a: $t, b| a.wrapping_add(b));
                        ((s as i128) / (vals.len() as i128)) as $t
                    }
                    OpKind::MulSum => it.fold(0, |a: $t, b| {
                        a.wrapping_add(b.wrapping_mul(MULSUM_SCALAR as $t))
                    }),
                    OpKind::None => vals[0],
                }
            }
            fn same(a: Self, b: Self) -> bool {
                a == b
            }
        }
    )*};
}
int_elem!(i8, u8, i32, u32, i64, u64);

macro_rules! float_elem {
    ($t:ty, exact: $m:expr, pow2: $p:expr, to: $to:expr, from: $from:expr, avg: $avg:expr) => {
        impl PerfElem for $t {
            const IS_INT: bool = false;
            const MAX_EXACT: i64 = $m;
            const MAX_POW2: u32 = $p;
            fn from_i64(v: i64) -> Self {
                $from(v as f64)
            }
            fn reduce_ref(op: OpKind, vals: &[Self]) -> Self {
                let to: fn($t) -> f64 = $to;
                let it = vals.iter().map(|&v| to(v));
                let r = match op {
                    OpKind::Sum => it.sum(),
                    OpKind::Prod => it.product(),
                    OpKind::Max => it.fold(f64::NEG_INFINITY, f64::max),
                    OpKind::Min => it.fold(f64::INFINITY, f64::min),
                    OpKind::Avg => {
                        let avg: fn(f64, usize) -> $t = $avg;
                        return avg(it.sum(), vals.len());
                    }
                    OpKind::MulSum => it.map(|v| v * MULSUM_SCALAR as f64).sum(),
                    OpKind::None => return vals[0],
                };
                $from(r)
            }
            fn same(a: Self, b: Self) -> bool {
                let to: fn($t) -> f64 = $to;
                let (x, y) = (to(a), to(b));
                x == y || (x.is_nan() && y.is_nan())
            }
        }
    };
}
float_elem!(f64, exact: 1 << 53, pow2: 1023, to: |v| v, from: |x| x,
    avg: |s, n| s / n as f64);
float_elem!(f32, exact: 1 << 24, pow2: 127, to: |v| v as f64, from: |x| x as f32,
    avg: |s, n| s as f32 / n as f32);
float_elem!(f16, exact: 2048, pow2: 15, to: |v| v.to_f64(), from: f16::from_f64,
    avg: |s, n| f16::from_f32(s as f32 / n as f32));
float_elem!(bf16, exact: 256, pow2: 127, to: |v| v.to_f64(), from: bf16::from_f64,
    avg: |s, n| bf16::from_f32(s as f32 / n as f32));
float_elem!(F8E4M3, exact: 16, pow2: 8, to: |v| v.to_f32() as f64,
    from: |x| F8E4M3::from_f32(x as f32), avg: |s, n| F8E4M3::from_f32(s as f32 / n as f32));
float_elem!(F8E5M2, exact: 8, pow2: 15, to: |v| v.to_f32() as f64,
    from: |x| F8E5M2::from_f32(x as f32), avg: |s, n| F8E5M2::from_f32(s as f32 / n as f32));

/// Runs `$body` with `$T` bound to the Rust type of the runtime `DataType` `$dt`.
macro_rules! with_elem {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            oxccl::DataType::Int8 => {
                type $T = i8;
                $body
            }
            oxccl::DataType::Uint8 => {
                type $T = u8;
                $body
            }
            oxccl::DataType::Int32 => {
                type $T = i32;
                $body
            }
            oxccl::DataType::Uint32 => {
                type $T = u32;
                $body
            }
            oxccl::DataType::Int64 => {
                type $T = i64;
                $body
            }
            oxccl::DataType::Uint64 => {
                type $T = u64;
                $body
            }
            oxccl::DataType::Float16 => {
                type $T = half::f16;
                $body
            }
            oxccl::DataType::Float32 => {
                type $T = f32;
                $body
            }
            oxccl::DataType::Float64 => {
                type $T = f64;
                $body
            }
            oxccl::DataType::Bfloat16 => {
                type $T = half::bf16;
                $body
            }
            oxccl::DataType::Float8E4M3 => {
                type $T = oxccl::F8E4M3;
                $body
            }
            oxccl::DataType::Float8E5M2 => {
                type $T = oxccl::F8E5M2;
                $body
            }
        }
    };
}
pub(super) use with_elem;

pub(super) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The input of `rank` at pattern index `j`, as a small integer (for floats) or raw bits
/// (for integers, which wrap). For floats the values keep every partial result exact:
/// - sum, avg, mulsum: at most `k` ranks (those with `(rank + j) % n < k`) contribute a
///   nonzero value, each of magnitude <= `a`, with `k * a * scalar <= MAX_EXACT`;
/// - prod: values in {1, 2, -1, -2}, at most `MAX_POW2` factors of 2 per element;
/// - max, min, none: any exact integer.
pub(super) fn gen_value<T: PerfElem>(op: OpKind, rank: usize, n: usize, j: usize, seed: u64) -> i64 {
    let h = splitmix64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ ((rank as u64) << 32) ^ j as u64);
    if T::IS_INT {
        return h as i64;
    }
    let m = T::MAX_EXACT;
    let active = |k: usize| (rank + j) % n < k;
    let uniform = |a: i64| (h % (2 * a as u64 + 1)) as i64 - a;
    match op {
        OpKind::Sum | OpKind::Avg | OpKind::MulSum => {
            let s = if op == OpKind::MulSum { MULSUM_SCALAR } else { 1 };
            let k = (n as i64).min(m / s).max(1);
            let a = (m / (s * k)).max(1);
            if active(k as usize) { uniform(a) } else { 0 }
        }
        OpKind::Prod => {
            let k = n.min(T::MAX_POW2 as usize);
            let mag = if active(k) && h & 1 == 1 { 2 } else { 1 };
            if h & 2 != 0 { -mag } else { mag }
        }
        OpKind::Max | OpKind::Min | OpKind::None => uniform(m.min(1 << 53)),
    }
}

/// One period of every rank's input, and of their reduction, each generated when first
/// asked for: a rank of a large job holds only the periods it reads, and a check of a few
/// elements reduces those elements only, not a whole period over every rank.
pub struct Tables<T> {
    op: OpKind,
    n: usize,
    seed: u64,
    inputs: Vec<OnceLock<Vec<T>>>,
    reduced: OnceLock<Vec<T>>,
}

impl<T: PerfElem> Tables<T> {
    /// The tables of check number `seed` for `op` over `n` ranks.
    pub fn new(op: OpKind, n: usize, seed: u64) -> Tables<T> {
        Tables { op, n, seed, inputs: (0..n).map(|_| OnceLock::new()).collect(), reduced: OnceLock::new() }
    }

    fn value(&self, r: usize, j: usize) -> T {
        T::from_i64(gen_value::<T>(self.op, r, self.n, j, self.seed))
    }

    /// Element `j` of the period of the reduction.
    fn reduce_at(&self, j: usize, vals: &mut Vec<T>) -> T {
        vals.clear();
        vals.extend((0..self.n).map(|r| self.value(r, j)));
        T::reduce_ref(self.op, vals)
    }

    /// What `seg` holds, from the period's start: the whole period, or, for a reduction
    /// shorter than a period, just its elements.
    fn values(&self, seg: &Segment) -> (Cow<'_, [T]>, usize) {
        let pos = seg.phase % PERIOD;
        match seg.src {
            Src::Input(r) => {
                let t = self.inputs[r].get_or_init(|| (0..PERIOD).map(|j| self.value(r, j)).collect());
                (Cow::Borrowed(t), pos)
            }
            Src::Reduced if seg.len < PERIOD && self.reduced.get().is_none() => {
                let mut vals = Vec::with_capacity(self.n);
                (Cow::Owned((0..seg.len).map(|i| self.reduce_at((pos + i) % PERIOD, &mut vals)).collect()), 0)
            }
            Src::Reduced => {
                let t = self.reduced.get_or_init(|| {
                    let mut vals = Vec::with_capacity(self.n);
                    (0..PERIOD).map(|j| self.reduce_at(j, &mut vals)).collect()
                });
                (Cow::Borrowed(t), pos)
            }
        }
    }

    /// Writes `seg` into `buf`.
    pub fn fill(&self, buf: &mut [T], seg: &Segment) {
        let (t, mut pos) = self.values(seg);
        let out = &mut buf[seg.at..seg.at + seg.len];
        let mut i = 0;
        while i < out.len() {
            let take = (t.len() - pos).min(out.len() - i);
            out[i..i + take].copy_from_slice(&t[pos..pos + take]);
            i += take;
            pos = 0;
        }
    }

    /// Compares `buf` with `seg`: fast bytewise per period, element by element where a
    /// period differs.
    pub fn check(&self, buf: &[T], seg: &Segment, res: &mut CheckResult) {
        let (t, mut pos) = self.values(seg);
        let got = &buf[seg.at..seg.at + seg.len];
        let mut i = 0;
        while i < got.len() {
            let take = (t.len() - pos).min(got.len() - i);
            let (g, w) = (&got[i..i + take], &t[pos..pos + take]);
            if as_bytes(g) != as_bytes(w) {
                for (k, (&a, &b)) in g.iter().zip(w).enumerate() {
                    if as_bytes(&[a]) == as_bytes(&[b]) {
                        continue;
                    }
                    if T::same(a, b) {
                        res.inexact += 1;
                    } else {
                        if res.wrong == 0 {
                            res.first = Some(format!("element {}: got {:?}, expected {:?}", seg.at + i + k, a, b));
                        }
                        res.wrong += 1;
                    }
                }
            }
            i += take;
            pos = 0;
        }
    }
}

/// What a check found on one rank.
#[derive(Default, Debug)]
pub struct CheckResult {
    /// Elements with a wrong value.
    pub wrong: u64,
    /// Elements with the right value but other bits (-0 for +0, another NaN).
    pub inexact: u64,
    /// The first wrong element, described.
    pub first: Option<String>,
}

pub(super) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x100_0000_01b3);
        h ^= h >> 29;
    }
    for &x in chunks.remainder() {
        h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// One measured call, as its checks see it.
pub(super) struct CallSpec<'a, C> {
    /// The collective.
    pub(super) coll: &'a C,
    /// Its buffers' sizes.
    pub(super) lay: &'a Layout,
    /// This rank, the ranks, the root.
    pub(super) ctx: CallCtx,
    /// The reduction (or none).
    pub(super) op: OpKind,
    /// The in-place form rather than out-of-place.
    pub(super) in_place: bool,
    /// `-u`: elements by which the buffers are misaligned.
    pub(super) unalign: usize,
    /// The call, described for messages.
    pub(super) what: &'a dyn Fn() -> String,
}

/// `-c`: up to `checks` checks of one measured call, each with fresh inputs (check number
/// `*rep`): poison the output and the guard after it, write the inputs, make the call
/// (`call`), compare this rank's output with what the collective declares, its guard with
/// the poison and (out-of-place) its input with what was written; then the counts over all
/// ranks, and, when some rank's output is right in value but not in bits, the ranks'
/// outputs with each other. Stops at the first check that finds wrong values anywhere.
/// Returns the wrong elements over all ranks (of the last check) and whether this rank
/// found some.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_call<C: Collective, T: PerfElem>(
    spec: &CallSpec<'_, C>,
    ranks: &Ranks,
    checks: usize,
    comm: &mut Comm,
    send: &mut Buf,
    recv: &mut Buf,
    rep: &mut u64,
    call: &dyn Fn(&mut Comm, &Buf, &mut Buf),
) -> (u64, bool) {
    let CallSpec { coll, lay, ctx, op, in_place, unalign: u, what } = *spec;
    let n = ctx.nranks;
    let es = std::mem::size_of::<T>();
    let mut found = false;
    let mut wrong_total = 0u64;
    for _ in 0..checks {
        *rep += 1;
        let tables = Tables::<T>::new(op, n, *rep);
        let ins = coll.inputs(lay, ctx, in_place);
        let outs = coll.outputs(lay, ctx, in_place);
        let len = if in_place { lay.in_place } else { lay.recv };
        let guard = GUARD_ELEMS.min(recv.cap::<T>() - u - len);
        // Poison the output (and the guard after it), then write the inputs.
        recv.view_mut::<u8>(u * es, (len + guard) * es).fill(POISON);
        if in_place {
            let b = recv.view_mut::<T>(u, len);
            for s in &ins {
                tables.fill(b, s);
            }
        } else {
            let b = send.view_mut::<T>(u, lay.send);
            for s in &ins {
                tables.fill(b, s);
            }
        }
        call(comm, send, recv);

        let mut res = CheckResult::default();
        let got = recv.view::<T>(u, len + guard);
        for s in &outs {
            tables.check(got, s, &mut res);
        }
        let g = as_bytes(&got[len..]);
        let oob = g.chunks(es).filter(|e| e.iter().any(|&b| b != POISON)).count() as u64;
        if oob > 0 {
            err(&format!("{}: {oob} elements written past the end of the output", what()));
            res.wrong += oob;
        }
        if !in_place {
            let mut r2 = CheckResult::default();
            let sb = send.view::<T>(u, lay.send);
            for s in &ins {
                tables.check(sb, s, &mut r2);
            }
            if r2.wrong > 0 {
                err(&format!("{}: the input was modified ({} elements)", what(), r2.wrong));
                res.wrong += r2.wrong;
            }
        }
        if let Some(first) = &res.first {
            err(&format!("{}: {} wrong elements; first: {first}", what(), res.wrong));
        }

        // Over the ranks: wrong values, and values right but for their bits.
        let mut sums = [res.wrong, res.inexact];
        ranks.fold_u64(comm, &mut sums, Fold::Sum, &|| format!("check results of {}", what()));
        let [mut wrong, inexact] = sums;
        // Outputs equal to the reference bit for bit are equal across ranks too; only
        // when some rank differs in bits but not in value (-0, NaN payloads) compare the
        // ranks' outputs with each other, by a hash of each.
        if C::SAME_OUTPUT && inexact > 0 {
            let hsh = hash_bytes(as_bytes(&got[..len]));
            let mut h0 = [hsh];
            ranks.fold_u64(comm, &mut h0, Fold::Rank0, &|| format!("output hashes of {}", what()));
            let mine = if hsh != h0[0] {
                err(&format!(
                    "{}: output differs in its bits from rank 0's ({} elements differ from the reference)",
                    what(),
                    res.inexact
                ));
                res.inexact.max(1)
            } else {
                0
            };
            res.wrong += mine;
            let mut m = [mine];
            ranks.fold_u64(comm, &mut m, Fold::Sum, &|| format!("output comparisons of {}", what()));
            wrong += m[0];
        }
        if res.wrong > 0 {
            found = true;
        }
        wrong_total = wrong;
        if wrong > 0 {
            break;
        }
    }

    (wrong_total, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short reduction computed element by element is the same as the whole period,
    /// across the period's end too.
    #[test]
    fn short_reductions_match_the_whole_period() {
        for op in [OpKind::Sum, OpKind::Prod, OpKind::Max] {
            let short = Tables::<f32>::new(op, 5, 3);
            let whole = Tables::<f32>::new(op, 5, 3);
            let mut full = vec![0f32; 2 * PERIOD];
            whole.fill(&mut full, &Segment::new(0, 2 * PERIOD, Src::Reduced, 0));
            for phase in [0, 17, PERIOD - 3] {
                let mut got = vec![0f32; 7];
                short.fill(&mut got, &Segment::new(0, 7, Src::Reduced, phase));
                assert_eq!(got, full[phase..phase + 7], "{op:?} at phase {phase}");
                let mut res = CheckResult::default();
                whole.check(&got, &Segment::new(0, 7, Src::Reduced, phase), &mut res);
                assert_eq!(res.wrong, 0);
                got[3] += 1.0;
                short.check(&got, &Segment::new(0, 7, Src::Reduced, phase), &mut res);
                assert_eq!(res.wrong, 1, "a changed element is caught");
            }
        }
    }
}
