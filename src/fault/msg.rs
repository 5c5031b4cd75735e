//! The payloads of the sentinel's frames on the bootstrap ring: a fault (class, origin,
//! text) and a stuck rank's position. Every decoder reads a peer's bytes: it checks
//! every field and fails on trailing bytes.

use crate::call::Desc;
use crate::error::Result;
use crate::wire::{Dec, Enc, malformed};

/// Longest message a [`Fault`](crate::wire::Kind::Fault) carries.
pub const FAULT_TEXT: usize = 2048;

/// Longest host name a [`Fault`](crate::wire::Kind::Fault) names.
const HOST_TEXT: usize = 256;

/// The rank a fault is about (the one that died, aborted or timed out), with its host
/// and process where known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Culprit {
    /// Its rank.
    pub rank: usize,
    /// Its host.
    pub host: Option<String>,
    /// Its process id.
    pub pid: Option<u32>,
}

/// A fault as it travels between ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Its class code (see `Class`).
    pub class: u8,
    /// The rank where it was recorded first.
    pub origin: usize,
    /// What the user reads.
    pub text: String,
    /// The rank it is about, if one is.
    pub culprit: Option<Culprit>,
}

fn cut(text: &str, max: usize) -> &[u8] {
    let mut n = text.len().min(max);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    &text.as_bytes()[..n]
}

fn utf8(b: &[u8], what: &str) -> Result<String> {
    std::str::from_utf8(b).map(str::to_string).map_err(|_| malformed(format!("{what} is not UTF-8")))
}

impl Notice {
    /// The payload of a [`Fault`](crate::wire::Kind::Fault): class, origin, text, then
    /// the culprit's rank (`u32::MAX`: none), pid (0: unknown) and host ("": unknown).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.class as u32).u32(self.origin as u32).bytes(cut(&self.text, FAULT_TEXT));
        let c = self.culprit.clone().unwrap_or(Culprit { rank: u32::MAX as usize, host: None, pid: None });
        e.u32(c.rank as u32).u32(c.pid.unwrap_or(0)).bytes(cut(c.host.as_deref().unwrap_or(""), HOST_TEXT));
        e.0
    }

    /// Reads a payload; the texts must be UTF-8.
    pub fn decode(p: &[u8]) -> Result<Notice> {
        let mut d = Dec::new(p, "fault");
        let class = d.u32()?;
        let class = u8::try_from(class).map_err(|_| malformed(format!("fault class {class}")))?;
        let origin = d.u32()? as usize;
        let text = utf8(d.bytes(FAULT_TEXT)?, "fault text")?;
        let (rank, pid) = (d.u32()?, d.u32()?);
        let host = utf8(d.bytes(HOST_TEXT)?, "fault host")?;
        d.end()?;
        if rank == u32::MAX && (pid != 0 || !host.is_empty()) {
            return Err(malformed("a fault with no culprit names a host or process"));
        }
        let culprit = (rank != u32::MAX).then(|| Culprit {
            rank: rank as usize,
            host: (!host.is_empty()).then_some(host),
            pid: (pid != 0).then_some(pid),
        });
        Ok(Notice { class, origin, text, culprit })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_long_texts_are_cut_on_a_char_boundary() {
        let c = Culprit { rank: 3, host: Some("b".into()), pid: Some(812) };
        for n in [
            Notice { class: 4, origin: 1, text: "rank 3 died".into(), culprit: Some(c) },
            Notice { class: 2, origin: 0, text: String::new(), culprit: None },
        ] {
            assert_eq!(Notice::decode(&n.encode()).unwrap(), n);
        }
        let long = Notice { class: 4, origin: 1, text: "é".repeat(FAULT_TEXT), culprit: None };
        let back = Notice::decode(&long.encode()).unwrap();
        assert!(back.text.len() <= FAULT_TEXT && back.text.chars().all(|c| c == 'é'));
        let mut bad = long.encode();
        bad.push(0);
        assert!(Notice::decode(&bad).is_err(), "trailing bytes");
    }
}
