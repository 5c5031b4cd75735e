//! Pipelined rings.
//!
//! Ranks sit on a ring (`order[pos]` is the rank at position `pos`); each receives from
//! the previous position and sends to the next. Data is cut into chunks no larger than a
//! slot, so every link carries a stream of chunks and all ranks work at once.
//!
//! - **All-reduce** (reduce-scatter, then all-gather): each loop covers `n` parts of the
//!   data; at step `k` of a loop the rank at position `p` handles part `(p - 1 - k) mod n`.
//!   Steps `0..n-1` reduce (the part is complete at step `n-1`, on its owner), steps
//!   `n-1..2n-1` circulate the reduced parts.
//! - **Reduce-scatter** and **all-gather**: the same two halves alone, over blocks of one
//!   rank each.
//! - **Broadcast**: a chain from the root along the ring. **Reduce**: a chain that ends
//!   at the root.

use std::sync::Arc;

use super::{Buf, Chunking, Peers, Rank, Span, Step};

/// Which collective a ring runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    /// `count` elements reduced everywhere.
    AllReduce,
    /// Send buffer of `n * count` elements; each rank receives its reduced block of
    /// `count`.
    ReduceScatter,
    /// Send buffer of `count` elements; each rank receives every rank's block.
    AllGather,
    /// `count` elements from the root to everyone.
    Broadcast {
        /// The root rank.
        root: Rank,
    },
    /// `count` elements reduced onto the root.
    Reduce {
        /// The root rank.
        root: Rank,
    },
}

/// One rank's walk around a ring.
#[derive(Clone, Debug)]
pub struct Ring {
    kind: RingKind,
    order: Arc<[Rank]>,
    pos: usize,
    count: usize,
    chunking: Chunking,
    channel: u8,
    /// Buffer the local input is read from (the receive buffer for a later stage of a
    /// hierarchical all-reduce), whether it then holds a partial result, and whether the
    /// final reduction step finalizes.
    input_buf: Buf,
    partial: bool,
    finalize: bool,
    // Cursor: start of the current loop, its part size, and the step within it.
    base: usize,
    part: usize,
    k: usize,
}

impl Ring {
    /// The ring for the rank at position `pos` of `order` (at least 2 ranks).
    pub fn new(kind: RingKind, order: Arc<[Rank]>, pos: usize, count: usize, chunking: Chunking, channel: u8) -> Ring {
        assert!(order.len() >= 2 && pos < order.len());
        let mut r = Ring {
            kind,
            order,
            pos,
            count,
            chunking,
            channel,
            input_buf: Buf::Send,
            partial: false,
            finalize: true,
            base: 0,
            part: 0,
            k: 0,
        };
        r.part = r.part_at(0);
        r
    }

    /// A stage of a hierarchical all-reduce: the input is read from `input_buf`, holds a
    /// partial result when `partial`, and the last reduction finalizes only if `finalize`.
    pub fn stage(mut self, input_buf: Buf, partial: bool, finalize: bool) -> Ring {
        self.input_buf = input_buf;
        self.partial = partial;
        self.finalize = finalize;
        self
    }

    fn n(&self) -> usize {
        self.order.len()
    }

    fn prev(&self) -> Rank {
        self.order[(self.pos + self.n() - 1) % self.n()]
    }

    fn next_rank(&self) -> Rank {
        self.order[(self.pos + 1) % self.n()]
    }

    fn me(&self) -> Rank {
        self.order[self.pos]
    }

    fn pos_of(&self, rank: Rank) -> usize {
        self.order.iter().position(|&r| r == rank).expect("root is on the ring")
    }

    /// Steps in one loop.
    fn steps(&self) -> usize {
        match self.kind {
            RingKind::AllReduce => 2 * self.n() - 1,
            RingKind::ReduceScatter | RingKind::AllGather => self.n(),
            RingKind::Broadcast { .. } | RingKind::Reduce { .. } => 1,
        }
    }

    fn part_at(&self, base: usize) -> usize {
        let rem = self.count.saturating_sub(base);
        match self.kind {
            RingKind::AllReduce => self.chunking.part(rem, self.n()),
            _ => rem.min(self.chunking.chunk).max(1),
        }
    }

    /// Elements one loop advances.
    fn loop_len(&self) -> usize {
        match self.kind {
            RingKind::AllReduce => self.part * self.n(),
            _ => self.part,
        }
    }

    /// Position of the part handled at step `k` of a loop, `(pos - shift - k) mod n`.
    fn part_pos(&self, shift: usize, k: usize) -> usize {
        let n = self.n();
        (self.pos + 2 * n - shift - (k % n)) % n
    }

    /// Step `k` of the current loop, or `None` if it carries no elements.
    fn step_at(&self, k: usize) -> Option<Step> {
        let n = self.n();
        let mut s = Step::new(0, self.channel);
        match self.kind {
            RingKind::AllReduce => {
                let off = self.base + self.part_pos(1, k) * self.part;
                s.count = self.part.min(self.count.saturating_sub(off));
                if k > 0 {
                    s.recv = Peers::One(self.prev());
                }
                if k < n {
                    s.input = Some(Span::send(off));
                }
                if k >= n - 1 {
                    s.output = Some(Span::recv(off));
                }
                if k < 2 * n - 2 {
                    s.send = Peers::One(self.next_rank());
                }
                s.finalize = k == n - 1;
            }
            RingKind::ReduceScatter => {
                let block = self.order[self.part_pos(1, k)];
                s.count = self.part.min(self.count - self.base);
                if k > 0 {
                    s.recv = Peers::One(self.prev());
                }
                s.input = Some(Span::send(block * self.count + self.base));
                if k < n - 1 {
                    s.send = Peers::One(self.next_rank());
                } else {
                    s.output = Some(Span::recv(self.base));
                    s.finalize = true;
                }
            }
            RingKind::AllGather => {
                let block = self.order[self.part_pos(0, k)];
                s.count = self.part.min(self.count - self.base);
                if k == 0 {
                    s.input = Some(Span::send(self.base));
                } else {
                    s.recv = Peers::One(self.prev());
                }
                s.output = Some(Span::recv(block * self.count + self.base));
                if k < n - 1 {
                    s.send = Peers::One(self.next_rank());
                }
            }
            RingKind::Broadcast { root } => {
                let rel = (self.pos + n - self.pos_of(root)) % n;
                s.count = self.part.min(self.count - self.base);
                if rel == 0 {
                    s.input = Some(Span::send(self.base));
                } else {
                    s.recv = Peers::One(self.prev());
                }
                s.output = Some(Span::recv(self.base));
                if rel < n - 1 {
                    s.send = Peers::One(self.next_rank());
                }
            }
            RingKind::Reduce { root } => {
                let rel = (self.pos + 2 * n - self.pos_of(root) - 1) % n;
                s.count = self.part.min(self.count - self.base);
                if rel > 0 {
                    s.recv = Peers::One(self.prev());
                }
                s.input = Some(Span::send(self.base));
                if rel < n - 1 {
                    s.send = Peers::One(self.next_rank());
                } else {
                    s.output = Some(Span::recv(self.base));
                    s.finalize = true;
                }
            }
        }
        if let Some(sp) = s.input.as_mut() {
            if !matches!(self.kind, RingKind::ReduceScatter | RingKind::AllGather) {
                sp.buf = self.input_buf;
            }
            s.partial = self.partial;
        }
        s.finalize &= self.finalize;
        (s.count > 0).then_some(s)
    }

    /// Calls `f(peer, channel, is_send)` for the links this ring uses.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        let n = self.n();
        let (recv, send) = match self.kind {
            RingKind::Broadcast { root } => {
                let rel = (self.pos + n - self.pos_of(root)) % n;
                (rel > 0, rel < n - 1)
            }
            RingKind::Reduce { root } => {
                let rel = (self.pos + 2 * n - self.pos_of(root) - 1) % n;
                (rel > 0, rel < n - 1)
            }
            _ => (true, true),
        };
        if recv {
            f(self.prev(), self.channel, false);
        }
        if send {
            f(self.next_rank(), self.channel, true);
        }
        let _ = self.me();
    }
}

impl Iterator for Ring {
    type Item = Step;

    /// The next step, or `None` when the stream is finished.
    fn next(&mut self) -> Option<Step> {
        loop {
            if self.base >= self.count {
                return None;
            }
            let step = self.step_at(self.k);
            self.k += 1;
            if self.k == self.steps() {
                self.k = 0;
                self.base += self.loop_len();
                self.part = self.part_at(self.base);
            }
            if let Some(s) = step {
                return Some(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(kind: RingKind, n: usize, pos: usize, count: usize) -> Ring {
        let order: Arc<[Rank]> = (0..n).collect::<Vec<_>>().into();
        Ring::new(kind, order, pos, count, Chunking { chunk: 4, align: 1 }, 0)
    }

    #[test]
    fn a_ring_talks_only_to_its_neighbours() {
        let mut links = Vec::new();
        ring(RingKind::AllReduce, 5, 2, 40).links(&mut |p, ch, send| links.push((p, ch, send)));
        links.sort();
        assert_eq!(links, [(1, 0, false), (3, 0, true)]);
    }

    #[test]
    fn an_all_reduce_takes_two_n_minus_one_message_steps_per_chunk_round() {
        // 4 ranks, 16 elements, chunks of 4: one round of 4 blocks of 4.
        let steps: Vec<Step> = ring(RingKind::AllReduce, 4, 0, 16).collect();
        let sends = steps.iter().filter(|s| !s.send.is_empty(4)).count();
        let recvs = steps.iter().filter(|s| !s.recv.is_empty(4)).count();
        assert_eq!((sends, recvs), (6, 6), "2 (n - 1) sends and receives: {steps:?}");
        assert!(steps.iter().all(|s| s.count <= 4));
    }
}
