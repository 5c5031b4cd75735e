//! The buffer API's checks: Python buffers taken apart, checked against each other and
//! against the operation, and recorded into one batch.

use oxccl::ReduceOp;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::ops::{Kind, parse_op, record};
use super::{PyComm, PyWork};
use crate::bufs::{self, Place, View};
use crate::to_py;

/// One operation of `Comm.group`: kind, send, recv, op, root or peer.
type GroupOp<'py> = (String, Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>, usize);

impl PyComm {
    /// One operation of the buffer API: checks the buffers against each other and runs.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plain(
        &self,
        py: Python<'_>,
        kind: Kind,
        send: Option<&Bound<'_, PyAny>>,
        recv: Option<&Bound<'_, PyAny>>,
        op: Option<&Bound<'_, PyAny>>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        // Formatted only into errors.
        let name = kind;
        let n = self.size;
        // An absent recv means in place (the send buffer is written).
        let in_place = recv.is_none() || recv.zip(send).is_some_and(|(a, b)| a.is(b));
        let writes_send = in_place && matches!(kind, Kind::AllReduce | Kind::Reduce);
        let sv =
            send.map(|o| bufs::view(py, o, &format_args!("{name:?}: send buffer"), writes_send, stream)).transpose()?;
        let rv = match recv {
            Some(o) if !in_place => Some(bufs::view(py, o, &format_args!("{name:?}: recv buffer"), true, stream)?),
            _ => None,
        };
        let first = sv.as_ref().or(rv.as_ref()).ok_or_else(|| PyValueError::new_err(format!("{name:?}: no buffer")))?;
        let (dtype, place) = (first.dtype, first.place);
        for v in sv.iter().chain(rv.iter()) {
            if v.dtype != dtype {
                return Err(PyTypeError::new_err(format!(
                    "{name:?}: the send buffer holds {dtype} elements and the recv buffer {}: they must match",
                    v.dtype
                )));
            }
            if v.place != place {
                return Err(PyValueError::new_err(format!(
                    "{name:?}: the buffers live in different places ({place:?} and {:?})",
                    v.place
                )));
            }
        }
        let scount = sv.as_ref().map_or(0, |v| v.count);
        let (sp, rp, rcount) = match (&sv, &rv) {
            (Some(s), Some(r)) => (s.ptr.cast_const(), r.ptr, r.count),
            (Some(s), None) => (s.ptr.cast_const(), s.ptr, s.count),
            (None, Some(r)) => (r.ptr.cast_const(), r.ptr, r.count),
            (None, None) => unreachable!("checked above"),
        };
        let me_root = self.rank == root;
        let mismatch = |want: usize, have: usize, which: &str| {
            PyValueError::new_err(format!("{name:?}: the {which} buffer has {have} elements, {want} expected"))
        };
        // Element counts as the batch takes them, checked against what the views hold.
        let count = match kind {
            Kind::AllReduce | Kind::Broadcast | Kind::Send | Kind::Recv => {
                if rcount != scount && sv.is_some() {
                    return Err(mismatch(scount, rcount, "recv"));
                }
                if kind == Kind::Recv { rcount } else { scount.max(rcount) }
            }
            Kind::Reduce => {
                if me_root && !in_place && rcount != scount {
                    return Err(mismatch(scount, rcount, "root's recv"));
                }
                scount
            }
            Kind::AllGather | Kind::Gather => {
                if in_place {
                    return Err(PyValueError::new_err(format!("{name:?}: needs a separate recv buffer")));
                }
                if (kind == Kind::AllGather || me_root) && rcount != scount * n {
                    return Err(mismatch(scount * n, rcount, "recv"));
                }
                scount
            }
            Kind::ReduceScatter | Kind::Scatter => {
                if in_place {
                    return Err(PyValueError::new_err(format!("{name:?}: needs a separate recv buffer")));
                }
                if (kind == Kind::ReduceScatter || me_root) && scount != rcount * n {
                    return Err(mismatch(rcount * n, scount, "send"));
                }
                rcount
            }
            Kind::AllToAll => {
                if in_place {
                    return Err(PyValueError::new_err(format!("{name:?}: needs a separate recv buffer")));
                }
                if rcount != scount {
                    return Err(mismatch(scount, rcount, "recv"));
                }
                if scount % n != 0 {
                    return Err(PyValueError::new_err(format!(
                        "{name:?}: {scount} elements do not split into {n} equal blocks"
                    )));
                }
                scount / n
            }
        };
        let op = match op {
            Some(o) => parse_op(o, dtype)?,
            None => ReduceOp::Sum,
        };
        let mut b = self.batch();
        // SAFETY: the lengths were checked against the views above, which `launch` keeps
        // until the batch has run.
        unsafe { record(&mut b, kind, sp, rp, count, dtype, op, root) }.map_err(to_py)?;
        let views: Vec<View> = sv.into_iter().chain(rv).collect();
        self.launch(py, b, views, place, stream, async_op)
    }

    /// The operations of `Comm.group`, each checked as the single calls are, run as one
    /// batch.
    pub(super) fn group_ops(
        &self,
        py: Python<'_>,
        ops: &Bound<'_, PyList>,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        let mut b = self.batch();
        let mut views = Vec::new();
        let mut place = None;
        for item in ops.iter() {
            let t = item.cast::<PyTuple>().map_err(|_| PyTypeError::new_err("group: each operation is a tuple"))?;
            let (kind, send, recv, op, root): GroupOp<'_> = t.extract()?;
            let kind = match kind.as_str() {
                "all_reduce" => Kind::AllReduce,
                "reduce" => Kind::Reduce,
                "broadcast" => Kind::Broadcast,
                "all_gather" => Kind::AllGather,
                "reduce_scatter" => Kind::ReduceScatter,
                "all_to_all" => Kind::AllToAll,
                "send" => Kind::Send,
                "recv" => Kind::Recv,
                k => return Err(PyValueError::new_err(format!("group: unknown operation {k:?}"))),
            };
            let sv = match (&send, kind) {
                (_, Kind::Recv) | (None, _) => None,
                (Some(s), _) => Some(bufs::view(py, s, &format_args!("group {kind:?}: send"), false, stream)?),
            };
            let rv = match (&recv, kind) {
                (_, Kind::Send) | (None, _) => None,
                (Some(r), _) => Some(bufs::view(py, r, &format_args!("group {kind:?}: recv"), true, stream)?),
            };
            let v0 = sv
                .as_ref()
                .or(rv.as_ref())
                .ok_or_else(|| PyValueError::new_err("group: an operation without buffers"))?;
            let (dtype, p) = (v0.dtype, v0.place);
            if *place.get_or_insert(p) != p {
                return Err(PyValueError::new_err("group: host and device buffers cannot be mixed"));
            }
            let (sc, rc) = (sv.as_ref().map_or(0, |v| v.count), rv.as_ref().map_or(0, |v| v.count));
            let n = self.size;
            let (count, ok) = match kind {
                Kind::AllReduce | Kind::Broadcast => (sc.max(rc), sv.is_none() || rv.is_none() || sc == rc),
                Kind::Reduce => (sc, rv.is_none() || sc == rc),
                Kind::AllGather => (sc, rc == sc * n),
                Kind::ReduceScatter => (rc, sc == rc * n),
                Kind::AllToAll => (sc / n.max(1), sc == rc && sc % n == 0),
                Kind::Send => (sc, true),
                Kind::Recv => (rc, true),
                Kind::Gather | Kind::Scatter => unreachable!("not accepted above"),
            };
            if !ok {
                return Err(PyValueError::new_err(format!(
                    "group {kind:?}: buffer lengths {sc} (send) and {rc} (recv) do not fit the operation on {n} ranks"
                )));
            }
            let sp = sv.as_ref().or(rv.as_ref()).map_or(std::ptr::null(), |v| v.ptr.cast_const());
            let rp = rv.as_ref().or(sv.as_ref()).map_or(std::ptr::null_mut(), |v| v.ptr);
            let op = match &op {
                Some(o) => parse_op(o, dtype)?,
                None => ReduceOp::Sum,
            };
            // SAFETY: lengths checked above; the views are kept until the batch has run.
            unsafe { record(&mut b, kind, sp, rp, count, dtype, op, root) }.map_err(to_py)?;
            views.extend(sv);
            views.extend(rv);
        }
        self.launch(py, b, views, place.unwrap_or(Place::Host), stream, async_op)
    }

    /// A gather or scatter where this rank has only its own block: the other side is
    /// unused off the root.
    pub(super) fn one_sided(
        &self,
        py: Python<'_>,
        kind: Kind,
        buf: &Bound<'_, PyAny>,
        root: usize,
        stream: Option<isize>,
        async_op: bool,
    ) -> PyResult<Option<PyWork>> {
        let writable = kind == Kind::Scatter;
        let v = bufs::view(py, buf, &format_args!("{kind:?}: buffer"), writable, stream)?;
        let (p, count, dtype, place) = (v.ptr, v.count, v.dtype, v.place);
        let mut b = self.batch();
        // SAFETY: `v` covers `count` elements; the root's side is absent here (not root).
        unsafe { record(&mut b, kind, p, p, count, dtype, ReduceOp::Sum, root) }.map_err(to_py)?;
        self.launch(py, b, vec![v], place, stream, async_op)
    }
}
