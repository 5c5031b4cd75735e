//! The state that runs calls: links, transport, plans, scratch vectors. The communicator
//! owns it behind a mutex, so that a call runs either on the caller's thread (blocking
//! calls) or on the communicator's progress thread (operations issued in a scope).

use std::sync::Arc;
use std::time::Duration;

use super::CallSpec;
use crate::algo::{self, Topo};
use crate::call::{Algo, Collective, desc};
use crate::error::{ErrorKind, Result};
use crate::exec::{self, Call, Ctx, Stream};
use crate::plan;
use crate::reduce::Reducer;
use crate::settings::Settings;
use crate::sync::{BackoffConfig, Doorbell};
use crate::transport::{Links, Transport};
use crate::types::{DataType, ReduceOp};

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
    scratch: Scratch,
    /// Some links are sockets: calls end by flushing them.
    pub sockets: bool,
    /// This host's peer processes, watched for exit.
    pub watch: Option<Arc<crate::liveness::PeerWatch>>,
    /// Collectives run so far (see [`desc::with_tag`]).
    tag: u64,
    /// The current batch got past planning: its failures break the communicator.
    moving: bool,
}

/// Vectors reused from call to call, so a call does not allocate.
#[derive(Default)]
struct Scratch {
    calls: Vec<Call>,
    streams: Vec<Stream>,
    scheds: Vec<algo::Schedule>,
    exec: exec::Scratch,
    prepared: Vec<Prepared>,
}

// SAFETY: `Call` holds raw pointers into the caller's buffers only while a call runs;
// between calls the vectors are empty, so moving the engine to another thread moves no
// live pointer.
unsafe impl Send for Scratch {}

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
            scratch: Scratch::default(),
            sockets: false,
            watch: None,
            moving: false,
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
        let Err(mut e) = self.ensure_alive().and_then(|_| self.run_batch(specs)) else { return Ok(()) };
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
        let sc = &mut self.scratch;
        let mut all_connected = true;
        let mut path = Path::Streams;
        // Direct algorithms synchronise the whole call with their peers; inside a group
        // they could wait on a peer that waits on another member of the group.
        let shared = self.transport.shares_address_space() && specs.len() == 1;
        for s in specs {
            self.seq += 1;
            let p2p = matches!(s.coll, Collective::Send { .. } | Collective::Recv { .. });
            if s.coll.count() == 0 && s.coll != Collective::Barrier {
                // Nothing moves, but the position counts: a peer stuck in a non-empty
                // call at this position learns of the mismatch from this rank.
                if !p2p {
                    self.tag += 1;
                    let d = desc::encode(&s.coll, s.dtype, s.op.as_ref(), Algo::Ring);
                    let d = desc::with_tag(d, self.tag);
                    self.fault.enter(self.tag, d, self.seq);
                }
                continue;
            }
            let prep = match sc.prepared.iter().position(|p| p.matches(s, shared)) {
                Some(i) => sc.prepared[i],
                None => {
                    let shape = plan::Shape {
                        n: self.nranks,
                        shared,
                        hierarchical: self.topo.hierarchical(),
                        network: self.sockets,
                    };
                    let p = Prepared::new(s, shape, &self.settings)?;
                    if sc.prepared.len() == PREPARED_CACHE {
                        sc.prepared.remove(0);
                    }
                    sc.prepared.push(p);
                    p
                }
            };
            all_connected &= prep.connected;
            if specs.len() == 1 {
                path = match prep.plan.algo {
                    Algo::Direct => Path::Direct,
                    Algo::OneShot
                        if prep.connected
                            && self.nranks > 1
                            && s.send_len * s.dtype.size() <= self.settings.slot_bytes =>
                    {
                        Path::OneSlot
                    }
                    _ => Path::Streams,
                };
            }
            if !p2p {
                self.tag += 1;
            }
            // Point-to-point calls carry no tag: a send and its receive may sit at
            // different places among a group's collectives on the two ranks.
            let desc = desc::with_tag(prep.desc, if p2p { 0 } else { self.tag });
            if !p2p {
                self.fault.enter(self.tag, desc, self.seq);
            }
            sc.calls.push(Call {
                send: s.send,
                send_len: s.send_len,
                recv: s.recv,
                recv_len: s.recv_len,
                elem: s.dtype.size(),
                reducer: prep.reducer,
                desc,
                nt: prep.plan.nt,
                seq: self.seq,
                by_ref: matches!(prep.plan.algo, Algo::Ring | Algo::Tree | Algo::P2p),
            });
            let call = sc.calls.len() - 1;
            if path != Path::Streams {
                continue;
            }
            algo::schedules(&s.coll, prep.plan.algo, &self.topo, prep.plan.chunking, &mut sc.scheds);
            sc.streams.extend(sc.scheds.drain(..).map(|sched| Stream::new(sched, call)));
        }
        self.moving = true;
        let mut ctx = Ctx {
            me: self.rank,
            n: self.nranks,
            links: &mut self.links,
            transport: &*self.transport,
            bell: &self.bell,
            backoff: self.backoff,
            timeout: self.settings.timeout,
            fault: &self.fault,
            watch: self.watch.as_deref(),
            scratch: &mut sc.exec,
        };
        let mut r = match (path, specs, &sc.calls[..]) {
            (Path::Direct, [s], [call]) => exec::direct::run(&mut ctx, call, &s.coll),
            (Path::OneSlot, [s], [call]) => exec::all_reduce_one_slot(&mut ctx, call, s.coll.count()),
            _ if sc.streams.is_empty() => Ok(()),
            _ => exec::run(&mut ctx, &sc.calls, &mut sc.streams, !all_connected),
        };
        if r.is_ok() && self.sockets {
            let what = specs.first().map_or("call", |s| s.coll.name());
            r = exec::flush(&mut ctx, what);
        }
        if r.is_ok() && !all_connected {
            for s in specs {
                if let Some(p) = sc.prepared.iter_mut().find(|p| p.matches(s, shared)) {
                    p.connected = true;
                }
            }
        }
        sc.calls.clear();
        sc.streams.clear();
        r
    }
}

/// How a rank of a host running `local_ranks` ranks waits.
fn backoff(s: &Settings, local_ranks: usize) -> BackoffConfig {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let spins = s.spins.unwrap_or(if local_ranks > cores { 4 } else { 64 });
    BackoffConfig { spins, yield_for: s.yield_for.unwrap_or(Duration::from_micros(500)), ..BackoffConfig::default() }
}

/// How a batch runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Schedules over FIFOs, through the general executor.
    Streams,
    /// Directly in the peers' buffers (threads of one process).
    Direct,
    /// The one-slot one-shot all-reduce fast path.
    OneSlot,
}

/// How many distinct calls keep their plan cached.
const PREPARED_CACHE: usize = 16;

/// Everything about a call that depends only on its shape, cached so repeated calls
/// (the common case in training loops and benchmarks) skip planning.
#[derive(Clone, Copy)]
struct Prepared {
    coll: Collective,
    dtype: DataType,
    op: Option<ReduceOp>,
    shared: bool,
    plan: plan::Plan,
    reducer: Option<Reducer>,
    desc: crate::call::Desc,
    /// The links this call uses are known to be connected.
    connected: bool,
}

impl Prepared {
    fn new(s: &CallSpec, shape: plan::Shape, settings: &Settings) -> Result<Prepared> {
        let (nranks, shared) = (shape.n, shape.shared);
        let plan = plan::plan(&s.coll, s.dtype, shape, settings)?;
        let reducer = match (&s.op, s.coll.reduces()) {
            (Some(op), true) => Some(Reducer::new(s.dtype, *op, nranks)?),
            _ => None,
        };
        let desc = desc::encode(&s.coll, s.dtype, s.op.as_ref(), plan.algo);
        Ok(Prepared { coll: s.coll, dtype: s.dtype, op: s.op, shared, plan, reducer, desc, connected: false })
    }

    fn matches(&self, s: &CallSpec, shared: bool) -> bool {
        self.coll == s.coll && self.dtype == s.dtype && self.op == s.op && self.shared == shared
    }
}
