//! Communicator handles: what an `ncclComm_t` points to.
//!
//! A handle is a `Box` whose address C holds. Live handles are listed in a process-wide
//! registry, so a NULL, destroyed or made-up handle is an `InvalidArgument` error rather
//! than a wild read. The communicator sits behind a mutex (an operation holds it while it
//! runs); everything another thread may ask meanwhile (size, rank, async error, abort)
//! lives outside it.
//!
//! As in NCCL, a handle must not be destroyed while another thread uses it, with one
//! exception: `ncclCommAbort` unblocks a running operation, waits for it to return, then
//! frees the handle.

use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::abi::{IN_PROGRESS, NUM_OPS, NcclResult, SUCCESS};
use oxccl::{AbortHandle, Comm, DataType, Error, ErrorKind, ReduceOp, Result, Scalar};

/// Where a handle's communicator stands.
pub enum Slot {
    /// Created inside a group; the communicator comes at the outermost `ncclGroupEnd`.
    Pending,
    /// Ready for operations.
    Ready(Box<Comm>),
    /// Its creation failed with this code and reason.
    Failed(NcclResult, String),
}

/// A custom reduction operation (`ncclRedOpCreatePreMulSum`).
#[derive(Clone, Copy)]
pub enum CustomOp {
    /// The scalar, read when the operation was created (`ncclScalarHostImmediate`).
    Immediate(Scalar),
    /// The scalar's address and type, read each time an operation uses it
    /// (`ncclScalarDevice`: on host memory, when the collective is issued).
    Deferred(usize, DataType),
}

/// What an `ncclComm_t` points to.
pub struct Handle {
    comm: Mutex<Slot>,
    /// (rank, size), known from creation, or once a split has made the communicator.
    shape: OnceLock<(usize, usize)>,
    /// What `ncclCommCuDevice` reports.
    pub device: c_int,
    /// The first error that broke the communicator (a timeout, a peer's failure, an
    /// abort), for `ncclCommGetAsyncError`.
    async_error: AtomicI32,
    abort: Mutex<Option<AbortHandle>>,
    /// What broke the communicator, for `ncclGetLastError` after
    /// `ncclCommGetAsyncError`.
    async_reason: Mutex<Option<String>>,
    /// The communicator is still to be created (read without taking `comm`, which a
    /// running operation holds).
    pending: AtomicBool,
    finalized: AtomicBool,
    /// Custom operations: value `ncclNumOps + i` is `ops[i]` (None once destroyed).
    ops: Mutex<Vec<Option<CustomOp>>>,
    regs: Mutex<Registrations>,
}

/// Buffers registered with `ncclCommRegister`.
#[derive(Default)]
struct Registrations {
    /// The next token (never 0, so a handle is never NULL).
    next: usize,
    /// Token -> (address, bytes).
    live: HashMap<usize, (usize, usize)>,
}

/// The live handles' addresses.
fn live() -> MutexGuard<'static, HashSet<usize>> {
    static LIVE: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    LIVE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handle {
    /// A new live handle; C receives the returned pointer.
    pub fn create(slot: Slot, shape: Option<(usize, usize)>, device: c_int) -> *mut Handle {
        let h = Handle {
            comm: Mutex::new(Slot::Pending),
            shape: OnceLock::new(),
            device,
            async_error: AtomicI32::new(SUCCESS),
            abort: Mutex::new(None),
            async_reason: Mutex::new(None),
            pending: AtomicBool::new(true),
            finalized: AtomicBool::new(false),
            ops: Mutex::new(Vec::new()),
            regs: Mutex::new(Registrations { next: 1, live: HashMap::new() }),
        };
        if let Some(s) = shape {
            let _ = h.shape.set(s);
        }
        h.fill(slot);
        let p = Box::into_raw(Box::new(h));
        live().insert(p as usize);
        p
    }

    /// The handle behind `p`, if `p` is a live handle.
    ///
    /// # Safety
    /// No other thread may free `p` while the returned reference is used (NCCL's rule:
    /// a communicator is not destroyed while in use), `ncclCommAbort` aside, which waits
    /// for the running operation.
    pub unsafe fn get<'a>(p: *const Handle) -> Result<&'a Handle> {
        if p.is_null() {
            return Err(Error::invalid_argument("comm is NULL"));
        }
        if !live().contains(&(p as usize)) {
            return Err(Error::invalid_argument(format!(
                "comm {p:p} is not a live communicator (destroyed already, or never created)"
            )));
        }
        // SAFETY: registered addresses come from Box::into_raw and leave the registry
        // before their box is freed; the caller keeps it alive while in use.
        Ok(unsafe { &*p })
    }

    /// Whether `p` is a live handle.
    pub fn is_live(p: *const Handle) -> bool {
        live().contains(&(p as usize))
    }

    /// Takes `p` out of the registry and frees it, after any running operation returned.
    ///
    /// # Safety
    /// `p` is a live handle (from [`Handle::get`]) that no other thread uses afterwards.
    pub unsafe fn destroy(p: *mut Handle) -> Result<()> {
        if !live().remove(&(p as usize)) {
            return Err(Error::invalid_argument(format!("comm {p:p} is not a live communicator")));
        }
        // SAFETY: the address came from Box::into_raw and was live until just now; no
        // other call reaches it through the registry any more.
        let b = unsafe { Box::from_raw(p) };
        // Wait for an operation still holding the communicator (an abort's victim).
        drop(lock(&b.comm));
        drop(b);
        Ok(())
    }

    /// Sets the communicator (or the failure) of a pending handle.
    pub fn fill(&self, slot: Slot) {
        match &slot {
            Slot::Ready(c) => {
                let _ = self.shape.set((c.rank(), c.size()));
                *lock(&self.abort) = Some(c.abort_handle());
            }
            Slot::Failed(code, why) => self.record(*code, || why.clone()),
            Slot::Pending => {}
        }
        let pending = matches!(slot, Slot::Pending);
        *lock(&self.comm) = slot;
        self.pending.store(pending, Ordering::Release);
    }

    /// (rank, size), once known.
    pub fn shape(&self) -> Result<(usize, usize)> {
        self.shape.get().copied().ok_or_else(|| {
            Error::invalid_usage("the communicator is still being created (its ncclGroupEnd has not run)")
        })
    }

    /// Runs `f` on the communicator, holding it; an error that breaks the communicator
    /// becomes its async error.
    pub fn with_comm<R>(&self, f: impl FnOnce(&mut Comm) -> Result<R>) -> Result<R> {
        if self.finalized.load(Ordering::Relaxed) {
            return Err(Error::invalid_usage("the communicator was finalized; only ncclCommDestroy may follow"));
        }
        let mut slot = lock(&self.comm);
        let r = match &mut *slot {
            Slot::Ready(c) => f(c),
            Slot::Pending => {
                Err(Error::invalid_usage("the communicator is still being created (its ncclGroupEnd has not run)"))
            }
            Slot::Failed(_, why) => Err(Error::invalid_usage(format!("the communicator's creation failed: {why}"))),
        };
        if let Err(e) = &r
            && matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Remote | ErrorKind::Aborted | ErrorKind::System)
        {
            self.record(e.nccl_code(), || e.to_string());
        }
        r
    }

    /// Records what broke the communicator, unless something did already: the first
    /// error stays, and its code and reason are set together (under the reason's lock),
    /// so that a reader never pairs one error's code with another's reason.
    fn record(&self, code: NcclResult, why: impl FnOnce() -> String) {
        let mut reason = lock(&self.async_reason);
        if self.async_error.load(Ordering::Relaxed) == SUCCESS {
            *reason = Some(why());
            self.async_error.store(code, Ordering::Relaxed);
        }
    }

    /// `ncclCommGetAsyncError`: success, `ncclInProgress` (still being created), or the error
    /// that broke the communicator. Never waits for a running operation.
    pub fn async_error(&self) -> NcclResult {
        // A failure announced by another rank, or an abort, breaks the communicator
        // while no operation runs here.
        if self.async_error.load(Ordering::Relaxed) == SUCCESS
            && let Some(e) = lock(&self.abort).as_ref().and_then(|a| a.error())
        {
            self.record(e.nccl_code(), || e.to_string());
        }
        match self.async_error.load(Ordering::Relaxed) {
            SUCCESS if self.pending.load(Ordering::Acquire) => IN_PROGRESS,
            e => e,
        }
    }

    /// Aborts the communicator: its running and later operations fail promptly.
    pub fn abort(&self) {
        if let Some(a) = &*lock(&self.abort) {
            a.abort();
        }
    }

    /// What broke the communicator, if something did (read after [`Handle::async_error`]
    /// returned an error, it is that error's reason).
    pub fn async_reason(&self) -> Option<String> {
        lock(&self.async_reason).clone()
    }

    /// `ncclCommFinalize`: later operations are refused. Operations are complete when
    /// their call returns, so nothing is outstanding; returns the error that broke the
    /// communicator, if one did (as NCCL reports an asynchronous error here).
    pub fn finalize(&self) -> Result<()> {
        self.finalized.store(true, Ordering::Relaxed);
        match lock(&self.abort).as_ref().and_then(|a| a.error()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Registers a custom operation, returning its `ncclRedOp_t` value.
    pub fn add_op(&self, op: CustomOp) -> Result<c_int> {
        let mut ops = lock(&self.ops);
        let i = match ops.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                ops.push(None);
                ops.len() - 1
            }
        };
        let v = c_int::try_from(i)
            .ok()
            .and_then(|i| i.checked_add(NUM_OPS))
            .ok_or_else(|| Error::invalid_usage("too many custom reduction operations"))?;
        ops[i] = Some(op);
        Ok(v)
    }

    /// Destroys custom operation `v`.
    pub fn remove_op(&self, v: c_int) -> Result<()> {
        let mut ops = lock(&self.ops);
        match usize::try_from(v - NUM_OPS).ok().and_then(|i| ops.get_mut(i)) {
            Some(slot @ Some(_)) => {
                *slot = None;
                Ok(())
            }
            _ => Err(Error::invalid_argument(format!(
                "op {v} is not a custom reduction operation of this communicator (built-in, destroyed, or never created)"
            ))),
        }
    }

    /// The reduction operation for `ncclRedOp_t` value `v`, used with `dtype`.
    pub fn op(&self, v: c_int, dtype: DataType) -> Result<ReduceOp> {
        let op = match v {
            0..NUM_OPS => ReduceOp::BUILTIN[v as usize],
            _ => {
                let custom = usize::try_from(v.wrapping_sub(NUM_OPS))
                    .ok()
                    .filter(|_| v >= NUM_OPS)
                    .and_then(|i| lock(&self.ops).get(i).copied().flatten())
                    .ok_or_else(|| {
                        Error::invalid_argument(format!(
                            "unknown reduction op {v} (built-ins are 0..=4; custom ops come from ncclRedOpCreatePreMulSum on this communicator)"
                        ))
                    })?;
                let scalar = match custom {
                    CustomOp::Immediate(s) => s,
                    CustomOp::Deferred(addr, t) => {
                        let mut b = [0u8; 8];
                        // SAFETY: ncclRedOpCreatePreMulSum's contract (ncclScalarDevice)
                        // keeps `t.size()` bytes readable at `addr` while the op lives.
                        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), t.size()) };
                        Scalar::from_bytes(t, &b).ok_or_else(|| Error::internal("scalar of 8 bytes too short"))?
                    }
                };
                ReduceOp::PreMulSum(scalar)
            }
        };
        if let ReduceOp::PreMulSum(s) = op
            && s.dtype() != dtype
        {
            return Err(Error::invalid_argument(format!(
                "op {v} was created for {}, the call is on {dtype}; PreMulSum ops have one data type",
                s.dtype()
            )));
        }
        Ok(op)
    }

    /// Registers `bytes` at `addr`, returning a token.
    pub fn register(&self, addr: usize, bytes: usize) -> usize {
        let mut r = lock(&self.regs);
        let token = r.next;
        r.next += 1;
        r.live.insert(token, (addr, bytes));
        token
    }

    /// Forgets registration `token`.
    pub fn deregister(&self, token: usize) -> Result<()> {
        lock(&self.regs).live.remove(&token).map(|_| ()).ok_or_else(|| {
            Error::invalid_argument(format!("handle {token:#x} is not a registration of this communicator"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two thread-rank handles, as `ncclCommInitAll` makes them.
    fn pair() -> [*mut Handle; 2] {
        let mut comms = Comm::init_all(2).unwrap().into_iter();
        [(); 2].map(|_| Handle::create(Slot::Ready(Box::new(comms.next().unwrap())), None, -1))
    }

    fn get<'a>(p: *mut Handle) -> &'a Handle {
        // SAFETY: live handles from `pair`, destroyed only at the end of each test.
        unsafe { Handle::get(p) }.unwrap()
    }

    fn destroy(p: *mut Handle) {
        // SAFETY: a live handle no other thread uses.
        unsafe { Handle::destroy(p) }.unwrap();
    }

    #[test]
    fn a_peers_abort_is_an_async_remote_error_with_its_reason() {
        let [a, b] = pair();
        assert_eq!(get(b).async_error(), SUCCESS);
        assert_eq!(get(b).async_reason(), None);
        get(a).abort();
        destroy(a);
        // The board delivers the abort at once: no operation on b needed.
        assert_eq!(get(b).async_error(), Error::remote(String::new()).nccl_code());
        let why = get(b).async_reason().unwrap();
        assert!(why.contains("rank 0") && why.contains("aborted"), "{why}");
        // A later call fails at once with the same error class; the first error stays.
        let e = get(b).with_comm(|c| c.barrier()).unwrap_err();
        assert!(e.kind() == ErrorKind::Remote, "{e}");
        assert_eq!(get(b).async_error(), Error::remote(String::new()).nccl_code());
        assert_eq!(get(b).async_reason().unwrap(), why);
        destroy(b);
    }

    #[test]
    fn the_first_error_keeps_its_code_and_reason() {
        let [a, b] = pair();
        let h = get(a);
        h.record(8, || "timed out first".into());
        h.record(6, || panic!("a later error's reason is not even made"));
        assert_eq!(h.async_error(), 8);
        assert_eq!(h.async_reason().as_deref(), Some("timed out first"));
        // An abort afterwards does not replace it either.
        h.abort();
        assert_eq!(h.async_error(), 8);
        assert_eq!(h.async_reason().as_deref(), Some("timed out first"));
        destroy(a);
        destroy(b);
    }

    #[test]
    fn a_mismatch_elsewhere_is_invalid_usage_here() {
        let [a, b] = pair();
        let (ha, hb) = (get(a), get(b));
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| ha.with_comm(|c| c.all_reduce_in_place(&mut [1.0f32; 10], ReduceOp::Sum)));
            let tb = s.spawn(|| hb.with_comm(|c| c.all_reduce_in_place(&mut [1.0f32; 11], ReduceOp::Sum)));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        for (r, h) in [(ra, ha), (rb, hb)] {
            assert!(matches!(r, Err(ref e) if e.kind() == ErrorKind::InvalidUsage), "{r:?}");
            assert_eq!(h.async_error(), crate::abi::INVALID_USAGE);
            let why = h.async_reason().unwrap();
            assert!(why.contains("count=10,") && why.contains("count=11,"), "{why}");
        }
        destroy(a);
        destroy(b);
    }
}
