//! Recursive doubling all-reduce: in round k every rank exchanges its running result with
//! the rank whose number differs in bit k, so after log2(n) rounds every rank holds the
//! full reduction. Each rank sends log2(n) messages instead of the one-shot's n - 1,
//! which matters where a message is expensive (sockets) and the data is small.
//!
//! For n not a power of two, the `n - p` ranks above the largest power of two `p` first
//! hand their data to a partner below `p` and get the result back at the end. Every rank
//! starts by applying the pre-operation to its own input (in its output buffer), so all
//! later steps combine partial results; pairs are combined commutatively, so every rank
//! ends with identical bits.

use super::{Peers, Rank, Span, Step};

/// One rank's recursive-doubling all-reduce over `count` elements, chunk by chunk.
#[derive(Clone, Debug)]
pub struct Doubling {
    me: Rank,
    n: usize,
    p: usize,
    count: usize,
    chunk: usize,
    channel: u8,
    at: usize,
    step: usize,
}

impl Doubling {
    /// The schedule for rank `me` of `n`.
    pub fn new(me: Rank, n: usize, count: usize, chunk: usize, channel: u8) -> Doubling {
        let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
        Doubling { me, n, p, count, chunk: chunk.max(1), channel, at: 0, step: 0 }
    }

    fn rounds(&self) -> usize {
        self.p.trailing_zeros() as usize
    }

    /// Step `i` of a chunk at `a` of `c` elements, or `None` past the last.
    fn step_at(&self, i: usize, a: usize, c: usize) -> Option<Step> {
        let mut s = Step::new(c, self.channel);
        let partial = |s: &mut Step| {
            s.input = Some(Span::recv(a));
            s.partial = true;
        };
        if i == 0 {
            // The rank's own contribution, pre-operation applied, in its output.
            s.input = Some(Span::send(a));
            s.output = Some(Span::recv(a));
            return Some(s);
        }
        let i = i - 1;
        if self.me >= self.p {
            let partner = self.me - self.p;
            match i {
                0 => {
                    partial(&mut s);
                    s.send = Peers::One(partner);
                }
                1 => {
                    s.recv = Peers::One(partner);
                    s.output = Some(Span::recv(a));
                }
                _ => return None,
            }
            return Some(s);
        }
        let extra = (self.me + self.p < self.n).then_some(self.me + self.p);
        let mut i = i;
        if let Some(x) = extra {
            if i == 0 {
                s.recv = Peers::One(x);
                partial(&mut s);
                s.output = Some(Span::recv(a));
                return Some(s);
            }
            i -= 1;
        }
        let rounds = self.rounds();
        if i < 2 * rounds {
            let k = i / 2;
            let partner = self.me ^ (1 << k);
            partial(&mut s);
            if i.is_multiple_of(2) {
                s.send = Peers::One(partner);
            } else {
                s.recv = Peers::One(partner);
                s.output = Some(Span::recv(a));
                s.finalize = k + 1 == rounds;
            }
            return Some(s);
        }
        match (i - 2 * rounds, extra) {
            (0, Some(x)) => {
                partial(&mut s);
                s.send = Peers::One(x);
                Some(s)
            }
            _ => None,
        }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        if self.me >= self.p {
            f(self.me - self.p, self.channel, true);
            f(self.me - self.p, self.channel, false);
            return;
        }
        if self.me + self.p < self.n {
            f(self.me + self.p, self.channel, true);
            f(self.me + self.p, self.channel, false);
        }
        for k in 0..self.rounds() {
            f(self.me ^ (1 << k), self.channel, true);
            f(self.me ^ (1 << k), self.channel, false);
        }
    }
}

impl Iterator for Doubling {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        loop {
            if self.at >= self.count {
                return None;
            }
            let c = self.chunk.min(self.count - self.at);
            if let Some(s) = self.step_at(self.step, self.at, c) {
                self.step += 1;
                return Some(s);
            }
            self.step = 0;
            self.at += c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partners(me: Rank, n: usize) -> Vec<Rank> {
        let mut v = Vec::new();
        Doubling::new(me, n, 10, 4, 0).links(&mut |p, _, send| {
            if send {
                v.push(p)
            }
        });
        v.sort();
        v
    }

    #[test]
    fn ranks_exchange_with_log2_partners() {
        assert_eq!(partners(0, 8), [1, 2, 4]);
        assert_eq!(partners(5, 8), [1, 4, 7]);
    }

    #[test]
    fn ranks_past_the_power_of_two_fold_into_a_partner_first() {
        // 6 ranks: 4 and 5 hand their data to 0 and 1, which hand the result back.
        assert_eq!(partners(4, 6), [0]);
        assert_eq!(partners(0, 6), [1, 2, 4]);
        assert_eq!(partners(3, 6), [1, 2]);
    }
}
