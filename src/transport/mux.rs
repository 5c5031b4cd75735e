//! Routes each peer to the transport of its link (shared memory inside a host, TCP
//! between hosts), behind the one `Transport` interface the executor sees.

use super::{Endpoint, LinkKey, Transport};
use crate::error::{Error, Result};

/// Several transports, one per kind of link, with a route for every peer.
pub struct Mux {
    transports: Vec<Box<dyn Transport>>,
    /// Index into `transports` for every rank (`None` for this rank).
    route: Vec<Option<usize>>,
}

impl Mux {
    /// `route[r]` names the transport (an index into `transports`) that reaches rank `r`.
    pub fn new(transports: Vec<Box<dyn Transport>>, route: Vec<Option<usize>>) -> Mux {
        Mux { transports, route }
    }
}

impl Transport for Mux {
    fn name(&self) -> &'static str {
        "mux"
    }

    fn connect(&self, me: usize, keys: &[LinkKey], opener: crate::call::Desc) -> Result<Vec<Endpoint>> {
        let mut out: Vec<Option<Endpoint>> = keys.iter().map(|_| None).collect();
        for (t, tr) in self.transports.iter().enumerate() {
            let idx: Vec<usize> =
                (0..keys.len()).filter(|&i| self.route.get(keys[i].peer).copied().flatten() == Some(t)).collect();
            if idx.is_empty() {
                continue;
            }
            let sub: Vec<LinkKey> = idx.iter().map(|&i| keys[i]).collect();
            for (i, ep) in idx.into_iter().zip(tr.connect(me, &sub, opener)?) {
                out[i] = Some(ep);
            }
        }
        keys.iter()
            .zip(out)
            .map(|(k, e)| e.ok_or_else(|| Error::internal(format!("rank {me} has no route to rank {}", k.peer))))
            .collect()
    }

    fn progress(&self) -> Result<bool> {
        let mut moved = false;
        for t in &self.transports {
            moved |= t.progress()?;
        }
        Ok(moved)
    }

    fn flushed(&self) -> bool {
        self.transports.iter().all(|t| t.flushed())
    }

    fn has_sockets(&self) -> bool {
        self.transports.iter().any(|t| t.has_sockets())
    }

    fn peer_gone(&self, peer: usize) -> Option<String> {
        self.transports[self.route.get(peer).copied().flatten()?].peer_gone(peer)
    }

    fn unclaimed(&self, f: &mut dyn FnMut(usize, crate::call::Desc)) {
        for t in &self.transports {
            t.unclaimed(f);
        }
    }

    fn mem(&self) -> super::MemStats {
        self.transports.iter().map(|t| t.mem()).fold(super::MemStats::default(), |a, b| a + b)
    }

    fn wait_io(&self, timeout: std::time::Duration) {
        // Shared-memory arrivals do not wake a socket wait: nap briefly when both mix.
        let mixed = self.transports.iter().any(|t| !t.has_sockets());
        let t = if mixed { timeout.min(std::time::Duration::from_micros(100)) } else { timeout };
        if let Some(tcp) = self.transports.iter().find(|t| t.has_sockets()) {
            tcp.wait_io(t);
        }
    }
}
