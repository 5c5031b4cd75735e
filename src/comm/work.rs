//! Operations that run while the caller computes: a [`Scope`] lends buffers to the
//! communicator's progress thread, which runs the operations in issue order; each
//! returns a [`Work`] handle whose `wait` gives the buffers back.
//!
//! Soundness rests on two rules the types enforce: a buffer lent to an operation stays
//! borrowed (immutably or mutably, as the operation needs) until its handle is waited on
//! or the scope ends, and the scope does not return, not even by unwinding, before every
//! operation issued in it has completed.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::engine::Engine;
use super::{CallSpec, Comm};
use crate::error::{Error, Result};
use crate::types::{Element, ReduceOp};

/// Where an operation stands.
#[derive(Default)]
enum Outcome {
    #[default]
    Pending,
    Done(Result<()>),
    /// Done, and the result went to whoever waited first.
    Taken,
}

/// A function to run once an operation completes, with its result.
pub(super) type OnComplete = Box<dyn FnOnce(Result<()>) + Send>;

/// Completion of one operation, shared between the progress thread and its handle.
#[derive(Default)]
pub(super) struct State {
    outcome: Mutex<Outcome>,
    done: Condvar,
    /// Run by `complete` (on the progress thread), after the waiters are woken. Locked
    /// only while `outcome` is locked, so a function is either queued here before the
    /// operation completes or run at once by `on_complete`.
    then: Mutex<Vec<OnComplete>>,
}

impl State {
    pub(super) fn complete(&self, r: Result<()>) {
        let then: Vec<(OnComplete, Result<()>)> = match self.outcome.lock() {
            Ok(mut g) => {
                let then = self.then.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
                let copies: Vec<Result<()>> = then.iter().map(|_| dup(&r)).collect();
                *g = Outcome::Done(r);
                then.into_iter().zip(copies).collect()
            }
            Err(_) => Vec::new(),
        };
        self.done.notify_all();
        for (f, r) in then {
            f(r);
        }
    }

    /// Runs `f` with the result once the operation completes: at once, on this thread,
    /// if it has; else on the thread that completes it.
    pub(super) fn on_complete(&self, f: OnComplete) {
        let Ok(g) = self.outcome.lock() else {
            return f(Err(Error::internal("the progress thread's state was poisoned")));
        };
        let now = match &*g {
            Outcome::Pending => match self.then.lock() {
                Ok(mut t) => {
                    t.push(f);
                    return;
                }
                Err(_) => Err(Error::internal("the progress thread's state was poisoned")),
            },
            Outcome::Done(r) => dup(r),
            Outcome::Taken => Ok(()),
        };
        drop(g);
        f(now)
    }

    /// Waits at most `limit` (forever with `None`): `None` while still pending, else a
    /// copy of the result, which stays for the next caller (unlike [`State::take`]).
    pub(super) fn result(&self, limit: Option<Duration>) -> Option<Result<()>> {
        self.when_done(limit, |g| match &*g {
            Outcome::Done(r) => dup(r),
            _ => Ok(()),
        })
    }

    /// Waits at most `limit` (forever with `None`) for the operation, then applies
    /// `f` to its outcome: `None` while it is still pending.
    fn when_done(&self, limit: Option<Duration>, f: impl FnOnce(&mut Outcome) -> Result<()>) -> Option<Result<()>> {
        let lost = || Some(Err(Error::internal("the progress thread's state was poisoned")));
        let Ok(mut g) = self.outcome.lock() else { return lost() };
        let deadline = limit.map(|t| std::time::Instant::now() + t);
        while matches!(*g, Outcome::Pending) {
            g = match deadline {
                None => match self.done.wait(g) {
                    Ok(g) => g,
                    Err(_) => return lost(),
                },
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return None;
                    }
                    match self.done.wait_timeout(g, d - now) {
                        Ok((g, _)) => g,
                        Err(_) => return lost(),
                    }
                }
            };
        }
        Some(f(&mut g))
    }

    pub(super) fn is_done(&self) -> bool {
        self.outcome.lock().is_ok_and(|g| !matches!(*g, Outcome::Pending))
    }

    /// Waits at most `limit` (forever with `None`) for the operation: `None` while it
    /// is still pending, else its result (`Ok` if someone took it already).
    fn take(&self, limit: Option<Duration>) -> Option<Result<()>> {
        self.when_done(limit, |g| match std::mem::replace(g, Outcome::Taken) {
            Outcome::Done(r) => r,
            _ => Ok(()),
        })
    }
}

/// A copy of a result.
fn dup(r: &Result<()>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(e.duplicate()),
    }
}

/// An operation for the progress thread.
pub(crate) struct Job {
    specs: Vec<CallSpec>,
    state: Arc<State>,
    /// What must happen around it (device operations: wait for the stream to stage the
    /// inputs, then release the stream).
    hooks: Option<Box<dyn Hooks>>,
}

/// Work the progress thread does before and after an operation's collective.
pub(crate) trait Hooks: Send {
    /// Runs before the collective (without the engine's lock); an error skips it.
    fn before(&mut self) -> Result<()>;
    /// Runs after it, or after `before` failed, with the result.
    fn after(&mut self, r: &Result<()>);
}

// SAFETY: the job's raw pointers point into buffers borrowed by a `Scope`, which does not
// end before the job has completed; only the progress thread touches them meanwhile.
unsafe impl Send for Job {}

impl Drop for Job {
    /// A job dropped before it ran (its thread is gone) must still release its waiters
    /// (and, through its hooks, a stream waiting for it).
    fn drop(&mut self) {
        if !self.state.is_done() {
            let e = Error::internal("the progress thread ended before running an operation");
            if let Some(h) = self.hooks.as_mut() {
                h.after(&Err(e.duplicate()));
            }
            self.state.complete(Err(e));
        }
    }
}

#[cfg(feature = "cuda")]
impl Worker {
    /// Queues an operation with hooks; returns its completion (see [`Pending`]).
    pub(crate) fn submit_with(&self, specs: Vec<CallSpec>, hooks: Box<dyn Hooks>) -> Result<Pending> {
        let state = Arc::new(State::default());
        self.jobs
            .send(Job { specs, state: state.clone(), hooks: Some(hooks) })
            .map_err(|_| Error::internal("progress thread gone"))?;
        Ok(Pending(state))
    }

    /// Starts the progress thread of `engine`.
    pub(crate) fn spawn(engine: Arc<Mutex<Engine>>, rank: usize) -> Result<Worker> {
        Worker::start(engine, rank)
    }
}

/// An operation queued with [`Worker::submit_with`].
#[cfg(feature = "cuda")]
pub(crate) struct Pending(Arc<State>);

#[cfg(feature = "cuda")]
impl Pending {
    /// Whether it has completed.
    pub(crate) fn is_done(&self) -> bool {
        self.0.is_done()
    }

    /// Waits for it to complete (its result goes to the communicator's fault state, so
    /// it is not returned here).
    pub(crate) fn wait(&self) {
        let _ = self.0.take(None);
    }
}

impl Worker {
    /// Queues `specs` (without hooks); returns their completion.
    pub(super) fn submit_plain(&self, specs: Vec<CallSpec>) -> Result<Arc<State>> {
        let state = Arc::new(State::default());
        self.jobs
            .send(Job { specs, state: state.clone(), hooks: None })
            .map_err(|_| Error::internal("progress thread gone"))?;
        Ok(state)
    }

    /// Starts the progress thread of `engine` (any build).
    pub(super) fn launch(engine: Arc<Mutex<Engine>>, rank: usize) -> Result<Worker> {
        Worker::start(engine, rank)
    }
}

/// A communicator's progress thread: runs jobs in the order they were issued.
pub(crate) struct Worker {
    jobs: mpsc::Sender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(engine: Arc<Mutex<Engine>>, rank: usize) -> Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("oxccl-progress-{rank}"))
            .spawn(move || {
                for mut job in rx {
                    let ready = job.hooks.as_mut().map_or(Ok(()), |h| h.before());
                    let r = ready.and_then(|()| match engine.lock() {
                        Ok(mut e) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.run(&job.specs)))
                            .unwrap_or_else(|_| Err(Error::internal("an operation panicked on the progress thread"))),
                        Err(_) => Err(Error::internal("communicator state poisoned by a panic")),
                    });
                    if let Some(h) = job.hooks.as_mut() {
                        h.after(&r);
                    }
                    job.state.complete(r);
                }
            })
            .map_err(|e| Error::system("starting the progress thread", e))?;
        Ok(Worker { jobs: tx, thread: Some(thread) })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the queue is empty.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Operations issued together; see [`Comm::scope`].
pub struct Scope<'scope, 'env: 'scope> {
    comm: &'scope Comm,
    issued: RefCell<Vec<Arc<State>>>,
    _env: PhantomData<&'env mut &'env ()>,
}

mod sealed {
    /// A buffer reference taken apart into its raw parts and put back together.
    pub trait Parts: Sized {
        /// Address and length; the reference itself is gone.
        fn into_parts(self) -> (*mut u8, usize);
        /// The reference again.
        ///
        /// # Safety
        /// `p` comes from [`Parts::into_parts`] of the same type and lifetime, and no
        /// other reference to the buffer is alive while the result is.
        unsafe fn from_parts(p: (*mut u8, usize)) -> Self;
    }

    impl<T> Parts for &mut [T] {
        fn into_parts(self) -> (*mut u8, usize) {
            (self.as_mut_ptr().cast(), self.len())
        }
        unsafe fn from_parts(p: (*mut u8, usize)) -> Self {
            // SAFETY: the caller passes the parts of a `&mut [T]` of this lifetime, whose
            // reference is gone.
            unsafe { std::slice::from_raw_parts_mut(p.0.cast(), p.1) }
        }
    }

    impl<T> Parts for &[T] {
        fn into_parts(self) -> (*mut u8, usize) {
            (self.as_ptr().cast_mut().cast(), self.len())
        }
        unsafe fn from_parts(p: (*mut u8, usize)) -> Self {
            // SAFETY: the caller passes the parts of a `&[T]` of this lifetime.
            unsafe { std::slice::from_raw_parts(p.0.cast_const().cast(), p.1) }
        }
    }

    impl Parts for () {
        fn into_parts(self) -> (*mut u8, usize) {
            (std::ptr::null_mut(), 0)
        }
        unsafe fn from_parts(_: (*mut u8, usize)) -> Self {}
    }
}

/// What a [`Work`] gives back when it completes: the `&mut [T]` the operation wrote, the
/// `&[T]` it read (a send), or `()` (a barrier).
pub trait Lent: sealed::Parts {}

impl<T> Lent for &mut [T] {}
impl<T> Lent for &[T] {}
impl Lent for () {}

/// A pending operation of a [`Scope`]. [`Work::wait`] returns the buffer the operation
/// wrote, once it is complete; dropping the handle leaves the buffer lent until the scope
/// ends.
///
/// While the operation runs, the handle keeps only the buffer's address and length (no
/// reference to it exists that the progress thread's writes could invalidate), and the
/// borrow lives on in its type.
#[must_use = "an operation's buffer stays lent until its work is waited on or the scope ends"]
pub struct Work<'scope, B: Lent> {
    state: Arc<State>,
    parts: (*mut u8, usize),
    _buf: PhantomData<B>,
    _scope: PhantomData<&'scope ()>,
}

impl<B: Lent> Work<'_, B> {
    /// The buffer, once the operation has completed.
    fn give_back(&self) -> B {
        // SAFETY: `parts` came from `into_parts` of a `B` whose borrow this handle holds
        // (in its type); the operation that used the buffer has completed, and `self` is
        // consumed by the caller, so this is the one reference made from them.
        unsafe { B::from_parts(self.parts) }
    }

    /// Whether the operation has completed (successfully or not).
    pub fn is_completed(&self) -> bool {
        self.state.is_done()
    }

    /// Waits for the operation and gives its buffer back.
    pub fn wait(self) -> Result<B> {
        match self.state.take(None) {
            Some(r) => r.map(|()| self.give_back()),
            None => unreachable!("an unlimited wait returns only when done"),
        }
    }

    /// Waits at most `limit`: `Ok(buffer)` once complete, or the handle back
    /// (`Err(self)`) if the operation is still running.
    pub fn wait_timeout(self, limit: Duration) -> std::result::Result<Result<B>, Self> {
        match self.state.take(Some(limit)) {
            Some(r) => Ok(r.map(|()| self.give_back())),
            None => Err(self),
        }
    }
}

impl<'scope, 'env> Scope<'scope, 'env> {
    /// Queues `specs` for the progress thread; `parts` are those of the buffer `wait`
    /// gives back.
    fn submit<B: Lent>(&self, specs: Vec<CallSpec>, parts: (*mut u8, usize)) -> Result<Work<'scope, B>> {
        let state = Arc::new(State::default());
        let worker = self.comm.worker.as_ref().ok_or_else(|| Error::internal("no progress thread"))?;
        worker
            .jobs
            .send(Job { specs, state: state.clone(), hooks: None })
            .map_err(|_| Error::internal("progress thread gone"))?;
        self.issued.borrow_mut().push(state.clone());
        Ok(Work { state, parts, _buf: PhantomData, _scope: PhantomData })
    }

    /// Lends `buf` to one operation: `call` checks the arguments and describes the call
    /// on a reference rebuilt from `buf`'s raw parts; `buf` itself is not used again.
    fn lend<B: Lent>(
        &self,
        buf: B,
        call: impl FnOnce(&super::calls::Ranks, B) -> Result<CallSpec>,
    ) -> Result<Work<'scope, B>> {
        let parts = buf.into_parts();
        // SAFETY: the parts of `buf`, which is gone; the rebuilt reference lives only for
        // the argument checks, before the progress thread may touch the buffer.
        let s = call(&self.comm.ranks(), unsafe { B::from_parts(parts) })?;
        self.submit(vec![s], parts)
    }

    /// Non-blocking [`Comm::all_reduce`]: `wait` returns `recv`.
    pub fn all_reduce<T: Element>(
        &self,
        send: &'env [T],
        recv: &'env mut [T],
        op: ReduceOp,
    ) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(recv, |r, b| r.all_reduce(send, b, op))
    }

    /// Non-blocking [`Comm::all_reduce_in_place`]: `wait` returns `buf`.
    pub fn all_reduce_in_place<T: Element>(
        &self,
        buf: &'env mut [T],
        op: ReduceOp,
    ) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(buf, |r, b| r.all_reduce_in_place(b, op))
    }

    /// Non-blocking [`Comm::reduce`]: `wait` returns `recv`.
    pub fn reduce<T: Element>(
        &self,
        send: &'env [T],
        recv: &'env mut [T],
        op: ReduceOp,
        root: usize,
    ) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(recv, |r, b| r.reduce(send, b, op, root))
    }

    /// Non-blocking [`Comm::broadcast`]: `wait` returns `recv`.
    pub fn broadcast<T: Element>(
        &self,
        send: &'env [T],
        recv: &'env mut [T],
        root: usize,
    ) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(recv, |r, b| r.broadcast(send, b, root))
    }

    /// Non-blocking [`Comm::broadcast_in_place`]: `wait` returns `buf`.
    pub fn broadcast_in_place<T: Element>(
        &self,
        buf: &'env mut [T],
        root: usize,
    ) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(buf, |r, b| r.broadcast_in_place(b, root))
    }

    /// Non-blocking [`Comm::all_gather`]: `wait` returns `recv`.
    pub fn all_gather<T: Element>(&self, send: &'env [T], recv: &'env mut [T]) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(recv, |r, b| r.all_gather(send, b))
    }

    /// Non-blocking [`Comm::reduce_scatter`]: `wait` returns `recv`.
    pub fn reduce_scatter<T: Element>(
        &self,
        send: &'env [T],
        recv: &'env mut [T],
        op: ReduceOp,
    ) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(recv, |r, b| r.reduce_scatter(send, b, op))
    }

    /// Non-blocking [`Comm::all_to_all`]: `wait` returns `recv`.
    pub fn all_to_all<T: Element>(&self, send: &'env [T], recv: &'env mut [T]) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(recv, |r, b| r.all_to_all(send, b))
    }

    /// Non-blocking [`Comm::send`]: `wait` returns `buf`.
    pub fn send<T: Element>(&self, buf: &'env [T], peer: usize) -> Result<Work<'scope, &'env [T]>> {
        self.lend(buf, |r, b| r.send(b, peer))
    }

    /// Non-blocking [`Comm::recv`]: `wait` returns `buf`.
    pub fn recv<T: Element>(&self, buf: &'env mut [T], peer: usize) -> Result<Work<'scope, &'env mut [T]>> {
        self.lend(buf, |r, b| r.recv(b, peer))
    }

    /// Non-blocking [`Comm::barrier`].
    pub fn barrier(&self) -> Result<Work<'scope, ()>> {
        self.lend((), |r, ()| Ok(r.barrier()))
    }
}

/// Waits for every operation of a scope, also when the scope's closure panics.
struct WaitAll<'a>(&'a RefCell<Vec<Arc<State>>>);

impl WaitAll<'_> {
    /// The first error of an operation whose handle was dropped unwaited.
    fn finish(&self) -> Option<Error> {
        let mut first = None;
        for st in self.0.borrow_mut().drain(..) {
            if let Some(Err(e)) = st.take(None) {
                first.get_or_insert(e);
            }
        }
        first
    }
}

impl Drop for WaitAll<'_> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl Comm {
    /// Runs `f` with a [`Scope`] in which operations are issued without blocking: the
    /// communicator's progress thread runs them, in issue order, while `f` goes on. Each
    /// returns a [`Work`] handle; its `wait` returns the buffer the operation wrote. The
    /// buffers stay borrowed until then, so they cannot be read half-reduced, and the
    /// scope returns only after every operation issued in it has completed. An operation
    /// whose handle was dropped and that failed makes the scope return that error.
    ///
    /// ```
    /// use oxccl::{Comm, ReduceOp};
    /// let comms = Comm::init_all(2)?;
    /// std::thread::scope(|t| {
    ///     for mut comm in comms {
    ///         t.spawn(move || {
    ///             let mut grads = vec![comm.rank() as f32 + 1.0; 1 << 16];
    ///             let mut other = vec![1.0f32; 1 << 10];
    ///             comm.scope(|s| {
    ///                 let w = s.all_reduce_in_place(&mut grads, ReduceOp::Sum)?;
    ///                 // ... back-propagate the next layer here, while `grads` is reduced ...
    ///                 let w2 = s.all_reduce_in_place(&mut other, ReduceOp::Avg)?;
    ///                 let grads = w.wait()?; // complete, in issue order
    ///                 assert_eq!(grads[0], 3.0);
    ///                 w2.wait()?;
    ///                 Ok::<_, oxccl::Error>(())
    ///             })
    ///             .unwrap()
    ///             .unwrap();
    ///         });
    ///     }
    /// });
    /// # Ok::<(), oxccl::Error>(())
    /// ```
    ///
    /// Reading a buffer while its operation is pending does not compile:
    ///
    /// ```compile_fail
    /// use oxccl::{Comm, ReduceOp};
    /// let mut comm = Comm::init_all(1).unwrap().pop().unwrap();
    /// let mut grads = vec![1.0f32; 8];
    /// comm.scope(|s| {
    ///     let w = s.all_reduce_in_place(&mut grads, ReduceOp::Sum).unwrap();
    ///     println!("{}", grads[0]); // error: `grads` is lent to the pending all-reduce
    ///     w.wait().unwrap();
    /// })
    /// .unwrap();
    /// ```
    pub fn scope<'env, F, R>(&'env mut self, f: F) -> Result<R>
    where
        F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> R,
    {
        if self.worker.is_none() {
            self.worker = Some(Worker::start(self.engine.clone(), self.rank)?);
        }
        let scope = Scope { comm: self, issued: RefCell::new(Vec::new()), _env: PhantomData };
        let guard = WaitAll(&scope.issued);
        let r = f(&scope);
        let err = guard.finish();
        drop(guard);
        match err {
            Some(e) => Err(e),
            None => Ok(r),
        }
    }
}
