//! Direct schedules: every rank talks to its peers without relays.
//!
//! - [`Exchange`]: each rank sends its data to all others and reduces what it receives
//!   (one-shot all-reduce: one step of latency, best for small messages and few ranks);
//!   with no data it is a barrier.
//! - [`P2p`]: one point-to-point send or receive (send/recv, all-to-all, gather,
//!   scatter), or a local copy.

use super::{Peers, Rank, Span, Step};

/// What an exchange computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// One-shot all-reduce of `count` elements.
    AllReduce,
    /// A barrier: one empty message to and from every peer.
    Barrier,
}

/// Every rank sends to every other, then combines what it received. Results are
/// combined in ascending rank order on every rank, so all ranks get identical bits.
#[derive(Clone, Debug)]
pub struct Exchange {
    kind: ExchangeKind,
    count: usize,
    chunk: usize,
    channel: u8,
    at: usize,
    phase: u8,
    done: bool,
}

impl Exchange {
    /// An exchange over `count` elements in messages of at most `chunk`.
    pub fn new(kind: ExchangeKind, count: usize, chunk: usize, channel: u8) -> Exchange {
        Exchange { kind, count, chunk: chunk.max(1), channel, at: 0, phase: 0, done: false }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, me: Rank, n: usize, f: &mut dyn FnMut(Rank, u8, bool)) {
        for p in (0..n).filter(|&p| p != me) {
            f(p, self.channel, true);
            f(p, self.channel, false);
        }
    }
}

impl Iterator for Exchange {
    type Item = Step;

    /// The next step, or `None` when the stream is finished.
    fn next(&mut self) -> Option<Step> {
        if self.done {
            return None;
        }
        let count = match self.kind {
            ExchangeKind::Barrier => 0,
            ExchangeKind::AllReduce => {
                if self.at >= self.count {
                    return None;
                }
                self.chunk.min(self.count - self.at)
            }
        };
        let mut s = Step::new(count, self.channel);
        s.raw = true;
        if self.phase == 0 {
            if self.kind == ExchangeKind::AllReduce {
                s.input = Some(Span::send(self.at));
            }
            s.send = Peers::Others;
            self.phase = 1;
        } else {
            s.recv = Peers::Others;
            if self.kind == ExchangeKind::AllReduce {
                s.input = Some(Span::send(self.at));
                s.output = Some(Span::recv(self.at));
                s.finalize = true;
            }
            self.phase = 0;
            self.at += count;
            self.done = self.kind == ExchangeKind::Barrier;
        }
        Some(s)
    }
}

/// What a point-to-point stream does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2pKind {
    /// Send `count` elements from the send buffer at `src` to the peer.
    Send(Rank),
    /// Receive `count` elements from the peer into the receive buffer at `dst`.
    Recv(Rank),
    /// Copy `count` elements locally from `src` to `dst` (applying the reduction's
    /// pre- and post-operations when the call reduces, e.g. with a single rank).
    Local,
}

/// A point-to-point transfer, chunked to the slot size.
#[derive(Clone, Debug)]
pub struct P2p {
    kind: P2pKind,
    src: usize,
    dst: usize,
    count: usize,
    chunk: usize,
    channel: u8,
    at: usize,
    finalize: bool,
}

impl P2p {
    /// A local copy that applies the pre-operation but not the post-operation (the first
    /// stage of a hierarchical all-reduce on a host with one rank).
    pub fn local_stage(count: usize) -> P2p {
        let mut p = P2p::new(P2pKind::Local, 0, 0, count, count, 0);
        p.finalize = false;
        p
    }

    /// A transfer of `count` elements between send-buffer offset `src` and receive-buffer
    /// offset `dst` (each used only where the kind needs it).
    pub fn new(kind: P2pKind, src: usize, dst: usize, count: usize, chunk: usize, channel: u8) -> P2p {
        let chunk = if kind == P2pKind::Local { count.max(1) } else { chunk.max(1) };
        P2p { kind, src, dst, count, chunk, channel, at: 0, finalize: true }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        match self.kind {
            P2pKind::Send(p) => f(p, self.channel, true),
            P2pKind::Recv(p) => f(p, self.channel, false),
            P2pKind::Local => {}
        }
    }
}

impl Iterator for P2p {
    type Item = Step;

    /// The next step, or `None` when the stream is finished.
    fn next(&mut self) -> Option<Step> {
        if self.at >= self.count {
            return None;
        }
        let count = self.chunk.min(self.count - self.at);
        let mut s = Step::new(count, self.channel);
        match self.kind {
            P2pKind::Send(p) => {
                s.input = Some(Span::send(self.src + self.at));
                s.send = Peers::One(p);
            }
            P2pKind::Recv(p) => {
                s.recv = Peers::One(p);
                s.output = Some(Span::recv(self.dst + self.at));
            }
            P2pKind::Local => {
                s.input = Some(Span::send(self.src + self.at));
                s.output = Some(Span::recv(self.dst + self.at));
                s.finalize = self.finalize;
            }
        }
        self.at += count;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_sends_to_and_hears_from_every_other_rank_once_per_chunk() {
        let steps: Vec<Step> = Exchange::new(ExchangeKind::AllReduce, 10, 4, 0).collect();
        let with_peers: Vec<&Step> =
            steps.iter().filter(|s| s.send == Peers::Others || s.recv == Peers::Others).collect();
        assert!(!with_peers.is_empty());
        assert!(steps.iter().all(|s| s.count <= 4));
        let total: usize = steps.iter().filter(|s| s.send == Peers::Others).map(|s| s.count).sum();
        assert_eq!(total, 10, "every element sent once: {steps:?}");
    }

    #[test]
    fn point_to_point_moves_the_count_in_chunks() {
        let steps: Vec<Step> = P2p::new(P2pKind::Send(3), 0, 0, 10, 4, 2).collect();
        assert_eq!(steps.iter().map(|s| s.count).collect::<Vec<_>>(), [4, 4, 2]);
        assert!(steps.iter().all(|s| s.send == Peers::One(3) && s.channel == 2));
        let mut links = Vec::new();
        P2p::new(P2pKind::Recv(1), 0, 0, 10, 4, 2).links(&mut |p, c, send| links.push((p, c, send)));
        assert_eq!(links, [(1, 2, false)]);
    }
}
