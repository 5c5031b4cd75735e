//! Bruck's all-gather, for small blocks and many ranks: `ceil(log2 n)` rounds where a
//! ring takes `n - 1` steps. In round `k`, rank `r` sends the blocks it holds that are
//! `r, r + 1, ...` (at most `2^k` of them) to rank `r - 2^k`, and receives as many,
//! starting at block `r + 2^k`, from rank `r + 2^k`; after the last round it holds every
//! block. Blocks go straight to their place in the output, so a round's blocks are one
//! range of it, or two where they wrap past the last rank.
//!
//! Within a round the sends and receives alternate, piece by piece, so a rank always
//! drains what it is sent while it sends: no ring of full FIFOs can form.

use super::direct::{P2p, P2pKind};
use super::{Peers, Rank, Span, Step};

/// One message of a round: a send to the rank behind, or a receive from the rank ahead.
#[derive(Clone, Copy, Debug)]
struct Piece {
    send: bool,
    peer: Rank,
    offset: usize,
    count: usize,
}

/// The all-gather of rank `me` of `n`, with `count` elements per rank.
#[derive(Clone, Debug)]
pub struct Bruck {
    copy: P2p,
    pieces: Vec<Piece>,
    at: usize,
    channel: u8,
}

/// The ranges of the output holding blocks `first .. first + m` (modulo `n`) of `count`
/// elements: one range, or two where they wrap.
fn ranges(first: usize, m: usize, n: usize, count: usize) -> impl Iterator<Item = (usize, usize)> {
    let end = first + m;
    let head = (first * count, (end.min(n) - first) * count);
    let tail = (end > n).then(|| (0, (end - n) * count));
    std::iter::once(head).chain(tail)
}

impl Bruck {
    /// The schedule of rank `me` of `n`, `count` elements per rank, messages of at most
    /// `chunk` elements, on `channel`.
    pub fn new(me: Rank, n: usize, count: usize, chunk: usize, channel: u8) -> Bruck {
        let chunk = chunk.max(1);
        let copy = P2p::new(P2pKind::Local, 0, me * count, count, chunk, channel);
        let cut = |send: bool, peer: Rank, first: usize, m: usize| -> Vec<Piece> {
            let mut v = Vec::new();
            for (off, len) in ranges(first, m, n, count) {
                let mut at = 0;
                while at < len {
                    let c = chunk.min(len - at);
                    v.push(Piece { send, peer, offset: off + at, count: c });
                    at += c;
                }
            }
            v
        };
        let mut pieces = Vec::new();
        let mut d = 1;
        while d < n && count > 0 {
            let m = d.min(n - d);
            let sends = cut(true, (me + n - d) % n, me, m);
            let recvs = cut(false, (me + d) % n, (me + d) % n, m);
            for i in 0..sends.len().max(recvs.len()) {
                pieces.extend(sends.get(i));
                pieces.extend(recvs.get(i));
            }
            d *= 2;
        }
        Bruck { copy, pieces, at: 0, channel }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        let mut seen = Vec::new();
        for p in &self.pieces {
            if !seen.contains(&(p.peer, p.send)) {
                seen.push((p.peer, p.send));
                f(p.peer, self.channel, p.send);
            }
        }
    }
}

impl Iterator for Bruck {
    type Item = Step;

    /// The next step: this rank's own block into place, then the rounds' pieces.
    fn next(&mut self) -> Option<Step> {
        if let Some(s) = self.copy.next() {
            return Some(s);
        }
        let p = *self.pieces.get(self.at)?;
        self.at += 1;
        let mut s = Step::new(p.count, self.channel);
        if p.send {
            s.input = Some(Span::recv(p.offset));
            s.send = Peers::One(p.peer);
        } else {
            s.recv = Peers::One(p.peer);
            s.output = Some(Span::recv(p.offset));
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_blocks_are_two_ranges() {
        assert_eq!(ranges(2, 2, 8, 10).collect::<Vec<_>>(), [(20, 20)]);
        assert_eq!(ranges(6, 4, 8, 10).collect::<Vec<_>>(), [(60, 20), (0, 20)]);
    }

    #[test]
    fn a_rank_talks_to_log_n_ranks_each_way() {
        let mut links = Vec::new();
        Bruck::new(3, 100, 5, 1000, 0).links(&mut |p, _, send| links.push((p, send)));
        assert_eq!(links.len(), 2 * 7, "{links:?}");
        assert!(links.contains(&(2, true)) && links.contains(&(4, false)) && links.contains(&(67, false)));
    }

    #[test]
    fn every_block_is_received_once() {
        for n in [2usize, 3, 5, 8, 13] {
            for r in 0..n {
                let b = Bruck::new(r, n, 3, 2, 0);
                let mut got = vec![0; n * 3];
                for p in b.pieces.iter().filter(|p| !p.send) {
                    for e in &mut got[p.offset..p.offset + p.count] {
                        *e += 1;
                    }
                }
                for (i, g) in got.iter().enumerate() {
                    let own = i / 3 == r;
                    assert_eq!(*g, usize::from(!own), "n = {n}, rank {r}, element {i}");
                }
            }
        }
    }
}
