//! The payloads of the sentinel's frames on the bootstrap ring: a fault (class, origin,
//! text) and a stuck rank's position. Every decoder reads a peer's bytes: it checks
//! every field and fails on trailing bytes.

use crate::call::Desc;
use crate::error::Result;
use crate::wire::{Dec, Enc, malformed};

/// Longest message a [`Fault`](crate::wire::Kind::Fault) carries.
pub const FAULT_TEXT: usize = 2048;

/// A [`Fault`](crate::wire::Kind::Fault): class code, origin rank, message.
pub fn encode_fault(class: u8, origin: usize, text: &str) -> Vec<u8> {
    let mut cut = text.len().min(FAULT_TEXT);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut e = Enc::new();
    e.u32(class as u32).u32(origin as u32).bytes(&text.as_bytes()[..cut]);
    e.0
}

/// Decodes a [`Fault`](crate::wire::Kind::Fault); the text must be UTF-8.
pub fn decode_fault(p: &[u8]) -> Result<(u8, usize, String)> {
    let mut d = Dec::new(p, "fault");
    let class = d.u32()?;
    let class = u8::try_from(class).map_err(|_| malformed(format!("fault class {class}")))?;
    let origin = d.u32()? as usize;
    let text = d.bytes(FAULT_TEXT)?;
    d.end()?;
    let text = std::str::from_utf8(text).map_err(|_| malformed("fault text is not UTF-8"))?;
    Ok((class, origin, text.to_string()))
}

/// A [`Where`](crate::wire::Kind::Where): where a stuck rank is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Where {
    /// The stuck rank.
    pub origin: u32,
    /// Ranks it passed through.
    pub hops: u32,
    /// Its collective tag.
    pub tag: u64,
    /// Its call's descriptor.
    pub desc: Desc,
    /// Its operation number.
    pub seq: u64,
}

impl Where {
    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.origin).u32(self.hops).u64(self.tag).u64(self.desc[0]).u64(self.desc[1]).u64(self.seq);
        e.0
    }

    /// Reads a payload.
    pub fn decode(p: &[u8]) -> Result<Where> {
        let mut d = Dec::new(p, "where");
        let w = Where { origin: d.u32()?, hops: d.u32()?, tag: d.u64()?, desc: [d.u64()?, d.u64()?], seq: d.u64()? };
        d.end()?;
        Ok(w)
    }
}
