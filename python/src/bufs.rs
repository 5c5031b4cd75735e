//! Python objects as buffers: an address, a length in elements, a data type and where
//! the memory lives, taken from the buffer protocol (numpy arrays, bytearray, memoryview,
//! array.array), from a CPU torch tensor's own attributes (`tensor`), or from DLPack
//! (`__dlpack__`: torch tensors, numpy, cupy, jax), without copying. A [`View`] keeps
//! what it was made from alive until it is dropped (with the GIL held), so the memory
//! stays valid while an operation uses it.

use std::ffi::{CStr, c_char, c_int, c_void};

use oxccl::DataType;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

/// CPython's `Py_buffer`, declared here because the stable ABI before 3.11 does not
/// declare it. Its layout has not changed since Python 3.3, and 3.11 made it part of the
/// stable ABI as it is; `PyObject_GetBuffer` and `PyBuffer_Release` are exported by every
/// CPython 3 (they are what `memoryview` is built on).
#[repr(C)]
struct PyBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: isize,
    itemsize: isize,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut isize,
    strides: *mut isize,
    suboffsets: *mut isize,
    internal: *mut c_void,
}

unsafe extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut PyBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut PyBuffer);
}

const PYBUF_WRITABLE: c_int = 0x0001;
const PYBUF_FORMAT: c_int = 0x0004;
const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;
const PYBUF_C_CONTIGUOUS: c_int = 0x0020 | PYBUF_STRIDES;

/// DLPack's tensor description (`DLTensor`, DLPack 0.8 and 1.x, unversioned capsule).
#[repr(C)]
struct DlTensor {
    data: *mut c_void,
    device_type: i32,
    device_id: i32,
    ndim: i32,
    dtype_code: u8,
    dtype_bits: u8,
    dtype_lanes: u16,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

const DL_CPU: i32 = 1;
const DL_CUDA: i32 = 2;
const DL_CUDA_HOST: i32 = 3;
const DL_CUDA_MANAGED: i32 = 13;

/// Where a buffer's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Host memory.
    Host,
    /// Device memory of the CUDA device with this ordinal.
    Cuda(i32),
}

/// Memory an operation uses, and what keeps it valid.
pub struct View {
    /// First byte (never NULL when `count > 0`).
    pub ptr: *mut u8,
    /// Elements.
    pub count: usize,
    pub dtype: DataType,
    pub place: Place,
    /// Released when the view is dropped (read by nobody: holding it is its purpose).
    _keep: Keep,
}

// SAFETY: the address is only handed to oxccl, whose operations the caller waits for
// before the view is dropped; the Python references in `keep` are released with the GIL
// held (`View` is dropped only while attached: see `Keep::drop`).
unsafe impl Send for View {}
// SAFETY: as above; `View` has no interior mutability.
unsafe impl Sync for View {}

enum Keep {
    /// A buffer-protocol view to release.
    Buffer(Box<PyBuffer>),
    /// A DLPack capsule (its destructor frees the tensor) or any other object.
    Object(#[allow(dead_code)] Py<PyAny>),
    /// Memory this crate owns (scratch).
    Owned(#[allow(dead_code)] Box<[u8]>),
}

impl Drop for Keep {
    fn drop(&mut self) {
        if let Keep::Buffer(b) = self {
            // Views are dropped while attached to the interpreter (callers hold the GIL),
            // which PyBuffer_Release requires.
            Python::attach(|_| {
                // SAFETY: `b` was filled by a successful PyObject_GetBuffer and is
                // released exactly once, here.
                unsafe { PyBuffer_Release(&mut **b) }
            });
        }
    }
}

impl View {
    /// A zero-filled scratch buffer of `count` elements owned by the view.
    pub fn scratch(count: usize, dtype: DataType) -> View {
        let mut b = vec![0u8; count * dtype.size()].into_boxed_slice();
        let ptr = b.as_mut_ptr();
        View { ptr, count, dtype, place: Place::Host, _keep: Keep::Owned(b) }
    }

    /// No memory of its own: only keeps `obj` (and whatever it references) alive.
    pub fn keep(obj: Py<PyAny>) -> View {
        View {
            ptr: std::ptr::null_mut(),
            count: 0,
            dtype: DataType::Uint8,
            place: Place::Host,
            _keep: Keep::Object(obj),
        }
    }
}

/// The data type of a buffer-protocol format string with `itemsize`.
fn format_dtype(format: &str, itemsize: isize) -> Option<DataType> {
    let f = format.trim_start_matches(['@', '=', '<', '!', '>']);
    if format.starts_with(['>', '!']) && itemsize > 1 {
        return None; // big-endian data
    }
    Some(match (f, itemsize) {
        ("b", 1) => DataType::Int8,
        ("B" | "c", 1) => DataType::Uint8,
        ("i" | "l" | "q" | "n", 4) => DataType::Int32,
        ("I" | "L" | "Q" | "N", 4) => DataType::Uint32,
        ("i" | "l" | "q" | "n", 8) => DataType::Int64,
        ("I" | "L" | "Q" | "N", 8) => DataType::Uint64,
        ("e", 2) => DataType::Float16,
        ("f", 4) => DataType::Float32,
        ("d", 8) => DataType::Float64,
        _ => return None,
    })
}

/// The data type of a DLPack dtype.
fn dlpack_dtype(code: u8, bits: u8, lanes: u16) -> Option<DataType> {
    if lanes != 1 {
        return None;
    }
    Some(match (code, bits) {
        (0, 8) => DataType::Int8,
        (0, 32) => DataType::Int32,
        (0, 64) => DataType::Int64,
        (1, 8) => DataType::Uint8,
        (1, 32) => DataType::Uint32,
        (1, 64) => DataType::Uint64,
        (2, 16) => DataType::Float16,
        (2, 32) => DataType::Float32,
        (2, 64) => DataType::Float64,
        (4, 16) => DataType::Bfloat16,
        // DLPack 1.1: kDLFloat8_e4m3fn = 10, kDLFloat8_e5m2 = 12.
        (10, 8) => DataType::Float8E4M3,
        (12, 8) => DataType::Float8E5M2,
        _ => return None,
    })
}

/// Whether `shape`/`strides` (in elements) describe a C-contiguous array; dimensions of
/// size 1 may have any stride.
fn c_contiguous(shape: &[i64], strides: &[i64]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut want = 1i64;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != want {
            return false;
        }
        want *= n;
    }
    true
}

/// Takes `obj` apart as a buffer; `what` names it in errors ("send buffer"; formatted
/// only then), and `writable` asks for memory the operation may write. `stream` is
/// handed to `__dlpack__` (the CUDA stream the consumer uses).
pub fn view(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    what: &dyn std::fmt::Display,
    writable: bool,
    stream: Option<isize>,
) -> PyResult<View> {
    // A torch tensor first when torch is known: it has no buffer protocol, and the
    // failed attempt would cost an exception.
    let torch_known = crate::tensor::known(py);
    if torch_known && let Some(v) = tensor_view(py, obj, true)? {
        return Ok(v);
    }
    let mut b = Box::new(PyBuffer {
        buf: std::ptr::null_mut(),
        obj: std::ptr::null_mut(),
        len: 0,
        itemsize: 0,
        readonly: 0,
        ndim: 0,
        format: std::ptr::null_mut(),
        shape: std::ptr::null_mut(),
        strides: std::ptr::null_mut(),
        suboffsets: std::ptr::null_mut(),
        internal: std::ptr::null_mut(),
    });
    let flags = PYBUF_C_CONTIGUOUS | PYBUF_FORMAT | if writable { PYBUF_WRITABLE } else { 0 };
    // SAFETY: `obj` is a live object (we hold a reference and the GIL) and `b` is a
    // writable Py_buffer.
    let r = unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *b, flags) };
    if r == 0 {
        let format = if b.format.is_null() {
            "B".to_string()
        } else {
            // SAFETY: a non-NULL format is a NUL-terminated string owned by the view.
            unsafe { CStr::from_ptr(b.format) }.to_string_lossy().into_owned()
        };
        let itemsize = b.itemsize;
        let len = b.len;
        let ptr = b.buf.cast::<u8>();
        let keep = Keep::Buffer(b);
        let dtype = format_dtype(&format, itemsize).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "{what}: element format {format:?} ({itemsize} bytes) has no oxccl data type \
                 (int8, uint8, int32, uint32, int64, uint64, float16, float32, float64; bfloat16 and \
                 float8 through DLPack)"
            ))
        })?;
        return Ok(View { ptr, count: len as usize / dtype.size(), dtype, place: Place::Host, _keep: keep });
    }
    let buffer_err = PyErr::fetch(py);
    if !torch_known && let Some(v) = tensor_view(py, obj, false)? {
        return Ok(v);
    }
    if !obj.hasattr("__dlpack__")? {
        // Neither protocol: say why the buffer protocol refused (read-only, strided, ...).
        return Err(
            if buffer_err.is_instance_of::<PyBufferError>(py) || buffer_err.is_instance_of::<PyValueError>(py) {
                PyValueError::new_err(format!("{what}: {}", buffer_err.value(py)))
            } else {
                PyTypeError::new_err(format!(
                    "{what}: a {} has neither the buffer protocol nor __dlpack__",
                    obj.get_type().name()?
                ))
            },
        );
    }
    dlpack_view(py, obj, what, stream)
}

/// A plain CPU torch tensor as a view that keeps the tensor (see `tensor`).
fn tensor_view(py: Python<'_>, obj: &Bound<'_, PyAny>, known: bool) -> PyResult<Option<View>> {
    let Some((ptr, count, dtype)) = crate::tensor::cpu_tensor(py, obj, known)? else { return Ok(None) };
    let keep = Keep::Object(obj.clone().unbind());
    Ok(Some(View { ptr: ptr as *mut u8, count, dtype, place: Place::Host, _keep: keep }))
}

fn dlpack_view(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    what: &dyn std::fmt::Display,
    stream: Option<isize>,
) -> PyResult<View> {
    let cap = match stream {
        Some(s) => {
            let kw = pyo3::types::PyDict::new(py);
            kw.set_item("stream", s)?;
            obj.call_method("__dlpack__", (), Some(&kw))?
        }
        None => obj.call_method0("__dlpack__")?,
    };
    let name = c"dltensor";
    // SAFETY: `cap` is a live object; PyCapsule_GetPointer checks that it is a capsule
    // with this name and sets an exception otherwise.
    let p = unsafe { ffi::PyCapsule_GetPointer(cap.as_ptr(), name.as_ptr()) };
    if p.is_null() {
        return Err(PyErr::take(py)
            .unwrap_or_else(|| PyTypeError::new_err(format!("{what}: __dlpack__ gave no dltensor capsule"))));
    }
    // SAFETY: a "dltensor" capsule holds a DLManagedTensor, which begins with its
    // DLTensor; the tensor lives as long as the capsule, which the view keeps.
    let t = unsafe { &*(p as *const DlTensor) };
    let dtype = dlpack_dtype(t.dtype_code, t.dtype_bits, t.dtype_lanes).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "{what}: DLPack data type (code {}, {} bits, {} lanes) has no oxccl data type",
            t.dtype_code, t.dtype_bits, t.dtype_lanes
        ))
    })?;
    let ndim = usize::try_from(t.ndim).unwrap_or(0);
    // SAFETY: `shape` (and `strides`, when not NULL) hold `ndim` entries.
    let shape: &[i64] = if ndim == 0 { &[] } else { unsafe { std::slice::from_raw_parts(t.shape, ndim) } };
    if !t.strides.is_null() && ndim > 0 {
        // SAFETY: as above.
        let strides = unsafe { std::slice::from_raw_parts(t.strides, ndim) };
        if !c_contiguous(shape, strides) {
            return Err(PyValueError::new_err(format!(
                "{what}: the tensor is not contiguous (shape {shape:?}, strides {strides:?}); pass a contiguous copy"
            )));
        }
    }
    let count = shape.iter().try_fold(1usize, |a, &n| usize::try_from(n).ok().and_then(|n| a.checked_mul(n)));
    let count = count.ok_or_else(|| PyValueError::new_err(format!("{what}: bad DLPack shape {shape:?}")))?;
    let place = match t.device_type {
        DL_CPU | DL_CUDA_HOST => Place::Host,
        DL_CUDA | DL_CUDA_MANAGED => Place::Cuda(t.device_id),
        d => {
            return Err(PyValueError::new_err(format!(
                "{what}: DLPack device type {d} is neither host memory nor CUDA"
            )));
        }
    };
    let ptr = (t.data as *mut u8).wrapping_add(t.byte_offset as usize);
    Ok(View { ptr, count, dtype, place, _keep: Keep::Object(cap.unbind()) })
}
