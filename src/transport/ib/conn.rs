//! What the two ends of an InfiniBand link tell each other, over the link's TCP socket,
//! after its introduction ([`Kind::ConnHello`](crate::wire::Kind)): one
//! [`Kind::IbConnect`](crate::wire::Kind) frame each way. Pure encoding and
//! decoding (no verbs), so it is unit-tested and fuzzed everywhere.
//!
//! ```text
//! version u32 | role u32 | nslots u32 | slot_bytes u64 | mtu u32 | lid u32 | gid 16
//! | nqps u32 | qpn u32 x nqps | fifo address u64 | rkey u32
//! ```
//!
//! The sender speaks first (role 0, no FIFO: address and rkey are zero); the receiver
//! answers (role 1) with the address and remote key of its registered FIFO, into whose
//! slots the sender then writes. Both check the other's version, shape and queue pair
//! count against their own, so that a job with mixed settings fails at connection time
//! with a message instead of corrupting memory.

use crate::error::{Error, Result};
use crate::wire::{Dec, Enc};

/// The version of this message (and of the immediates, [`imm`]); a peer speaking another
/// is refused. 2: immediates carry the message number instead of the slot.
pub const VERSION: u32 = 2;
/// Most queue pairs per link (`OXCCL_IB_QPS_PER_CONNECTION`).
pub const MAX_QPS: usize = 64;

/// Which end of a link speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The writing end, first.
    Sender = 0,
    /// The receiving end, with its FIFO's registration.
    Receiver = 1,
}

/// One end's half of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Who speaks.
    pub role: Role,
    /// The FIFO shape (slots and slot size), which must match.
    pub nslots: u32,
    /// Payload bytes per slot.
    pub slot_bytes: u64,
    /// Active MTU (`IBV_MTU_*` value).
    pub mtu: u32,
    /// LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// GID (RoCE; InfiniBand across subnets).
    pub gid: [u8; 16],
    /// Queue pair numbers, one per queue pair of the link.
    pub qpns: Vec<u32>,
    /// The receiver's FIFO: address (in its process) and remote key; zero from a sender.
    pub fifo: (u64, u32),
}

impl Hello {
    /// The frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(VERSION).u32(self.role as u32).u32(self.nslots).u64(self.slot_bytes).u32(self.mtu).u32(self.lid as u32);
        e.raw(&self.gid).u32(self.qpns.len() as u32);
        for q in &self.qpns {
            e.u32(*q);
        }
        e.u64(self.fifo.0).u32(self.fifo.1);
        e.0
    }

    /// Decodes a peer's payload, checking every field.
    pub fn decode(p: &[u8]) -> Result<Hello> {
        let mut d = Dec::new(p, "InfiniBand connection");
        let version = d.u32()?;
        if version != VERSION {
            return Err(Error::invalid_usage(format!(
                "InfiniBand connection message version {version} from a peer, this oxccl speaks {VERSION}: mixed oxccl versions in one job"
            )));
        }
        let role = match d.u32()? {
            0 => Role::Sender,
            1 => Role::Receiver,
            r => return Err(Error::remote(format!("malformed InfiniBand connection message: role {r}"))),
        };
        let (nslots, slot_bytes, mtu, lid) = (d.u32()?, d.u64()?, d.u32()?, d.u32()?);
        if lid > u16::MAX as u32 || !(1..=5).contains(&mtu) {
            return Err(Error::remote(format!("malformed InfiniBand connection message: lid {lid}, mtu {mtu}")));
        }
        let gid: [u8; 16] = d.raw(16)?.try_into().expect("16 bytes");
        let n = d.u32()? as usize;
        if n == 0 || n > MAX_QPS {
            return Err(Error::remote(format!("malformed InfiniBand connection message: {n} queue pairs")));
        }
        let qpns = (0..n).map(|_| d.u32()).collect::<Result<Vec<_>>>()?;
        let fifo = (d.u64()?, d.u32()?);
        d.end()?;
        Ok(Hello { role, nslots, slot_bytes, mtu, lid: lid as u16, gid, qpns, fifo })
    }
}

/// The immediate of a write that completes part of a message: the low 16 bits of the
/// message's number on its link, and how many parts (queue pairs, at most [`MAX_QPS`])
/// carry it. The receiver knows which messages may be in flight (fewer than 2^16), so
/// the low bits name one message and its slot; a completion for any other is an error,
/// not a count added to the wrong message.
pub fn imm(message: u64, parts: usize) -> u32 {
    (message as u32 & 0xffff) | ((parts as u32) << 16)
}

/// Splits an immediate from [`imm`] into (the message number's low 16 bits, parts).
pub fn split_imm(imm: u32) -> (u16, usize) {
    (imm as u16, (imm >> 16) as usize)
}

/// Which message in flight an immediate's low bits name: the one of `window` messages
/// from `next` (the next to publish) whose number ends in `low`; `None` outside the window.
pub fn message_of(low: u16, next: u64, window: u64) -> Option<u64> {
    let k = next + u64::from(low.wrapping_sub(next as u16));
    (k < next + window).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_garbage() {
        let h = Hello {
            role: Role::Receiver,
            nslots: 8,
            slot_bytes: 1 << 18,
            mtu: 3,
            lid: 0,
            gid: [7; 16],
            qpns: vec![17, 18],
            fifo: (0x7f00_0000_1000, 0xabcd),
        };
        let b = h.encode();
        assert_eq!(Hello::decode(&b).unwrap(), h);
        for cut in 0..b.len() {
            assert!(Hello::decode(&b[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Hello::decode(&longer).is_err());
        let mut other = b.clone();
        other[0] = VERSION as u8 + 1;
        let e = Hello::decode(&other).unwrap_err().to_string();
        assert!(e.contains(&format!("version {}", VERSION + 1)), "{e}");
        let mut many = h.clone();
        many.qpns = vec![1; MAX_QPS + 1];
        assert!(Hello::decode(&many.encode()).is_err());
    }

    #[test]
    fn immediates_carry_message_and_parts() {
        for (k, p) in [(0u64, 1), (1023, 64), (7, 3), (0x1_2345, 2)] {
            assert_eq!(split_imm(imm(k, p)), ((k & 0xffff) as u16, p));
        }
    }

    #[test]
    fn an_immediate_names_one_message_of_the_window() {
        // 8 messages may be in flight from message 65533: 65533..65541, across the wrap.
        let next = 65533;
        for k in next..next + 8 {
            assert_eq!(message_of(split_imm(imm(k, 1)).0, next, 8), Some(k), "message {k}");
        }
        // The previous occupant of a slot, or one beyond the credits: refused.
        assert_eq!(message_of(split_imm(imm(next - 1, 1)).0, next, 8), None);
        assert_eq!(message_of(split_imm(imm(next - 8, 1)).0, next, 8), None);
        assert_eq!(message_of(split_imm(imm(next + 8, 1)).0, next, 8), None);
        assert_eq!(message_of(3, 1 << 40, 3), None);
        assert_eq!(message_of(5, (1 << 40) + 3, 4), Some((1 << 40) + 5));
    }
}
