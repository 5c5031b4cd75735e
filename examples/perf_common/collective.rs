//! What a benchmark describes: the [`Collective`] trait each `*_perf` example implements
//! (in [`super::collectives`]), with the buffer [`Layout`] of one call, the [`CallCtx`]
//! it runs in, and the [`Segment`]s that say where inputs go and what outputs must hold.
//! It owns no behaviour: the rest of the harness runs, times and checks what this
//! describes.

use oxccl::{Comm, Element, ReduceOp};

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
