//! Operations on raw buffers: an address, an element count and a [`DataType`], as a C
//! caller (NCCL's API) describes them, instead of typed slices.
//!
//! This module owns the translation of NCCL's argument conventions into checked
//! [`CallSpec`]s: counts that overflow, NULL buffers, roots and peers out of range, and
//! buffers that overlap other than in NCCL's in-place layouts are errors before any
//! communication. It moves no bytes; [`Comm::run_raw`] hands the batch to the engine.
//!
//! Buffers need no particular alignment: the kernels read and write unaligned elements.

use std::ptr::NonNull;

use super::calls::Ranks;
use super::{CallSpec, Comm};
use crate::call::Collective;
use crate::error::{Error, Result};
use crate::types::{DataType, ReduceOp};

/// Operations on raw buffers, checked and recorded, to be run together by
/// [`Comm::run_raw`] (one operation, or a group's worth, as `ncclGroupStart` /
/// `ncclGroupEnd` collect them).
///
/// Counts follow NCCL: `all_gather` takes the count each rank sends, `reduce_scatter`
/// the count each rank receives, `all_to_all`, `gather` and `scatter` the count per rank.
/// In-place layouts follow NCCL too: `send == recv` for all-reduce, reduce and
/// broadcast; `send == recv + rank * count` for all-gather;
/// `recv == send + rank * count` for reduce-scatter; `send == recv + root * count` on
/// the root of a gather and `recv == send + root * count` on the root of a scatter. Any
/// other overlap of the two buffers is an `InvalidArgument` error.
///
/// ```
/// use oxccl::{Comm, DataType, ReduceOp};
/// let mut comm = Comm::init_all(1)?.pop().unwrap();
/// let mut buf = [1u8, 2, 3, 4, 5]; // a u32 at an odd address: no alignment needed
/// let p = buf[1..].as_mut_ptr();
/// let mut batch = comm.raw_batch();
/// // SAFETY: `p` points to 4 bytes that stay valid and untouched until the batch has run.
/// unsafe { batch.all_reduce(p, p, 1, DataType::Uint32, ReduceOp::Sum)? };
/// comm.run_raw(batch)?;
/// assert_eq!(buf, [1, 2, 3, 4, 5]);
/// # Ok::<(), oxccl::Error>(())
/// ```
pub struct RawBatch {
    ranks: Ranks,
    specs: Vec<CallSpec>,
    /// Copies made for in-place gathers and scatters, alive until the batch has run.
    scratch: Vec<Box<[u8]>>,
}

// SAFETY: the raw pointers were handed over through the unsafe recording methods, whose
// contract keeps the buffers valid and reserved for the batch until it has run, on
// whichever thread runs it; the batch holds no thread-bound state.
unsafe impl Send for RawBatch {}

fn invalid(msg: String) -> Error {
    Error::invalid_argument(msg)
}

/// A buffer as recorded: an address the engine may offset and copy with (never NULL,
/// even when empty) and its length in elements.
struct Buf {
    ptr: *mut u8,
    len: usize,
}

impl Buf {
    /// No buffer: a dangling, non-NULL address, as an empty slice has.
    fn none() -> Buf {
        Buf { ptr: NonNull::<u8>::dangling().as_ptr(), len: 0 }
    }

    fn bytes(&self, dtype: DataType) -> usize {
        self.len * dtype.size()
    }
}

/// Checks `count` elements of `dtype` at `ptr`: the byte size must not overflow nor wrap
/// the address space, and the address must not be NULL unless the count is 0.
fn buf(what: &str, which: &str, ptr: *const u8, count: usize, dtype: DataType) -> Result<Buf> {
    let bytes = count
        .checked_mul(dtype.size())
        .filter(|&b| b <= isize::MAX as usize && (ptr as usize).checked_add(b).is_some())
        .ok_or_else(|| invalid(format!("{what}: {which} of {count} {dtype} elements is larger than memory")))?;
    if bytes == 0 {
        return Ok(Buf { len: count, ..Buf::none() });
    }
    if ptr.is_null() {
        return Err(invalid(format!("{what}: {which} is NULL ({count} {dtype} elements expected)")));
    }
    Ok(Buf { ptr: ptr as *mut u8, len: count })
}

/// `count * n`, or an error.
fn times(what: &str, count: usize, n: usize) -> Result<usize> {
    count.checked_mul(n).ok_or_else(|| invalid(format!("{what}: {count} elements x {n} ranks overflows")))
}

/// Whether two recorded buffers share a byte.
fn overlap(a: &Buf, b: &Buf, dtype: DataType) -> bool {
    let (a0, b0) = (a.ptr as usize, b.ptr as usize);
    let (al, bl) = (a.bytes(dtype), b.bytes(dtype));
    al > 0 && bl > 0 && a0 < b0 + bl && b0 < a0 + al
}

/// `base + index * count` elements, as an address (in bounds: checked by the caller's
/// buffer checks, which cover `count * n` elements at `base`).
fn block(base: &Buf, index: usize, count: usize, dtype: DataType) -> usize {
    base.ptr as usize + index * count * dtype.size()
}

fn overlap_error(what: &str, layout: &str) -> Error {
    invalid(format!("{what}: the send and recv buffers overlap but are not in place ({layout})"))
}

impl RawBatch {
    /// An empty batch for rank `rank` of a communicator of `size` ranks, recorded before
    /// the communicator exists (`ncclCommInitRank` and operations in one group); it runs
    /// on any communicator of that rank and size.
    pub fn new(rank: usize, size: usize) -> Result<RawBatch> {
        if rank >= size {
            return Err(invalid(format!("rank {rank} is out of range for a communicator of {size} ranks")));
        }
        Ok(RawBatch { ranks: Ranks { rank, n: size }, specs: Vec::new(), scratch: Vec::new() })
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The rank and size the operations were checked against.
    pub fn rank_and_size(&self) -> (usize, usize) {
        (self.ranks.rank, self.ranks.n)
    }

    fn push(&mut self, coll: Collective, dtype: DataType, op: Option<ReduceOp>, send: Buf, recv: Buf) -> Result<()> {
        if let Some(ReduceOp::PreMulSum(s)) = op
            && s.dtype() != dtype
        {
            return Err(invalid(format!(
                "{}: the PreMulSum scalar has type {}, the call {dtype}; they must match",
                coll.name(),
                s.dtype()
            )));
        }
        self.specs.push(CallSpec {
            coll,
            dtype,
            op,
            send: send.ptr,
            send_len: send.len,
            recv: recv.ptr,
            recv_len: recv.len,
        });
        Ok(())
    }

    /// Records an all-reduce of `count` elements (`ncclAllReduce`); in place when
    /// `send == recv`.
    ///
    /// # Safety
    /// `send` must be readable and `recv` writable for `count` elements of `dtype`, and
    /// both must stay valid, with `recv` touched by nobody else, until the batch has run.
    /// The same holds for every recording method, for the buffers and counts it names.
    pub unsafe fn all_reduce(
        &mut self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
    ) -> Result<()> {
        const W: &str = "all_reduce";
        let (s, r) = (buf(W, "send buffer", send, count, dtype)?, buf(W, "recv buffer", recv, count, dtype)?);
        if s.ptr != r.ptr && overlap(&s, &r, dtype) {
            return Err(overlap_error(W, "send == recv"));
        }
        self.push(Collective::AllReduce { count }, dtype, Some(op), s, r)
    }

    /// Records a reduce onto `root` (`ncclReduce`); `recv` is used on the root only.
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn reduce(
        &mut self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        const W: &str = "reduce";
        self.ranks.root(W, root)?;
        let s = buf(W, "send buffer", send, count, dtype)?;
        let r =
            if self.ranks.rank == root { buf(W, "the root's recv buffer", recv, count, dtype)? } else { Buf::none() };
        if s.ptr != r.ptr && overlap(&s, &r, dtype) {
            return Err(overlap_error(W, "send == recv"));
        }
        self.push(Collective::Reduce { count, root }, dtype, Some(op), s, r)
    }

    /// Records a broadcast from `root` (`ncclBroadcast`; `ncclBcast` is `send == recv`);
    /// `send` is used on the root only.
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn broadcast(
        &mut self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        root: usize,
    ) -> Result<()> {
        const W: &str = "broadcast";
        self.ranks.root(W, root)?;
        let r = buf(W, "recv buffer", recv, count, dtype)?;
        let s =
            if self.ranks.rank == root { buf(W, "the root's send buffer", send, count, dtype)? } else { Buf::none() };
        if s.ptr != r.ptr && overlap(&s, &r, dtype) {
            return Err(overlap_error(W, "send == recv"));
        }
        self.push(Collective::Broadcast { count, root }, dtype, None, s, r)
    }

    /// Records an all-gather of `send_count` elements per rank (`ncclAllGather`); `recv`
    /// holds `send_count * size` elements.
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn all_gather(
        &mut self,
        send: *const u8,
        recv: *mut u8,
        send_count: usize,
        dtype: DataType,
    ) -> Result<()> {
        const W: &str = "all_gather";
        let total = times(W, send_count, self.ranks.n)?;
        let (s, r) = (buf(W, "send buffer", send, send_count, dtype)?, buf(W, "recv buffer", recv, total, dtype)?);
        if s.ptr as usize != block(&r, self.ranks.rank, send_count, dtype) && overlap(&s, &r, dtype) {
            return Err(overlap_error(W, "send == recv + rank * count"));
        }
        self.push(Collective::AllGather { count: send_count }, dtype, None, s, r)
    }

    /// Records a reduce-scatter giving each rank `recv_count` elements
    /// (`ncclReduceScatter`); `send` holds `recv_count * size` elements.
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn reduce_scatter(
        &mut self,
        send: *const u8,
        recv: *mut u8,
        recv_count: usize,
        dtype: DataType,
        op: ReduceOp,
    ) -> Result<()> {
        const W: &str = "reduce_scatter";
        let total = times(W, recv_count, self.ranks.n)?;
        let (s, r) = (buf(W, "send buffer", send, total, dtype)?, buf(W, "recv buffer", recv, recv_count, dtype)?);
        if r.ptr as usize != block(&s, self.ranks.rank, recv_count, dtype) && overlap(&s, &r, dtype) {
            return Err(overlap_error(W, "recv == send + rank * count"));
        }
        self.push(Collective::ReduceScatter { count: recv_count }, dtype, Some(op), s, r)
    }

    /// Records an all-to-all of `count` elements per pair of ranks (`ncclAlltoAll`); both
    /// buffers hold `count * size` elements and must not overlap.
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn all_to_all(&mut self, send: *const u8, recv: *mut u8, count: usize, dtype: DataType) -> Result<()> {
        const W: &str = "all_to_all";
        let total = times(W, count, self.ranks.n)?;
        let (s, r) = (buf(W, "send buffer", send, total, dtype)?, buf(W, "recv buffer", recv, total, dtype)?);
        if overlap(&s, &r, dtype) {
            return Err(invalid(format!("{W}: the send and recv buffers overlap (all-to-all has no in-place form)")));
        }
        self.push(Collective::AllToAll { count }, dtype, None, s, r)
    }

    /// Records a gather of `count` elements per rank onto `root` (`ncclGather`); `recv`
    /// holds `count * size` elements on the root and is unused elsewhere.
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn gather(
        &mut self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        root: usize,
    ) -> Result<()> {
        const W: &str = "gather";
        self.ranks.root(W, root)?;
        let mut s = buf(W, "send buffer", send, count, dtype)?;
        let r = if self.ranks.rank == root {
            buf(W, "the root's recv buffer", recv, times(W, count, self.ranks.n)?, dtype)?
        } else {
            Buf::none()
        };
        if overlap(&s, &r, dtype) {
            if s.ptr as usize != block(&r, root, count, dtype) {
                return Err(overlap_error(W, "send == recv + root * count on the root"));
            }
            // In place: the root's block already holds its data. The engine copies it
            // from a separate buffer, so that no copy has overlapping ends.
            // SAFETY: `s` is readable for its bytes (the caller's contract).
            let copy: Box<[u8]> = unsafe { std::slice::from_raw_parts(s.ptr, s.bytes(dtype)) }.into();
            s.ptr = copy.as_ptr() as *mut u8;
            self.scratch.push(copy);
        }
        self.push(Collective::Gather { count, root }, dtype, None, s, r)
    }

    /// Records a scatter of `count` elements per rank from `root` (`ncclScatter`); `send`
    /// holds `count * size` elements on the root and is unused elsewhere.
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn scatter(
        &mut self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        root: usize,
    ) -> Result<()> {
        const W: &str = "scatter";
        self.ranks.root(W, root)?;
        let mut r = buf(W, "recv buffer", recv, count, dtype)?;
        let s = if self.ranks.rank == root {
            buf(W, "the root's send buffer", send, times(W, count, self.ranks.n)?, dtype)?
        } else {
            Buf::none()
        };
        if overlap(&s, &r, dtype) {
            if r.ptr as usize != block(&s, root, count, dtype) {
                return Err(overlap_error(W, "recv == send + root * count on the root"));
            }
            // In place: the root's recv already is its block of send; the engine's copy
            // of it goes to a scratch buffer instead, and is dropped.
            let mut sink: Box<[u8]> = vec![0u8; r.bytes(dtype)].into_boxed_slice();
            r.ptr = sink.as_mut_ptr();
            self.scratch.push(sink);
        }
        self.push(Collective::Scatter { count, root }, dtype, None, s, r)
    }

    /// Records a send of `count` elements to `peer` (`ncclSend`).
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn send(&mut self, buf_: *const u8, count: usize, dtype: DataType, peer: usize) -> Result<()> {
        self.ranks.peer("send", peer)?;
        let s = buf("send", "send buffer", buf_, count, dtype)?;
        self.push(Collective::Send { count, peer }, dtype, None, s, Buf::none())
    }

    /// Records a receive of `count` elements from `peer` (`ncclRecv`).
    ///
    /// # Safety
    /// As [`RawBatch::all_reduce`].
    pub unsafe fn recv(&mut self, buf_: *mut u8, count: usize, dtype: DataType, peer: usize) -> Result<()> {
        self.ranks.peer("recv", peer)?;
        let r = buf("recv", "recv buffer", buf_, count, dtype)?;
        self.push(Collective::Recv { count, peer }, dtype, None, Buf::none(), r)
    }
}

impl Comm {
    /// An empty batch of raw-buffer operations for this communicator.
    pub fn raw_batch(&self) -> RawBatch {
        RawBatch { ranks: self.ranks(), specs: Vec::new(), scratch: Vec::new() }
    }

    /// Runs a batch recorded with [`Comm::raw_batch`] (on this communicator, or one of
    /// the same rank and size): its operations run together, as a group, and this
    /// returns when all are done. Sends to self pair, in order, with receives from self.
    pub fn run_raw(&mut self, mut batch: RawBatch) -> Result<()> {
        let scratch = std::mem::take(&mut batch.scratch);
        let specs = self.checked_specs(batch)?;
        let r = if specs.is_empty() { Ok(()) } else { self.run(&specs) };
        drop(scratch);
        r
    }

    /// The operations of `batch`, checked against this communicator, with sends to self
    /// paired with receives from self (copies between the same buffer dropped).
    pub(crate) fn checked_specs(&self, batch: RawBatch) -> Result<Vec<CallSpec>> {
        if !batch.scratch.is_empty() {
            return Err(invalid("gathers and scatters in place are not supported on this path".into()));
        }
        if (batch.ranks.rank, batch.ranks.n) != (self.rank, self.nranks) {
            return Err(Error::invalid_usage(format!(
                "a batch recorded for rank {} of {} runs on rank {} of {}",
                batch.ranks.rank, batch.ranks.n, self.rank, self.nranks
            )));
        }
        if batch.specs.is_empty() {
            return Ok(Vec::new());
        }
        let mut specs = super::group::pair_self_copies(self.rank, batch.specs)?;
        // A copy to self between overlapping buffers: the same buffer needs no copy;
        // any other overlap has no meaning.
        for s in &specs {
            if let Collective::SelfCopy { count } = s.coll {
                let (a, b) = (Buf { ptr: s.send as *mut u8, len: count }, Buf { ptr: s.recv, len: count });
                if a.ptr != b.ptr && overlap(&a, &b, s.dtype) {
                    return Err(invalid(format!(
                        "a send to self and its receive from self overlap ({count} {} elements)",
                        s.dtype
                    )));
                }
            }
        }
        specs.retain(|s| !matches!(s.coll, Collective::SelfCopy { .. }) || !std::ptr::eq(s.send, s.recv));
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn comm1() -> Comm {
        Comm::init_all(1).unwrap().pop().unwrap()
    }

    #[test]
    fn null_overflow_and_range_errors() {
        let c = Comm::init_all(2).unwrap().pop().unwrap(); // rank 1 of 2
        let mut b = c.raw_batch();
        let mut x = [0u32; 8];
        let p = x.as_mut_ptr() as *mut u8;
        let msg = |r: Result<()>| match r {
            Err(e) if e.kind() == ErrorKind::InvalidArgument => e.message().to_string(),
            other => panic!("{other:?}"),
        };
        // SAFETY: every call below fails its checks before recording anything.
        unsafe {
            assert!(msg(b.all_reduce(std::ptr::null(), p, 4, DataType::Uint32, ReduceOp::Sum)).contains("NULL"));
            assert!(msg(b.all_reduce(p, p, usize::MAX / 2, DataType::Uint32, ReduceOp::Sum)).contains("larger"));
            assert!(msg(b.all_gather(p, p, usize::MAX / 2 + 1, DataType::Uint8)).contains("overflows"));
            assert!(msg(b.reduce(p, p, 4, DataType::Uint32, ReduceOp::Sum, 2)).contains("root 2 is out of range"));
            assert!(msg(b.send(p, 4, DataType::Uint32, 5)).contains("peer 5"));
            assert!(msg(b.all_reduce(p, p.add(4), 4, DataType::Uint32, ReduceOp::Sum)).contains("overlap"));
            assert!(msg(b.all_gather(p, p, 2, DataType::Uint32)).contains("overlap"));
            assert!(msg(b.all_to_all(p, p, 2, DataType::Uint32)).contains("overlap"));
            let s = ReduceOp::pre_mul_sum(2.0f64);
            assert!(msg(b.all_reduce(p, p, 4, DataType::Float32, s)).contains("PreMulSum"));
        }
        assert!(b.is_empty());
    }

    #[test]
    fn in_place_layouts_and_unaligned_buffers() {
        let mut c = comm1();
        // An unaligned f64 all-reduce, in place.
        let mut raw = vec![0u8; 8 * 5 + 3];
        for (i, v) in [1.5f64, -2.0, 3.25, 4.0, 1e10].iter().enumerate() {
            raw[3 + 8 * i..3 + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        let want = raw.clone();
        let p = raw[3..].as_mut_ptr();
        let mut b = c.raw_batch();
        // SAFETY: 5 f64s at p, valid until run_raw returns.
        unsafe { b.all_reduce(p, p, 5, DataType::Float64, ReduceOp::Max).unwrap() };
        c.run_raw(b).unwrap();
        assert_eq!(raw, want);

        // In-place gather and scatter on the root (one rank: the root's block is all).
        let mut g = [7u16, 8, 9];
        let q = g.as_mut_ptr() as *mut u8;
        let mut b = c.raw_batch();
        // SAFETY: 3 u16s at q (as bytes: 6 u8s), valid until run_raw returns.
        unsafe {
            b.gather(q, q, 6, DataType::Uint8, 0).unwrap();
            b.scatter(q, q, 6, DataType::Uint8, 0).unwrap();
            b.all_gather(q, q, 3, DataType::Float16).unwrap();
            b.reduce_scatter(q, q, 3, DataType::Float16, ReduceOp::Sum).unwrap();
        }
        assert_eq!(b.len(), 4);
        c.run_raw(b).unwrap();
        assert_eq!(g, [7, 8, 9]);
    }

    #[test]
    fn batches_run_on_their_own_shape_only() {
        let mut c = comm1();
        let other = Comm::init_all(2).unwrap().pop().unwrap();
        let mut b = other.raw_batch();
        let x = [1u8];
        // SAFETY: one byte, valid while the batch exists.
        unsafe { b.send(x.as_ptr(), 1, DataType::Uint8, 0).unwrap() };
        assert!(matches!(c.run_raw(b), Err(ref e) if e.kind() == ErrorKind::InvalidUsage));
        assert!(RawBatch::new(2, 2).is_err());
        let b = RawBatch::new(0, 1).unwrap();
        assert_eq!(b.rank_and_size(), (0, 1));
        c.run_raw(b).unwrap();
    }
}
