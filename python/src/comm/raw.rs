//! Operations on raw addresses: the torch backend's path. The Python layer has checked
//! the tensors (sizes, dtypes, devices) and passes their storage's addresses.

use oxccl::DataType;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use super::ops::{Kind, op_code, record};
use super::{PyComm, PyWork};
use crate::bufs::{Place, View};
use crate::to_py;

impl PyComm {
    /// `Comm._launch`: see its documentation.
    pub(super) fn launch_raw(
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

    /// `Comm._launch1`: see its documentation.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_one(
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
        let kind = Kind::from_i32(kind)?;
        let dtype = DataType::from_i32(dtype)
            .ok_or_else(|| PyValueError::new_err(format!("unknown data type code {dtype}")))?;
        let op = op_code(op, None, dtype)?;
        // An asynchronous operation outlives this call: what keeps its memory must too.
        let views = match keep {
            Some(k) => vec![View::keep(k)],
            None if async_op => return Err(PyValueError::new_err("_launch1: an asynchronous operation needs `keep`")),
            None => Vec::new(),
        };
        let mut b = self.batch();
        // SAFETY: the caller's guarantee (the torch layer passes a tensor's own storage,
        // checked for size, held by the caller during a blocking call and by `keep`
        // until an asynchronous one has completed).
        unsafe { record(&mut b, kind, send as *const u8, recv as *mut u8, count, dtype, op, root) }.map_err(to_py)?;
        self.launch(py, b, views, Place::Host, None, async_op)
    }
}
