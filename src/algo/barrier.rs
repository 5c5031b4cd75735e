//! The dissemination barrier: in round `k` (of `ceil(log2 n)`), rank `r` sends an empty
//! message to `r + 2^k` and receives one from `r - 2^k` (modulo `n`). After the last
//! round every rank has heard, through a chain of messages, from every other: no rank
//! leaves before all have entered. Each rank links to `2 ceil(log2 n)` peers, where a
//! barrier that sends to everyone links to all `2 (n - 1)`: at scale the difference is
//! the memory and the connections of every rank.

use super::{Peers, Rank, Step};

/// A dissemination barrier for rank `me` of `n`.
#[derive(Clone, Debug)]
pub struct Dissemination {
    me: Rank,
    n: usize,
    channel: u8,
    /// The distance of the current round (`2^k`).
    dist: usize,
    /// The current round's send is done; its receive is next.
    sent: bool,
}

impl Dissemination {
    /// The barrier of rank `me` of `n` on `channel`.
    pub fn new(me: Rank, n: usize, channel: u8) -> Dissemination {
        Dissemination { me, n, channel, dist: 1, sent: false }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        let mut d = 1;
        while d < self.n {
            f((self.me + d) % self.n, self.channel, true);
            f((self.me + self.n - d) % self.n, self.channel, false);
            d *= 2;
        }
    }
}

impl Iterator for Dissemination {
    type Item = Step;

    /// The next step: each round sends, then receives (a step that did both would wait
    /// to receive before sending, on every rank at once).
    fn next(&mut self) -> Option<Step> {
        if self.dist >= self.n {
            return None;
        }
        let mut s = Step::new(0, self.channel);
        if !self.sent {
            s.send = Peers::One((self.me + self.dist) % self.n);
            self.sent = true;
        } else {
            s.recv = Peers::One((self.me + self.n - self.dist) % self.n);
            self.sent = false;
            self.dist *= 2;
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_hears_from_every_other_through_the_rounds() {
        for n in [2usize, 3, 5, 8, 13] {
            // knows[r] = ranks whose entry r has heard of, after each round.
            let mut knows: Vec<u64> = (0..n).map(|r| 1 << r).collect();
            let mut scheds: Vec<Dissemination> = (0..n).map(|r| Dissemination::new(r, n, 0)).collect();
            loop {
                let steps: Vec<Option<Step>> = scheds.iter_mut().map(|s| s.next()).collect();
                if steps.iter().all(Option::is_none) {
                    break;
                }
                // A round is a send step on every rank, then a receive step on every rank.
                let sent: Vec<(Rank, u64)> = steps
                    .iter()
                    .enumerate()
                    .filter_map(|(r, s)| match s.map(|s| s.send) {
                        Some(Peers::One(p)) => Some((p, knows[r])),
                        _ => None,
                    })
                    .collect();
                if sent.is_empty() {
                    continue;
                }
                let recv: Vec<Step> = scheds.iter_mut().map(|s| s.next().expect("a receive after a send")).collect();
                for (p, k) in sent {
                    knows[p] |= k;
                }
                assert!(recv.iter().all(|s| s.recv != Peers::None && s.send == Peers::None));
            }
            let all = (1u64 << n) - 1;
            assert!(knows.iter().all(|&k| k == all), "n = {n}: {knows:?}");
        }
    }

    #[test]
    fn a_rank_links_to_two_log_n_peers() {
        let mut links = Vec::new();
        Dissemination::new(3, 100, 0).links(&mut |p, _, send| links.push((p, send)));
        assert_eq!(links.len(), 2 * 7, "ceil(log2 100) = 7 rounds: {links:?}");
        assert!(links.contains(&(4, true)) && links.contains(&(2, false)) && links.contains(&(67, true)));
    }
}
