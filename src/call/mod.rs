//! What a call is: the collective with its counts and root ([`Collective`]), the
//! algorithm that runs it ([`Algo`]), and the two-word descriptor ([`desc`]) that
//! travels with every message so that a peer running another call is caught.
//!
//! This is vocabulary shared by every layer (settings name algorithms, schedules run
//! collectives, faults describe calls); it imports only [`crate::types`].

pub mod desc;

pub use desc::Desc;

/// A rank number.
pub type Rank = usize;

/// A collective call, as the schedules see it (counts in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collective {
    /// `count` elements reduced onto every rank.
    AllReduce {
        /// Elements.
        count: usize,
    },
    /// `count` elements reduced onto `root`.
    Reduce {
        /// Elements.
        count: usize,
        /// Receiving rank.
        root: Rank,
    },
    /// `count` elements from `root` to every rank.
    Broadcast {
        /// Elements.
        count: usize,
        /// Sending rank.
        root: Rank,
    },
    /// `count` elements from each rank, concatenated on every rank.
    AllGather {
        /// Elements per rank.
        count: usize,
    },
    /// `n * count` elements reduced; rank `r` receives block `r` of `count`.
    ReduceScatter {
        /// Elements per rank.
        count: usize,
    },
    /// Block `j` of `count` elements goes from every rank to rank `j`.
    AllToAll {
        /// Elements per peer.
        count: usize,
    },
    /// Every rank's `count` elements concatenated on `root`.
    Gather {
        /// Elements per rank.
        count: usize,
        /// Receiving rank.
        root: Rank,
    },
    /// Block `j` of `count` elements of `root` goes to rank `j`.
    Scatter {
        /// Elements per rank.
        count: usize,
        /// Sending rank.
        root: Rank,
    },
    /// `count` elements to `peer`.
    Send {
        /// Elements.
        count: usize,
        /// Receiving rank.
        peer: Rank,
    },
    /// `count` elements from `peer`.
    Recv {
        /// Elements.
        count: usize,
        /// Sending rank.
        peer: Rank,
    },
    /// A send to self paired with a receive from self: `count` elements copied locally.
    SelfCopy {
        /// Elements.
        count: usize,
    },
    /// Synchronisation only.
    Barrier,
}

impl Collective {
    /// Whether the call combines data with a reduction operation.
    pub fn reduces(&self) -> bool {
        matches!(self, Collective::AllReduce { .. } | Collective::Reduce { .. } | Collective::ReduceScatter { .. })
    }

    /// The name used in messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Collective::AllReduce { .. } => "all_reduce",
            Collective::Reduce { .. } => "reduce",
            Collective::Broadcast { .. } => "broadcast",
            Collective::AllGather { .. } => "all_gather",
            Collective::ReduceScatter { .. } => "reduce_scatter",
            Collective::AllToAll { .. } => "all_to_all",
            Collective::Gather { .. } => "gather",
            Collective::Scatter { .. } => "scatter",
            Collective::Send { .. } => "send",
            Collective::Recv { .. } => "recv",
            Collective::SelfCopy { .. } => "send/recv to self",
            Collective::Barrier => "barrier",
        }
    }

    /// The count the call was made with (per rank where the API counts per rank).
    pub fn count(&self) -> usize {
        match *self {
            Collective::AllReduce { count }
            | Collective::Reduce { count, .. }
            | Collective::Broadcast { count, .. }
            | Collective::AllGather { count }
            | Collective::ReduceScatter { count }
            | Collective::AllToAll { count }
            | Collective::Gather { count, .. }
            | Collective::Scatter { count, .. }
            | Collective::Send { count, .. }
            | Collective::Recv { count, .. }
            | Collective::SelfCopy { count } => count,
            Collective::Barrier => 0,
        }
    }

    /// The root or peer, if the call has one.
    pub fn root(&self) -> Option<Rank> {
        match *self {
            Collective::Reduce { root, .. }
            | Collective::Broadcast { root, .. }
            | Collective::Gather { root, .. }
            | Collective::Scatter { root, .. } => Some(root),
            Collective::Send { peer, .. } | Collective::Recv { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// A small integer per kind (for call descriptors).
    pub fn code(&self) -> u8 {
        match self {
            Collective::AllReduce { .. } => 1,
            Collective::Reduce { .. } => 2,
            Collective::Broadcast { .. } => 3,
            Collective::AllGather { .. } => 4,
            Collective::ReduceScatter { .. } => 5,
            Collective::AllToAll { .. } => 6,
            Collective::Gather { .. } => 7,
            Collective::Scatter { .. } => 8,
            // A send is matched by a receive: same code, so descriptors compare equal.
            Collective::Send { .. } | Collective::Recv { .. } => 9,
            Collective::Barrier => 10,
            Collective::SelfCopy { .. } => 11,
        }
    }
}

/// An algorithm: how a collective's data moves between ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    /// Pipelined ring (bandwidth-optimal; latency grows with n).
    Ring,
    /// Double binary tree (all-reduce; latency grows with log n).
    Tree,
    /// Every rank sends its data to every other and reduces locally (all-reduce; one
    /// step of latency, n times the traffic).
    OneShot,
    /// Point-to-point transfers (all-to-all, gather, scatter, send/recv, barrier).
    P2p,
    /// Ranks that share an address space read and write each other's buffers directly:
    /// each reduces or copies one block and writes it where it belongs, so every byte
    /// crosses memory once (all-reduce, reduce, broadcast, all-gather, reduce-scatter).
    Direct,
    /// Hierarchical all-reduce for several hosts: reduce inside each host to its first
    /// rank, all-reduce among those, broadcast inside each host; only the middle stage
    /// crosses hosts.
    Hier,
    /// Recursive doubling all-reduce: log2(n) exchanges of the running result.
    Doubling,
    /// Bruck's all-gather: log2(n) rounds for small blocks and many ranks.
    Bruck,
}

impl Algo {
    /// The name used by `OXCCL_ALGO` and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Algo::Ring => "ring",
            Algo::Tree => "tree",
            Algo::OneShot => "oneshot",
            Algo::P2p => "p2p",
            Algo::Direct => "direct",
            Algo::Hier => "hier",
            Algo::Doubling => "doubling",
            Algo::Bruck => "bruck",
        }
    }

    /// Parses an `OXCCL_ALGO` value.
    pub fn parse(s: &str) -> Option<Algo> {
        match s.to_ascii_lowercase().as_str() {
            "ring" => Some(Algo::Ring),
            "tree" => Some(Algo::Tree),
            "oneshot" | "one_shot" | "one-shot" => Some(Algo::OneShot),
            "p2p" => Some(Algo::P2p),
            "direct" => Some(Algo::Direct),
            "hier" | "hierarchical" => Some(Algo::Hier),
            "doubling" | "recursive_doubling" | "rd" => Some(Algo::Doubling),
            "bruck" => Some(Algo::Bruck),
            _ => None,
        }
    }

    /// A small integer per algorithm (for call descriptors).
    pub fn code(&self) -> u8 {
        *self as u8
    }

    /// Whether the algorithm can run `coll`.
    pub fn applies_to(&self, coll: &Collective) -> bool {
        use Collective as C;
        match self {
            Algo::Ring | Algo::Direct => matches!(
                coll,
                C::AllReduce { .. }
                    | C::Reduce { .. }
                    | C::Broadcast { .. }
                    | C::AllGather { .. }
                    | C::ReduceScatter { .. }
            ),
            Algo::Tree => matches!(coll, C::AllReduce { .. } | C::Reduce { .. } | C::Broadcast { .. }),
            Algo::OneShot | Algo::Hier | Algo::Doubling => matches!(coll, C::AllReduce { .. }),
            Algo::Bruck => matches!(coll, C::AllGather { .. }),
            Algo::P2p => {
                matches!(
                    coll,
                    C::AllToAll { .. }
                        | C::Gather { .. }
                        | C::Scatter { .. }
                        | C::Send { .. }
                        | C::Recv { .. }
                        | C::SelfCopy { .. }
                        | C::Barrier
                )
            }
        }
    }
}
