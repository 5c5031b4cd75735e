//! What the two ends of an InfiniBand link tell each other, over the link's TCP socket,
//! after its introduction ([`Kind::ConnHello`](crate::bootstrap::wire::Kind)): one
//! [`Kind::IbConnect`](crate::bootstrap::wire::Kind) frame each way. Pure encoding and
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

use crate::bootstrap::wire::{Dec, Enc};
use crate::error::{Error, Result};

/// The version of this message; a peer speaking another is refused.
pub const VERSION: u32 = 1;
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
            return Err(Error::InvalidUsage(format!(
                "InfiniBand connection message version {version} from a peer, this oxccl speaks {VERSION}: mixed oxccl versions in one job"
            )));
        }
        let role = match d.u32()? {
            0 => Role::Sender,
            1 => Role::Receiver,
            r => return Err(Error::Remote(format!("malformed InfiniBand connection message: role {r}"))),
        };
        let (nslots, slot_bytes, mtu, lid) = (d.u32()?, d.u64()?, d.u32()?, d.u32()?);
        if lid > u16::MAX as u32 || !(1..=5).contains(&mtu) {
            return Err(Error::Remote(format!("malformed InfiniBand connection message: lid {lid}, mtu {mtu}")));
        }
        let gid: [u8; 16] = d.raw(16)?.try_into().expect("16 bytes");
        let n = d.u32()? as usize;
        if n == 0 || n > MAX_QPS {
            return Err(Error::Remote(format!("malformed InfiniBand connection message: {n} queue pairs")));
        }
        let qpns = (0..n).map(|_| d.u32()).collect::<Result<Vec<_>>>()?;
        let fifo = (d.u64()?, d.u32()?);
        d.end()?;
        Ok(Hello { role, nslots, slot_bytes, mtu, lid: lid as u16, gid, qpns, fifo })
    }
}

/// The immediate of a write that completes part of a message: the FIFO slot and how many
/// parts (queue pairs) carry the message.
pub fn imm(slot: usize, parts: usize) -> u32 {
    (slot as u32 & 0xffff) | ((parts as u32) << 16)
}

/// Splits an immediate from [`imm`] into (slot, parts).
pub fn split_imm(imm: u32) -> (usize, usize) {
    ((imm & 0xffff) as usize, (imm >> 16) as usize)
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
        let mut v2 = b.clone();
        v2[0] = 2;
        assert!(Hello::decode(&v2).unwrap_err().to_string().contains("version 2"));
        let mut many = h.clone();
        many.qpns = vec![1; MAX_QPS + 1];
        assert!(Hello::decode(&many.encode()).is_err());
    }

    #[test]
    fn immediates_carry_slot_and_parts() {
        for (s, p) in [(0, 1), (1023, 64), (7, 3)] {
            assert_eq!(split_imm(imm(s, p)), (s, p));
        }
    }
}
