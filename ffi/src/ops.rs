//! Entry points for custom reduction operations (`ncclRedOpCreatePreMulSum`,
//! `ncclRedOpDestroy`): per communicator, numbered from `ncclNumOps` up, as in NCCL.

use std::ffi::{c_int, c_void};

use crate::abi::{NcclResult, data_type};
use crate::boundary::{guard, null};
use crate::handle::{CustomOp, Handle};
use crate::lifecycle::{ncclComm_t, put};
use oxccl::{Error, Scalar};

/// `ncclScalarDevice`: the scalar is read when an operation uses it.
const SCALAR_DEVICE: c_int = 0;
/// `ncclScalarHostImmediate`: the scalar is read now.
const SCALAR_HOST_IMMEDIATE: c_int = 1;

/// Creates an operation that multiplies each input by `*scalar` (of `datatype`), then
/// sums; usable with `comm` and `datatype` only.
///
/// # Safety
/// `op` NULL or writable; `scalar` NULL or readable for one element of `datatype` (with
/// `ncclScalarDevice`, for as long as the operation exists); `comm` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclRedOpCreatePreMulSum(
    op: *mut c_int,
    scalar: *mut c_void,
    datatype: c_int,
    residence: c_int,
    comm: ncclComm_t,
) -> NcclResult {
    guard("ncclRedOpCreatePreMulSum", || {
        // SAFETY: the caller's contract.
        let h = unsafe { Handle::get(comm) }?;
        if op.is_null() {
            return Err(null("op"));
        }
        if scalar.is_null() {
            return Err(null("scalar"));
        }
        let t = data_type(datatype)?;
        let custom = match residence {
            SCALAR_HOST_IMMEDIATE => {
                let mut b = [0u8; 8];
                // SAFETY: the caller's contract: one readable element of `t`.
                unsafe { std::ptr::copy_nonoverlapping(scalar as *const u8, b.as_mut_ptr(), t.size()) };
                CustomOp::Immediate(
                    Scalar::from_bytes(t, &b).ok_or_else(|| Error::internal("scalar of 8 bytes too short"))?,
                )
            }
            SCALAR_DEVICE => CustomOp::Deferred(scalar as usize, t),
            r => {
                return Err(Error::invalid_argument(format!(
                    "unknown scalar residence {r} (ncclScalarDevice 0 or ncclScalarHostImmediate 1)"
                )));
            }
        };
        let v = h.add_op(custom)?;
        // SAFETY: the caller's contract.
        unsafe { put(op, "op", v) }
    })
}

/// Destroys a custom operation of `comm`.
///
/// # Safety
/// `comm` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclRedOpDestroy(op: c_int, comm: ncclComm_t) -> NcclResult {
    guard("ncclRedOpDestroy", || {
        // SAFETY: the caller's contract.
        unsafe { Handle::get(comm) }?.remove_op(op)
    })
}
