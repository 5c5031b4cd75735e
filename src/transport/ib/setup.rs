//! Setting up InfiniBand with the ranks of other hosts (see
//! [`crate::transport::setup`]): this rank probes for a usable port and, with one, binds
//! the listener its links meet through and publishes its address. IB serves only if every
//! rank published one (each decides alike from the same table); otherwise TCP takes the
//! peers, with an INFO line saying why.

use std::net::{SocketAddr, TcpListener};

use super::{Device, Ib};
use crate::error::{Error, Result};
use crate::log;
use crate::topology::Link;
use crate::transport::Transport;
use crate::transport::setup::{Env, Setup, Shared};
use crate::transport::tcp::Tcp;
use crate::transport::tcp::setup::listener_addrs;

/// This rank's InfiniBand side.
pub(crate) struct IbSetup {
    rank: usize,
    peers: Vec<usize>,
    dev: Option<Device>,
    listener: Option<(TcpListener, SocketAddr)>,
}

impl IbSetup {
    /// This rank's side, if it has peers on other hosts; without a usable port it
    /// publishes nothing (and says why on an INFO line).
    pub(crate) fn new(env: &Env<'_>) -> Result<Option<IbSetup>> {
        let peers = env.peers_by(Link::Tcp);
        if peers.is_empty() {
            return Ok(None);
        }
        let dev = match Device::probe(&env.settings.ib) {
            Ok(d) => Some(d),
            Err(why) => {
                log::info(false, &format!("rank {}: no usable RDMA device ({why}): TCP between hosts", env.rank));
                None
            }
        };
        let listener = match &dev {
            Some(_) => {
                let l = Tcp::listen(env.ip)?;
                let a = l.local_addr().map_err(|e| Error::system("reading the InfiniBand listener address", e))?;
                Some((l, a))
            }
            None => None,
        };
        Ok(Some(IbSetup { rank: env.rank, peers, dev, listener }))
    }
}

impl Setup for IbSetup {
    fn name(&self) -> &'static str {
        "ib"
    }

    fn peers(&self) -> &[usize] {
        &self.peers
    }

    fn address(&self) -> Vec<u8> {
        let mut e = crate::wire::Enc::new();
        if let Some((_, a)) = &self.listener {
            e.addr(a);
        }
        e.0
    }

    fn serves(&mut self, addrs: &[&[u8]]) -> Result<bool> {
        let everyone = addrs.iter().all(|a| !a.is_empty());
        if self.dev.is_some() && !everyone {
            log::info(false, &format!("rank {}: some ranks have no usable RDMA device: TCP between hosts", self.rank));
        }
        Ok(everyone && self.dev.is_some())
    }

    fn connect(&mut self, env: &Env<'_>, addrs: &[&[u8]], shared: &Shared) -> Result<Box<dyn Transport>> {
        let (dev, (l, _)) = match (self.dev.take(), self.listener.take()) {
            (Some(d), Some(l)) => (d, l),
            _ => return Err(Error::internal("InfiniBand connected without a device")),
        };
        let ib = &env.settings.ib;
        let t = ib.tuning;
        let tuned = if t == Default::default() {
            String::new()
        } else {
            format!(
                "; traffic class {}, service level {}, ACK timeout {}, {} retries",
                t.traffic_class, t.service_level, t.timeout, t.retry_cnt
            )
        };
        log::info(false, &format!("rank {}: InfiniBand to other hosts through {}{tuned}", env.rank, dev.describe()));
        let s = env.settings;
        let t = Ib::new(
            env.rank,
            *env.secret,
            env.shape,
            ib,
            dev,
            l,
            listener_addrs(addrs)?,
            env.topology.peers.clone(),
            shared.bell.clone(),
            s.timeout,
        )?;
        Ok(Box::new(t.with_watch(shared.watch.clone()).with_fault(shared.fault.clone())))
    }
}
