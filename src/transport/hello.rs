//! A data connection's introduction ([`ConnHello`](crate::wire::Kind::ConnHello)),
//! shared by the transports that meet through a listener (TCP, and InfiniBand, whose
//! links are set up over a socket): the job's secret, then who is connecting, for which
//! link, and the descriptor of the call that opened it (so a rank in a different call can
//! tell).

use crate::bootstrap::Secret;
use crate::call::Desc;
use crate::error::Result;
use crate::wire::{Dec, Enc};

/// What a connection says about itself, after the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnHello {
    /// The connecting rank.
    pub peer: usize,
    /// The link's channel.
    pub channel: u32,
    /// Which of the link's sockets this is.
    pub socket: u32,
    /// The call that opened the link.
    pub opener: Desc,
}

impl ConnHello {
    /// The frame's payload, secret first.
    pub fn encode(&self, secret: &Secret) -> Vec<u8> {
        let mut e = Enc::new();
        e.raw(secret).u32(self.peer as u32).u32(self.channel).u32(self.socket).u64(self.opener[0]).u64(self.opener[1]);
        e.0
    }

    /// Reads the payload after the secret (a gate checked and stripped it).
    pub fn decode(body: &[u8]) -> Result<ConnHello> {
        let mut d = Dec::new(body, "connection hello");
        let (peer, channel, socket) = (d.u32()? as usize, d.u32()?, d.u32()?);
        let opener = [d.u64()?, d.u64()?];
        d.end()?;
        Ok(ConnHello { peer, channel, socket, opener })
    }
}
