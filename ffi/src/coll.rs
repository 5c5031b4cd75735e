//! Entry points for collectives and point-to-point operations.
//!
//! Each checks its communicator, data type, operation, counts and buffers (through
//! [`oxccl::RawBatch`], which applies NCCL's counts and in-place rules), then runs the
//! operation and returns when it is complete, or, inside a group, records it for the
//! group's end. The stream argument is not used: on host memory the operation runs
//! before the call returns, which is what a stream would order after it anyway.

use std::ffi::{c_int, c_void};

use crate::abi::{NcclResult, data_type, index};
use crate::group::{self, HandlePtr};
use crate::handle::Handle;
use crate::lifecycle::ncclComm_t;
use oxccl::{RawBatch, Result};

/// `cudaStream_t`: an opaque pointer.
#[allow(non_camel_case_types)]
pub type cudaStream_t = *mut c_void;

/// Records an operation on `comm` with `f`, then runs it (or leaves it for the group).
fn issue(what: &str, comm: ncclComm_t, f: impl FnOnce(&Handle, &mut RawBatch) -> Result<()>) -> NcclResult {
    group::guard(what, || {
        // SAFETY: NCCL's contract: a live communicator, not destroyed during the call.
        let h = unsafe { Handle::get(comm) }?;
        if group::active() {
            return group::add_ops(HandlePtr(comm), h.shape()?, |b| f(h, b));
        }
        h.with_comm(|c| {
            let mut b = c.raw_batch();
            f(h, &mut b)?;
            c.run_raw(b)
        })
    })
}

/// Reduces every rank's `sendbuff` with `op` into every rank's `recvbuff` (`count`
/// elements each); in place when they are equal.
///
/// # Safety
/// `sendbuff` readable and `recvbuff` writable for `count` elements of `datatype`, and
/// (inside a group) both valid until `ncclGroupEnd` returns; `comm` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    op: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclAllReduce", comm, |h, b| {
        let t = data_type(datatype)?;
        let op = h.op(op, t)?;
        // SAFETY: the caller's contract (see above).
        unsafe { b.all_reduce(sendbuff as *const u8, recvbuff as *mut u8, count, t, op) }
    })
}

/// Reduces every rank's `sendbuff` into `root`'s `recvbuff` (unused on other ranks).
///
/// # Safety
/// As [`ncclAllReduce`].
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ncclReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    op: c_int,
    root: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclReduce", comm, |h, b| {
        let t = data_type(datatype)?;
        let op = h.op(op, t)?;
        let root = index("root", root)?;
        // SAFETY: the caller's contract.
        unsafe { b.reduce(sendbuff as *const u8, recvbuff as *mut u8, count, t, op, root) }
    })
}

/// Copies `root`'s `sendbuff` (unused on other ranks) into every rank's `recvbuff`.
///
/// # Safety
/// As [`ncclAllReduce`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclBroadcast(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    root: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclBroadcast", comm, |_, b| {
        let t = data_type(datatype)?;
        let root = index("root", root)?;
        // SAFETY: the caller's contract.
        unsafe { b.broadcast(sendbuff as *const u8, recvbuff as *mut u8, count, t, root) }
    })
}

/// In-place broadcast: `root`'s `buff` is copied into every other rank's `buff`.
///
/// # Safety
/// As [`ncclAllReduce`], with `buff` both buffers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclBcast(
    buff: *mut c_void,
    count: usize,
    datatype: c_int,
    root: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclBcast", comm, |_, b| {
        let t = data_type(datatype)?;
        let root = index("root", root)?;
        // SAFETY: the caller's contract.
        unsafe { b.broadcast(buff as *const u8, buff as *mut u8, count, t, root) }
    })
}

/// Every rank's `sendcount` elements, in rank order, into every rank's `recvbuff`
/// (`sendcount * nranks` elements); in place when `sendbuff == recvbuff + rank * sendcount`.
///
/// # Safety
/// As [`ncclAllReduce`], for the counts above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclAllGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    datatype: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclAllGather", comm, |_, b| {
        let t = data_type(datatype)?;
        // SAFETY: the caller's contract.
        unsafe { b.all_gather(sendbuff as *const u8, recvbuff as *mut u8, sendcount, t) }
    })
}

/// Reduces `sendbuff` (`recvcount * nranks` elements) and leaves block `rank` in
/// `recvbuff`; in place when `recvbuff == sendbuff + rank * recvcount`.
///
/// # Safety
/// As [`ncclAllReduce`], for the counts above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclReduceScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcount: usize,
    datatype: c_int,
    op: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclReduceScatter", comm, |h, b| {
        let t = data_type(datatype)?;
        let op = h.op(op, t)?;
        // SAFETY: the caller's contract.
        unsafe { b.reduce_scatter(sendbuff as *const u8, recvbuff as *mut u8, recvcount, t, op) }
    })
}

/// Block `j` (of `count` elements) of every rank's `sendbuff` goes to rank `j`, landing
/// in block `i` of its `recvbuff` for sender `i`. The buffers must not overlap.
///
/// # Safety
/// As [`ncclAllReduce`], for `count * nranks` elements each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclAlltoAll(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclAlltoAll", comm, |_, b| {
        let t = data_type(datatype)?;
        // SAFETY: the caller's contract.
        unsafe { b.all_to_all(sendbuff as *const u8, recvbuff as *mut u8, count, t) }
    })
}

/// Every rank's `count` elements into `root`'s `recvbuff` at block `rank` (unused on
/// other ranks); in place when `sendbuff == recvbuff + root * count` on the root.
///
/// # Safety
/// As [`ncclAllReduce`], with `count * nranks` elements in the root's `recvbuff`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    root: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclGather", comm, |_, b| {
        let t = data_type(datatype)?;
        let root = index("root", root)?;
        // SAFETY: the caller's contract.
        unsafe { b.gather(sendbuff as *const u8, recvbuff as *mut u8, count, t, root) }
    })
}

/// Block `j` of `root`'s `sendbuff` (unused on other ranks) into rank `j`'s `recvbuff`;
/// in place when `recvbuff == sendbuff + root * count` on the root.
///
/// # Safety
/// As [`ncclAllReduce`], with `count * nranks` elements in the root's `sendbuff`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    root: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclScatter", comm, |_, b| {
        let t = data_type(datatype)?;
        let root = index("root", root)?;
        // SAFETY: the caller's contract.
        unsafe { b.scatter(sendbuff as *const u8, recvbuff as *mut u8, count, t, root) }
    })
}

/// Sends `count` elements to `peer`, which receives them with `ncclRecv`. Several sends
/// and receives that must progress together go in one group.
///
/// # Safety
/// `sendbuff` readable for `count` elements (until `ncclGroupEnd` inside a group);
/// `comm` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclSend(
    sendbuff: *const c_void,
    count: usize,
    datatype: c_int,
    peer: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclSend", comm, |_, b| {
        let t = data_type(datatype)?;
        let peer = index("peer", peer)?;
        // SAFETY: the caller's contract.
        unsafe { b.send(sendbuff as *const u8, count, t, peer) }
    })
}

/// Receives `count` elements from `peer`.
///
/// # Safety
/// `recvbuff` writable for `count` elements (until `ncclGroupEnd` inside a group);
/// `comm` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclRecv(
    recvbuff: *mut c_void,
    count: usize,
    datatype: c_int,
    peer: c_int,
    comm: ncclComm_t,
    _stream: cudaStream_t,
) -> NcclResult {
    issue("ncclRecv", comm, |_, b| {
        let t = data_type(datatype)?;
        let peer = index("peer", peer)?;
        // SAFETY: the caller's contract.
        unsafe { b.recv(recvbuff as *mut u8, count, t, peer) }
    })
}
