//! The payloads of the bootstrap's frames, after the secret for introductions (which a
//! [`Gate`](super::gate::Gate) checks and strips). Every decoder reads a peer's bytes:
//! it checks every field and fails on trailing bytes.

use std::net::SocketAddr;

use crate::error::Result;
use crate::wire::{Dec, MAX_PAYLOAD};

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

/// A [`RingHello`](crate::wire::Kind::RingHello), after the secret: the sender's rank.
pub fn decode_ring_hello(body: &[u8]) -> Result<usize> {
    let mut d = Dec::new(body, "ring hello");
    let r = d.u32()? as usize;
    d.end()?;
    Ok(r)
}

/// A [`Next`](crate::wire::Kind::Next): where the successor listens.
pub fn decode_next(p: &[u8]) -> Result<SocketAddr> {
    let mut d = Dec::new(p, "next");
    let a = d.addr()?;
    d.end()?;
    Ok(a)
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
