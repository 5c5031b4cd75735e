//! Collective schedules: which chunk goes to which peer, and what is reduced with what.
//!
//! This module is pure. A schedule is an iterator of [`Step`]s for one rank; it touches no
//! memory and no link. The executor (`exec/`) runs steps over real FIFOs; the tests in
//! this module run them over in-memory queues, for every rank at once, without threads.
//!
//! A step says: receive one message from each peer in `recv`, combine them with the
//! local `input` span (reducing if the call reduces, else there is exactly one source),
//! write the result to the local `output` span and send it to each peer in `send`.
//! Spans are element offsets into the call's send or receive buffer; every message of a
//! step holds `count` elements.

pub mod barrier;
pub mod bruck;
pub mod direct;
pub mod doubling;
pub mod ring;
pub mod tree;

pub use crate::call::{Algo, Collective, Rank};

/// Which of the call's buffers a span points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The send (input) buffer.
    Send,
    /// The receive (output) buffer.
    Recv,
}

/// `count` elements at `offset` (in elements) of a buffer; the count is the step's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// Which buffer.
    pub buf: Buf,
    /// Element offset.
    pub offset: usize,
}

impl Span {
    /// A span of the send buffer.
    pub const fn send(offset: usize) -> Span {
        Span { buf: Buf::Send, offset }
    }
    /// A span of the receive buffer.
    pub const fn recv(offset: usize) -> Span {
        Span { buf: Buf::Recv, offset }
    }
}

/// The peers a step receives from or sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peers {
    /// Nobody.
    None,
    /// One peer.
    One(Rank),
    /// Two peers (tree children).
    Two(Rank, Rank),
    /// Every rank except the local one.
    Others,
}

impl Peers {
    /// Up to two peers from options (tree children).
    pub fn from_opts(a: Option<Rank>, b: Option<Rank>) -> Peers {
        match (a, b) {
            (Some(a), Some(b)) => Peers::Two(a, b),
            (Some(a), None) | (None, Some(a)) => Peers::One(a),
            (None, None) => Peers::None,
        }
    }

    /// Whether the set is empty (for `me` among `n` ranks).
    #[cfg(test)]
    pub fn is_empty(&self, n: usize) -> bool {
        match self {
            Peers::None => true,
            Peers::Others => n <= 1,
            _ => false,
        }
    }

    /// Calls `f` for each peer, in ascending order for `Others`.
    #[inline]
    pub fn for_each(&self, me: Rank, n: usize, mut f: impl FnMut(Rank)) {
        match *self {
            Peers::None => {}
            Peers::One(a) => f(a),
            Peers::Two(a, b) => {
                f(a);
                f(b)
            }
            Peers::Others => (0..n).filter(|&p| p != me).for_each(f),
        }
    }

    /// Returns true if `f` holds for every peer.
    #[inline]
    pub fn all(&self, me: Rank, n: usize, mut f: impl FnMut(Rank) -> bool) -> bool {
        match *self {
            Peers::None => true,
            Peers::One(a) => f(a),
            Peers::Two(a, b) => f(a) && f(b),
            Peers::Others => (0..n).filter(|&p| p != me).all(f),
        }
    }
}

/// One step of a schedule (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Elements in every message and span of this step.
    pub count: usize,
    /// The channel the step's links use.
    pub channel: u8,
    /// Peers to receive one message from.
    pub recv: Peers,
    /// The local operand, read from the call's buffers (the rank's own contribution in a
    /// reducing call).
    pub input: Option<Span>,
    /// Where the result lands locally.
    pub output: Option<Span>,
    /// Peers that receive the result.
    pub send: Peers,
    /// Apply the reduction's final transformation (Avg's division) to the result.
    pub finalize: bool,
    /// Every source is a raw contribution: a send forwards the input unchanged, and a
    /// combining step applies the pre-operation to every source and folds them in
    /// ascending rank order, so that every rank computing this step gets identical bits.
    pub raw: bool,
    /// The input span holds a partial result of an earlier stage (hierarchical
    /// all-reduce), not a raw contribution: no pre-operation applies to it.
    pub partial: bool,
}

impl Step {
    /// A step with no peers and no spans, to be filled in.
    pub const fn new(count: usize, channel: u8) -> Step {
        Step {
            count,
            channel,
            recv: Peers::None,
            input: None,
            output: None,
            send: Peers::None,
            finalize: false,
            raw: false,
            partial: false,
        }
    }
}

/// How data is cut into steps: no message exceeds `chunk` elements, and the cuts of a
/// split fall on multiples of `align` elements where possible (whole cache lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    /// Most elements per message (a slot's capacity).
    pub chunk: usize,
    /// Preferred granularity of splits, in elements.
    pub align: usize,
}

impl Chunking {
    /// `remaining` elements split into `parts` near-equal pieces, each at most `chunk`
    /// elements and a multiple of `align` where that does not exceed `chunk`.
    pub fn part(&self, remaining: usize, parts: usize) -> usize {
        let even = remaining.div_ceil(parts.max(1));
        let aligned = even.div_ceil(self.align.max(1)) * self.align.max(1);
        aligned.min(self.chunk).max(1)
    }
}

/// A stream of steps; one call runs one or more streams concurrently.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A pipelined ring (all-reduce, reduce-scatter, all-gather, broadcast, reduce).
    Ring(ring::Ring),
    /// Reduce up one binary tree (and, at its root, start the broadcast down).
    TreeUp(tree::Up),
    /// Broadcast down one binary tree.
    TreeDown(tree::Down),
    /// Every rank sends to and receives from every other (one-shot all-reduce, barrier).
    AllToAll(direct::Exchange),
    /// Point-to-point send or receive, or a local copy.
    P2p(direct::P2p),
    /// Stages run one after the other (hierarchical all-reduce).
    Chain(Chain),
    /// Recursive doubling (all-reduce of small messages over expensive links).
    Doubling(doubling::Doubling),
    /// The dissemination barrier.
    Barrier(barrier::Dissemination),
    /// Bruck's all-gather.
    Bruck(bruck::Bruck),
    /// The root of a broadcast down a tree.
    Source(tree::Source),
}

/// Schedules run one after the other in one stream.
#[derive(Clone, Debug)]
pub struct Chain {
    parts: Vec<Schedule>,
    at: usize,
}

impl Chain {
    /// The stages, in order.
    pub fn new(parts: Vec<Schedule>) -> Chain {
        Chain { parts, at: 0 }
    }
}

impl Iterator for Chain {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        while self.at < self.parts.len() {
            if let Some(s) = self.parts[self.at].next_step() {
                return Some(s);
            }
            self.at += 1;
        }
        None
    }
}

impl Schedule {
    /// The next step, or `None` when the stream is finished.
    #[inline]
    pub fn next_step(&mut self) -> Option<Step> {
        match self {
            Schedule::Ring(s) => s.next(),
            Schedule::TreeUp(s) => s.next(),
            Schedule::TreeDown(s) => s.next(),
            Schedule::AllToAll(s) => s.next(),
            Schedule::P2p(s) => s.next(),
            Schedule::Chain(s) => s.next(),
            Schedule::Doubling(s) => s.next(),
            Schedule::Barrier(s) => s.next(),
            Schedule::Bruck(s) => s.next(),
            Schedule::Source(s) => s.next(),
        }
    }

    /// Calls `f` for every link `(peer, channel, is_send)` the stream may use.
    pub fn links(&self, me: Rank, n: usize, f: &mut dyn FnMut(Rank, u8, bool)) {
        match self {
            Schedule::Ring(s) => s.links(f),
            Schedule::TreeUp(s) => s.links(f),
            Schedule::TreeDown(s) => s.links(f),
            Schedule::AllToAll(s) => s.links(me, n, f),
            Schedule::P2p(s) => s.links(f),
            Schedule::Chain(c) => c.parts.iter().for_each(|p| p.links(me, n, f)),
            Schedule::Doubling(d) => d.links(f),
            Schedule::Barrier(b) => b.links(f),
            Schedule::Bruck(b) => b.links(f),
            Schedule::Source(s) => s.links(f),
        }
    }
}

/// The block `[lo, hi)` of `count` elements that rank `r` of `n` handles in a direct
/// collective: near-equal blocks, cut on multiples of `align` elements.
pub fn block(count: usize, n: usize, r: usize, align: usize) -> (usize, usize) {
    let align = align.max(1);
    let per = count.div_ceil(n).div_ceil(align) * align;
    ((r * per).min(count), ((r + 1) * per).min(count))
}

/// Where a rank sits in the communicator's rings and trees (computed once per
/// communicator).
#[derive(Clone, Debug)]
pub struct Topo {
    /// This rank.
    pub me: Rank,
    /// The ring order: `ring[pos]` is the rank at position `pos`.
    pub ring: std::sync::Arc<[Rank]>,
    /// This rank's position on the ring.
    pub ring_pos: usize,
    /// This rank's nodes in the two trees.
    pub trees: [tree::TreeNode; 2],
    /// The ranks of each host, in ring order (one group when all share a host).
    pub hosts: Vec<Vec<Rank>>,
}

impl Topo {
    /// Ring `order` (a permutation of `0..n`) and double binary trees for rank `me`.
    pub fn new(me: Rank, order: Vec<Rank>) -> Topo {
        let n = order.len();
        let ring_pos = order.iter().position(|&r| r == me).expect("rank on its ring");
        let hosts = vec![order.clone()];
        Topo { me, ring: order.into(), ring_pos, trees: tree::double_tree(n, me), hosts }
    }

    /// As [`Topo::new`], with the ranks grouped by host (each group in ring order).
    pub fn with_hosts(me: Rank, order: Vec<Rank>, hosts: Vec<Vec<Rank>>) -> Topo {
        Topo { hosts, ..Topo::new(me, order) }
    }

    /// Whether a hierarchical all-reduce makes sense: several hosts, one with several
    /// ranks.
    pub fn hierarchical(&self) -> bool {
        self.hosts.len() > 1 && self.hosts.iter().any(|h| h.len() > 1)
    }

    /// Number of ranks.
    pub fn n(&self) -> usize {
        self.ring.len()
    }
}

/// The channel of point-to-point sends and receives. Collectives are issued in the same
/// order on every rank, but a send and its matching receive may sit at different places
/// among a group's collectives on the two ranks, so they must not share a FIFO with
/// collectives.
pub const P2P_CHANNEL: u8 = 2;

/// Appends to `out` the streams that run `coll` with `algo` on this rank. The caller has
/// checked that `algo` applies, and handles single-rank communicators itself only for
/// speed: every collective is also correct here with one rank.
pub fn schedules(coll: &Collective, algo: Algo, topo: &Topo, chunking: Chunking, out: &mut Vec<Schedule>) {
    use Collective as C;
    let (me, n) = (topo.me, topo.n());
    let local = |src: usize, dst: usize, count: usize| {
        Schedule::P2p(direct::P2p::new(direct::P2pKind::Local, src, dst, count, count, 0))
    };
    let ring = |kind: ring::RingKind, count: usize| {
        Schedule::Ring(ring::Ring::new(kind, topo.ring.clone(), topo.ring_pos, count, chunking, 0))
    };
    let p2p = |kind: direct::P2pKind, src: usize, dst: usize, count: usize| {
        Schedule::P2p(direct::P2p::new(kind, src, dst, count, chunking.chunk, 0))
    };
    if let C::SelfCopy { count } = *coll {
        out.push(local(0, 0, count));
        return;
    }
    if n == 1 {
        match *coll {
            C::AllReduce { count }
            | C::Reduce { count, .. }
            | C::Broadcast { count, .. }
            | C::AllGather { count }
            | C::ReduceScatter { count }
            | C::AllToAll { count }
            | C::Gather { count, .. }
            | C::Scatter { count, .. } => out.push(local(0, 0, count)),
            C::Send { .. } | C::Recv { .. } | C::Barrier | C::SelfCopy { .. } => {}
        }
        return;
    }
    match (*coll, algo) {
        (C::AllReduce { count }, Algo::Ring) => out.push(ring(ring::RingKind::AllReduce, count)),
        (C::Broadcast { count, root }, Algo::Tree) => {
            let node = tree::rooted_tree(n, me, root);
            out.push(match node.parent {
                None => Schedule::Source(tree::Source::new(node, count, chunking, 0)),
                Some(_) => Schedule::TreeDown(tree::Down::new(node, 0, count, chunking, 0)),
            });
        }
        (C::Reduce { count, root }, Algo::Tree) => {
            out.push(Schedule::TreeUp(tree::Up::to_root(tree::rooted_tree(n, me, root), count, chunking, 0)))
        }
        (C::AllGather { count }, Algo::Bruck) => {
            out.push(Schedule::Bruck(bruck::Bruck::new(me, n, count, chunking.chunk, 0)))
        }
        (C::Reduce { count, root }, _) => out.push(ring(ring::RingKind::Reduce { root }, count)),
        (C::Broadcast { count, root }, _) => out.push(ring(ring::RingKind::Broadcast { root }, count)),
        (C::AllGather { count }, _) => out.push(ring(ring::RingKind::AllGather, count)),
        (C::ReduceScatter { count }, _) => out.push(ring(ring::RingKind::ReduceScatter, count)),
        (C::AllReduce { count }, Algo::Hier) => out.push(hierarchical(count, topo, chunking)),
        (C::AllReduce { count }, Algo::Doubling) => {
            out.push(Schedule::Doubling(doubling::Doubling::new(me, n, count, chunking.chunk, 0)))
        }
        (C::AllReduce { count }, Algo::Tree) => {
            for (t, node) in topo.trees.iter().enumerate() {
                let (lo, hi) = tree::half(count, chunking.align, t);
                if lo >= hi {
                    continue;
                }
                out.push(Schedule::TreeUp(tree::Up::new(*node, lo, hi, chunking, t as u8)));
                if node.parent.is_some() {
                    out.push(Schedule::TreeDown(tree::Down::new(*node, lo, hi, chunking, t as u8)));
                }
            }
        }
        (C::AllReduce { count }, _) => out.push(Schedule::AllToAll(direct::Exchange::new(
            direct::ExchangeKind::AllReduce,
            count,
            chunking.chunk,
            0,
        ))),
        (C::Barrier, _) => out.push(Schedule::Barrier(barrier::Dissemination::new(me, n, 0))),
        (C::AllToAll { count }, _) => {
            for p in (0..n).filter(|&p| p != me) {
                out.push(p2p(direct::P2pKind::Send(p), p * count, 0, count));
                out.push(p2p(direct::P2pKind::Recv(p), 0, p * count, count));
            }
            out.push(local(me * count, me * count, count));
        }
        (C::Gather { count, root }, _) => {
            if me == root {
                for p in (0..n).filter(|&p| p != me) {
                    out.push(p2p(direct::P2pKind::Recv(p), 0, p * count, count));
                }
                out.push(local(0, me * count, count));
            } else {
                out.push(p2p(direct::P2pKind::Send(root), 0, 0, count));
            }
        }
        (C::Scatter { count, root }, _) => {
            if me == root {
                for p in (0..n).filter(|&p| p != me) {
                    out.push(p2p(direct::P2pKind::Send(p), p * count, 0, count));
                }
                out.push(local(me * count, 0, count));
            } else {
                out.push(p2p(direct::P2pKind::Recv(root), 0, 0, count));
            }
        }
        (C::Send { count, peer }, _) => out.push(Schedule::P2p(direct::P2p::new(
            direct::P2pKind::Send(peer),
            0,
            0,
            count,
            chunking.chunk,
            P2P_CHANNEL,
        ))),
        (C::Recv { count, peer }, _) => out.push(Schedule::P2p(direct::P2p::new(
            direct::P2pKind::Recv(peer),
            0,
            0,
            count,
            chunking.chunk,
            P2P_CHANNEL,
        ))),
        (C::SelfCopy { .. }, _) => {}
    }
}

/// The three stages of a hierarchical all-reduce for this rank, in one stream.
fn hierarchical(count: usize, topo: &Topo, chunking: Chunking) -> Schedule {
    let me = topo.me;
    let host = topo.hosts.iter().find(|h| h.contains(&me)).expect("rank on a host");
    let leader = host[0];
    let pos_in = |order: &[Rank]| order.iter().position(|&r| r == me).expect("rank in group");
    let mut parts = Vec::new();
    if host.len() > 1 {
        let order: std::sync::Arc<[Rank]> = host.clone().into();
        let pos = pos_in(&order);
        parts.push(Schedule::Ring(
            ring::Ring::new(ring::RingKind::Reduce { root: leader }, order, pos, count, chunking, 0).stage(
                Buf::Send,
                false,
                false,
            ),
        ));
    } else {
        parts.push(Schedule::P2p(direct::P2p::local_stage(count)));
    }
    if me == leader {
        let leaders: std::sync::Arc<[Rank]> = topo.hosts.iter().map(|h| h[0]).collect::<Vec<_>>().into();
        let pos = pos_in(&leaders);
        parts.push(Schedule::Ring(ring::Ring::new(ring::RingKind::AllReduce, leaders, pos, count, chunking, 0).stage(
            Buf::Recv,
            true,
            true,
        )));
    }
    if host.len() > 1 {
        let order: std::sync::Arc<[Rank]> = host.clone().into();
        let pos = pos_in(&order);
        parts.push(Schedule::Ring(
            ring::Ring::new(ring::RingKind::Broadcast { root: leader }, order, pos, count, chunking, 0).stage(
                Buf::Recv,
                true,
                true,
            ),
        ));
    }
    Schedule::Chain(Chain::new(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_count_once_on_aligned_cuts() {
        for (count, n, align) in [(0, 3, 1), (10, 3, 1), (1000, 4, 16), (7, 8, 4), (1 << 20, 6, 16)] {
            let mut next = 0;
            for r in 0..n {
                let (lo, hi) = block(count, n, r, align);
                assert_eq!(lo, next, "{count} {n} {align}: blocks touch");
                assert!(lo == count || lo % align == 0, "aligned start");
                next = hi;
            }
            assert_eq!(next, count, "{count} {n} {align}: every element once");
        }
    }

    #[test]
    fn chunking_splits_evenly_within_a_slot() {
        let c = Chunking { chunk: 64, align: 16 };
        assert_eq!(c.part(100, 2), 64, "at most a slot");
        assert_eq!(c.part(40, 2), 32, "aligned halves");
        assert_eq!(c.part(10, 4), 16, "rounded up to the alignment");
        assert_eq!(c.part(0, 3), 1, "never empty");
    }

    #[test]
    fn peers_visit_in_order_and_skip_this_rank() {
        let mut seen = Vec::new();
        Peers::Others.for_each(2, 5, |p| seen.push(p));
        assert_eq!(seen, [0, 1, 3, 4]);
        assert_eq!(Peers::from_opts(None, Some(3)), Peers::One(3));
        assert!(Peers::Others.is_empty(1) && !Peers::Two(0, 1).is_empty(2));
        assert!(!Peers::Two(1, 4).all(0, 5, |p| p < 3));
    }

    #[test]
    fn one_rank_copies_locally_and_point_to_point_uses_its_own_channel() {
        let topo = Topo::new(0, vec![0]);
        let mut out = Vec::new();
        let c = Chunking { chunk: 8, align: 1 };
        schedules(&Collective::AllReduce { count: 20 }, Algo::Ring, &topo, c, &mut out);
        let mut links = 0;
        out[0].links(0, 1, &mut |_, _, _| links += 1);
        assert_eq!((out.len(), links), (1, 0), "no link with one rank");
        let topo = Topo::new(1, vec![0, 1, 2]);
        out.clear();
        schedules(&Collective::Send { count: 20, peer: 2 }, Algo::P2p, &topo, c, &mut out);
        let mut chans = Vec::new();
        out[0].links(1, 3, &mut |p, ch, send| chans.push((p, ch, send)));
        assert_eq!(chans, [(2, P2P_CHANNEL, true)]);
    }
}

#[cfg(test)]
pub(crate) mod sim;
