//! The vocabulary of operations: their kinds, reduction ops as Python names them or as
//! NCCL codes, `PreMulSum`, and recording one operation into a [`RawBatch`].

use oxccl::{DataType, RawBatch, ReduceOp, Scalar};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The operations of a batch, as the torch layer and the buffer API describe them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
    pub(super) fn from_i32(k: i32) -> PyResult<Kind> {
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
pub(super) fn parse_op(op: &Bound<'_, PyAny>, dtype: DataType) -> PyResult<ReduceOp> {
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
pub(super) fn op_code(code: i32, scalar: Option<f64>, dtype: DataType) -> PyResult<ReduceOp> {
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
pub(super) unsafe fn record(
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
