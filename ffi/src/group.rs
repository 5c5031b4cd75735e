//! Group semantics (`ncclGroupStart` / `ncclGroupEnd`), per thread, as NCCL has them.
//!
//! Groups nest: a depth counter per thread. Between the outermost start and end, the
//! thread's calls are recorded instead of run: operations in one batch per communicator,
//! communicator creations (`ncclCommInitRank`) and splits (`ncclCommSplit`) in order. The
//! outermost `ncclGroupEnd` runs them, in three phases: creations, then splits, then the
//! operations. Within a phase, each communicator's work runs on its own thread, so that
//! one thread can drive all the ranks of a job (`ncclCommInitAll`, then one all-reduce per
//! communicator in a group), as with NCCL; a phase with one communicator runs inline.
//!
//! If a call in the group failed, `ncclGroupEnd` runs nothing and returns that error.

use std::cell::RefCell;

use crate::abi::NcclResult;
use crate::coll::Place;
use crate::handle::{Handle, Slot};
use oxccl::UniqueId;
use oxccl::{Comm, Config, Error, RawBatch, Result};

/// A handle address that crosses to a worker thread of `ncclGroupEnd`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HandlePtr(pub *mut Handle);

// SAFETY: a handle is shared state behind mutexes and atomics (`Handle` is Sync, checked
// below); the address is only dereferenced after a liveness check, and NCCL's rule (no
// destroy while in use) keeps it alive for the group's end.
unsafe impl Send for HandlePtr {}

const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Handle>();
};

/// A communicator to create at the group's end.
pub struct Init {
    /// Its handle, pending until then.
    pub handle: HandlePtr,
    /// The job.
    pub id: UniqueId,
    /// This rank.
    pub rank: usize,
    /// The job's size.
    pub nranks: usize,
    /// Its configuration.
    pub config: Config,
}

/// A split to run at the group's end.
pub struct Split {
    /// The communicator split.
    pub parent: HandlePtr,
    /// The new communicator's pending handle (None: no colour).
    pub child: Option<HandlePtr>,
    /// The colour (None: `NCCL_SPLIT_NOCOLOR`).
    pub color: Option<u32>,
    /// The key.
    pub key: i32,
}

#[derive(Default)]
struct State {
    depth: usize,
    inits: Vec<Init>,
    splits: Vec<Split>,
    batches: Vec<(HandlePtr, RawBatch, Place)>,
    /// The first error of a call in the group.
    error: Option<(NcclResult, String)>,
}

thread_local! {
    static GROUP: RefCell<State> = RefCell::new(State::default());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    GROUP.with(|g| f(&mut g.borrow_mut()))
}

/// Whether this thread is inside a group.
pub fn active() -> bool {
    with(|g| g.depth > 0)
}

/// `ncclGroupStart`.
pub fn start() {
    with(|g| g.depth += 1);
}

/// Remembers that a call inside the group failed, so that its end fails too.
pub fn record_error(code: NcclResult, msg: &str) {
    with(|g| {
        if g.depth > 0 && g.error.is_none() {
            g.error = Some((code, msg.to_string()));
        }
    });
}

/// As [`crate::boundary::guard`], for a call that a group records: its failure also
/// fails the group.
pub fn guard(what: &str, f: impl FnOnce() -> Result<()>) -> NcclResult {
    let code = crate::boundary::guard(what, f);
    if code != crate::abi::SUCCESS {
        // SAFETY: the last error is this thread's NUL-terminated string.
        let msg = unsafe { std::ffi::CStr::from_ptr(crate::boundary::last_error()) };
        record_error(code, &msg.to_string_lossy());
    }
    code
}

/// Records a creation.
pub fn add_init(init: Init) {
    with(|g| g.inits.push(init));
}

/// Records a split.
pub fn add_split(split: Split) {
    with(|g| g.splits.push(split));
}

/// Records operations on `handle`'s batch: `f` adds them to it.
pub fn add_ops(
    handle: HandlePtr,
    shape: (usize, usize),
    at: Place,
    f: impl FnOnce(&mut RawBatch) -> Result<()>,
) -> Result<()> {
    with(|g| {
        let i = match g.batches.iter().position(|(h, _, _)| *h == handle) {
            Some(i) => i,
            None => {
                g.batches.push((handle, RawBatch::new(shape.0, shape.1)?, at));
                g.batches.len() - 1
            }
        };
        if g.batches[i].2 != at {
            return Err(Error::invalid_usage(
                "a group's operations on one communicator must all be on host memory, or all on device memory \
                 with the same stream",
            ));
        }
        f(&mut g.batches[i].1)
    })
}

/// Whether this thread's group holds work for `handle` (which may then not be destroyed).
pub fn holds(handle: *mut Handle) -> bool {
    with(|g| {
        g.batches.iter().any(|(h, _, _)| h.0 == handle)
            || g.inits.iter().any(|i| i.handle.0 == handle)
            || g.splits.iter().any(|s| s.parent.0 == handle || s.child.is_some_and(|c| c.0 == handle))
    })
}

/// The handle behind `p`, checked live.
fn handle<'a>(p: HandlePtr) -> Result<&'a Handle> {
    // SAFETY: checked live; NCCL's rule keeps it alive until the group's end returns.
    unsafe { Handle::get(p.0) }
}

/// Runs `f` on every item, one thread each (inline for one), and returns the first error.
fn each<T: Send>(items: Vec<T>, f: impl Fn(T) -> Result<()> + Sync) -> Result<()> {
    let results: Vec<Result<()>> = if items.len() <= 1 {
        items.into_iter().map(&f).collect()
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = items.into_iter().map(|it| s.spawn(|| f(it))).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::internal("a group worker panicked"))))
                .collect()
        })
    };
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}

/// `ncclGroupEnd`: at the outermost level, runs what the group recorded.
pub fn end() -> Result<()> {
    let state = with(|g| {
        if g.depth == 0 {
            return Err(Error::invalid_usage("ncclGroupEnd without a matching ncclGroupStart"));
        }
        g.depth -= 1;
        Ok((g.depth == 0).then(|| std::mem::take(g)))
    })?;
    let Some(state) = state else { return Ok(()) };
    if let Some((code, msg)) = state.error {
        let why = format!("a call in the group failed, so nothing in it ran: {msg}");
        for h in state.inits.iter().map(|i| i.handle).chain(state.splits.iter().filter_map(|s| s.child)) {
            if let Ok(h) = handle(h) {
                h.fill(Slot::Failed(code, why.clone()));
            }
        }
        return Err(match code {
            4 => Error::invalid_argument(why),
            _ => Error::invalid_usage(why),
        });
    }

    // Phase 1: creations.
    let r1 = each(state.inits, |init| {
        let h = handle(init.handle)?;
        match Comm::init_rank(&init.id, init.rank, init.nranks, &init.config) {
            Ok(c) => {
                h.fill(Slot::Ready(Box::new(c)));
                Ok(())
            }
            Err(e) => {
                h.fill(Slot::Failed(e.nccl_code(), e.to_string()));
                Err(e)
            }
        }
    });

    // Phase 2: splits, each parent's in order.
    let mut by_parent: Vec<(HandlePtr, Vec<Split>)> = Vec::new();
    for s in state.splits {
        match by_parent.iter_mut().find(|(p, _)| *p == s.parent) {
            Some((_, v)) => v.push(s),
            None => by_parent.push((s.parent, vec![s])),
        }
    }
    let r2 = each(by_parent, |(parent, splits)| {
        let p = handle(parent)?;
        let mut first = Ok(());
        for s in splits {
            let r = p.with_comm(|c| c.split(s.color, s.key));
            let r = match (r, s.child) {
                (Ok(Some(c)), Some(child)) => {
                    handle(child)?.fill(Slot::Ready(Box::new(c)));
                    Ok(())
                }
                (Ok(None), None) => Ok(()),
                (Ok(_), child) => {
                    let e = Error::internal("split returned a communicator where none was expected, or none");
                    if let Some(child) = child {
                        handle(child)?.fill(Slot::Failed(e.nccl_code(), e.to_string()));
                    }
                    Err(e)
                }
                (Err(e), child) => {
                    if let Some(child) = child {
                        handle(child)?.fill(Slot::Failed(e.nccl_code(), e.to_string()));
                    }
                    Err(e)
                }
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    });

    // Phase 3: operations, one batch per communicator.
    let r3 = each(state.batches, |(h, batch, at)| handle(h)?.with_comm(|c| crate::coll::run_at(c, batch, at)));
    r1.and(r2).and(r3)
}
