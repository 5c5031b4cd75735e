//! Double binary trees, as NCCL builds them: two binary trees over the ranks, each
//! carrying half of the data, shaped so that most ranks that are inner nodes of one tree
//! are leaves of the other. Every rank then sends and receives about the same amount,
//! and latency grows with log2(n) instead of n.
//!
//! A tree all-reduce pipelines chunks up the tree (children's partial sums plus the local
//! input go to the parent) and back down (the root's result goes to the children). The
//! up and down streams of a rank are independent, so they run concurrently; the root
//! fuses the two.

use super::{Chunking, Peers, Rank, Span, Step};

/// A rank's place in one tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeNode {
    /// The parent, `None` at the root.
    pub parent: Option<Rank>,
    /// Up to two children.
    pub children: [Option<Rank>; 2],
}

impl TreeNode {
    /// The children as a peer set.
    pub fn child_peers(&self) -> Peers {
        Peers::from_opts(self.children[0], self.children[1])
    }
}

/// `rank`'s node in the balanced in-order binary tree over positions `0..n`, where the
/// rank at position `p` is `(p + shift) % n`. With `n = 2^k - 1` the leaves are exactly
/// the even positions.
pub fn binary_tree(n: usize, rank: Rank, shift: usize) -> TreeNode {
    let to_rank = |p: usize| (p + shift) % n;
    let x = (rank + n - shift % n) % n;
    let (mut lo, mut hi) = (0usize, n - 1);
    let mut parent = None;
    loop {
        let mid = (lo + hi) / 2;
        if x == mid {
            let left = (lo < mid).then(|| to_rank((lo + mid - 1) / 2));
            let right = (mid < hi).then(|| to_rank((mid + 1 + hi) / 2));
            return TreeNode { parent, children: [left, right] };
        }
        parent = Some(to_rank(mid));
        if x < mid {
            hi = mid - 1;
        } else {
            lo = mid + 1;
        }
    }
}

/// `rank`'s node in the balanced binary tree over `n` ranks whose root is `root` (for a
/// broadcast or reduce of small messages: depth `log2 n` where a ring has `n - 1` hops).
pub fn rooted_tree(n: usize, rank: Rank, root: Rank) -> TreeNode {
    let mid = (n - 1) / 2;
    binary_tree(n, rank, (root + n - mid) % n)
}

/// `rank`'s nodes in the two trees: the second is the first shifted by one position, so
/// its leaves are mostly the first's inner nodes.
pub fn double_tree(n: usize, rank: Rank) -> [TreeNode; 2] {
    [binary_tree(n, rank, 0), binary_tree(n, rank, 1)]
}

/// The range `[lo, hi)` of a call's `count` elements that tree `t` (0 or 1) carries.
pub fn half(count: usize, align: usize, t: usize) -> (usize, usize) {
    let h = count.div_ceil(2).div_ceil(align.max(1)) * align.max(1);
    let h = h.min(count);
    if t == 0 { (0, h) } else { (h, count) }
}

/// Reduce up a tree over elements `[lo, hi)`; at the root, write the result and (for an
/// all-reduce) start the broadcast down.
#[derive(Clone, Debug)]
pub struct Up {
    node: TreeNode,
    hi: usize,
    at: usize,
    chunk: usize,
    channel: u8,
    /// The root sends the result down (all-reduce) rather than only keeping it (reduce).
    down: bool,
}

impl Up {
    /// The up stream over `[lo, hi)` for `node`, its root starting the broadcast down.
    pub fn new(node: TreeNode, lo: usize, hi: usize, chunking: Chunking, channel: u8) -> Up {
        Up { node, hi, at: lo, chunk: chunking.chunk, channel, down: true }
    }

    /// The up stream of a reduce: the root keeps the result.
    pub fn to_root(node: TreeNode, count: usize, chunking: Chunking, channel: u8) -> Up {
        Up { down: false, ..Up::new(node, 0, count, chunking, channel) }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        for c in self.node.children.iter().flatten() {
            f(*c, self.channel, false);
            if self.node.parent.is_none() && self.down {
                f(*c, self.channel, true);
            }
        }
        if let Some(p) = self.node.parent {
            f(p, self.channel, true);
        }
    }
}

impl Iterator for Up {
    type Item = Step;

    /// The next step, or `None` when the stream is finished.
    fn next(&mut self) -> Option<Step> {
        if self.at >= self.hi {
            return None;
        }
        let count = self.chunk.min(self.hi - self.at);
        let mut s = Step::new(count, self.channel);
        s.recv = self.node.child_peers();
        s.input = Some(Span::send(self.at));
        match self.node.parent {
            Some(p) => s.send = Peers::One(p),
            None => {
                s.output = Some(Span::recv(self.at));
                if self.down {
                    s.send = self.node.child_peers();
                }
                s.finalize = true;
            }
        }
        self.at += count;
        Some(s)
    }
}

/// The root of a broadcast down a tree: its input to its output and its children.
#[derive(Clone, Debug)]
pub struct Source {
    node: TreeNode,
    count: usize,
    at: usize,
    chunk: usize,
    channel: u8,
}

impl Source {
    /// The root's stream of a broadcast of `count` elements.
    pub fn new(node: TreeNode, count: usize, chunking: Chunking, channel: u8) -> Source {
        Source { node, count, at: 0, chunk: chunking.chunk, channel }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        for c in self.node.children.iter().flatten() {
            f(*c, self.channel, true);
        }
    }
}

impl Iterator for Source {
    type Item = Step;

    /// The next step, or `None` when the stream is finished.
    fn next(&mut self) -> Option<Step> {
        if self.at >= self.count {
            return None;
        }
        let count = self.chunk.min(self.count - self.at);
        let mut s = Step::new(count, self.channel);
        s.input = Some(Span::send(self.at));
        s.output = Some(Span::recv(self.at));
        s.send = self.node.child_peers();
        self.at += count;
        Some(s)
    }
}

/// Broadcast down a tree over elements `[lo, hi)`, at a rank that is not the root.
#[derive(Clone, Debug)]
pub struct Down {
    node: TreeNode,
    hi: usize,
    at: usize,
    chunk: usize,
    channel: u8,
}

impl Down {
    /// The down stream over `[lo, hi)` for a non-root `node`.
    pub fn new(node: TreeNode, lo: usize, hi: usize, chunking: Chunking, channel: u8) -> Down {
        assert!(node.parent.is_some(), "the root's down stream is fused into its up stream");
        Down { node, hi, at: lo, chunk: chunking.chunk, channel }
    }

    /// Calls `f(peer, channel, is_send)` for the links used.
    pub fn links(&self, f: &mut dyn FnMut(Rank, u8, bool)) {
        if let Some(p) = self.node.parent {
            f(p, self.channel, false);
        }
        for c in self.node.children.iter().flatten() {
            f(*c, self.channel, true);
        }
    }
}

impl Iterator for Down {
    type Item = Step;

    /// The next step, or `None` when the stream is finished.
    fn next(&mut self) -> Option<Step> {
        if self.at >= self.hi {
            return None;
        }
        let count = self.chunk.min(self.hi - self.at);
        let mut s = Step::new(count, self.channel);
        s.recv = Peers::One(self.node.parent.expect("non-root"));
        s.output = Some(Span::recv(self.at));
        s.send = self.node.child_peers();
        self.at += count;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that the nodes of all ranks form one tree: parent/child links agree, one
    /// root, every rank reachable from it.
    fn check_tree(n: usize, shift: usize) {
        let nodes: Vec<TreeNode> = (0..n).map(|r| binary_tree(n, r, shift)).collect();
        let roots: Vec<usize> = (0..n).filter(|&r| nodes[r].parent.is_none()).collect();
        assert_eq!(roots.len(), 1, "n={n}: roots {roots:?}");
        for r in 0..n {
            for c in nodes[r].children.iter().flatten() {
                assert_eq!(nodes[*c].parent, Some(r), "n={n} child {c} of {r}");
            }
            if let Some(p) = nodes[r].parent {
                assert!(nodes[p].children.contains(&Some(r)), "n={n}: {r} not a child of {p}");
            }
        }
        let mut seen = vec![false; n];
        let mut stack = vec![roots[0]];
        while let Some(r) = stack.pop() {
            assert!(!seen[r]);
            seen[r] = true;
            stack.extend(nodes[r].children.iter().flatten());
        }
        assert!(seen.iter().all(|&s| s), "n={n}: unreachable ranks");
    }

    #[test]
    fn trees_are_trees() {
        for n in 1..70 {
            check_tree(n, 0);
            check_tree(n, 1);
        }
    }

    #[test]
    fn double_tree_balances_inner_nodes() {
        // With 2^k - 1 ranks, no rank is an inner node of both trees.
        for n in [3usize, 7, 15, 31, 63] {
            for r in 0..n {
                let [a, b] = double_tree(n, r);
                let inner = |t: TreeNode| t.children.iter().any(|c| c.is_some());
                assert!(!(inner(a) && inner(b)), "n={n} rank {r} inner in both trees");
            }
        }
    }

    #[test]
    fn halves_cover_the_data() {
        for count in [0usize, 1, 2, 3, 17, 64, 1000] {
            let (a, b) = (half(count, 16, 0), half(count, 16, 1));
            assert_eq!((a.0, a.1, b.1), (0, b.0, count));
        }
    }
}
