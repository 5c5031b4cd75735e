//! Shared harness of the `*_perf` examples: nccl-tests-compatible benchmarks of oxccl.
//!
//! A benchmark is a type implementing [`Collective`]: its buffer sizes for a count, its
//! bus-bandwidth factor, how to run it out-of-place and in-place, and where its inputs go
//! and what its outputs must hold (as [`Segment`]s of periodic tables). [`main`] does the
//! rest, with nccl-tests' flags, output format and exit codes:
//!
//! - flags `-b -e -i -f -n -w -c -o -d -r -z -a -t -T -u -N -J -h` (and their long
//!   forms), and `--plot`/`--plot-peer` (busbw as an SVG picture, [`plot`]); `-r all`
//!   (or `-1`) runs every root in turn; `-z 1` adds a timed barrier after each call
//!   (oxccl's calls block until this rank is done, so that is all nccl-tests' blocking
//!   mode adds); the `perf_plot` example draws several `-J` files into one picture;
//! - the collectives are in [`collectives`], with nccl-tests' size conventions and bus
//!   factors; each `*_perf` example only picks one;
//! - ranks are threads of this process (`-t N`, [`oxccl::Comm::init_all`]), or, under a
//!   launcher (`oxccl-run`, mpirun, srun, torchrun: see [`job_from_env`]), each process
//!   is one rank ([`oxccl::Comm::from_env_with`]) and `-t` must be 1. Only the start
//!   ([`run_threads`], [`run_process`]) and how ranks combine their results ([`Ranks`])
//!   differ; every rank runs the same [`rank_main`];
//! - once, before the first size, ~20 ms of small all-reduces ([`settle`]); then per
//!   size: warm-up, a barrier, `iters` timed back-to-back calls; every rank times itself
//!   and `-a` aggregates (rank 0, average, min, max), out-of-place then in-place;
//! - `-c N`: N checks per measurement, with inputs whose reduction is exact in any order,
//!   compared element by element with a host reference; `#wrong` is summed over ranks;
//! - only rank 0 writes to standard output, and the `-J` and `--plot` files
//!   ([`report`]); each row is written whole as soon as measured, so a file or a pipe
//!   gets nccl-tests' bytes whatever the launcher; a progress note (`[row 3/40,
//!   in-place]`) shows while a row runs only where a person watches (a terminal, no
//!   launcher: [`shows_progress`]) or with `--progress 1`; with ranks as processes,
//!   every line on standard error starts with `rank R: `;
//! - exit status 0 when every value is right, 1 on wrong values or an oxccl error, 2 on a
//!   bad command line; with ranks as processes, every rank exits with the same status
//!   when the run completes (wrong values on any rank fail them all).
//!
//! Data are periodic with a prime period ([`PERIOD`]), so filling and checking are copies
//! and comparisons of short tables (memory speed), and a block landing at the wrong offset
//! (a multiple of a power of two) is still caught.

#![allow(dead_code)] // Each example uses a different part of the harness.

pub mod collectives;
pub mod plot;
pub mod report;

use std::alloc::{self, Layout as AllocLayout};
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use half::{bf16, f16};
use oxccl::{Comm, Config, DataType, Element, F8E4M3, F8E5M2, ReduceOp};

/// Period of the data patterns, in elements: prime, so that it divides no chunk size.
pub const PERIOD: usize = 1021;

/// Elements after each output checked to be left alone (out-of-bounds writes).
const GUARD_ELEMS: usize = 64;

/// Byte written into outputs before a check run, so a missing write shows.
const POISON: u8 = 0xff;

// ---------------------------------------------------------------------------------------
// What a collective must describe.

/// Buffer sizes of one call, in elements.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Elements of the send buffer (out-of-place).
    pub send: usize,
    /// Elements of the receive buffer (out-of-place).
    pub recv: usize,
    /// Elements of the single buffer of the in-place call.
    pub in_place: usize,
    /// The `count` column (nccl-tests' "param count").
    pub count: usize,
    /// The `size` column in elements (nccl-tests prints max(send, recv) bytes).
    pub size: usize,
}

/// Where one part of a buffer's content comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// Rank `r`'s input pattern.
    Input(usize),
    /// The reduction, over all ranks, of the input patterns.
    Reduced,
}

/// `len` elements at element offset `at` of a buffer hold the pattern `src`, starting
/// at pattern index `phase` (the index the data had in the sender's input).
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Offset in the buffer, in elements.
    pub at: usize,
    /// Length in elements.
    pub len: usize,
    /// Which pattern.
    pub src: Src,
    /// Index of the first element in the pattern's (infinite, periodic) sequence.
    pub phase: usize,
}

impl Segment {
    /// `len` elements at `at` holding `src` from index `phase`.
    pub fn new(at: usize, len: usize, src: Src, phase: usize) -> Segment {
        Segment { at, len, src, phase }
    }
}

/// Everything a call needs to know besides the buffers.
#[derive(Clone, Copy, Debug)]
pub struct CallCtx {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub nranks: usize,
    /// The root (`-r`), for rooted collectives.
    pub root: usize,
}

/// One collective, as a benchmark sees it. Each `*_perf` example implements this.
pub trait Collective: Sync {
    /// Program name, printed in the header and footer (`all_reduce_perf`).
    const NAME: &'static str;
    /// Whether `-o` applies (reductions); otherwise the op column says `none`.
    const REDUCES: bool;
    /// Whether `-r` applies; otherwise the root column says `-1`.
    const ROOTED: bool = false;
    /// Ranks (threads) when `-t` is not given.
    const DEFAULT_RANKS: usize = 2;
    /// Whether every rank ends with the same output (then their outputs are also
    /// compared with each other, bit for bit).
    const SAME_OUTPUT: bool = false;
    /// Whether the collective has an in-place form. Without one (all-to-all and
    /// send/receive, whose Rust calls take two distinct slices) the in-place columns say
    /// `N/A` and [`Collective::run_in_place`] is never called.
    const IN_PLACE: bool = true;

    /// Buffer sizes for `count` = size in bytes / element size (rounding down as the
    /// collective needs, e.g. to a multiple of the number of ranks), for elements of
    /// `elem_size` bytes.
    fn layout(&self, count: usize, nranks: usize, elem_size: usize) -> Layout;

    /// Bytes behind algbw: algbw = alg_bytes / time (nccl-tests' `getBw`). Default: the
    /// size column (the total for all-gather, reduce-scatter and all-to-all).
    fn alg_bytes(&self, lay: &Layout, elem_size: usize, _nranks: usize) -> f64 {
        (lay.size * elem_size) as f64
    }

    /// busbw = algbw x this factor (nccl-tests' definition).
    fn bus_factor(&self, nranks: usize) -> f64;

    /// One out-of-place call.
    fn run<T: Element>(
        &self,
        comm: &mut Comm,
        send: &[T],
        recv: &mut [T],
        op: ReduceOp,
        ctx: CallCtx,
    ) -> oxccl::Result<()>;

    /// One in-place call on `buf` (`layout().in_place` elements). Only called when
    /// [`Collective::IN_PLACE`]; the default (for the others) is never reached.
    fn run_in_place<T: Element>(
        &self,
        _comm: &mut Comm,
        _buf: &mut [T],
        _op: ReduceOp,
        _ctx: CallCtx,
    ) -> oxccl::Result<()> {
        unreachable!("{} has no in-place form", Self::NAME)
    }

    /// This rank's input: segments of the send buffer (out-of-place) or of the in-place
    /// buffer.
    fn inputs(&self, lay: &Layout, ctx: CallCtx, in_place: bool) -> Vec<Segment>;

    /// What this rank's output must hold: segments of the receive buffer (out-of-place)
    /// or of the in-place buffer. Parts not covered are not checked (but the elements
    /// just past the buffer are: nothing may be written there).
    fn outputs(&self, lay: &Layout, ctx: CallCtx, in_place: bool) -> Vec<Segment>;
}

// ---------------------------------------------------------------------------------------
// Ops and element types.

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

    fn parse(s: &str) -> Option<OpKind> {
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

// ---------------------------------------------------------------------------------------
// Data: periodic tables whose reduction is exact in any order.

fn splitmix64(mut x: u64) -> u64 {
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
fn gen_value<T: PerfElem>(op: OpKind, rank: usize, n: usize, j: usize, seed: u64) -> i64 {
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

/// One period of every rank's input, and of their reduction.
pub struct Tables<T> {
    inputs: Vec<Vec<T>>,
    reduced: Vec<T>,
}

impl<T: PerfElem> Tables<T> {
    /// The tables of check number `seed` for `op` over `n` ranks.
    pub fn new(op: OpKind, n: usize, seed: u64) -> Tables<T> {
        let inputs: Vec<Vec<T>> =
            (0..n).map(|r| (0..PERIOD).map(|j| T::from_i64(gen_value::<T>(op, r, n, j, seed))).collect()).collect();
        let reduced = if op == OpKind::None {
            Vec::new()
        } else {
            let mut vals = Vec::with_capacity(n);
            (0..PERIOD)
                .map(|j| {
                    vals.clear();
                    vals.extend(inputs.iter().map(|t| t[j]));
                    T::reduce_ref(op, &vals)
                })
                .collect()
        };
        Tables { inputs, reduced }
    }

    fn table(&self, src: Src) -> &[T] {
        match src {
            Src::Input(r) => &self.inputs[r],
            Src::Reduced => &self.reduced,
        }
    }

    /// Writes `seg` into `buf`.
    pub fn fill(&self, buf: &mut [T], seg: &Segment) {
        let t = self.table(seg.src);
        let out = &mut buf[seg.at..seg.at + seg.len];
        let mut pos = seg.phase % PERIOD;
        let mut i = 0;
        while i < out.len() {
            let take = (PERIOD - pos).min(out.len() - i);
            out[i..i + take].copy_from_slice(&t[pos..pos + take]);
            i += take;
            pos = 0;
        }
    }

    /// Compares `buf` with `seg`: fast bytewise per period, element by element where a
    /// period differs.
    pub fn check(&self, buf: &[T], seg: &Segment, res: &mut CheckResult) {
        let t = self.table(seg.src);
        let got = &buf[seg.at..seg.at + seg.len];
        let mut pos = seg.phase % PERIOD;
        let mut i = 0;
        while i < got.len() {
            let take = (PERIOD - pos).min(got.len() - i);
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

/// The bytes of a slice of elements.
pub fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: `Element` is sealed to plain-old-data types (integers, floats, fp8 bytes)
    // with no padding, so every byte of the slice is initialized; the length in bytes is
    // exactly the slice's size.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

fn hash_bytes(b: &[u8]) -> u64 {
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

// ---------------------------------------------------------------------------------------
// Buffers: allocated once at the largest size, page-aligned and touched up front.

/// A page-aligned byte buffer viewed as elements of any type.
pub struct Buf {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: Buf owns its allocation exclusively (like a Vec<u8>); it is moved to and used
// by one rank thread.
unsafe impl Send for Buf {}

const BUF_ALIGN: usize = 4096;

impl Buf {
    /// `bytes` bytes, every page written (so timing never pays first-touch faults).
    pub fn new(bytes: usize) -> Buf {
        let bytes = bytes.max(1);
        let layout = AllocLayout::from_size_align(bytes, BUF_ALIGN).expect("buffer too large");
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { alloc::alloc(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: ptr is valid for `bytes` writes; this also faults every page in.
        unsafe { std::ptr::write_bytes(ptr, POISON, bytes) };
        Buf { ptr, bytes }
    }

    /// Elements `off..off + len` as `&[T]`.
    pub fn view<T: Element>(&self, off: usize, len: usize) -> &[T] {
        let sz = std::mem::size_of::<T>();
        assert!((off + len) * sz <= self.bytes, "view past the end of the buffer");
        // SAFETY: in bounds (checked above); BUF_ALIGN is a multiple of T's alignment
        // (<= 8) and offsets are whole elements, so the pointer is aligned; the bytes are
        // initialized (written at allocation) and every bit pattern is a valid `Element`.
        unsafe { std::slice::from_raw_parts((self.ptr as *const T).add(off), len) }
    }

    /// Elements `off..off + len` as `&mut [T]`.
    pub fn view_mut<T: Element>(&mut self, off: usize, len: usize) -> &mut [T] {
        let sz = std::mem::size_of::<T>();
        assert!((off + len) * sz <= self.bytes, "view past the end of the buffer");
        // SAFETY: as in `view`, and `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut T).add(off), len) }
    }

    /// Capacity in elements of `T`.
    pub fn cap<T: Element>(&self) -> usize {
        self.bytes / std::mem::size_of::<T>()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let layout = AllocLayout::from_size_align(self.bytes, BUF_ALIGN).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, layout) };
    }
}

// ---------------------------------------------------------------------------------------
// Between ranks: where they run, and how they combine their results.

/// How per-rank values combine into one, the same on every rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fold {
    /// Rank 0's value.
    Rank0,
    /// The sum (wrapping for integers).
    Sum,
    /// The smallest.
    Min,
    /// The largest.
    Max,
}

impl Fold {
    /// How `-a` combines the ranks' times (the average is the sum divided by the ranks).
    fn of_average(a: u32) -> Fold {
        match a {
            0 => Fold::Rank0,
            2 => Fold::Min,
            3 => Fold::Max,
            _ => Fold::Sum,
        }
    }

    fn op(self) -> ReduceOp {
        match self {
            Fold::Rank0 | Fold::Sum => ReduceOp::Sum,
            Fold::Min => ReduceOp::Min,
            Fold::Max => ReduceOp::Max,
        }
    }
}

/// Where the ranks of this run are, hence how they combine per-rank results (times,
/// wrong values, output hashes). Only used outside the timed loops; everything else about
/// a rank is the same in both cases.
enum Ranks {
    /// Every rank is a thread of this process (`-t N`): they meet at a barrier, apart from
    /// the library under test (as nccl-tests' threads do).
    Threads(Shared),
    /// This process is one rank of a job a launcher started: the results travel through
    /// the communicator under test (as nccl-tests' travel through MPI).
    Process,
}

impl Ranks {
    /// Every rank calls this with its values `v`; each becomes its fold over the ranks.
    /// `what` names the results in an error message.
    fn fold_u64(&self, comm: &mut Comm, v: &mut [u64], how: Fold, what: &dyn Fn() -> String) {
        let r = match self {
            Ranks::Threads(sh) => {
                let all = sh.exchange(comm.rank(), v);
                for (i, x) in v.iter_mut().enumerate() {
                    let col = all.iter().map(|r| r[i]);
                    *x = match how {
                        Fold::Rank0 => all[0][i],
                        Fold::Sum => col.fold(0, u64::wrapping_add),
                        Fold::Min => col.min().unwrap_or(*x),
                        Fold::Max => col.max().unwrap_or(*x),
                    };
                }
                Ok(())
            }
            Ranks::Process => match how {
                Fold::Rank0 => comm.broadcast_in_place(v, 0),
                _ => comm.all_reduce_in_place(v, how.op()),
            },
        };
        if let Err(e) = r {
            fail(e, &format!("combining the ranks' {}", what()));
        }
    }

    /// As [`Ranks::fold_u64`], for one `f64`. With threads the ranks' values fold in rank
    /// order (a sum starting at 0, a max at -inf).
    fn fold_f64(&self, comm: &mut Comm, v: f64, how: Fold, what: &dyn Fn() -> String) -> f64 {
        match self {
            Ranks::Threads(sh) => {
                let all = sh.exchange(comm.rank(), &[v.to_bits()]);
                let vals = all.iter().map(|r| f64::from_bits(r[0]));
                match how {
                    Fold::Rank0 => f64::from_bits(all[0][0]),
                    Fold::Sum => vals.fold(0.0, |a, b| a + b),
                    Fold::Min => vals.fold(f64::INFINITY, f64::min),
                    Fold::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                }
            }
            Ranks::Process => {
                let mut b = [v];
                let r = match how {
                    Fold::Rank0 => comm.broadcast_in_place(&mut b, 0),
                    _ => comm.all_reduce_in_place(&mut b, how.op()),
                };
                if let Err(e) = r {
                    fail(e, &format!("combining the ranks' {}", what()));
                }
                b[0]
            }
        }
    }
}

/// Where rank threads meet: every rank leaves its values in its slot, and reads all.
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u64>>>,
}

impl Shared {
    fn new(n: usize) -> Shared {
        Shared { barrier: Barrier::new(n), slots: Mutex::new(vec![Vec::new(); n]) }
    }

    /// Every rank contributes `v`; every rank gets all contributions, in rank order.
    fn exchange(&self, rank: usize, v: &[u64]) -> Vec<Vec<u64>> {
        {
            let mut s = self.slots.lock().unwrap();
            s[rank].clear();
            s[rank].extend_from_slice(v);
        }
        self.barrier.wait();
        let all = self.slots.lock().unwrap().clone();
        self.barrier.wait();
        all
    }
}

/// Where a job's launcher says this process stands (the variables `Comm::from_env` reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobEnv {
    /// This process's rank, when it parses.
    pub rank: Option<usize>,
    /// The number of ranks, when it parses.
    pub nranks: Option<usize>,
}

/// Rank and size variables of the launchers, in the order `Comm::from_env` reads them:
/// oxccl-run, torchrun, Open MPI, MPICH/PMI, Slurm.
const LAUNCHER_VARS: [(&str, &str); 5] = [
    ("OXCCL_RANK", "OXCCL_NRANKS"),
    ("RANK", "WORLD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
];

/// Whether this process is one rank of a job (`Some`) rather than the whole run (`None`):
/// the first launcher pair of [`LAUNCHER_VARS`] that is set says more than one rank (or
/// does not parse: `Comm::from_env` will say why), or `OXCCL_COMM_ID` is set. A pair that
/// says one rank (a single srun task, say) keeps ranks as threads.
pub fn job_from_env(env: impl Fn(&str) -> Option<String>) -> Option<JobEnv> {
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let num = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
    let pair = LAUNCHER_VARS.iter().find(|(r, n)| get(r).is_some() && get(n).is_some());
    let job = JobEnv { rank: pair.and_then(|(r, _)| num(r)), nranks: pair.and_then(|(_, n)| num(n)) };
    let several = pair.is_some() && job.nranks.is_none_or(|n| n > 1);
    (several || get("OXCCL_COMM_ID").is_some()).then_some(job)
}

/// What starts every line on standard error: `rank R: ` when ranks are processes.
static ERR_PREFIX: OnceLock<String> = OnceLock::new();

/// Writes `msg` and a newline to standard error, every line after [`ERR_PREFIX`].
fn err(msg: &str) {
    let p = ERR_PREFIX.get().map_or("", |s| s.as_str());
    let mut s = String::new();
    for l in msg.lines() {
        s += p;
        s += l;
        s.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// How long the ranks run small all-reduces once before the first size: enough for the
/// scheduler to have placed the rank threads (or processes) apart, so that the first
/// row is not timed while they still share a core (it came out 3x slower).
const SETTLE: Duration = Duration::from_millis(20);

/// The global warm-up: 8-byte all-reduces until some rank has run for [`SETTLE`]. Each
/// call carries whether a rank is done (max over ranks), so all stop after the same one.
fn settle(comm: &mut Comm) {
    let start = Instant::now();
    let mut done = [0u64];
    while done[0] == 0 {
        done[0] = u64::from(start.elapsed() >= SETTLE);
        if let Err(e) = comm.all_reduce_in_place(&mut done, ReduceOp::Max) {
            fail(e, "the warm-up before the first size");
        }
    }
}

/// One rank's line in the header's device list (and in the `-J` document).
pub struct Device {
    pid: u64,
    host: String,
    /// The device number: the rank's index among the ranks of its host.
    dev: usize,
    /// What the rank is (`CPU thread, <cpu model>` or `process, <cpu model>`).
    what: String,
}

/// Bytes of a rank's record in [`gather_devices`]: pid, host name, CPU model.
const DEVICE_RECORD: usize = 256;
const RECORD_HOST: std::ops::Range<usize> = 8..72;
const RECORD_CPU: std::ops::Range<usize> = 72..DEVICE_RECORD;

/// Every rank's pid, host and CPU, gathered through the communicator (ranks as
/// processes): a fixed-size record per rank, texts cut to fit and NUL-padded.
fn gather_devices(comm: &mut Comm) -> Vec<Device> {
    fn put(dst: &mut [u8], s: &str) {
        let mut end = s.len().min(dst.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        dst[..end].copy_from_slice(&s.as_bytes()[..end]);
    }
    fn get(src: &[u8]) -> String {
        let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
        String::from_utf8_lossy(&src[..end]).into_owned()
    }
    let mut mine = [0u8; DEVICE_RECORD];
    mine[..8].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    put(&mut mine[RECORD_HOST], &hostname());
    put(&mut mine[RECORD_CPU], &cpu_name());
    let mut all = vec![0u8; DEVICE_RECORD * comm.size()];
    if let Err(e) = comm.all_gather(&mine, &mut all) {
        fail(e, "gathering the ranks' hosts and pids");
    }
    let mut devs: Vec<Device> = Vec::with_capacity(comm.size());
    for rec in all.chunks_exact(DEVICE_RECORD) {
        let host = get(&rec[RECORD_HOST]);
        let dev = devs.iter().filter(|d| d.host == host).count();
        devs.push(Device {
            pid: u64::from_le_bytes(rec[..8].try_into().unwrap()),
            host,
            dev,
            what: format!("process, {}", get(&rec[RECORD_CPU])),
        });
    }
    devs
}

// ---------------------------------------------------------------------------------------
// Command line.

/// Parsed flags.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `-t`: ranks, as threads of this process (1 when each process is a rank).
    pub nthreads: usize,
    /// `-b`.
    pub min_bytes: usize,
    /// `-e`.
    pub max_bytes: usize,
    /// `-i`.
    pub step_bytes: usize,
    /// `-f`.
    pub step_factor: usize,
    /// `-n`.
    pub iters: usize,
    /// `-w`.
    pub warmup: usize,
    /// `-c`: checks per measurement.
    pub check: usize,
    /// `-o`: `None` is `all`.
    pub op: Option<OpKind>,
    /// `-d`: `None` is `all`.
    pub dtype: Option<DataType>,
    /// `-r`: `None` (`-1` or `all`) is every rank in turn, as nccl-tests' `-r -1`.
    pub root: Option<usize>,
    /// `-z`: 1 adds a barrier after every timed call, inside the clock (nccl-tests'
    /// blocking mode: wait for completion, then a barrier). oxccl's calls always block
    /// (they return when this rank's part is done), so the "wait for completion" half is
    /// there in both modes.
    pub blocking: u32,
    /// `-a`: 0 rank 0, 1 average, 2 min, 3 max.
    pub average: u32,
    /// `-T`: seconds (0: no timeout); `None`: oxccl's default (or `OXCCL_TIMEOUT`).
    pub timeout: Option<f64>,
    /// `-u`: elements by which buffers are misaligned.
    pub unalign: usize,
    /// `-N`: times the size sweep runs (0: forever).
    pub cycles: usize,
    /// `-J`: the JSON results file asked for.
    pub json: Option<String>,
    /// `--plot`: the SVG file to draw busbw into.
    pub plot: Option<String>,
    /// `--plot-peer`: other results to draw beside ours, each `file[:label]`.
    pub plot_peers: Vec<String>,
    /// `--progress`: show (1) or never show (0) progress notes; `None`: only where a
    /// person watches ([`shows_progress`]).
    pub progress: Option<bool>,
}

/// Why the command line does not start a run.
#[derive(Debug)]
enum CliError {
    Help,
    Bad(String),
}

fn usage(prog: &str, default_ranks: usize) -> String {
    format!(
        "USAGE: {prog} \n\t\
[-t,--nthreads <num threads>] ranks, as threads of this process (default: {default_ranks}) \n\t\
[-g,--ngpus <gpus per thread>] (only 1) \n\t\
[-b,--minbytes <min size in bytes>] \n\t\
[-e,--maxbytes <max size in bytes>] \n\t\
[-i,--stepbytes <increment size>] \n\t\
[-f,--stepfactor <increment factor>] \n\t\
[-n,--iters <iteration count>] \n\t\
[-m,--agg_iters <aggregated iteration count>] (only 1) \n\t\
[-w,--warmup_iters <warmup iteration count>] \n\t\
[-N,--run_cycles <cycle count> run & print each cycle (default: 1; 0=infinite)] \n\t\
[-c,--check <check iteration count>] \n\t\
[-o,--op <sum/prod/min/max/avg/mulsum/all>] \n\t\
[-d,--datatype <int8/uint8/int32/uint32/int64/uint64/half/float/double/bfloat16/f8e4m3/f8e5m2/all>] \n\t\
[-r,--root <root> (broadcast, reduce; default: 0; -1 or all: every rank in turn)] \n\t\
[-z,--blocking <0/1> 1: a barrier after each call, timed (oxccl calls always block until this rank \
is done, so 0 and 1 differ only by the barrier; default: 0)] \n\t\
[-T,--timeout <time in seconds> (0: none; default: OXCCL_TIMEOUT or 600)] \n\t\
[-a,--average <0/1/2/3> report average iteration time <0=RANK0/1=AVG/2=MIN/3=MAX>] \n\t\
[-u,--unalign <index of first element> Misalign source and destination buffers (default: 0)] \n\t\
[-J,--output_file <file.json> write the results as JSON (rank 0; an existing file is kept and \
file.0, file.1, ... used instead)] \n\t\
[--plot <file.svg> draw busbw against size into an SVG file (rank 0, at the end)] \n\t\
[--plot-peer <file[:label]> add other results to the plot: CSV with size,busbw or \
size,time_us,algbw,busbw columns (header optional), or JSON from -J; may be repeated] \n\t\
[--progress <0/1> 1: a note after the row being measured, erased when it ends (default: only when \
standard output is a terminal and no launcher started this process)] \n\t\
[-h,--help]\n\
Sizes take K, M, G suffixes (powers of 1024).\n\
Under a launcher (oxccl-run, mpirun, srun, torchrun), each process is one rank: use -t 1.\n"
    )
}

/// nccl-tests' size syntax: a number, optionally followed by K, M or G (binary).
fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let (num, mul) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1u64 << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let x: f64 = num.trim().parse().ok()?;
    if !x.is_finite() || x < 0.0 {
        return None;
    }
    let b = x * mul as f64;
    (b < 1e18).then_some(b as usize)
}

/// An integer, decimal or 0x hexadecimal (strtol with base 0, without its leniency).
fn parse_int(v: &str) -> Option<i64> {
    let v = v.trim();
    let (neg, d) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v.strip_prefix('+').unwrap_or(v)),
    };
    let x = if let Some(h) = d.strip_prefix("0x").or_else(|| d.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else {
        d.parse::<i64>().ok()?
    };
    Some(if neg { -x } else { x })
}

/// The options: short letter (if any) and long name.
const FLAGS: &[(Option<char>, &str)] = &[
    (Some('t'), "nthreads"),
    (Some('g'), "ngpus"),
    (Some('b'), "minbytes"),
    (Some('e'), "maxbytes"),
    (Some('i'), "stepbytes"),
    (Some('f'), "stepfactor"),
    (Some('n'), "iters"),
    (Some('m'), "agg_iters"),
    (Some('w'), "warmup_iters"),
    (Some('N'), "run_cycles"),
    (Some('c'), "check"),
    (Some('o'), "op"),
    (Some('d'), "datatype"),
    (Some('r'), "root"),
    (Some('z'), "blocking"),
    (Some('T'), "timeout"),
    (Some('a'), "average"),
    (Some('u'), "unalign"),
    (Some('J'), "output_file"),
    (None, "plot"),
    (None, "plot-peer"),
    (None, "progress"),
];

fn parse_args(args: &[String], default_ranks: usize) -> Result<Opts, CliError> {
    let mut o = Opts {
        nthreads: default_ranks,
        min_bytes: 32 << 20,
        max_bytes: 32 << 20,
        step_bytes: 1 << 20,
        step_factor: 1,
        iters: 20,
        warmup: 5,
        check: 1,
        op: Some(OpKind::Sum),
        dtype: Some(DataType::Float32),
        root: Some(0),
        blocking: 0,
        average: 1,
        timeout: None,
        unalign: 0,
        cycles: 1,
        json: None,
        plot: None,
        plot_peers: Vec::new(),
        progress: None,
    };
    let bad = |m: String| CliError::Bad(m);
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let (name, inline): (&'static str, Option<String>) = if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            if name == "help" {
                return Err(CliError::Help);
            }
            match FLAGS.iter().find(|(_, l)| *l == name) {
                Some((_, l)) => (*l, val),
                None => return Err(bad(format!("invalid option '--{name}'"))),
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            let c = short.chars().next().unwrap();
            if c == 'h' {
                return Err(CliError::Help);
            }
            let Some((_, l)) = FLAGS.iter().find(|(f, _)| *f == Some(c)) else {
                return Err(bad(format!("invalid option '-{c}'")));
            };
            let rest = &short[c.len_utf8()..];
            (*l, (!rest.is_empty()).then(|| rest.to_string()))
        } else {
            return Err(bad(format!("unexpected argument '{a}'")));
        };
        let shown = match FLAGS.iter().find(|(_, l)| *l == name) {
            Some((Some(c), _)) => format!("-{c}"),
            _ => format!("--{name}"),
        };
        let val = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => return Err(bad(format!("option '{shown}' needs a value"))),
        };
        let int = |what: &str, lo: i64, hi: i64| -> Result<i64, CliError> {
            match parse_int(&val) {
                Some(x) if (lo..=hi).contains(&x) => Ok(x),
                _ => Err(bad(format!("invalid value '{val}' for '{what}' (expected an integer in {lo}..={hi})"))),
            }
        };
        let size = |what: &str| -> Result<usize, CliError> {
            parse_size(&val).ok_or_else(|| bad(format!("invalid size specified for '{what}': '{val}'")))
        };
        let path = |what: &str| -> Result<String, CliError> {
            if val.is_empty() { Err(bad(format!("'{what}' needs a file name"))) } else { Ok(val.clone()) }
        };
        match name {
            "nthreads" => o.nthreads = int(name, 1, 4096)? as usize,
            "ngpus" => {
                int(name, 1, 1)?;
            }
            "minbytes" => o.min_bytes = size(name)?,
            "maxbytes" => o.max_bytes = size(name)?,
            "stepbytes" => o.step_bytes = size(name)?,
            "stepfactor" => o.step_factor = int(name, 1, 1 << 30)? as usize,
            "iters" => o.iters = int(name, 1, 1 << 40)? as usize,
            "agg_iters" => {
                int(name, 1, 1)?;
            }
            "warmup_iters" => o.warmup = int(name, 0, 1 << 40)? as usize,
            "run_cycles" => o.cycles = int(name, 0, 1 << 40)? as usize,
            "check" => o.check = int(name, 0, 1 << 20)? as usize,
            "op" => {
                o.op = match val.as_str() {
                    "all" => None,
                    s => Some(OpKind::parse(s).ok_or_else(|| {
                        bad(format!("invalid op '{s}' (expected sum, prod, max, min, avg, mulsum or all)"))
                    })?),
                }
            }
            "datatype" => {
                o.dtype = match val.as_str() {
                    "all" => None,
                    s => Some(s.parse::<DataType>().map_err(bad)?),
                }
            }
            "root" => {
                o.root = match val.trim() {
                    "all" | "-1" => None,
                    _ => Some(int("root (or -1 or all: every rank)", 0, i32::MAX as i64)? as usize),
                }
            }
            "blocking" => o.blocking = int(name, 0, 1)? as u32,
            "timeout" => {
                let t: f64 = val
                    .parse()
                    .ok()
                    .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| bad(format!("invalid timeout '{val}' (seconds)")))?;
                o.timeout = Some(t);
            }
            "average" => o.average = int(name, 0, 3)? as u32,
            "unalign" => o.unalign = int(name, 0, 1 << 20)? as usize,
            "output_file" => o.json = Some(path(name)?),
            "plot" => o.plot = Some(path(name)?),
            "plot-peer" => o.plot_peers.push(path(name)?),
            "progress" => o.progress = Some(int(name, 0, 1)? == 1),
            _ => unreachable!("option {name} has no handler"),
        }
    }
    if o.min_bytes > o.max_bytes {
        return Err(bad(format!("invalid sizes for 'minbytes' and 'maxbytes': {} > {}", o.min_bytes, o.max_bytes)));
    }
    if o.step_factor <= 1 && o.step_bytes == 0 && o.min_bytes < o.max_bytes {
        return Err(bad("stepbytes must be positive when stepfactor is 1 (it would never reach maxbytes)".into()));
    }
    if !o.plot_peers.is_empty() && o.plot.is_none() {
        return Err(bad("--plot-peer needs --plot <file.svg>".into()));
    }
    Ok(o)
}

/// The sizes swept, in bytes (before rounding to whole elements), as nccl-tests steps:
/// by factor when it is above 1, else by increment.
fn sizes(o: &Opts) -> Vec<usize> {
    let mut v = Vec::new();
    let mut s = o.min_bytes;
    while s <= o.max_bytes {
        v.push(s);
        // After 0 comes 1 with a factor (0 x factor would repeat 0 forever).
        let next = if o.step_factor > 1 {
            s.checked_mul(o.step_factor).map(|x| x.max(1))
        } else {
            s.checked_add(o.step_bytes)
        };
        match next {
            Some(n) if n > s => s = n,
            _ => break,
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// Output in nccl-tests' format.

/// C's `%e` with `prec` decimals (`1.5e+03`).
fn c_exp(v: f64, prec: usize) -> String {
    let s = format!("{v:.prec$e}");
    let (m, e) = s.split_once('e').unwrap();
    let e: i32 = e.parse().unwrap();
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// C's `%g` (6 significant digits, trailing zeros removed).
pub fn c_g(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let strip = |s: String| -> String {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    };
    let s = format!("{v:.5e}");
    let x: i32 = s.split_once('e').unwrap().1.parse().unwrap();
    if !(-4..6).contains(&x) {
        let e = c_exp(v, 5);
        let (m, ex) = e.split_once('e').unwrap();
        format!("{}e{ex}", strip(m.to_string()))
    } else {
        strip(format!("{v:.*}", (5 - x) as usize))
    }
}

/// nccl-tests' `getFloatStr`: the most decimals (2, 1, 0) that fit `width`, else `%e`.
fn float_str(v: f64, width: usize) -> String {
    for p in [2, 1, 0] {
        let s = format!("{v:>width$.p$}");
        if s.len() <= width {
            return s;
        }
    }
    let s = c_exp(v, if width >= 7 { 1 } else { 0 });
    format!("{s:>width$}")
}

/// Rank 0's standard output: the table, written so that a file or a pipe receives exactly
/// nccl-tests' bytes. Without progress notes every line is written whole, once complete
/// (so a message on standard error, sent to the same file, never lands inside a row);
/// with them, each piece is written as it comes and the note after it is erased with
/// backspaces before the next.
struct Stdout {
    /// Progress notes are shown ([`set_progress`]).
    live: bool,
    /// Not live: the start of the current line, waiting for its end.
    pending: String,
    /// Live: characters of the note now at the end of the line (0: none).
    shown: usize,
}

impl Stdout {
    const fn new() -> Stdout {
        Stdout { live: false, pending: String::new(), shown: 0 }
    }

    /// What to write now for `s`: at once with progress notes on (after erasing the note
    /// shown), else up to its last newline (the rest waits for its line's end).
    fn text(&mut self, s: &str) -> Option<String> {
        if self.live {
            let shown = std::mem::take(&mut self.shown);
            let back = "\x08".repeat(shown);
            return Some(format!("{back}{}{back}{s}", " ".repeat(shown)));
        }
        self.pending += s;
        let end = self.pending.rfind('\n')?;
        Some(self.pending.drain(..=end).collect())
    }

    /// What to write to show `note` (nothing when notes are off).
    fn note(&mut self, note: &str) -> Option<String> {
        if !self.live {
            return None;
        }
        let text = self.text(note)?;
        self.shown = note.chars().count();
        Some(text)
    }
}

static STDOUT: Mutex<Stdout> = Mutex::new(Stdout::new());

/// Turns progress notes on or off (off until called); see [`shows_progress`].
fn set_progress(on: bool) {
    STDOUT.lock().unwrap_or_else(|e| e.into_inner()).live = on;
}

/// Writes `s` to standard output, flushed ([`Stdout::text`]).
fn out(s: &str) {
    let mut st = STDOUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(text) = st.text(s) {
        write_stdout(&text);
    }
}

/// Shows `note` after the row being measured, until the next output replaces it; only
/// when progress notes are on.
fn progress(note: &str) {
    let mut st = STDOUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(text) = st.note(note) {
        write_stdout(&text);
    }
}

/// Writes what waits of an unfinished line (before an error ends the run, so the file
/// shows where it stopped). Never blocks: from a panic in [`out`], nothing is written.
fn flush_out() {
    if let Ok(mut st) = STDOUT.try_lock() {
        let rest = std::mem::take(&mut st.pending);
        write_stdout(&rest);
    }
}

fn write_stdout(s: &str) {
    let mut o = std::io::stdout().lock();
    if o.write_all(s.as_bytes()).and_then(|_| o.flush()).is_err() {
        // Nobody reads the results any more (a closed pipe): stop, as nccl-tests would
        // on SIGPIPE.
        std::process::exit(1);
    }
}

/// Whether rank 0 shows progress notes (`[row 3/40, in-place]`, erased with backspaces):
/// as `--progress` says when given; otherwise only where a person watches, that is when
/// standard output is a terminal and no launcher stands in between (`launched`: Open
/// MPI's mpirun and `srun --pty` give each rank a pseudo-terminal whose other end is
/// often a file or a pipe).
pub fn shows_progress(flag: Option<bool>, terminal: bool, launched: bool) -> bool {
    flag.unwrap_or(terminal && !launched)
}

/// Whether a launcher started this process: any variable of [`LAUNCHER_VARS`], or
/// `OXCCL_COMM_ID`/`OXCCL_UNIQUE_ID`, is set, whatever the number of ranks it says.
pub fn launched(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    LAUNCHER_VARS.iter().any(|(r, n)| set(r) || set(n)) || set("OXCCL_COMM_ID") || set("OXCCL_UNIQUE_ID")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The lines before the table: parameters and the "devices" (rank threads or processes).
fn header(prog: &str, o: &Opts, devices: &[Device], reduced_max: Option<usize>) -> String {
    let mut h = String::new();
    let ver = env!("CARGO_PKG_VERSION");
    let _ = writeln!(h, "# oxccl-tests version {ver} oxccl={ver} (nccl-tests format)");
    let _ = writeln!(h, "# Collective test starting: {prog}");
    let (step, kind) = if o.step_factor > 1 { (o.step_factor, "factor") } else { (o.step_bytes, "bytes") };
    let _ = writeln!(
        h,
        "# nThread {} nGpus 1 minBytes {} maxBytes {} step: {step}({kind}) warmup iters: {} iters: {} agg iters: 1 validation: {} graph: 0 unalign: {}",
        o.nthreads, o.min_bytes, o.max_bytes, o.warmup, o.iters, o.check, o.unalign
    );
    if o.blocking != 0 {
        let _ = writeln!(h, "#  Blocking Enabled: wait for completion and barrier after each collective");
    }
    let _ = writeln!(h, "#");
    let _ = writeln!(h, "# Using devices");
    for (r, d) in devices.iter().enumerate() {
        let Device { pid, host, dev, what } = d;
        let _ = writeln!(h, "#  Rank {r:2} Group  0 Pid {pid:6} on {host:>10} device {dev:2} [cpu] {what}");
    }
    if let Some(m) = reduced_max {
        let _ = writeln!(h, "#\n# Reducing maxBytes to {m} due to memory limitation");
    }
    h
}

/// The table's column titles, as nccl-tests prints them.
fn column_header() -> String {
    let row = |c: [&str; 13]| {
        format!(
            "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6}  {:>6} \n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]
        )
    };
    let mut h = String::from("#\n");
    let _ = writeln!(
        h,
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}           out-of-place                       in-place          ",
        "", "", "", "", ""
    );
    h += &row([
        "size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw",
        "#wrong",
    ]);
    h += &row(["(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", ""]);
    h
}

/// The lines after the table; `bw_ok` is the verdict on NCCL_TESTS_MIN_BW when set.
fn footer(prog: &str, errors: u64, bw: f64, bw_ok: Option<bool>) -> String {
    let mut f = String::new();
    let _ = writeln!(f, "# {:<20} : {} {}", "Out of bounds values", errors, if errors > 0 { "FAILED" } else { "OK" });
    let verdict = match bw_ok {
        None => "",
        Some(true) => "OK",
        Some(false) => "FAILED",
    };
    let _ = writeln!(f, "# {:<20} : {} {verdict}", "Avg bus bandwidth", c_g(bw));
    let _ = writeln!(f, "#");
    let _ = writeln!(f, "# Collective test concluded: {prog}");
    let _ = writeln!(f, "#");
    f
}

// ---------------------------------------------------------------------------------------
// The benchmark.

struct Plan<'a, C> {
    coll: &'a C,
    opts: &'a Opts,
    types: Vec<DataType>,
    ops: Vec<OpKind>,
    roots: Vec<usize>,
    sizes: Vec<usize>,
    ranks: Ranks,
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
struct RankStats {
    /// Checks that found wrong values on this rank (nccl-tests' "Out of bounds values").
    errors: u64,
    /// Sum and number of busbw values (rank 0 only).
    bw_sum: f64,
    bw_count: u64,
    /// Rows started (rank 0 only), for the progress note.
    rows: usize,
}

/// The outcome of a run, the same on every rank.
#[derive(Clone, Copy, Debug)]
struct Summary {
    /// Checks that found wrong values, summed over ranks.
    errors: u64,
    /// Average busbw (rank 0's).
    bw: f64,
}

/// Runs the benchmark of `coll` with the process's arguments and exits: status 0 when
/// every check passed, 1 on wrong values or an oxccl error, 2 on a bad command line.
/// Under a launcher ([`job_from_env`]) this process is one rank of the job; otherwise
/// its threads are all the ranks.
pub fn main<C: Collective>(coll: C) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prog = C::NAME;
    let job = job_from_env(|k| std::env::var(k).ok());
    if let Some(j) = job {
        let r = j.rank.map_or("?".to_string(), |r| r.to_string());
        let _ = ERR_PREFIX.set(format!("rank {r}: "));
    }
    // Standard output is rank 0's.
    let quiet = job.is_some_and(|j| j.rank.is_some_and(|r| r != 0));
    let default_ranks = if job.is_some() { 1 } else { C::DEFAULT_RANKS };
    let opts = match parse_args(&args, default_ranks) {
        Ok(o) => o,
        Err(CliError::Help) => {
            if !quiet {
                out(&usage(prog, default_ranks));
            }
            std::process::exit(0);
        }
        Err(CliError::Bad(m)) => {
            err(&format!("{prog}: {m}"));
            if !quiet {
                eprint!("{}", usage(prog, default_ranks));
            }
            std::process::exit(2);
        }
    };
    if job.is_some() && opts.nthreads != 1 {
        err(&format!("{prog}: -t {} with several processes is not supported yet; use -t 1", opts.nthreads));
        std::process::exit(2);
    }
    if job.is_none() {
        check_root::<C>(&opts, opts.nthreads);
    }
    let env = |k: &str| std::env::var(k).ok();
    set_progress(!quiet && shows_progress(opts.progress, std::io::stdout().is_terminal(), launched(env)));

    // A panicking rank would leave the others waiting for it: end the process instead.
    let default_hook = std::panic::take_hook();
    let processes = job.is_some();
    std::panic::set_hook(Box::new(move |info| {
        flush_out();
        report::abort(&info.to_string());
        if processes {
            err(&info.to_string());
            let bt = std::backtrace::Backtrace::capture();
            if bt.status() == std::backtrace::BacktraceStatus::Captured {
                err(&bt.to_string());
            }
        } else {
            default_hook(info);
        }
        std::process::exit(1);
    }));

    let types: Vec<DataType> = match opts.dtype {
        Some(t) => vec![t],
        None => DataType::ALL.to_vec(),
    };
    let ops: Vec<OpKind> = if !C::REDUCES {
        vec![OpKind::None]
    } else {
        match opts.op {
            Some(o) => vec![o],
            None => OpKind::ALL.to_vec(),
        }
    };
    let mut cfg = Config::new();
    match opts.timeout {
        Some(t) if t > 0.0 => cfg = cfg.timeout(Duration::from_secs_f64(t)),
        Some(_) => cfg = cfg.no_timeout(),
        None => {}
    }

    let (summary, print) = match job {
        None => (run_threads(&coll, opts, types, ops, &cfg), true),
        Some(_) => run_process(&coll, opts, types, ops, &cfg),
    };

    let min_bw: Option<f64> = std::env::var("NCCL_TESTS_MIN_BW").ok().and_then(|v| v.parse().ok());
    let bw_ok = min_bw.is_none_or(|m| summary.bw >= m * 0.9);
    let mut files_ok = true;
    if print {
        out(&footer(prog, summary.errors, summary.bw, min_bw.map(|_| bw_ok)));
        for p in report::finish(summary.errors, summary.bw, min_bw.map(|_| bw_ok)) {
            err(&format!("{prog}: {p}"));
            files_ok = false;
        }
    }
    std::process::exit(if summary.errors > 0 || !bw_ok || !files_ok { 1 } else { 0 });
}

/// Exits (status 2) when `-r` names no rank of `n`.
fn check_root<C: Collective>(opts: &Opts, n: usize) {
    if let (true, Some(r)) = (C::ROOTED, opts.root)
        && r >= n
    {
        err(&format!("{}: invalid root {r} for {n} ranks", C::NAME));
        std::process::exit(2);
    }
}

/// The roots each size runs with: `-r`, or every rank in turn (`-r all`); one (unused)
/// root for collectives without one.
fn roots<C: Collective>(opts: &Opts, n: usize) -> Vec<usize> {
    match (C::ROOTED, opts.root) {
        (true, Some(r)) => vec![r],
        (true, None) => (0..n).collect(),
        (false, _) => vec![0],
    }
}

/// Buffer capacity in bytes per rank (send, receive) for sizes up to `max_bytes`, over
/// the types swept.
fn caps<C: Collective>(coll: &C, opts: &Opts, types: &[DataType], n: usize, max_bytes: usize) -> (usize, usize) {
    let (mut s, mut r) = (0, 0);
    for t in types {
        let es = t.size();
        let lay = coll.layout(max_bytes / es, n, es);
        let extra = (opts.unalign + GUARD_ELEMS) * es;
        s = s.max(lay.send * es + extra);
        r = r.max(lay.recv.max(lay.in_place) * es + extra);
    }
    (s, r)
}

/// A smaller largest size (`-e`) when the buffers of the `local` ranks of this host (of
/// `n` in all) would not fit in its available memory; `None` when they do.
fn fit_memory<C: Collective>(coll: &C, opts: &Opts, types: &[DataType], n: usize, local: usize) -> Option<usize> {
    let avail = mem_available()?;
    let (s, r) = caps(coll, opts, types, n, opts.max_bytes);
    let need = (s + r) as u128 * local as u128;
    let budget = ((avail as f64 * 0.9) as u128).saturating_sub(256 << 20);
    (need > budget).then(|| {
        let per_byte = need as f64 / opts.max_bytes.max(1) as f64;
        ((budget as f64 / per_byte) as usize) & !4095
    })
}

/// Makes `max` the largest size.
fn reduce_max_bytes(opts: &mut Opts, max: usize) {
    opts.max_bytes = max;
    opts.min_bytes = opts.min_bytes.min(max);
}

/// Ranks as threads: `-t` of them in this process, each with its communicator of
/// [`Comm::init_all_with`].
fn run_threads<C: Collective>(
    coll: &C,
    mut opts: Opts,
    types: Vec<DataType>,
    ops: Vec<OpKind>,
    cfg: &Config,
) -> Summary {
    let n = opts.nthreads;
    let reduced_note = fit_memory(coll, &opts, &types, n, n);
    if let Some(max) = reduced_note {
        reduce_max_bytes(&mut opts, max);
    }
    let (pid, host, cpu) = (u64::from(std::process::id()), hostname(), cpu_name());
    let devices: Vec<Device> =
        (0..n).map(|r| Device { pid, host: host.clone(), dev: r, what: format!("CPU thread, {cpu}") }).collect();
    out(&header(C::NAME, &opts, &devices, reduced_note));
    if let Err(m) = open_report::<C>(&opts, &devices, false) {
        err(&format!("{}: {m}", C::NAME));
        std::process::exit(2);
    }

    let comms = match Comm::init_all_with(n, cfg) {
        Ok(c) => c,
        Err(e) => {
            err(&format!("oxccl error: {e}"));
            std::process::exit(1);
        }
    };

    out(&column_header());

    let (send_cap, recv_cap) = caps(coll, &opts, &types, n, opts.max_bytes);
    let sizes = sizes(&opts);
    let roots = roots::<C>(&opts, n);
    let plan = Plan { coll, opts: &opts, types, ops, roots, sizes, ranks: Ranks::Threads(Shared::new(n)) };
    let summaries: Vec<Summary> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let plan = &plan;
                std::thread::Builder::new()
                    .name(format!("rank{}", comm.rank()))
                    .spawn_scoped(s, move || rank_main(plan, comm, send_cap, recv_cap))
                    .expect("cannot start a rank thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    summaries[0]
}

/// Ranks as processes: this one joins the job of its launcher ([`Comm::from_env_with`])
/// and runs its rank on this thread. Returns the summary and whether this is rank 0 (the
/// one that prints).
fn run_process<C: Collective>(
    coll: &C,
    mut opts: Opts,
    types: Vec<DataType>,
    ops: Vec<OpKind>,
    cfg: &Config,
) -> (Summary, bool) {
    // With the `mpi` feature, a bare mpirun works: MPI hands out the unique id.
    #[cfg(feature = "mpi")]
    let joined = Comm::from_env_or_mpi(cfg);
    #[cfg(not(feature = "mpi"))]
    let joined = Comm::from_env_with(cfg);
    let mut comm = match joined {
        Ok(c) => c,
        Err(e) => {
            err(&format!("oxccl error: {e}"));
            std::process::exit(1);
        }
    };
    let (rank, n) = (comm.rank(), comm.size());
    check_root::<C>(&opts, n);
    let devices = gather_devices(&mut comm);
    // Every rank sweeps the same sizes: the smallest that fits on every host.
    let local = devices.iter().filter(|d| d.host == devices[rank].host).count();
    let mut max = [fit_memory(coll, &opts, &types, n, local).unwrap_or(opts.max_bytes) as u64];
    if let Err(e) = comm.all_reduce_in_place(&mut max, ReduceOp::Min) {
        fail(e, "agreeing on the largest size");
    }
    let reduced_note = (max[0] < opts.max_bytes as u64).then_some(max[0] as usize);
    if let Some(max) = reduced_note {
        reduce_max_bytes(&mut opts, max);
    }
    // Rank 0 opens the -J and --plot files; every rank stops (status 2) if it cannot.
    let mut ok = [1u64];
    if rank == 0 {
        out(&header(C::NAME, &opts, &devices, reduced_note));
        if let Err(m) = open_report::<C>(&opts, &devices, true) {
            err(&format!("{}: {m}", C::NAME));
            ok[0] = 0;
        }
    }
    if let Err(e) = comm.broadcast_in_place(&mut ok, 0) {
        fail(e, "agreeing on the output files");
    }
    if ok[0] == 0 {
        std::process::exit(2);
    }
    if rank == 0 {
        out(&column_header());
    }

    let (send_cap, recv_cap) = caps(coll, &opts, &types, n, opts.max_bytes);
    let sizes = sizes(&opts);
    let roots = roots::<C>(&opts, n);
    let plan = Plan { coll, opts: &opts, types, ops, roots, sizes, ranks: Ranks::Process };
    (rank_main(&plan, comm, send_cap, recv_cap), rank == 0)
}

/// One rank's whole run, whether a thread or a process: every type, op and size; then
/// the totals every rank agrees on.
fn rank_main<C: Collective>(plan: &Plan<'_, C>, mut comm: Comm, send_cap: usize, recv_cap: usize) -> Summary {
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

/// Ends the process on an oxccl error, saying what the call was (rank 0 also writes
/// what it has of the `-J` and `--plot` files).
fn fail(e: oxccl::Error, what: &str) -> ! {
    flush_out();
    err(&format!("oxccl error: {e}"));
    err(&format!("  (during {what})"));
    report::abort(&format!("oxccl error: {e} (during {what})"));
    std::process::exit(1);
}

/// Rank 0: prepares the `-J` and `--plot` outputs and says so under the header.
fn open_report<C: Collective>(opts: &Opts, devices: &[Device], processes: bool) -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let note = report::prepare(C::NAME, opts, &args, devices, processes)?;
    out(&note);
    Ok(())
}

/// nccl-tests' TimeTest: every size of one type, op and root.
#[allow(clippy::too_many_arguments)]
fn run_test<C: Collective, T: PerfElem>(
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
fn bench<C: Collective, T: PerfElem>(
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
    let mut wrong_total = 0u64;
    for _ in 0..opts.check {
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
        plan.ranks.fold_u64(comm, &mut sums, Fold::Sum, &|| format!("check results of {}", what()));
        let [mut wrong, inexact] = sums;
        // Outputs equal to the reference bit for bit are equal across ranks too; only
        // when some rank differs in bits but not in value (-0, NaN payloads) compare the
        // ranks' outputs with each other, by a hash of each.
        if C::SAME_OUTPUT && inexact > 0 {
            let hsh = hash_bytes(as_bytes(&got[..len]));
            let mut h0 = [hsh];
            plan.ranks.fold_u64(comm, &mut h0, Fold::Rank0, &|| format!("output hashes of {}", what()));
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
            plan.ranks.fold_u64(comm, &mut m, Fold::Sum, &|| format!("output comparisons of {}", what()));
            wrong += m[0];
        }
        if res.wrong > 0 {
            st.errors += 1;
        }
        wrong_total = wrong;
        if wrong > 0 {
            break;
        }
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

#[cfg(test)]
mod tests {
    use super::collectives::*;
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> Result<Opts, CliError> {
        parse_args(&args(s), 2)
    }

    fn bad(s: &str) -> String {
        match parse(s) {
            Err(CliError::Bad(m)) => m,
            other => panic!("{s:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn the_scripts_command_line_parses() {
        let o = parse("-b 8 -e 256K -f 8 -t 3 -d all -o all -n 2 -w 1 -c 1").unwrap();
        assert_eq!((o.min_bytes, o.max_bytes, o.step_factor, o.nthreads), (8, 256 << 10, 8, 3));
        assert_eq!((o.dtype, o.op, o.iters, o.warmup, o.check), (None, None, 2, 1, 1));
    }

    #[test]
    fn defaults_and_long_forms() {
        let o = parse("").unwrap();
        assert_eq!((o.nthreads, o.root, o.blocking, o.average, o.cycles), (2, Some(0), 0, 1, 1));
        assert_eq!((o.json.as_deref(), o.plot.as_deref()), (None, None));
        let o = parse("--minbytes=1K --maxbytes 2M --stepbytes 512 --stepfactor 1 --root all --blocking 1").unwrap();
        assert_eq!((o.min_bytes, o.max_bytes, o.step_bytes, o.step_factor), (1024, 2 << 20, 512, 1));
        assert_eq!((o.root, o.blocking), (None, 1));
        let o =
            parse("-r -1 -a 3 -T 2.5 -z0 -J out.json --plot p.svg --plot-peer a.csv:MPI --plot-peer b.json").unwrap();
        assert_eq!((o.root, o.average, o.timeout, o.blocking), (None, 3, Some(2.5), 0));
        assert_eq!((o.json.as_deref(), o.plot.as_deref()), (Some("out.json"), Some("p.svg")));
        assert_eq!(o.plot_peers, ["a.csv:MPI", "b.json"]);
        assert_eq!(parse("-r 2").unwrap().root, Some(2));
        assert!(matches!(parse("-h"), Err(CliError::Help)));
        assert!(matches!(parse("-b 8 --help"), Err(CliError::Help)));
    }

    #[test]
    fn bad_command_lines_say_why() {
        assert_eq!(bad("-x 1"), "invalid option '-x'");
        assert_eq!(bad("--bogus 1"), "invalid option '--bogus'");
        assert_eq!(bad("-b"), "option '-b' needs a value");
        assert_eq!(bad("--plot"), "option '--plot' needs a value");
        assert!(bad("-b 8Q").contains("invalid size"), "{}", bad("-b 8Q"));
        assert!(bad("-n zero").contains("iters"));
        assert!(bad("-z 2").contains("blocking"));
        assert!(bad("-a 4").contains("average"));
        assert!(bad("-r x").contains("root"));
        assert!(bad("-T -1").contains("timeout"));
        assert!(bad("-b 1M -e 1K").contains("maxbytes"));
        assert!(bad("--plot-peer a.csv").contains("--plot"));
        assert!(bad("stray").contains("unexpected argument"));
        assert!(bad("-f 1 -i 0 -b 8 -e 64").contains("stepbytes"));
    }

    #[test]
    fn sizes_step_as_nccl_tests() {
        assert_eq!(sizes(&parse("-b 8 -e 256K -f 8").unwrap()), [8, 64, 512, 4096, 32768, 262144]);
        assert_eq!(sizes(&parse("-b 8 -e 100 -f 2").unwrap()), [8, 16, 32, 64]);
        assert_eq!(sizes(&parse("-b 0 -e 4 -f 2").unwrap()), [0, 1, 2, 4]);
        assert_eq!(sizes(&parse("-b 1K -e 4K -f 1 -i 1K").unwrap()), [1024, 2048, 3072, 4096]);
        assert_eq!(sizes(&parse("-b 5 -e 5").unwrap()), [5]);
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("-1"), None);
    }

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

    /// Without progress notes a row leaves in one piece, when its line ends; with them,
    /// each piece at once, the note before it erased.
    #[test]
    fn rows_are_written_whole_unless_progress_shows() {
        let mut o = Stdout::new();
        assert_eq!(o.text("# header\n"), Some("# header\n".into()));
        assert_eq!(o.note("  [row 1/2, out-of-place]"), None);
        assert_eq!(o.text("           8"), None);
        assert_eq!(o.text("  1.0"), None);
        assert_eq!(o.text("  2.0\n           16"), Some("           8  1.0  2.0\n".into()));
        assert_eq!(o.pending, "           16");
        let mut o = Stdout { live: true, ..Stdout::new() };
        assert_eq!(o.text("           8"), Some("           8".into()));
        assert_eq!(o.note(" [r]"), Some(" [r]".into()));
        assert_eq!(o.text("  1.0"), Some("\x08\x08\x08\x08    \x08\x08\x08\x08  1.0".into()));
        assert_eq!(o.text("\n"), Some("\n".into()));
    }

    #[test]
    fn progress_only_where_a_person_watches() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        // Open MPI, MPICH, Slurm (one task too), oxccl-run, torchrun, an address alone.
        for vars in [
            &[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")][..],
            &[("PMI_RANK", "1")],
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")],
            &[("OXCCL_RANK", "0"), ("OXCCL_NRANKS", "4")],
            &[("RANK", "0"), ("WORLD_SIZE", "2")],
            &[("OXCCL_COMM_ID", "h:1")],
        ] {
            assert!(launched(env(vars)), "{vars:?}");
            assert!(!shows_progress(None, true, launched(env(vars))), "{vars:?}");
        }
        assert!(!launched(env(&[("OXCCL_RANK", " "), ("HOME", "/root")])));
        assert!(shows_progress(None, true, false));
        assert!(!shows_progress(None, false, false));
        assert!(shows_progress(Some(true), false, true));
        assert!(!shows_progress(Some(false), true, false));
        assert_eq!(parse("--progress 1").unwrap().progress, Some(true));
        assert_eq!(parse("--progress=0").unwrap().progress, Some(false));
        assert_eq!(parse("").unwrap().progress, None);
        assert!(bad("--progress 2").contains("progress"));
    }

    #[test]
    fn c_formats() {
        assert_eq!(c_g(0.0888226), "0.0888226");
        assert_eq!(c_g(1234567.0), "1.23457e+06");
        assert_eq!(float_str(12.345, 6), " 12.35");
        assert_eq!(float_str(1234567.0, 7), "1234567");
        assert_eq!(float_str(12345678.0, 7), "1.2e+07");
    }
}
