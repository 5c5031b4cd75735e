//! Entry points for collectives and point-to-point operations.
//!
//! Each checks its communicator, data type, operation, counts and buffers (through
//! [`oxccl::RawBatch`], which applies NCCL's counts and in-place rules), then runs the
//! operation and returns when it is complete, or, inside a group, records it for the
//! group's end.
//!
//! Host buffers: the stream argument is not used; the operation runs before the call
//! returns, which is what a stream would order after it anyway. Device buffers (with
//! the `cuda` feature; told apart by the driver's pointer attributes): the operation is
//! enqueued on the stream and the call returns before it runs, as NCCL's do.

use std::ffi::{c_int, c_void};

use crate::abi::{NcclResult, data_type, index};
use crate::group::{self, HandlePtr};
use crate::handle::Handle;
use crate::lifecycle::ncclComm_t;
use oxccl::{Error, RawBatch, Result};

/// `cudaStream_t`: an opaque pointer.
#[allow(non_camel_case_types)]
pub type cudaStream_t = *mut c_void;

/// Where an operation's buffers live, and so how it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Host memory: runs on the calling thread.
    Host,
    /// Device memory: enqueued on this stream (`cudaStream_t` as an address).
    Device(usize),
}

/// Where `bufs` (NULL ones ignored) live: all host memory, or all device memory, which
/// then goes on `stream`. Without the `cuda` feature everything is host memory.
fn place(what: &str, bufs: &[*const c_void], stream: cudaStream_t) -> Result<Place> {
    #[cfg(feature = "cuda")]
    {
        use oxccl::cuda::driver::{Memory, memory_of};
        let kinds: Vec<Memory> = bufs.iter().filter(|b| !b.is_null()).map(|&b| memory_of(b)).collect();
        let device = kinds.iter().filter(|k| matches!(k, Memory::Device(_))).count();
        if device == 0 {
            return Ok(Place::Host);
        }
        if device != kinds.len() {
            return Err(Error::invalid_argument(format!(
                "{what}: one buffer is host memory and another device memory; both must be one or the other"
            )));
        }
        Ok(Place::Device(stream as usize))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (what, bufs, stream);
        Ok(Place::Host)
    }
}

/// Runs `batch` on `c` where its buffers live.
pub fn run_at(c: &mut oxccl::Comm, batch: RawBatch, at: Place) -> Result<()> {
    match at {
        Place::Host => c.run_raw(batch),
        #[cfg(feature = "cuda")]
        // SAFETY: NCCL's contract: the buffers are device memory of the stream's context,
        // valid until the stream has passed the operation; the stream is live.
        Place::Device(stream) => unsafe { oxccl::internals::device::run_raw_on(c, batch, stream as _) },
        #[cfg(not(feature = "cuda"))]
        Place::Device(_) => Err(Error::internal("device buffers without the cuda feature")),
    }
}

/// Records an operation on `comm` with `f`, then runs it (or leaves it for the group),
/// on the host or on `stream` depending on where `bufs` live.
fn issue(
    what: &str,
    comm: ncclComm_t,
    bufs: &[*const c_void],
    stream: cudaStream_t,
    f: impl FnOnce(&Handle, &mut RawBatch) -> Result<()>,
) -> NcclResult {
    group::guard(what, || {
        // SAFETY: NCCL's contract: a live communicator, not destroyed during the call.
        let h = unsafe { Handle::get(comm) }?;
        let at = place(what, bufs, stream)?;
        if group::active() {
            return group::add_ops(HandlePtr(comm), h.shape()?, at, |b| f(h, b));
        }
        h.with_comm(|c| {
            let mut b = c.raw_batch();
            f(h, &mut b)?;
            run_at(c, b, at)
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclAllReduce", comm, &[sendbuff, recvbuff as *const c_void], stream, |h, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclReduce", comm, &[sendbuff, recvbuff as *const c_void], stream, |h, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclBroadcast", comm, &[sendbuff, recvbuff as *const c_void], stream, |_, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclBcast", comm, &[buff as *const c_void], stream, |_, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclAllGather", comm, &[sendbuff, recvbuff as *const c_void], stream, |_, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclReduceScatter", comm, &[sendbuff, recvbuff as *const c_void], stream, |h, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclAlltoAll", comm, &[sendbuff, recvbuff as *const c_void], stream, |_, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclGather", comm, &[sendbuff, recvbuff as *const c_void], stream, |_, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclScatter", comm, &[sendbuff, recvbuff as *const c_void], stream, |_, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclSend", comm, &[sendbuff], stream, |_, b| {
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
    stream: cudaStream_t,
) -> NcclResult {
    issue("ncclRecv", comm, &[recvbuff as *const c_void], stream, |_, b| {
        let t = data_type(datatype)?;
        let peer = index("peer", peer)?;
        // SAFETY: the caller's contract.
        unsafe { b.recv(recvbuff as *mut u8, count, t, peer) }
    })
}
