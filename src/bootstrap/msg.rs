//! The payloads of the bootstrap's frames, after the secret for introductions (which a
//! [`Gate`](super::gate::Gate) checks and strips). Every decoder reads a peer's bytes:
//! it checks every field and fails on trailing bytes.

use std::net::SocketAddr;

use crate::error::Result;
use crate::wire::{Dec, Enc, MAX_PAYLOAD};

/// A [`Hello`](crate::wire::Kind::Hello) to the root, after the secret: rank, number of
/// ranks, the rank's ring listener.
pub fn decode_hello(body: &[u8]) -> Result<(usize, usize, SocketAddr)> {
    let mut d = Dec::new(body, "hello");
    let rank = d.u32()? as usize;
    let n = d.u32()? as usize;
    let addr = d.addr()?;
    d.end()?;
    Ok((rank, n, addr))
}

/// A [`RingHello`](crate::wire::Kind::RingHello), after the secret: the sender's rank,
/// and which of its partners this connection is (`k`: the rank `2^k` ahead of the
/// sender).
pub fn decode_ring_hello(body: &[u8]) -> Result<(usize, u32)> {
    let mut d = Dec::new(body, "ring hello");
    let r = d.u32()? as usize;
    let k = d.u32()?;
    d.end()?;
    Ok((r, k))
}

/// The most partners a rank has (`ceil(log2 n)` for `n` up to `2^32`).
pub const MAX_PARTNERS: usize = 32;

/// A [`Next`](crate::wire::Kind::Next): where each of a rank's partners listens.
pub fn encode_partners(addrs: &[SocketAddr]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(addrs.len() as u32);
    for a in addrs {
        e.addr(a);
    }
    e.0
}

/// Decodes what [`encode_partners`] wrote.
pub fn decode_partners(p: &[u8]) -> Result<Vec<SocketAddr>> {
    let mut d = Dec::new(p, "partners");
    let n = d.u32()? as usize;
    if n > MAX_PARTNERS {
        return Err(crate::wire::malformed(format!("{n} partners")));
    }
    let v = (0..n).map(|_| d.addr()).collect::<Result<Vec<_>>>()?;
    d.end()?;
    Ok(v)
}

/// A [`Block`](crate::wire::Kind::Block) of the all-gather: whose block, and its bytes.
pub fn decode_block(p: &[u8]) -> Result<(usize, &[u8])> {
    let mut d = Dec::new(p, "all-gather block");
    let got = d.u32()? as usize;
    let data = d.bytes(MAX_PAYLOAD)?;
    d.end()?;
    Ok((got, data))
}

/// The message of a [`Fail`](crate::wire::Kind::Fail) (empty when malformed: it is only
/// shown to the user).
pub fn fail_message(p: &[u8]) -> String {
    Dec::new(p, "failure").bytes(4096).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}
