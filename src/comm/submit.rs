//! Raw batches run without blocking: [`Comm::submit_raw`] queues a [`RawBatch`] on the
//! communicator's progress thread and returns a [`RawWork`] handle at once, for callers
//! that keep their buffers alive by other means than Rust borrows (a C ABI, a Python
//! binding holding references to its arrays, a framework's `Work` object).
//!
//! Order: the progress thread runs submitted batches in submission order, and after the
//! operations a [`Comm::scope`] issued before them. A blocking call on the same
//! communicator does not wait for submitted batches: issue it after the last one has
//! completed (or submit it too), so that every rank sees the same order of operations.

use std::sync::Arc;
use std::time::Duration;

use super::work::{State, Worker};
use super::{Comm, RawBatch};
use crate::error::{Error, Result};

/// A batch queued with [`Comm::submit_raw`]: wait for it, poll it, or have a function
/// run when it completes. Cloning gives another handle on the same batch; dropping every
/// handle does not cancel the batch, which runs to completion all the same.
#[derive(Clone)]
pub struct RawWork {
    state: Arc<State>,
}

impl RawWork {
    /// Whether the batch has completed (successfully or not).
    pub fn is_completed(&self) -> bool {
        self.state.is_done()
    }

    /// Waits for the batch and returns its result. Every call (from any handle) returns
    /// the same result.
    pub fn wait(&self) -> Result<()> {
        self.state.result(None).unwrap_or_else(|| Err(Error::internal("an unlimited wait ended early")))
    }

    /// Waits at most `limit`: `None` while the batch is still running, else its result.
    pub fn wait_timeout(&self, limit: Duration) -> Option<Result<()>> {
        self.state.result(Some(limit))
    }

    /// Runs `f` with the batch's result once it completes: at once on this thread if it
    /// has completed, else on the progress thread right after the batch (so `f` must be
    /// short and must not call into the communicator).
    pub fn on_complete(&self, f: impl FnOnce(Result<()>) + Send + 'static) {
        self.state.on_complete(Box::new(f));
    }
}

impl Comm {
    /// Queues `batch` (recorded with [`Comm::raw_batch`]) on this communicator's
    /// progress thread and returns at once; its operations run together, as with
    /// [`Comm::run_raw`], after everything submitted before. The arguments are checked
    /// here: a wrong batch is an error now, not from the handle.
    ///
    /// The buffers the batch names must stay valid and untouched until the returned
    /// work has completed (the contract of the recording methods: "until the batch has
    /// run"). Gathers and scatters in place are not supported on this path.
    ///
    /// ```
    /// use oxccl::{Comm, DataType, ReduceOp};
    /// let comms = Comm::init_all(2)?;
    /// std::thread::scope(|t| {
    ///     for mut comm in comms {
    ///         t.spawn(move || {
    ///             let mut x = vec![comm.rank() as f32 + 1.0; 1024];
    ///             let mut b = comm.raw_batch();
    ///             let p = x.as_mut_ptr().cast::<u8>();
    ///             // SAFETY: `x` is neither touched nor freed until the work has completed.
    ///             unsafe { b.all_reduce(p, p, x.len(), DataType::Float32, ReduceOp::Sum).unwrap() };
    ///             let work = comm.submit_raw(b).unwrap();
    ///             // ... compute here while the all-reduce runs ...
    ///             work.wait().unwrap();
    ///             assert_eq!(x[0], 3.0);
    ///         });
    ///     }
    /// });
    /// # Ok::<(), oxccl::Error>(())
    /// ```
    pub fn submit_raw(&mut self, batch: RawBatch) -> Result<RawWork> {
        if let Some(e) = self.fault.error() {
            return Err(e);
        }
        let specs = self.checked_specs(batch)?;
        if self.worker.is_none() {
            self.worker = Some(Worker::launch(self.engine.clone(), self.rank)?);
        }
        let worker = self.worker.as_ref().ok_or_else(|| Error::internal("no progress thread"))?;
        let state = worker.submit_plain(specs)?;
        Ok(RawWork { state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataType, ReduceOp};
    use std::sync::mpsc;

    /// Runs `f(comm)` on each of `n` thread ranks, with a deadline.
    fn on_ranks<R: Send + 'static>(n: usize, f: impl Fn(Comm) -> R + Send + Sync + Copy + 'static) -> Vec<R> {
        let (tx, rx) = mpsc::channel();
        for c in Comm::init_all(n).unwrap() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let r = c.rank();
                tx.send((r, f(c))).unwrap();
            });
        }
        let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
        for _ in 0..n {
            let (r, v) = rx.recv_timeout(Duration::from_secs(60)).expect("a rank hung");
            out[r] = Some(v);
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    #[test]
    fn submitted_batches_run_in_order_and_report_to_every_waiter() {
        let got = on_ranks(3, |mut c| {
            let r = c.rank() as i64;
            let mut a = vec![r + 1; 1000];
            let mut b = vec![10 * (r + 1); 7];
            let (pa, pb) = (a.as_mut_ptr().cast::<u8>(), b.as_mut_ptr().cast::<u8>());
            let mut works = Vec::new();
            let (tx, rx) = mpsc::channel();
            for (p, n, op) in [(pa, 1000, ReduceOp::Sum), (pb, 7, ReduceOp::Max)] {
                let mut batch = c.raw_batch();
                // SAFETY: `a` and `b` outlive the works, which are waited on below.
                unsafe { batch.all_reduce(p, p, n, DataType::Int64, op).unwrap() };
                let w = c.submit_raw(batch).unwrap();
                let tx = tx.clone();
                w.on_complete(move |res| tx.send(res.is_ok()).unwrap());
                works.push(w);
            }
            for w in &works {
                w.wait().unwrap();
                w.clone().wait().unwrap(); // the result stays for every handle
                assert!(w.is_completed());
                assert!(w.wait_timeout(Duration::ZERO).unwrap().is_ok());
            }
            // Registered after completion: runs at once, on this thread.
            works[0].on_complete(move |res| tx.send(res.is_ok()).unwrap());
            let calls: Vec<bool> = rx.iter().take(3).collect();
            (a[0], a[999], b[0], calls)
        });
        for (a0, a999, b0, calls) in got {
            assert_eq!((a0, a999, b0), (6, 6, 30)); // 1 + 2 + 3, max(10, 20, 30)
            assert_eq!(calls, [true, true, true]);
        }
    }

    #[test]
    fn errors_reach_the_handle_and_bad_batches_fail_at_once() {
        let got = on_ranks(2, |mut c| {
            let mut x = [0u32; 4];
            let p = x.as_mut_ptr().cast::<u8>();
            // A batch of another shape is refused when submitted.
            let other = RawBatch::new(0, 3).unwrap();
            let refused =
                matches!(c.submit_raw(other), Err(ref e) if e.kind() == crate::error::ErrorKind::InvalidUsage);
            // Rank 1 aborts; rank 0's submitted all-reduce then fails, as does every
            // later submission.
            if c.rank() == 1 {
                c.abort_handle().abort();
            }
            let mut b = c.raw_batch();
            // SAFETY: `x` outlives the work, which is waited on below.
            unsafe { b.all_reduce(p, p, 4, DataType::Uint32, ReduceOp::Sum).unwrap() };
            let failed = match c.submit_raw(b) {
                Ok(w) => {
                    let (tx, rx) = mpsc::channel();
                    w.on_complete(move |r| tx.send(r.is_err()).unwrap());
                    w.wait().is_err() && w.wait().is_err() && rx.recv().unwrap()
                }
                Err(_) => true,
            };
            let later = c.submit_raw(c.raw_batch()).is_err();
            (refused, failed, later)
        });
        for (refused, failed, later) in got {
            assert!(refused && failed && later);
        }
    }
}
