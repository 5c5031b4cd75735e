//! torch CPU tensors taken apart directly, without DLPack: torch's `__dlpack__` is
//! Python code that costs a few microseconds per call, several times what oxccl's own
//! call costs on a small buffer. Only a plain `torch.Tensor` on the CPU that DLPack
//! would export as it is takes this path (contiguous, strided, not requiring grad, of a
//! dtype oxccl has); everything else goes through DLPack, whose errors it keeps.

use oxccl::DataType;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{intern, types::PyDict};

/// torch's objects this module compares with, looked up once torch is imported.
struct Torch {
    tensor: Py<PyType>,
    strided: Py<PyAny>,
    /// torch's dtype objects (singletons) and oxccl's types.
    dtypes: Vec<(Py<PyAny>, DataType)>,
}

static TORCH: PyOnceLock<Torch> = PyOnceLock::new();

/// torch's dtype names and oxccl's types (names torch lacks are skipped).
const DTYPES: [(&str, DataType); 12] = [
    ("float32", DataType::Float32),
    ("float64", DataType::Float64),
    ("float16", DataType::Float16),
    ("bfloat16", DataType::Bfloat16),
    ("int8", DataType::Int8),
    ("uint8", DataType::Uint8),
    ("int32", DataType::Int32),
    ("int64", DataType::Int64),
    ("uint32", DataType::Uint32),
    ("uint64", DataType::Uint64),
    ("float8_e4m3fn", DataType::Float8E4M3),
    ("float8_e5m2", DataType::Float8E5M2),
];

/// torch's objects, if torch is imported (never imports it).
fn torch(py: Python<'_>) -> Option<&'static Torch> {
    if let Some(t) = TORCH.get(py) {
        return Some(t);
    }
    let modules = py.import(intern!(py, "sys")).ok()?.getattr(intern!(py, "modules")).ok()?;
    let torch = modules.cast_into::<PyDict>().ok()?.get_item("torch").ok()??;
    let tensor = torch.getattr("Tensor").ok()?.cast_into::<PyType>().ok()?.unbind();
    let strided = torch.getattr("strided").ok()?.unbind();
    let dtypes = DTYPES.iter().filter_map(|(name, dt)| Some((torch.getattr(*name).ok()?.unbind(), *dt))).collect();
    Some(TORCH.get_or_init(py, || Torch { tensor, strided, dtypes }))
}

/// `(address, elements, type)` of `obj` if it is a plain CPU tensor that takes this path;
/// `None` sends it to DLPack. `known` says whether torch was seen already (else the
/// caller tried the buffer protocol first, so that buffers pay nothing here).
pub fn cpu_tensor(py: Python<'_>, obj: &Bound<'_, PyAny>, known: bool) -> PyResult<Option<(usize, usize, DataType)>> {
    let t = if known { TORCH.get(py) } else { torch(py) };
    let Some(t) = t else { return Ok(None) };
    if !obj.get_type().is(t.tensor.bind(py)) {
        return Ok(None);
    }
    if !obj.getattr(intern!(py, "is_cpu"))?.is_truthy()?
        || obj.getattr(intern!(py, "requires_grad"))?.is_truthy()?
        || !obj.getattr(intern!(py, "layout"))?.is(t.strided.bind(py))
        || !obj.call_method0(intern!(py, "is_contiguous"))?.is_truthy()?
    {
        return Ok(None);
    }
    let dtype = obj.getattr(intern!(py, "dtype"))?;
    let Some(dt) = t.dtypes.iter().find(|(d, _)| d.bind(py).is(&dtype)).map(|&(_, dt)| dt) else {
        return Ok(None);
    };
    let ptr: usize = obj.call_method0(intern!(py, "data_ptr"))?.extract()?;
    let count: usize = obj.call_method0(intern!(py, "numel"))?.extract()?;
    Ok(Some((ptr, count, dt)))
}

/// Whether torch's objects were looked up already (torch is imported).
pub fn known(py: Python<'_>) -> bool {
    TORCH.get(py).is_some()
}
