//! The communicator: the safe API users call.
//!
//! This module owns argument checking (every wrong length, root or peer becomes an
//! [`Error`] naming the numbers), the per-communicator state (links, topology, sequence
//! number), and the translation of a call into a plan and streams for the executor. It
//! moves no bytes itself.

mod calls;
#[cfg(feature = "cuda")]
mod device;
mod engine;
mod group;
pub(crate) mod init;
pub mod launch;
pub(crate) mod model;
#[cfg(feature = "mpi")]
mod mpi;
mod raw;
mod split;
mod submit;
mod work;

pub use group::Group;
pub use raw::RawBatch;
pub use submit::RawWork;
pub use work::{Lent, Scope, Work};

use std::sync::{Arc, Mutex};

use crate::algo::{self, Topo};
use crate::call::Collective;
use crate::error::{Error, Result};
use crate::fault::{Fault, Sentinel};
use crate::settings::{Config, Settings};
use crate::sync::Doorbell;
use crate::transport::fifo::FifoShape;
use crate::transport::inproc::{InProc, World};
use crate::transport::{MemStats, Transport};
use crate::types::{DataType, Element, ReduceOp};
use engine::Engine;

/// A communicator: one rank's handle on a group of ranks that run collectives together.
///
/// Every rank must call the same collectives, with the same counts, data types, ops and
/// roots, in the same order. Calls block until this rank's part is done (its output is
/// complete and its input may be reused).
///
/// ```
/// use oxccl::{Comm, ReduceOp};
///
/// // Four ranks as threads of this process, as ncclCommInitAll does for GPUs.
/// let comms = Comm::init_all(4)?;
/// let handles: Vec<_> = comms
///     .into_iter()
///     .map(|mut comm| {
///         std::thread::spawn(move || -> oxccl::Result<Vec<f32>> {
///             let send = vec![comm.rank() as f32 + 1.0; 1000];
///             let mut recv = vec![0.0f32; 1000];
///             comm.all_reduce(&send, &mut recv, ReduceOp::Sum)?;
///             Ok(recv)
///         })
///     })
///     .collect();
/// for h in handles {
///     assert!(h.join().unwrap()?.iter().all(|&x| x == 10.0)); // 1 + 2 + 3 + 4
/// }
/// # Ok::<(), oxccl::Error>(())
/// ```
pub struct Comm {
    rank: usize,
    nranks: usize,
    settings: Arc<Settings>,
    engine: Arc<Mutex<Engine>>,
    fault: Arc<Fault>,
    /// Carries faults around the bootstrap ring (process ranks).
    sentinel: Option<Sentinel>,
    topology: Option<crate::topology::Topology>,
    /// The progress thread, started by the first [`Comm::scope`].
    worker: Option<work::Worker>,
    /// Where the ranks live (threads or processes), for [`Comm::split`].
    family: split::Family,
    /// Splits so far: together with the family, names a split's groups.
    splits: u64,
    /// Device operations: staging buffers, the stream flag, what is in flight.
    #[cfg(feature = "cuda")]
    device: Option<device::Staging>,
    /// Device all-reduce through CUDA IPC (`OXCCL_CUDA_IPC=1`), once set up.
    #[cfg(feature = "cuda")]
    ipc: Option<device::IpcState>,
}

/// A handle that aborts a communicator from any thread, while other threads are blocked
/// in its operations or waiting on its work.
#[derive(Clone)]
pub struct AbortHandle {
    fault: Arc<Fault>,
}

impl AbortHandle {
    /// Makes every pending and later operation of the communicator fail with `Aborted`
    /// on this rank (blocked calls return within milliseconds), and tells the other ranks,
    /// whose operations then fail with a remote error naming this rank.
    pub fn abort(&self) {
        self.fault.abort();
    }

    /// Whether the communicator is broken: aborted, or failed here or on another rank.
    pub fn is_broken(&self) -> bool {
        self.fault.tripped()
    }

    /// The error that broke the communicator, if one did (as [`Comm::async_error`]),
    /// without taking the communicator from the thread that uses it.
    pub fn error(&self) -> Option<Error> {
        self.fault.error()
    }
}

/// Buffers and arithmetic of one call, before planning (shared with groups).
pub(crate) struct CallSpec {
    pub coll: Collective,
    pub dtype: DataType,
    pub op: Option<ReduceOp>,
    pub send: *const u8,
    pub send_len: usize,
    pub recv: *mut u8,
    pub recv_len: usize,
}

impl Comm {
    /// Creates `nranks` communicators whose ranks are threads of this process; move each
    /// to its own thread. Like `ncclCommInitAll`.
    pub fn init_all(nranks: usize) -> Result<Vec<Comm>> {
        Self::init_all_with(nranks, &Config::new())
    }

    /// As [`Comm::init_all`], with a configuration.
    pub fn init_all_with(nranks: usize, config: &Config) -> Result<Vec<Comm>> {
        if nranks == 0 {
            return Err(Error::invalid_argument("a communicator needs at least one rank, got 0"));
        }
        let settings = Arc::new(config.resolve()?);
        crate::log::settings_once(&settings);
        let shape = FifoShape { nslots: settings.nslots, slot_bytes: settings.slot_bytes };
        let world = World::new(nranks, shape)?;
        let order: Vec<usize> = (0..nranks).collect();
        let family = split::Family::Threads(split::new_thread_family());
        let comms: Vec<Comm> = (0..nranks)
            .map(|rank| {
                let transport = Box::new(InProc::new(world.clone(), rank));
                let topo = Topo::new(rank, order.clone());
                let mut c =
                    Comm::assemble(rank, nranks, settings.clone(), topo, transport, world.bell(rank).clone(), nranks);
                c.family = family;
                c.join_board(world.board());
                c
            })
            .collect();
        if settings.debug {
            comms[0].log_topology();
        }
        Ok(comms)
    }

    /// A communicator over connected parts; `local_ranks` ranks share this host.
    fn assemble(
        rank: usize,
        nranks: usize,
        settings: Arc<Settings>,
        topo: Topo,
        transport: Box<dyn Transport>,
        bell: Doorbell,
        local_ranks: usize,
    ) -> Comm {
        let fault = Fault::new(rank, bell.clone());
        Self::assemble_with(rank, nranks, settings, topo, transport, bell, local_ranks, fault)
    }

    /// As [`Comm::assemble`], with a fault state the transport already watches.
    #[allow(clippy::too_many_arguments)]
    fn assemble_with(
        rank: usize,
        nranks: usize,
        settings: Arc<Settings>,
        topo: Topo,
        transport: Box<dyn Transport>,
        bell: Doorbell,
        local_ranks: usize,
        fault: Arc<Fault>,
    ) -> Comm {
        let engine = Engine::new(rank, nranks, settings.clone(), topo, transport, bell, fault.clone(), local_ranks);
        Comm {
            rank,
            nranks,
            settings,
            engine: Arc::new(Mutex::new(engine)),
            fault,
            sentinel: None,
            topology: None,
            worker: None,
            family: split::Family::Processes,
            splits: 0,
            #[cfg(feature = "cuda")]
            device: None,
            #[cfg(feature = "cuda")]
            ipc: None,
        }
    }

    /// The engine, for a call on this thread.
    fn engine(&self) -> Result<std::sync::MutexGuard<'_, Engine>> {
        self.engine.lock().map_err(|_| Error::internal("communicator state poisoned by a panic"))
    }

    fn log_topology(&self) {
        let Ok(engine) = self.engine() else { return };
        let s = &self.settings;
        let ranks = match &self.topology {
            Some(t) => format!("{} ranks on {} host(s)", self.nranks, t.hosts.len()),
            None => format!("{} ranks (threads of pid {})", self.nranks, std::process::id()),
        };
        crate::log::info(
            true,
            &format!(
                "{ranks}, transport {}, slots {} x {} B, timeout {:?}, forced algo {:?}, kernels {:?}",
                engine.transport.name(),
                s.nslots,
                s.slot_bytes,
                s.timeout,
                s.algo,
                crate::reduce::Level::selected()
            ),
        );
        crate::log::info(true, &format!("ring {:?}", engine.topo.ring));
        for t in 0..2 {
            let nodes: Vec<String> = (0..self.nranks)
                .map(|r| {
                    let node = algo::tree::double_tree(self.nranks, r)[t];
                    format!("{}<-{:?}", r, node.parent)
                })
                .collect();
            crate::log::info(true, &format!("tree {t} (rank<-parent) {}", nodes.join(" ")));
        }
    }

    /// This rank, in `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.nranks
    }

    /// The resolved configuration.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A handle that aborts this communicator from another thread.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle { fault: self.fault.clone() }
    }

    /// Aborts and destroys the communicator (`ncclCommAbort`): the other ranks' pending
    /// and later operations fail with a remote error naming this rank. Never blocks on a
    /// peer.
    pub fn abort(self) {
        self.fault.abort();
    }

    /// The memory this communicator holds and its connected links (`ncclCommMemStats`):
    /// shared, page-locked and private bytes set aside for the links connected so far
    /// (links connect on first use), and the device path's staging buffers.
    ///
    /// ```
    /// # let comms = oxccl::Comm::init_all(2).unwrap();
    /// let before = comms[0].mem_stats();
    /// assert_eq!(before.links, 0); // nothing connected until a call needs it
    /// # Ok::<(), oxccl::Error>(())
    /// ```
    pub fn mem_stats(&self) -> MemStats {
        let Ok(e) = self.engine() else { return MemStats::default() };
        let m = e.links.mem() + e.transport.mem();
        #[cfg(feature = "cuda")]
        let m = m + self.device.as_ref().map_or(MemStats::default(), |d| d.mem());
        m
    }

    /// The error that broke the communicator, if one did (`ncclCommGetAsyncError`):
    /// an abort, a failure this rank hit, or a failure another rank announced, even while
    /// this rank is not in a call. `None` while it is healthy.
    pub fn async_error(&self) -> Option<Error> {
        self.fault.error()
    }

    /// Waits for this rank's outstanding operations, then leaves the communicator
    /// cleanly (`ncclCommFinalize` + `ncclCommDestroy`); returns the error that broke
    /// it, if one did.
    pub fn finalize(mut self) -> Result<()> {
        self.worker.take();
        match self.fault.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts carrying faults around the bootstrap ring (process ranks).
    pub(crate) fn start_sentinel(&mut self, neighbours: Vec<crate::fault::Neighbour>) -> Result<()> {
        if !neighbours.is_empty() {
            self.sentinel = Some(Sentinel::start(self.fault.clone(), self.nranks, neighbours)?);
        }
        Ok(())
    }

    /// Joins the fault board of the thread ranks of one communicator.
    pub(crate) fn join_board(&self, board: &Arc<crate::fault::Board>) {
        board.join(&self.fault);
    }

    fn ranks(&self) -> calls::Ranks {
        calls::Ranks { rank: self.rank, n: self.nranks }
    }

    /// Sum (or another op) of every rank's `send` into every rank's `recv`
    /// (`ncclAllReduce`). Both slices have the same length on every rank.
    pub fn all_reduce<T: Element>(&mut self, send: &[T], recv: &mut [T], op: ReduceOp) -> Result<()> {
        let s = self.ranks().all_reduce(send, recv, op)?;
        self.run1(s)
    }

    /// In-place all-reduce: `buf` is both input and output.
    pub fn all_reduce_in_place<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let s = self.ranks().all_reduce_in_place(buf, op)?;
        self.run1(s)
    }

    /// Reduces every rank's `send` onto `root`'s `recv` (`ncclReduce`). `recv` must have
    /// `send.len()` elements on the root and is ignored elsewhere (pass `&mut []`).
    pub fn reduce<T: Element>(&mut self, send: &[T], recv: &mut [T], op: ReduceOp, root: usize) -> Result<()> {
        let s = self.ranks().reduce(send, recv, op, root)?;
        self.run1(s)
    }

    /// In-place reduce: `buf` is the input everywhere and the output on `root`.
    pub fn reduce_in_place<T: Element>(&mut self, buf: &mut [T], op: ReduceOp, root: usize) -> Result<()> {
        let s = self.ranks().reduce_in_place(buf, op, root)?;
        self.run1(s)
    }

    /// Copies `root`'s `send` into every rank's `recv` (`ncclBroadcast`). `send` is read
    /// only on the root (pass `&[]` elsewhere) and must have `recv.len()` elements there.
    pub fn broadcast<T: Element>(&mut self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        let s = self.ranks().broadcast(send, recv, root)?;
        self.run1(s)
    }

    /// In-place broadcast: `root`'s `buf` is copied into every other rank's `buf`
    /// (`ncclBcast`).
    pub fn broadcast_in_place<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        let s = self.ranks().broadcast_in_place(buf, root)?;
        self.run1(s)
    }

    /// Gathers every rank's `send` into every rank's `recv`, in rank order
    /// (`ncclAllGather`): `recv.len() == send.len() * size()`.
    pub fn all_gather<T: Element>(&mut self, send: &[T], recv: &mut [T]) -> Result<()> {
        let s = self.ranks().all_gather(send, recv)?;
        self.run1(s)
    }

    /// In-place all-gather: this rank's block `buf[rank*c..(rank+1)*c]` (with
    /// `c = buf.len() / size()`) is its input.
    pub fn all_gather_in_place<T: Element>(&mut self, buf: &mut [T]) -> Result<()> {
        let s = self.ranks().all_gather_in_place(buf)?;
        self.run1(s)
    }

    /// Reduces every rank's `send` and scatters it: rank `r` receives block `r`
    /// (`ncclReduceScatter`): `send.len() == recv.len() * size()`.
    pub fn reduce_scatter<T: Element>(&mut self, send: &[T], recv: &mut [T], op: ReduceOp) -> Result<()> {
        let s = self.ranks().reduce_scatter(send, recv, op)?;
        self.run1(s)
    }

    /// In-place reduce-scatter: `buf` is the input and this rank's block
    /// `buf[rank*c..(rank+1)*c]` receives the result.
    pub fn reduce_scatter_in_place<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let s = self.ranks().reduce_scatter_in_place(buf, op)?;
        self.run1(s)
    }

    /// Block `j` of every rank's `send` goes to rank `j`, landing at block `i` of its
    /// `recv` for sender `i` (`ncclAlltoAll`). Both buffers hold `size()` equal blocks.
    pub fn all_to_all<T: Element>(&mut self, send: &[T], recv: &mut [T]) -> Result<()> {
        let s = self.ranks().all_to_all(send, recv)?;
        self.run1(s)
    }

    /// Every rank's `send` is concatenated, in rank order, into `root`'s `recv`
    /// (`ncclGather`). `recv` needs `send.len() * size()` elements on the root and is
    /// ignored elsewhere.
    pub fn gather<T: Element>(&mut self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        let s = self.ranks().gather(send, recv, root)?;
        self.run1(s)
    }

    /// Block `j` of `root`'s `send` goes to rank `j`'s `recv` (`ncclScatter`). `send`
    /// needs `recv.len() * size()` elements on the root and is ignored elsewhere.
    pub fn scatter<T: Element>(&mut self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        let s = self.ranks().scatter(send, recv, root)?;
        self.run1(s)
    }

    /// Sends `buf` to `peer`, which must call [`Comm::recv`] with as many elements
    /// (`ncclSend`). To exchange with several peers at once (a ring of sends, say), issue
    /// the sends and receives together in a [`Comm::group`].
    pub fn send<T: Element>(&mut self, buf: &[T], peer: usize) -> Result<()> {
        self.group(|g| g.send(buf, peer))
    }

    /// Receives `buf.len()` elements from `peer` (`ncclRecv`).
    pub fn recv<T: Element>(&mut self, buf: &mut [T], peer: usize) -> Result<()> {
        self.group(|g| g.recv(buf, peer))
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&mut self) -> Result<()> {
        let s = self.ranks().barrier();
        self.run1(s)
    }

    /// Issues several operations together (`ncclGroupStart` / `ncclGroupEnd`): they run
    /// concurrently and return when all are done, so a ring of sends and receives
    /// cannot deadlock. Every rank must add matching operations in the same order.
    ///
    /// ```
    /// # let comms = oxccl::Comm::init_all(1).unwrap();
    /// # let mut comm = comms.into_iter().next().unwrap();
    /// let (n, me) = (comm.size(), comm.rank());
    /// let out = vec![me as u32; 1 << 20];
    /// let mut inp = vec![0u32; 1 << 20];
    /// comm.group(|g| {
    ///     g.send(&out, (me + 1) % n)?;
    ///     g.recv(&mut inp, (me + n - 1) % n)
    /// })?;
    /// assert_eq!(inp[0], ((me + n - 1) % n) as u32);
    /// # Ok::<(), oxccl::Error>(())
    /// ```
    pub fn group<'b, F>(&mut self, f: F) -> Result<()>
    where
        F: FnOnce(&mut Group<'b>) -> Result<()>,
    {
        let mut g = Group::new(self.ranks());
        f(&mut g)?;
        let specs = g.finish()?;
        self.run(&specs)
    }

    /// Runs one call.
    fn run1(&mut self, s: CallSpec) -> Result<()> {
        self.run(std::slice::from_ref(&s))
    }

    /// Plans and runs a batch of calls (one call, or a group) on this thread.
    pub(crate) fn run(&mut self, specs: &[CallSpec]) -> Result<()> {
        #[cfg(feature = "cuda")]
        self.settle_device();
        self.engine()?.run(specs)
    }
}

impl Drop for Comm {
    /// Leaves the communicator: the progress thread finishes its queue (scopes already
    /// waited for their operations, so it is idle), then the sentinel says goodbye to the
    /// ring neighbours, or passes on the fault that broke the communicator. Never waits
    /// for a peer beyond the sentinel's short socket timeouts. Dropped while its thread
    /// panics, it aborts instead, so that the peers fail at once.
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A panic unwinding through an open communicator must not look like leaving:
            // peers inside a collective with this rank would wait for it until the timeout.
            self.fault.abandon();
        }
        self.worker.take();
        if let Some(mut s) = self.sentinel.take() {
            s.leave();
        }
    }
}
