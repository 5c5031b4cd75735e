//! Call descriptors: two words that travel with every message and describe the call that
//! sent it (collective, data type, op, algorithm, root, count), so a rank that receives a
//! message from a different call reports both calls instead of reducing garbage.

use super::{Algo, Collective};
use crate::types::{DataType, ReduceOp};

/// A descriptor carried with every message: a compact description of the call that sent
/// it, so a receiver detects a peer that runs a different call instead of reading garbage.
pub type Desc = [u64; 2];

const NO_OP: u64 = 0xff;

/// The count's bits in the second word; the top 16 carry the low bits of the number of
/// collectives the communicator has run, including this one (its *tag*), so a message
/// from a different collective is told apart even when both calls look alike, and the
/// error can name what this rank called then. Every rank runs the same collectives in
/// the same order, so tags agree; point-to-point calls need not be symmetric, so they
/// neither advance the tag nor carry one.
const COUNT_MASK: u64 = (1 << 48) - 1;

/// The descriptor `d` of a call with collective tag `tag`.
#[inline]
pub fn with_tag(d: Desc, tag: u64) -> Desc {
    [d[0], (d[1] & COUNT_MASK) | (tag & 0xffff) << 48]
}

/// The low 16 bits of the tag a descriptor carries.
pub fn tag_bits(d: Desc) -> u64 {
    d[1] >> 48
}

/// Whether a descriptor is a point-to-point call's.
#[inline]
pub fn is_p2p(d: Desc) -> bool {
    d[0] & 0xff == 9
}

/// Encodes a call. Send and receive encode the same way (no peer), so they match.
pub fn encode(coll: &Collective, dtype: DataType, op: Option<&ReduceOp>, algo: Algo) -> Desc {
    let root = match coll {
        Collective::Send { .. } | Collective::Recv { .. } => 0,
        c => c.root().map_or(0xffff_ffff, |r| r as u64 & 0xffff_ffff),
    };
    let op = op.map_or(NO_OP, |o| o.code() as u64);
    let w0 = coll.code() as u64 | (dtype as u64) << 8 | op << 16 | (algo.code() as u64) << 24 | root << 32;
    [w0, coll.count() as u64]
}

/// A readable form of a descriptor, e.g. `all_reduce(count=1000, float, sum, ring)`.
pub fn describe(d: Desc) -> String {
    let w = d[0];
    let coll = match w & 0xff {
        1 => "all_reduce",
        2 => "reduce",
        3 => "broadcast",
        4 => "all_gather",
        5 => "reduce_scatter",
        6 => "all_to_all",
        7 => "gather",
        8 => "scatter",
        9 => "send/recv",
        10 => "barrier",
        _ => "unknown call",
    };
    let dtype = DataType::from_i32(((w >> 8) & 0xff) as i32).map_or("?", |t| t.name());
    let op = match (w >> 16) & 0xff {
        0 => "sum, ",
        1 => "prod, ",
        2 => "max, ",
        3 => "min, ",
        4 => "avg, ",
        5 => "mulsum, ",
        _ => "",
    };
    let algo = match (w >> 24) & 0xff {
        0 => "ring",
        1 => "tree",
        2 => "oneshot",
        3 => "p2p",
        4 => "direct",
        5 => "hier",
        6 => "doubling",
        7 => "bruck",
        _ => "?",
    };
    let root = match w >> 32 {
        0xffff_ffff => String::new(),
        r if (w & 0xff) == 9 => {
            let _ = r;
            String::new()
        }
        r => format!(", root={r}"),
    };
    format!("{coll}(count={}, {dtype}, {op}{algo}{root})", d[1] & COUNT_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_tell_calls_apart_and_read_well() {
        let a = encode(&Collective::AllReduce { count: 1000 }, DataType::Float32, Some(&ReduceOp::Sum), Algo::Ring);
        let b = encode(&Collective::AllReduce { count: 1001 }, DataType::Float32, Some(&ReduceOp::Sum), Algo::Ring);
        let c =
            encode(&Collective::Reduce { count: 1000, root: 2 }, DataType::Float32, Some(&ReduceOp::Max), Algo::Ring);
        assert_ne!(a, b);
        assert_eq!(describe(a), "all_reduce(count=1000, float, sum, ring)");
        assert_eq!(describe(c), "reduce(count=1000, float, max, ring, root=2)");
        let s = encode(&Collective::Send { count: 5, peer: 1 }, DataType::Int8, None, Algo::P2p);
        let r = encode(&Collective::Recv { count: 5, peer: 0 }, DataType::Int8, None, Algo::P2p);
        assert_eq!(s, r);
        assert_eq!(describe(s), "send/recv(count=5, int8, p2p)");
    }
}
