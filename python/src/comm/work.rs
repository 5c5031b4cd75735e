//! `Work`: the handle of an operation issued with ``async_op=True``.

use std::time::Duration;

use oxccl::RawWork;
use pyo3::prelude::*;

use crate::to_py;

/// A pending operation (``async_op=True``). ``wait()`` returns ``True`` once it has
/// completed and raises the oxccl error if it failed; the torch backend's works are built
/// on it.
#[pyclass(name = "Work", module = "oxccl._oxccl", frozen)]
pub struct PyWork {
    /// `None`: complete and successful from the start (device work is ordered on its
    /// stream instead).
    pub(super) work: Option<RawWork>,
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
