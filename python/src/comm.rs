//! `Comm` and `Work`: a communicator whose calls take Python buffers, and the handle of
//! an operation issued with ``async_op=True``.
//!
//! Every call becomes one [`RawBatch`]. A blocking call runs it on the calling thread
//! (with the GIL released) when nothing is in flight, else queues it behind the work in
//! flight and waits, so every rank sees the operations in the order they were issued.
//! An asynchronous call queues it on the communicator's progress thread
//! ([`Comm::submit_raw`]); the buffers stay referenced by the communicator until the
//! operation has completed, whatever happens to its `Work`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use oxccl::{AbortHandle, Comm, Config, DataType, RawBatch, RawWork, ReduceOp, Scalar};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::bufs::{self, Place, View};
use crate::{PyUniqueId, to_py};

/// One operation of `Comm.group`: kind, send, recv, op, root or peer.
type GroupOp<'py> = (String, Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>, usize);

/// The operations of a batch, as the torch layer and the buffer API describe them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AllReduce = 0,
    Reduce = 1,
    Broadcast = 2,
    AllGather = 3,
    ReduceScatter = 4,
    AllToAll = 5,
    Gather = 6,
    Scatter = 7,
    Send = 8,
    Recv = 9,
}

impl Kind {
    fn from_i32(k: i32) -> PyResult<Kind> {
        use Kind::*;
        [AllReduce, Reduce, Broadcast, AllGather, ReduceScatter, AllToAll, Gather, Scatter, Send, Recv]
            .get(usize::try_from(k).unwrap_or(usize::MAX))
            .copied()
            .ok_or_else(|| PyValueError::new_err(format!("unknown operation kind {k}")))
    }
}

/// ``PreMulSum(scalar)``: multiply every rank's input by ``scalar``, then sum (NCCL's
/// ``ncclRedOpCreatePreMulSum``). The scalar is converted to the call's data type.
#[pyclass(name = "PreMulSum", module = "oxccl._oxccl", frozen)]
pub struct PreMulSum {
    #[pyo3(get)]
    scalar: f64,
}

#[pymethods]
impl PreMulSum {
    #[new]
    fn new(scalar: f64) -> Self {
        PreMulSum { scalar }
    }

    fn __repr__(&self) -> String {
        format!("PreMulSum({})", self.scalar)
    }
}

/// `value` as a scalar of `dtype` (integers truncate toward zero, floats round to
/// nearest).
fn scalar_of(dtype: DataType, v: f64) -> Scalar {
    let bytes: Vec<u8> = match dtype {
        DataType::Int8 => (v as i8).to_le_bytes().to_vec(),
        DataType::Uint8 => (v as u8).to_le_bytes().to_vec(),
        DataType::Int32 => (v as i32).to_le_bytes().to_vec(),
        DataType::Uint32 => (v as u32).to_le_bytes().to_vec(),
        DataType::Int64 => (v as i64).to_le_bytes().to_vec(),
        DataType::Uint64 => (v as u64).to_le_bytes().to_vec(),
        DataType::Float16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        DataType::Bfloat16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        DataType::Float32 => (v as f32).to_le_bytes().to_vec(),
        DataType::Float64 => v.to_le_bytes().to_vec(),
        DataType::Float8E4M3 => vec![oxccl::F8E4M3::from_f32(v as f32).to_bits()],
        DataType::Float8E5M2 => vec![oxccl::F8E5M2::from_f32(v as f32).to_bits()],
    };
    Scalar::from_bytes(dtype, &bytes).expect("a scalar's bytes for its own type")
}

/// The op a Python value names: "sum", "prod", "max", "min", "avg" (or NCCL's code 0-4),
/// or a `PreMulSum`.
fn parse_op(op: &Bound<'_, PyAny>, dtype: DataType) -> PyResult<ReduceOp> {
    if let Ok(p) = op.cast::<PreMulSum>() {
        return Ok(ReduceOp::PreMulSum(scalar_of(dtype, p.get().scalar)));
    }
    if let Ok(code) = op.extract::<i32>() {
        return op_code(code, None, dtype);
    }
    let name: String = op.extract().map_err(|_| {
        PyTypeError::new_err("op must be \"sum\", \"prod\", \"max\", \"min\", \"avg\" or oxccl.PreMulSum(scalar)")
    })?;
    match name.to_ascii_lowercase().as_str() {
        "sum" => Ok(ReduceOp::Sum),
        "prod" | "product" => Ok(ReduceOp::Prod),
        "max" => Ok(ReduceOp::Max),
        "min" => Ok(ReduceOp::Min),
        "avg" | "mean" => Ok(ReduceOp::Avg),
        other => Err(PyValueError::new_err(format!(
            "unknown op {other:?}: use \"sum\", \"prod\", \"max\", \"min\", \"avg\" or oxccl.PreMulSum(scalar)"
        ))),
    }
}

/// NCCL's op code (5: PreMulSum with `scalar`).
fn op_code(code: i32, scalar: Option<f64>, dtype: DataType) -> PyResult<ReduceOp> {
    Ok(match code {
        0 => ReduceOp::Sum,
        1 => ReduceOp::Prod,
        2 => ReduceOp::Max,
        3 => ReduceOp::Min,
        4 => ReduceOp::Avg,
        5 => ReduceOp::PreMulSum(scalar_of(
            dtype,
            scalar.ok_or_else(|| PyValueError::new_err("PreMulSum (op 5) needs a scalar"))?,
        )),
        c => return Err(PyValueError::new_err(format!("unknown reduction op code {c}"))),
    })
}

/// Records one operation on raw addresses into `b`.
///
/// # Safety
/// The addresses must be valid for the counts (as oxccl's batch contract says) until the
/// batch has run; the callers check lengths against the views they hold.
#[allow(clippy::too_many_arguments)]
unsafe fn record(
    b: &mut RawBatch,
    kind: Kind,
    send: *const u8,
    recv: *mut u8,
    count: usize,
    dtype: DataType,
    op: ReduceOp,
    root: usize,
) -> oxccl::Result<()> {
    // SAFETY: the caller's contract.
    unsafe {
        match kind {
            Kind::AllReduce => b.all_reduce(send, recv, count, dtype, op),
            Kind::Reduce => b.reduce(send, recv, count, dtype, op, root),
            Kind::Broadcast => b.broadcast(send, recv, count, dtype, root),
            Kind::AllGather => b.all_gather(send, recv, count, dtype),
            Kind::ReduceScatter => b.reduce_scatter(send, recv, count, dtype, op),
            Kind::AllToAll => b.all_to_all(send, recv, count, dtype),
            Kind::Gather => b.gather(send, recv, count, dtype, root),
            Kind::Scatter => b.scatter(send, recv, count, dtype, root),
            Kind::Send => b.send(send, count, dtype, root),
            Kind::Recv => b.recv(recv, count, dtype, root),
        }
    }
}

/// A pending operation (``async_op=True``). ``wait()`` returns ``True`` once it has
/// completed and raises the oxccl error if it failed; the torch backend's works are built
/// on it.
#[pyclass(name = "Work", module = "oxccl._oxccl", frozen)]
pub struct PyWork {
    /// `None`: complete and successful from the start (device work is ordered on its
    /// stream instead).
    work: Option<RawWork>,
}

#[pymethods]
impl PyWork {
    /// Waits for the operation (at most ``timeout`` seconds when given) and returns
    /// ``True``; returns ``False`` if the timeout passed first. Raises the operation's
    /// error if it failed (every call raises it again).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let Some(w) = &self.work else { return Ok(true) };
        let r = match timeout {
            None => Some(py.detach(|| w.wait())),
            Some(t) => py.detach(|| w.wait_timeout(Duration::from_secs_f64(t.max(0.0)))),
        };
        match r {
            None => Ok(false),
            Some(r) => r.map(|()| true).map_err(to_py),
        }
    }

    /// Whether the operation has completed (successfully or not); never blocks.
    fn is_completed(&self) -> bool {
        self.work.as_ref().is_none_or(RawWork::is_completed)
    }

    /// The exception the operation failed with, ``None`` if it succeeded or is still
    /// running; never blocks.
    fn exception(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let w = self.work.as_ref()?;
        match w.wait_timeout(Duration::ZERO) {
            Some(Err(e)) => Some(to_py(e).into_value(py).into_any()),
            _ => None,
        }
    }

    /// Calls ``callback(exc)`` once the operation completes: ``exc`` is ``None`` on
    /// success, else the exception. It runs at once if the operation has completed, else
    /// on oxccl's progress thread (holding the GIL): keep it short. Errors it raises are
    /// reported as unraisable.
    fn on_complete(&self, py: Python<'_>, callback: Py<PyAny>) -> PyResult<()> {
        let Some(w) = &self.work else {
            callback.call1(py, (py.None(),))?;
            return Ok(());
        };
        py.detach(|| {
            w.on_complete(move |r| {
                // No GIL while the interpreter shuts down: nobody is left to tell.
                let _ = Python::try_attach(|py| {
                    let arg = match r {
                        Ok(()) => py.None(),
                        Err(e) => to_py(e).into_value(py).into_any(),
                    };
                    if let Err(e) = callback.call1(py, (arg,)) {
                        e.write_unraisable(py, Some(callback.bind(py)));
                    }
                });
            })
        });
        Ok(())
    }
}

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

    /// One operation of the buffer API: checks the buffers against each other and runs.
    #[allow(clippy::too_many_arguments)]
    fn plain(
        &self,
        py: Python<'_>,
        kind: Kind,
        send: Option<&Bound<'_, PyAny>>,
        recv: Option<&Bound<'_, PyAny>>,
        op: Option<&Bound<'_, PyAny>>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        let name = format!("{kind:?}");
        let n = self.size;
        // An absent recv means in place (the send buffer is written).
        let in_place = recv.is_none() || recv.zip(send).is_some_and(|(a, b)| a.is(b));
        let writes_send = in_place && matches!(kind, Kind::AllReduce | Kind::Reduce);
        let sv = send.map(|o| bufs::view(py, o, &format!("{name}: send buffer"), writes_send, stream)).transpose()?;
        let rv = match recv {
            Some(o) if !in_place => Some(bufs::view(py, o, &format!("{name}: recv buffer"), true, stream)?),
            _ => None,
        };
        let first = sv.as_ref().or(rv.as_ref()).ok_or_else(|| PyValueError::new_err(format!("{name}: no buffer")))?;
        let (dtype, place) = (first.dtype, first.place);
        for v in sv.iter().chain(rv.iter()) {
            if v.dtype != dtype {
                return Err(PyTypeError::new_err(format!(
                    "{name}: the send buffer holds {dtype} elements and the recv buffer {}: they must match",
                    v.dtype
                )));
            }
            if v.place != place {
                return Err(PyValueError::new_err(format!(
                    "{name}: the buffers live in different places ({place:?} and {:?})",
                    v.place
                )));
            }
        }
        let scount = sv.as_ref().map_or(0, |v| v.count);
        let (sp, rp, rcount) = match (&sv, &rv) {
            (Some(s), Some(r)) => (s.ptr.cast_const(), r.ptr, r.count),
            (Some(s), None) => (s.ptr.cast_const(), s.ptr, s.count),
            (None, Some(r)) => (r.ptr.cast_const(), r.ptr, r.count),
            (None, None) => unreachable!("checked above"),
        };
        let me_root = self.rank == root;
        let mismatch = |want: usize, have: usize, which: &str| {
            PyValueError::new_err(format!("{name}: the {which} buffer has {have} elements, {want} expected"))
        };
        // Element counts as the batch takes them, checked against what the views hold.
        let count = match kind {
            Kind::AllReduce | Kind::Broadcast | Kind::Send | Kind::Recv => {
                if rcount != scount && sv.is_some() {
                    return Err(mismatch(scount, rcount, "recv"));
                }
                if kind == Kind::Recv { rcount } else { scount.max(rcount) }
            }
            Kind::Reduce => {
                if me_root && !in_place && rcount != scount {
                    return Err(mismatch(scount, rcount, "root's recv"));
                }
                scount
            }
            Kind::AllGather | Kind::Gather => {
                if in_place {
                    return Err(PyValueError::new_err(format!("{name}: needs a separate recv buffer")));
                }
                if (kind == Kind::AllGather || me_root) && rcount != scount * n {
                    return Err(mismatch(scount * n, rcount, "recv"));
                }
                scount
            }
            Kind::ReduceScatter | Kind::Scatter => {
                if in_place {
                    return Err(PyValueError::new_err(format!("{name}: needs a separate recv buffer")));
                }
                if (kind == Kind::ReduceScatter || me_root) && scount != rcount * n {
                    return Err(mismatch(rcount * n, scount, "send"));
                }
                rcount
            }
            Kind::AllToAll => {
                if in_place {
                    return Err(PyValueError::new_err(format!("{name}: needs a separate recv buffer")));
                }
                if rcount != scount {
                    return Err(mismatch(scount, rcount, "recv"));
                }
                if scount % n != 0 {
                    return Err(PyValueError::new_err(format!(
                        "{name}: {scount} elements do not split into {n} equal blocks"
                    )));
                }
                scount / n
            }
        };
        let op = match op {
            Some(o) => parse_op(o, dtype)?,
            None => ReduceOp::Sum,
        };
        let mut b = self.batch();
        // SAFETY: the lengths were checked against the views above, which `launch` keeps
        // until the batch has run.
        unsafe { record(&mut b, kind, sp, rp, count, dtype, op, root) }.map_err(to_py)?;
        let views: Vec<View> = sv.into_iter().chain(rv).collect();
        self.launch(py, b, views, place, stream, async_op)
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
        let v = bufs::view(py, buf, "broadcast: buffer", true, stream)?;
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
        let mut b = self.batch();
        let mut views = Vec::new();
        let mut place = None;
        for item in ops.iter() {
            let t = item.cast::<PyTuple>().map_err(|_| PyTypeError::new_err("group: each operation is a tuple"))?;
            let (kind, send, recv, op, root): GroupOp<'_> = t.extract()?;
            let kind = match kind.as_str() {
                "all_reduce" => Kind::AllReduce,
                "reduce" => Kind::Reduce,
                "broadcast" => Kind::Broadcast,
                "all_gather" => Kind::AllGather,
                "reduce_scatter" => Kind::ReduceScatter,
                "all_to_all" => Kind::AllToAll,
                "send" => Kind::Send,
                "recv" => Kind::Recv,
                k => return Err(PyValueError::new_err(format!("group: unknown operation {k:?}"))),
            };
            let sv = match (&send, kind) {
                (_, Kind::Recv) | (None, _) => None,
                (Some(s), _) => Some(bufs::view(py, s, &format!("group {kind:?}: send"), false, stream)?),
            };
            let rv = match (&recv, kind) {
                (_, Kind::Send) | (None, _) => None,
                (Some(r), _) => Some(bufs::view(py, r, &format!("group {kind:?}: recv"), true, stream)?),
            };
            let v0 = sv
                .as_ref()
                .or(rv.as_ref())
                .ok_or_else(|| PyValueError::new_err("group: an operation without buffers"))?;
            let (dtype, p) = (v0.dtype, v0.place);
            if *place.get_or_insert(p) != p {
                return Err(PyValueError::new_err("group: host and device buffers cannot be mixed"));
            }
            let (sc, rc) = (sv.as_ref().map_or(0, |v| v.count), rv.as_ref().map_or(0, |v| v.count));
            let n = self.size;
            let (count, ok) = match kind {
                Kind::AllReduce | Kind::Broadcast => (sc.max(rc), sv.is_none() || rv.is_none() || sc == rc),
                Kind::Reduce => (sc, rv.is_none() || sc == rc),
                Kind::AllGather => (sc, rc == sc * n),
                Kind::ReduceScatter => (rc, sc == rc * n),
                Kind::AllToAll => (sc / n.max(1), sc == rc && sc % n == 0),
                Kind::Send => (sc, true),
                Kind::Recv => (rc, true),
                Kind::Gather | Kind::Scatter => unreachable!("not accepted above"),
            };
            if !ok {
                return Err(PyValueError::new_err(format!(
                    "group {kind:?}: buffer lengths {sc} (send) and {rc} (recv) do not fit the operation on {n} ranks"
                )));
            }
            let sp = sv.as_ref().or(rv.as_ref()).map_or(std::ptr::null(), |v| v.ptr.cast_const());
            let rp = rv.as_ref().or(sv.as_ref()).map_or(std::ptr::null_mut(), |v| v.ptr);
            let op = match &op {
                Some(o) => parse_op(o, dtype)?,
                None => ReduceOp::Sum,
            };
            // SAFETY: lengths checked above; the views are kept until the batch has run.
            unsafe { record(&mut b, kind, sp, rp, count, dtype, op, root) }.map_err(to_py)?;
            views.extend(sv);
            views.extend(rv);
        }
        self.launch(py, b, views, place.unwrap_or(Place::Host), stream, async_op)
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
        let mut b = self.batch();
        for item in ops.iter() {
            let (kind, send, recv, count, dtype, op, scalar, root): (
                i32,
                usize,
                usize,
                usize,
                i32,
                i32,
                Option<f64>,
                usize,
            ) = item.extract()?;
            let kind = Kind::from_i32(kind)?;
            let dtype = DataType::from_i32(dtype)
                .ok_or_else(|| PyValueError::new_err(format!("unknown data type code {dtype}")))?;
            let op = op_code(op, scalar, dtype)?;
            // SAFETY: the caller's guarantee (the torch layer passes tensors' own
            // storage, checked for size, and keeps them in `keep`).
            unsafe { record(&mut b, kind, send as *const u8, recv as *mut u8, count, dtype, op, root) }
                .map_err(to_py)?;
        }
        let place = if device < 0 { Place::Host } else { Place::Cuda(device) };
        let views = vec![View::keep(keep)];
        self.launch(py, b, views, place, stream, async_op)
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

impl PyComm {
    /// A gather or scatter where this rank has only its own block: the other side is
    /// unused off the root.
    fn one_sided(
        &self,
        py: Python<'_>,
        kind: Kind,
        buf: &Bound<'_, PyAny>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        let writable = kind == Kind::Scatter;
        let v = bufs::view(py, buf, &format!("{kind:?}: buffer"), writable, stream)?;
        let (p, count, dtype, place) = (v.ptr, v.count, v.dtype, v.place);
        let mut b = self.batch();
        // SAFETY: `v` covers `count` elements; the root's side is absent here (not root).
        unsafe { record(&mut b, kind, p, p, count, dtype, ReduceOp::Sum, root) }.map_err(to_py)?;
        self.launch(py, b, vec![v], place, stream, async_op)
    }
}
