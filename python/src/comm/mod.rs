//! `Comm`: a communicator whose calls take Python buffers (`calls`) or, from the torch
//! layer, raw addresses (`raw`); `Work`, the handle of an operation issued with
//! ``async_op=True`` (`work`); the operations' vocabulary (`ops`).
//!
//! Every call becomes one [`RawBatch`]. A blocking call runs it on the calling thread
//! (with the GIL released) when nothing is in flight, else queues it behind the work in
//! flight and waits, so every rank sees the operations in the order they were issued.
//! An asynchronous call queues it on the communicator's progress thread
//! ([`Comm::submit_raw`]); the buffers stay referenced by the communicator until the
//! operation has completed, whatever happens to its `Work`.

mod calls;
mod ops;
mod raw;
mod work;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use oxccl::{AbortHandle, Comm, Config, DataType, RawBatch, RawWork, ReduceOp};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use self::ops::Kind;
pub use self::ops::PreMulSum;
pub use self::work::PyWork;
use crate::bufs::{self, Place, View};
use crate::{PyUniqueId, to_py};

/// A communicator over Python buffers: any object with the buffer protocol (numpy
/// arrays, bytearray, memoryview, array.array) or DLPack (torch tensors, cupy, jax)
/// whose memory is contiguous. Calls release the GIL while they wait.
#[pyclass(name = "Comm", module = "oxccl._oxccl", frozen)]
pub struct PyComm {
    comm: Mutex<Option<Comm>>,
    abort: AbortHandle,
    rank: usize,
    size: usize,
    /// Operations on the progress thread and the buffers they use, oldest first.
    inflight: Mutex<VecDeque<(RawWork, Vec<View>)>>,
}

impl Drop for PyComm {
    fn drop(&mut self) {
        // Dropping a communicator finishes its queued work: not while holding the GIL.
        let comm = self.comm.get_mut().ok().and_then(Option::take);
        let inflight = std::mem::take(self.inflight.get_mut().map(|v| &mut *v).unwrap_or(&mut VecDeque::new()));
        Python::attach(|py| {
            py.detach(|| drop(comm));
            drop(inflight);
        });
    }
}

fn config(timeout: Option<f64>) -> PyResult<Config> {
    let c = Config::new();
    match timeout {
        None => Ok(c),
        Some(t) if t.is_finite() && t > 0.0 => Ok(c.timeout(Duration::from_secs_f64(t))),
        Some(t) => Err(PyValueError::new_err(format!("timeout must be a positive number of seconds, got {t}"))),
    }
}

fn closed() -> PyErr {
    crate::InvalidUsage::new_err("invalid usage: the communicator was finalized or destroyed")
}

impl PyComm {
    fn wrap(c: Comm) -> PyComm {
        PyComm {
            abort: c.abort_handle(),
            rank: c.rank(),
            size: c.size(),
            comm: Mutex::new(Some(c)),
            inflight: Mutex::new(VecDeque::new()),
        }
    }

    /// Drops the buffers of completed operations; whether any are still in flight.
    fn prune(&self) -> bool {
        let mut q = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|(w, _)| w.is_completed()) {
            q.pop_front();
        }
        !q.is_empty()
    }

    /// Runs `batch` (its buffers kept by `views`): see the module documentation.
    fn launch(
        &self,
        py: Python<'_>,
        batch: RawBatch,
        views: Vec<View>,
        place: Place,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        let busy = self.prune();
        if let Place::Cuda(_) = place {
            let s = stream.unwrap_or(0) as usize;
            py.detach(|| {
                let s = s as oxccl::cuda::cudarc::driver::sys::CUstream;
                let mut g = self.comm.lock().unwrap_or_else(|p| p.into_inner());
                let c = g.as_mut().ok_or_else(closed)?;
                // SAFETY: the views are device memory (DLPack said so, or the torch layer
                // passed a CUDA tensor's address) of the stream's device, and are kept
                // alive by the caller until the stream has passed the operation (the
                // caching allocator reuses memory in stream order).
                unsafe { oxccl::internals::device::run_raw_on(c, batch, s) }.map_err(to_py)
            })?;
            drop(views);
            return Ok(async_op.then_some(PyWork { work: None }));
        }
        if !async_op && !busy {
            py.detach(|| {
                let mut g = self.comm.lock().unwrap_or_else(|p| p.into_inner());
                g.as_mut().ok_or_else(closed)?.run_raw(batch).map_err(to_py)
            })?;
            drop(views);
            return Ok(None);
        }
        let work = py.detach(|| {
            let mut g = self.comm.lock().unwrap_or_else(|p| p.into_inner());
            g.as_mut().ok_or_else(closed)?.submit_raw(batch).map_err(to_py)
        })?;
        if async_op {
            self.inflight.lock().unwrap_or_else(|p| p.into_inner()).push_back((work.clone(), views));
            return Ok(Some(PyWork { work: Some(work) }));
        }
        let r = py.detach(|| work.wait());
        drop(views);
        r.map_err(to_py)?;
        Ok(None)
    }

    fn batch(&self) -> RawBatch {
        RawBatch::new(self.rank, self.size).expect("rank < size")
    }
}

#[pymethods]
impl PyComm {
    /// Joins the job ``uid`` as ``rank`` of ``nranks`` (``ncclCommInitRank``); every rank
    /// calls it with the same id and ``nranks``. ``timeout`` (seconds) bounds init and
    /// every later operation (default: ``OXCCL_TIMEOUT``, else 600 s).
    #[staticmethod]
    #[pyo3(signature = (uid, rank, nranks, timeout=None))]
    fn init_rank(py: Python<'_>, uid: &PyUniqueId, rank: usize, nranks: usize, timeout: Option<f64>) -> PyResult<Self> {
        let (id, cfg) = (uid.id()?, config(timeout)?);
        let c = py.detach(|| Comm::init_rank(&id, rank, nranks, &cfg)).map_err(to_py)?;
        Ok(PyComm::wrap(c))
    }

    /// A communicator from the launcher's environment: ``OXCCL_COMM_ID``/``OXCCL_RANK``/
    /// ``OXCCL_NRANKS`` (or ``OXCCL_UNIQUE_ID``), torchrun's ``MASTER_ADDR``/
    /// ``MASTER_PORT``/``RANK``/``WORLD_SIZE``, mpirun's or Slurm's variables.
    #[staticmethod]
    #[pyo3(signature = (timeout=None))]
    fn from_env(py: Python<'_>, timeout: Option<f64>) -> PyResult<Self> {
        let cfg = config(timeout)?;
        let c = py.detach(|| Comm::from_env_with(&cfg)).map_err(to_py)?;
        Ok(PyComm::wrap(c))
    }

    /// ``nranks`` communicators whose ranks are threads of this process
    /// (``ncclCommInitAll``); use each from its own thread.
    #[staticmethod]
    #[pyo3(signature = (nranks, timeout=None))]
    fn init_all(py: Python<'_>, nranks: usize, timeout: Option<f64>) -> PyResult<Vec<Self>> {
        let cfg = config(timeout)?;
        let cs = py.detach(|| Comm::init_all_with(nranks, &cfg)).map_err(to_py)?;
        Ok(cs.into_iter().map(PyComm::wrap).collect())
    }

    /// This rank, in ``range(size)``.
    #[getter]
    fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    /// The communicator's timeout in seconds (``None``: no timeout).
    #[getter]
    fn timeout(&self) -> PyResult<Option<f64>> {
        let g = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.as_ref().ok_or_else(closed)?.settings().timeout.map(|d| d.as_secs_f64()))
    }

    /// Reduces every rank's ``send`` into every rank's ``recv`` (in place on ``send``
    /// when ``recv`` is omitted).
    #[pyo3(signature = (send, recv=None, op=None, *, stream=None, async_op=false))]
    fn all_reduce(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: Option<&Bound<'_, PyAny>>,
        op: Option<&Bound<'_, PyAny>>,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.plain(py, Kind::AllReduce, Some(send), recv, op, 0, stream, async_op)
    }

    /// Reduces every rank's ``send`` into ``root``'s ``recv`` (in place when omitted).
    #[pyo3(signature = (send, recv=None, op=None, root=0, *, stream=None, async_op=false))]
    #[allow(clippy::too_many_arguments)]
    fn reduce(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: Option<&Bound<'_, PyAny>>,
        op: Option<&Bound<'_, PyAny>>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.plain(py, Kind::Reduce, Some(send), recv, op, root, stream, async_op)
    }

    /// Copies ``root``'s ``buf`` into every rank's ``buf``.
    #[pyo3(signature = (buf, root=0, *, stream=None, async_op=false))]
    fn broadcast(
        &self,
        py: Python<'_>,
        buf: &Bound<'_, PyAny>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        let v = bufs::view(py, buf, &"broadcast: buffer", true, stream)?;
        let (p, count, dtype, place) = (v.ptr, v.count, v.dtype, v.place);
        let mut b = self.batch();
        // SAFETY: `v` covers `count` elements and is kept until the batch has run.
        unsafe { b.broadcast(p, p, count, dtype, root) }.map_err(to_py)?;
        self.launch(py, b, vec![v], place, stream, async_op)
    }

    /// Gathers every rank's ``send`` into every rank's ``recv``, in rank order
    /// (``len(recv) == len(send) * size``).
    #[pyo3(signature = (send, recv, *, stream=None, async_op=false))]
    fn all_gather(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.plain(py, Kind::AllGather, Some(send), Some(recv), None, 0, stream, async_op)
    }

    /// Reduces every rank's ``send`` and gives rank ``r`` block ``r`` of the result
    /// (``len(send) == len(recv) * size``).
    #[pyo3(signature = (send, recv, op=None, *, stream=None, async_op=false))]
    fn reduce_scatter(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        op: Option<&Bound<'_, PyAny>>,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.plain(py, Kind::ReduceScatter, Some(send), Some(recv), op, 0, stream, async_op)
    }

    /// Block ``j`` of every rank's ``send`` goes to rank ``j``, landing in block ``i``
    /// of its ``recv`` for sender ``i`` (both hold ``size`` equal blocks).
    #[pyo3(signature = (send, recv, *, stream=None, async_op=false))]
    fn all_to_all(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.plain(py, Kind::AllToAll, Some(send), Some(recv), None, 0, stream, async_op)
    }

    /// Concatenates every rank's ``send`` into ``root``'s ``recv`` (other ranks may pass
    /// ``None``).
    #[pyo3(signature = (send, recv=None, root=0, *, stream=None, async_op=false))]
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: Option<&Bound<'_, PyAny>>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        if recv.is_none() && self.rank == root {
            return Err(PyValueError::new_err("Gather: the root needs a recv buffer"));
        }
        match recv {
            Some(r) => self.plain(py, Kind::Gather, Some(send), Some(r), None, root, stream, async_op),
            None => self.one_sided(py, Kind::Gather, send, root, stream, async_op),
        }
    }

    /// Sends block ``j`` of ``root``'s ``send`` to rank ``j``'s ``recv`` (other ranks may
    /// pass ``None`` as ``send``).
    #[pyo3(signature = (send, recv, root=0, *, stream=None, async_op=false))]
    #[allow(clippy::too_many_arguments)]
    fn scatter(
        &self,
        py: Python<'_>,
        send: Option<&Bound<'_, PyAny>>,
        recv: &Bound<'_, PyAny>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        if send.is_none() && self.rank == root {
            return Err(PyValueError::new_err("Scatter: the root needs a send buffer"));
        }
        match send {
            Some(s) => self.plain(py, Kind::Scatter, Some(s), Some(recv), None, root, stream, async_op),
            None => self.one_sided(py, Kind::Scatter, recv, root, stream, async_op),
        }
    }

    /// Sends ``buf`` to ``peer``, which receives it with ``recv``.
    #[pyo3(signature = (buf, peer, *, stream=None, async_op=false))]
    fn send(
        &self,
        py: Python<'_>,
        buf: &Bound<'_, PyAny>,
        peer: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.plain(py, Kind::Send, Some(buf), Some(buf), None, peer, stream, async_op)
    }

    /// Receives ``len(buf)`` elements from ``peer`` into ``buf``.
    #[pyo3(signature = (buf, peer, *, stream=None, async_op=false))]
    fn recv(
        &self,
        py: Python<'_>,
        buf: &Bound<'_, PyAny>,
        peer: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.plain(py, Kind::Recv, None, Some(buf), None, peer, stream, async_op)
    }

    /// Returns once every rank has entered the barrier.
    #[pyo3(signature = (*, async_op=false))]
    fn barrier(&self, py: Python<'_>, async_op: bool) -> PyResult<Option<PyWork>> {
        let v = View::scratch(1, DataType::Uint8);
        let mut b = self.batch();
        // SAFETY: the scratch byte lives in `v`, kept until the batch has run.
        unsafe { b.all_reduce(v.ptr, v.ptr, 1, DataType::Uint8, ReduceOp::Max) }.map_err(to_py)?;
        self.launch(py, b, vec![v], Place::Host, None, async_op)
    }

    /// Runs several operations together, as a group (``ncclGroupStart``/``End``): each
    /// is a tuple ``(kind, send, recv, op, root_or_peer)`` with ``kind`` one of
    /// ``"all_reduce" "reduce" "broadcast" "all_gather" "reduce_scatter" "all_to_all"
    /// "send" "recv"``, buffers as for the single calls (``send`` or ``recv`` may be
    /// ``None`` where unused; a ``broadcast`` with ``recv`` ``None`` is in place).
    /// A ring of sends and receives issued together cannot deadlock.
    #[pyo3(signature = (ops, *, stream=None, async_op=false))]
    fn group(
        &self,
        py: Python<'_>,
        ops: &Bound<'_, PyList>,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        self.group_ops(py, ops, stream, async_op)
    }

    /// Runs operations on raw addresses (the torch backend's path): ``ops`` is a list
    /// of ``(kind, send_addr, recv_addr, count, dtype, op, scalar, root_or_peer)`` with
    /// oxccl's kinds (0 all_reduce ... 9 recv), NCCL's dtype and op codes; counts as in
    /// NCCL. ``device`` is -1 for host memory, else the CUDA device of every buffer,
    /// ordered on ``stream``. ``keep`` is held until the operations have completed.
    /// The caller guarantees that every address is valid for its count.
    #[pyo3(signature = (ops, device, stream, async_op, keep))]
    fn _launch(
        &self,
        py: Python<'_>,
        ops: &Bound<'_, PyList>,
        device: i32,
        stream: Option<isize>,
        async_op: bool,
        keep: Py<PyAny>,
    ) -> PyResult<Option<PyWork>> {
        self.launch_raw(py, ops, device, stream, async_op, keep)
    }

    /// Runs one operation on raw host addresses: the torch backend's lean path for a
    /// single contiguous CPU tensor. Arguments as in one ``_launch`` tuple (no
    /// PreMulSum scalar). ``keep`` is held until the operation has completed; a blocking
    /// call (``async_op=False``) may omit it, since its caller holds the tensors until it
    /// returns. The caller guarantees that the addresses are valid for ``count``.
    #[pyo3(signature = (kind, send, recv, count, dtype, op, root, async_op, keep=None))]
    #[allow(clippy::too_many_arguments)]
    fn _launch1(
        &self,
        py: Python<'_>,
        kind: i32,
        send: usize,
        recv: usize,
        count: usize,
        dtype: i32,
        op: i32,
        root: usize,
        async_op: bool,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<Option<PyWork>> {
        self.launch_one(py, kind, send, recv, count, dtype, op, root, async_op, keep)
    }

    /// Splits the communicator (``ncclCommSplit``): ranks passing the same ``color``
    /// form a new communicator, ordered by ``key`` (ties by rank); ``color=None`` takes
    /// part but gets ``None``. Every rank calls it.
    #[pyo3(signature = (color, key=0))]
    fn split(&self, py: Python<'_>, color: Option<u32>, key: i32) -> PyResult<Option<Self>> {
        self.wait_all(py)?;
        let r = py.detach(|| {
            let mut g = self.comm.lock().unwrap_or_else(|p| p.into_inner());
            g.as_mut().ok_or_else(closed)?.split(color, key).map_err(to_py)
        })?;
        Ok(r.map(PyComm::wrap))
    }

    /// Waits for every operation in flight; raises the first error among them.
    fn wait_all(&self, py: Python<'_>) -> PyResult<()> {
        let works: Vec<RawWork> =
            self.inflight.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(w, _)| w.clone()).collect();
        let r = py.detach(|| works.iter().map(RawWork::wait).find(Result::is_err).unwrap_or(Ok(())));
        self.prune();
        r.map_err(to_py)
    }

    /// Aborts the communicator from any thread: blocked and later calls here raise
    /// ``Aborted`` within milliseconds; the other ranks' calls fail naming this rank.
    fn abort(&self) {
        self.abort.abort();
    }

    /// Whether the communicator is broken (aborted, or failed here or elsewhere).
    #[getter]
    fn is_broken(&self) -> bool {
        self.abort.is_broken()
    }

    /// The exception that broke the communicator, ``None`` while it is healthy
    /// (``ncclCommGetAsyncError``); never blocks.
    fn async_error(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.abort.error().map(|e| to_py(e).into_value(py).into_any())
    }

    /// Waits for this rank's operations, then leaves the communicator cleanly; raises
    /// the error that broke it, if one did. The communicator cannot be used afterwards.
    fn finalize(&self, py: Python<'_>) -> PyResult<()> {
        let waited = self.wait_all(py);
        let c = self.comm.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(c) = c {
            py.detach(|| c.finalize()).map_err(to_py)?;
        }
        waited
    }

    /// Leaves the communicator without waiting for a peer (idempotent).
    fn destroy(&self, py: Python<'_>) {
        let c = self.comm.lock().unwrap_or_else(|p| p.into_inner()).take();
        let inflight = std::mem::take(&mut *self.inflight.lock().unwrap_or_else(|p| p.into_inner()));
        py.detach(|| drop(c));
        drop(inflight);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) {
        self.destroy(py);
    }

    fn __repr__(&self) -> String {
        format!("Comm(rank={}, size={})", self.rank, self.size)
    }
}
