//! The state that runs calls: links, transport, plans, scratch vectors. The communicator
//! owns it behind a mutex, so that a call runs either on the caller's thread (blocking
//! calls) or on the communicator's progress thread (operations issued in a scope).

use std::sync::Arc;
use std::time::Duration;

use super::CallSpec;
use crate::algo::Topo;
use crate::call::{Algo, Collective, desc};
use crate::error::{ErrorKind, Result};
use crate::exec::{self, Ctx};
use crate::plan;
use crate::settings::Settings;
use crate::sync::{BackoffConfig, Doorbell};
use crate::transport::{Links, Transport};

/// Everything a call needs, for one rank.
pub(crate) struct Engine {
    pub rank: usize,
    pub nranks: usize,
    pub settings: Arc<Settings>,
    pub topo: Topo,
    pub links: Links,
    pub transport: Box<dyn Transport>,
    pub bell: Doorbell,
    /// Whether the communicator broke; every call checks it first.
    pub fault: Arc<crate::fault::Fault>,
    pub seq: u64,
    pub backoff: BackoffConfig,
    /// The plans of recent calls.
    plans: plan::cache::Cache,
    /// The calls of the batch being run (empty between batches).
    calls: Vec<exec::Call>,
    /// The executor's reused vectors.
    scratch: exec::Scratch,
    /// Some links are sockets: calls end by flushing them.
    pub sockets: bool,
    /// This host's peer processes, watched for exit.
    pub watch: Option<Arc<crate::liveness::PeerWatch>>,
    /// Collectives run so far (see [`desc::with_tag`]).
    tag: u64,
    /// The current batch got past planning: its failures break the communicator.
    moving: bool,
    /// The first batch has run (its time and the memory after it are logged once).
    ran_first: bool,
}

// SAFETY: `exec::Call` holds raw pointers into the caller's buffers only while a call
// runs; between calls `calls` is empty, so moving the engine to another thread moves no
// live pointer.
unsafe impl Send for Engine {}

impl Engine {
    /// An engine over connected parts; `local_ranks` ranks share this host.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rank: usize,
        nranks: usize,
        settings: Arc<Settings>,
        topo: Topo,
        transport: Box<dyn Transport>,
        bell: Doorbell,
        fault: Arc<crate::fault::Fault>,
        local_ranks: usize,
    ) -> Engine {
        Engine {
            rank,
            nranks,
            backoff: backoff(&settings, local_ranks),
            settings,
            topo,
            links: Links::new(nranks),
            transport,
            bell,
            fault,
            seq: 0,
            plans: plan::cache::Cache::default(),
            calls: Vec::new(),
            scratch: exec::Scratch::default(),
            sockets: false,
            watch: None,
            moving: false,
            ran_first: false,
            tag: 0,
        }
    }

    fn ensure_alive(&self) -> Result<()> {
        match self.fault.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Plans and runs a batch of calls. A failure while messages move (a dead or silent
    /// peer, a mismatched call, an abort) leaves the links in an unknown state: it
    /// breaks the communicator, is announced to the other ranks, and every later call
    /// fails with it at once.
    pub(crate) fn run(&mut self, specs: &[CallSpec]) -> Result<()> {
        let first = self.seq + 1;
        self.moving = false;
        let t = (!self.ran_first).then(std::time::Instant::now);
        let r = self.ensure_alive().and_then(|_| self.run_batch(specs));
        if let Some(t) = t
            && r.is_ok()
        {
            self.ran_first = true;
            if self.settings.debug || crate::log::info_enabled() {
                let mem = self.links.mem() + self.transport.mem();
                crate::log::info(
                    true,
                    &format!(
                        "rank {}/{}: first call ({}) {:.1} ms, connecting its links; holds {mem}",
                        self.rank,
                        self.nranks,
                        specs.first().map_or("none", |s| s.coll.name()),
                        t.elapsed().as_secs_f64() * 1e3
                    ),
                );
            }
        }
        let Err(mut e) = r else { return Ok(()) };
        // A broken connection usually means the peer failed and left: prefer the reason
        // it announced.
        if matches!(e.kind(), ErrorKind::Remote | ErrorKind::System) && self.moving && !self.fault.tripped() {
            e = exec::announced(&self.fault).unwrap_or(e);
        }
        let ops: Vec<&str> = specs.iter().map(|s| s.coll.name()).collect();
        let ops = ops.join("+");
        // Name the operation: a peer's failure surfaces wherever the rank waited. An
        // error that names its call already (the one that broke the communicator,
        // returned again) keeps its text.
        if e.kind() == ErrorKind::Remote && e.call().is_none() {
            let m = format!("rank {}: {ops} #{first}: {}", self.rank, e.message());
            e = e.with_message(m);
        }
        let e = e.with_rank(self.rank).with_call(&ops, first);
        if self.moving || self.fault.tripped() {
            self.fault.fail(&e);
        }
        Err(e)
    }

    /// Plans and runs a batch of calls (one call, or a group).
    fn run_batch(&mut self, specs: &[CallSpec]) -> Result<()> {
        let alone = specs.len() == 1;
        let shape = plan::Shape {
            n: self.nranks,
            // Direct algorithms synchronise the whole call with their peers; inside a
            // group they could wait on a peer that waits on another member of the group.
            shared: self.transport.shares_address_space() && alone,
            hierarchical: self.topo.hierarchical(),
            network: self.sockets,
            alone,
            slot_bytes: self.settings.slot_bytes,
        };
        let mut connected = true;
        let mut calls = std::mem::take(&mut self.calls);
        calls.clear();
        for s in specs {
            self.seq += 1;
            let p2p = matches!(s.coll, Collective::Send { .. } | Collective::Recv { .. });
            if s.coll.count() == 0 && s.coll != Collective::Barrier {
                // Nothing moves, but the position counts: a peer stuck in a non-empty
                // call at this position learns of the mismatch from this rank.
                if !p2p {
                    self.tag += 1;
                    let d = desc::encode(&s.coll, s.dtype, s.op.as_ref(), Algo::Ring);
                    self.fault.enter(self.tag, desc::with_tag(d, self.tag), self.seq);
                }
                continue;
            }
            let prep = *self.plans.get(s.coll, s.dtype, s.op, shape, &self.settings)?;
            connected &= prep.connected;
            // Point-to-point calls carry no tag: a send and its receive may sit at
            // different places among a group's collectives on the two ranks.
            if !p2p {
                self.tag += 1;
            }
            let desc = desc::with_tag(prep.desc, if p2p { 0 } else { self.tag });
            if !p2p {
                self.fault.enter(self.tag, desc, self.seq);
            }
            calls.push(exec::Call {
                send: s.send,
                send_len: s.send_len,
                recv: s.recv,
                recv_len: s.recv_len,
                elem: s.dtype.size(),
                reducer: prep.reducer,
                desc,
                nt: prep.plan.nt,
                seq: self.seq,
                by_ref: matches!(prep.plan.algo, Algo::Ring | Algo::Tree | Algo::P2p | Algo::Bruck),
                coll: s.coll,
                algo: prep.plan.algo,
                chunking: prep.plan.chunking,
                path: prep.plan.path,
            });
        }
        self.moving = true;
        let mut ctx = Ctx {
            me: self.rank,
            n: self.nranks,
            topo: &self.topo,
            links: &mut self.links,
            transport: &*self.transport,
            bell: &self.bell,
            backoff: self.backoff,
            timeout: self.settings.timeout,
            fault: &self.fault,
            watch: self.watch.as_deref(),
            scratch: &mut self.scratch,
        };
        let mut r = exec::run(&mut ctx, &calls, connected);
        if r.is_ok() && self.sockets {
            let what = specs.first().map_or("call", |s| s.coll.name());
            r = exec::flush(&mut ctx, what);
        }
        if r.is_ok() && !connected {
            for s in specs.iter().filter(|s| s.coll.count() > 0 || s.coll == Collective::Barrier) {
                if let Ok(p) = self.plans.get(s.coll, s.dtype, s.op, shape, &self.settings) {
                    p.connected = true;
                }
            }
        }
        calls.clear();
        self.calls = calls;
        r
    }
}

/// How a rank of a host running `local_ranks` ranks waits.
fn backoff(s: &Settings, local_ranks: usize) -> BackoffConfig {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let spins = s.spins.unwrap_or(if local_ranks > cores { 4 } else { 64 });
    BackoffConfig { spins, yield_for: s.yield_for.unwrap_or(Duration::from_micros(500)), ..BackoffConfig::default() }
}
