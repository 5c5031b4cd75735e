//! Setting up TCP with the ranks of other hosts (see [`crate::transport::setup`]).

use std::net::{SocketAddr, TcpListener};

use super::Tcp;
use crate::error::{Error, Result};
use crate::transport::Transport;

/// Setting up TCP with the ranks of other hosts (see [`super::setup`]): this rank's data
/// listener is bound at once and its address is the rank's address.
pub(crate) struct TcpSetup {
    peers: Vec<usize>,
    listener: Option<TcpListener>,
    addr: SocketAddr,
}

impl TcpSetup {
    /// This rank's side, if it has peers on other hosts (or every peer, when shared
    /// memory is disabled).
    pub(crate) fn new(env: &crate::transport::setup::Env<'_>) -> Result<Option<TcpSetup>> {
        let peers = env.peers_by(crate::topology::Link::Tcp);
        if peers.is_empty() {
            return Ok(None);
        }
        let l = Tcp::listen(env.ip)?;
        let addr = l.local_addr().map_err(|e| Error::system("reading the TCP listener address", e))?;
        Ok(Some(TcpSetup { peers, listener: Some(l), addr }))
    }
}

/// Every rank's listener, from the addresses they published (a rank without one gets
/// an address nobody listens on: it has no peer that would connect to it).
pub(crate) fn listener_addrs(addrs: &[&[u8]]) -> Result<Vec<SocketAddr>> {
    addrs
        .iter()
        .map(|a| {
            if a.is_empty() {
                return Ok(SocketAddr::from(([0, 0, 0, 0], 0)));
            }
            let mut d = crate::wire::Dec::new(a, "TCP listener address");
            let addr = d.addr()?;
            d.end()?;
            Ok(addr)
        })
        .collect()
}

impl crate::transport::setup::Setup for TcpSetup {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn peers(&self) -> &[usize] {
        &self.peers
    }

    fn address(&self) -> Vec<u8> {
        let mut e = crate::wire::Enc::new();
        e.addr(&self.addr);
        e.0
    }

    fn connect(
        &mut self,
        env: &crate::transport::setup::Env<'_>,
        addrs: &[&[u8]],
        shared: &crate::transport::setup::Shared,
    ) -> Result<Box<dyn Transport>> {
        let l = self.listener.take().ok_or_else(|| Error::internal("the TCP listener was taken twice"))?;
        let s = env.settings;
        let t = Tcp::new(
            env.rank,
            *env.secret,
            env.shape,
            s.nsocks,
            l,
            listener_addrs(addrs)?,
            env.topology.peers.clone(),
            shared.bell.clone(),
            s.timeout,
        )?;
        Ok(Box::new(t.with_watch(shared.watch.clone()).with_fault(shared.fault.clone())))
    }
}
