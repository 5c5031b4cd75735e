//! `oxccl._oxccl`: the native module of the `oxccl` Python package.
//!
//! It wraps the Rust crate's public API: [`oxccl::UniqueId`], [`oxccl::Comm`] (raw
//! batches run in place or on the communicator's progress thread), and maps
//! [`oxccl::Error`] onto a Python exception per variant, with oxccl's message. Python
//! objects become buffers in `bufs` (buffer protocol, DLPack); the pure-Python layer
//! (`oxccl/__init__.py`, `oxccl/torch`) adds the argument conventions of its users.

mod bufs;
mod comm;
mod tensor;

use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

create_exception!(_oxccl, OxcclError, PyRuntimeError, "Base class of every error oxccl reports.");
create_exception!(_oxccl, InvalidArgument, OxcclError, "An argument is wrong for the call (ncclInvalidArgument).");
create_exception!(
    _oxccl,
    InvalidUsage,
    OxcclError,
    "The call conflicts with the configuration or with other ranks' calls (ncclInvalidUsage)."
);
create_exception!(_oxccl, Timeout, OxcclError, "Peers did not take part within the communicator's timeout.");
create_exception!(_oxccl, Aborted, OxcclError, "The communicator was aborted, here or on another rank.");
create_exception!(_oxccl, RemoteError, OxcclError, "A peer failed, disconnected or reported an error.");
create_exception!(_oxccl, CommSystemError, OxcclError, "An operating-system call failed.");
create_exception!(_oxccl, InternalError, OxcclError, "An internal invariant broke: a bug in oxccl.");

/// The Python exception for an oxccl error, with oxccl's message, and the error's fields
/// as attributes (`rank`, `peer`, `host`, `pid`, `call`, `op`, `waiting_for`, `waited`
/// in seconds, `nccl_code`; `None` where unknown), so callers need not parse the text.
pub(crate) fn to_py(e: oxccl::Error) -> PyErr {
    use oxccl::ErrorKind as K;
    let msg = e.to_string();
    let err = match e.kind() {
        K::InvalidArgument => InvalidArgument::new_err(msg),
        K::InvalidUsage => InvalidUsage::new_err(msg),
        K::Timeout => Timeout::new_err(msg),
        K::Aborted => Aborted::new_err(msg),
        K::Remote => RemoteError::new_err(msg),
        K::System => CommSystemError::new_err(msg),
        _ => InternalError::new_err(msg),
    };
    Python::attach(|py| {
        let v = err.value(py);
        let _ = v.setattr("rank", e.rank());
        let _ = v.setattr("peer", e.peer());
        let _ = v.setattr("host", e.host());
        let _ = v.setattr("pid", e.pid());
        let _ = v.setattr("call", e.call());
        let _ = v.setattr("op", e.op());
        let _ = v.setattr("waiting_for", e.waiting_for().to_vec());
        let _ = v.setattr("waited", e.waited().map(|d| d.as_secs_f64()));
        let _ = v.setattr("nccl_code", e.nccl_code());
    });
    err
}

/// A job's identity: 128 bytes holding the bootstrap root's address and a random secret.
/// Rank 0 creates one (``UniqueId()`` starts the root in this process) and hands
/// ``bytes(uid)`` to the other ranks out of band; they rebuild it with
/// ``UniqueId.from_bytes``.
#[pyclass(name = "UniqueId", module = "oxccl._oxccl", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash)]
pub struct PyUniqueId {
    pub(crate) bytes: [u8; oxccl::UniqueId::BYTES],
}

impl PyUniqueId {
    pub(crate) fn id(&self) -> PyResult<oxccl::UniqueId> {
        oxccl::UniqueId::from_bytes(&self.bytes).map_err(to_py)
    }
}

#[pymethods]
impl PyUniqueId {
    /// Creates a unique id and starts its bootstrap root in this process (like
    /// ``ncclGetUniqueId``).
    #[new]
    fn new(py: Python<'_>) -> PyResult<Self> {
        let id = py.detach(oxccl::UniqueId::new).map_err(to_py)?;
        Ok(PyUniqueId { bytes: id.to_bytes() })
    }

    /// Rebuilds an id from its 128 bytes (``bytes(uid)`` on the rank that made it).
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        let id = oxccl::UniqueId::from_bytes(data).map_err(to_py)?;
        Ok(PyUniqueId { bytes: id.to_bytes() })
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bytes)
    }

    /// The id as 256 hexadecimal digits (``OXCCL_UNIQUE_ID``'s form).
    fn hex(&self) -> PyResult<String> {
        Ok(self.id()?.to_string())
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!("UniqueId(root={})", self.id()?.root()))
    }
}

#[pymodule]
fn _oxccl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyUniqueId>()?;
    m.add_class::<comm::PyComm>()?;
    m.add_class::<comm::PyWork>()?;
    m.add_class::<comm::PreMulSum>()?;
    m.add("OxcclError", py.get_type::<OxcclError>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("InvalidUsage", py.get_type::<InvalidUsage>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("Aborted", py.get_type::<Aborted>())?;
    m.add("RemoteError", py.get_type::<RemoteError>())?;
    m.add("CommSystemError", py.get_type::<CommSystemError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    m.add("UNIQUE_ID_BYTES", oxccl::UniqueId::BYTES)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
