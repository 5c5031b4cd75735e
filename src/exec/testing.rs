//! A harness for the executor's unit tests: ranks as threads of the test, linked by the
//! in-process transport (FIFOs in ordinary memory: no sockets, no files), each running
//! the executor on its own calls with its own fault state.

use std::sync::Arc;
use std::time::Duration;

use super::{Call, Ctx, Path, Scratch};
use crate::algo::{Chunking, Topo};
use crate::call::{Algo, Collective, desc};
use crate::error::Result;
use crate::fault::Fault;
use crate::reduce::Reducer;
use crate::sync::BackoffConfig;
use crate::transport::Links;
use crate::transport::fifo::FifoShape;
use crate::transport::inproc::{InProc, World};
use crate::types::{DataType, ReduceOp};

/// One rank's view while it runs: call [`Rank::call`] to describe a call, then
/// [`Rank::run`] to run a batch of them.
pub struct Rank {
    pub me: usize,
    pub n: usize,
    topo: Topo,
    links: Links,
    transport: InProc,
    world: Arc<World>,
    pub fault: Arc<Fault>,
    scratch: Scratch,
    pub timeout: Option<Duration>,
    tag: u64,
}

impl Rank {
    /// The executor's call for `coll` on f32 buffers `send` and `recv`, summing when it
    /// reduces.
    pub fn call(&mut self, coll: Collective, algo: Algo, path: Path, send: &[f32], recv: &mut [f32]) -> Call {
        let reducer = coll.reduces().then(|| Reducer::new(DataType::Float32, ReduceOp::Sum, self.n).unwrap());
        self.tag += 1;
        let d = desc::with_tag(desc::encode(&coll, DataType::Float32, Some(&ReduceOp::Sum), algo), self.tag);
        self.fault.enter(self.tag, d, self.tag);
        Call {
            send: send.as_ptr() as *const u8,
            send_len: send.len(),
            recv: recv.as_mut_ptr() as *mut u8,
            recv_len: recv.len(),
            elem: 4,
            reducer,
            desc: d,
            nt: false,
            seq: self.tag,
            by_ref: false,
            coll,
            algo,
            chunking: Chunking { chunk: 64, align: 16 },
            path,
        }
    }

    /// Runs `calls` with the executor.
    pub fn run(&mut self, calls: &[Call]) -> Result<()> {
        let mut ctx = Ctx {
            me: self.me,
            n: self.n,
            topo: &self.topo,
            links: &mut self.links,
            transport: &self.transport,
            bell: self.world.bell(self.me),
            backoff: BackoffConfig::default(),
            timeout: self.timeout,
            fault: &self.fault,
            watch: None,
            scratch: &mut self.scratch,
        };
        super::run(&mut ctx, calls, false)
    }
}

/// Runs `f` on `n` rank threads (small FIFOs: 4 slots of 256 bytes, so multi-message
/// calls pipeline) and returns what each returned, by rank.
pub fn ranks<T: Send>(n: usize, f: impl Fn(&mut Rank) -> T + Sync) -> Vec<T> {
    let world = World::new(n, FifoShape { nslots: 4, slot_bytes: 256 }).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|me| {
                let world = world.clone();
                let f = &f;
                s.spawn(move || {
                    let fault = Fault::new(me, world.bell(me).clone());
                    world.board().join(&fault);
                    let mut r = Rank {
                        me,
                        n,
                        topo: Topo::new(me, (0..n).collect()),
                        links: Links::new(n),
                        transport: InProc::new(world.clone(), me),
                        world: world.clone(),
                        fault,
                        scratch: Scratch::default(),
                        timeout: Some(Duration::from_secs(20)),
                        tag: 0,
                    };
                    f(&mut r)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Rank `r`'s input of `len` elements: distinct small integers, exact in f32 sums.
pub fn input(r: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| (r * 1000 + i % 97) as f32).collect()
}

/// The element-wise sum of every rank's [`input`].
pub fn sum(n: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| (0..n).map(|r| (r * 1000 + i % 97) as f32).sum()).collect()
}
