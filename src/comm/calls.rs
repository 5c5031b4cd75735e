//! Argument checking: each function turns one call's arguments into a [`CallSpec`], or an
//! `InvalidArgument` error that names the numbers. Shared by [`Comm`](super::Comm) and
//! [`Group`](super::Group), so both check exactly the same way.

use super::CallSpec;
use crate::call::Collective;
use crate::error::{Error, Result};
use crate::types::{DataType, Element, ReduceOp};

/// The rank and size a call is checked against.
#[derive(Clone, Copy)]
pub(crate) struct Ranks {
    pub rank: usize,
    pub n: usize,
}

fn invalid(msg: String) -> Error {
    Error::invalid_argument(msg)
}

fn spec<T: Element>(coll: Collective, op: Option<ReduceOp>, send: &[T], recv: &mut [T]) -> CallSpec {
    CallSpec {
        coll,
        dtype: T::DTYPE,
        op,
        send: send.as_ptr() as *const u8,
        send_len: send.len(),
        recv: recv.as_mut_ptr() as *mut u8,
        recv_len: recv.len(),
    }
}

fn in_place<T: Element>(coll: Collective, op: Option<ReduceOp>, buf: &mut [T]) -> CallSpec {
    let p = buf.as_mut_ptr() as *mut u8;
    CallSpec { coll, dtype: T::DTYPE, op, send: p, send_len: buf.len(), recv: p, recv_len: buf.len() }
}

fn same_len(what: &str, send: usize, recv: usize) -> Result<()> {
    if send != recv {
        return Err(invalid(format!("{what}: send buffer has {send} elements, recv buffer {recv}; they must match")));
    }
    Ok(())
}

impl Ranks {
    pub(super) fn root(&self, what: &str, root: usize) -> Result<()> {
        if root >= self.n {
            return Err(invalid(format!("{what}: root {root} is out of range for a communicator of {} ranks", self.n)));
        }
        Ok(())
    }

    pub(super) fn peer(&self, what: &str, peer: usize) -> Result<()> {
        if peer >= self.n {
            return Err(invalid(format!("{what}: peer {peer} is out of range for a communicator of {} ranks", self.n)));
        }
        Ok(())
    }

    /// `len` split into one block per rank.
    fn blocks(&self, what: &str, len: usize) -> Result<usize> {
        if !len.is_multiple_of(self.n) {
            return Err(invalid(format!(
                "{what}: buffer of {len} elements does not split into {} equal blocks (one per rank)",
                self.n
            )));
        }
        Ok(len / self.n)
    }

    /// `total == per * n`, or an error naming both.
    fn times_n(&self, what: &str, which: &str, total: usize, per: usize) -> Result<()> {
        if per.checked_mul(self.n) != Some(total) {
            return Err(invalid(format!(
                "{what}: {which} has {total} elements, {what} needs {} ({per} per rank x {} ranks)",
                per.saturating_mul(self.n),
                self.n
            )));
        }
        Ok(())
    }

    pub fn all_reduce<T: Element>(&self, send: &[T], recv: &mut [T], op: ReduceOp) -> Result<CallSpec> {
        same_len("all_reduce", send.len(), recv.len())?;
        Ok(spec(Collective::AllReduce { count: send.len() }, Some(op), send, recv))
    }

    pub fn all_reduce_in_place<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<CallSpec> {
        Ok(in_place(Collective::AllReduce { count: buf.len() }, Some(op), buf))
    }

    pub fn reduce<T: Element>(&self, send: &[T], recv: &mut [T], op: ReduceOp, root: usize) -> Result<CallSpec> {
        self.root("reduce", root)?;
        let recv: &mut [T] = if self.rank == root {
            if recv.len() != send.len() {
                return Err(invalid(format!(
                    "reduce: the root's recv buffer has {} elements, send buffer {}; they must match",
                    recv.len(),
                    send.len()
                )));
            }
            recv
        } else {
            &mut []
        };
        Ok(spec(Collective::Reduce { count: send.len(), root }, Some(op), send, recv))
    }

    pub fn reduce_in_place<T: Element>(&self, buf: &mut [T], op: ReduceOp, root: usize) -> Result<CallSpec> {
        self.root("reduce", root)?;
        Ok(in_place(Collective::Reduce { count: buf.len(), root }, Some(op), buf))
    }

    pub fn broadcast<T: Element>(&self, send: &[T], recv: &mut [T], root: usize) -> Result<CallSpec> {
        self.root("broadcast", root)?;
        let send: &[T] = if self.rank == root {
            if send.len() != recv.len() {
                return Err(invalid(format!(
                    "broadcast: the root's send buffer has {} elements, recv buffer {}; they must match",
                    send.len(),
                    recv.len()
                )));
            }
            send
        } else {
            &[]
        };
        Ok(spec(Collective::Broadcast { count: recv.len(), root }, None, send, recv))
    }

    pub fn broadcast_in_place<T: Element>(&self, buf: &mut [T], root: usize) -> Result<CallSpec> {
        self.root("broadcast", root)?;
        Ok(in_place(Collective::Broadcast { count: buf.len(), root }, None, buf))
    }

    pub fn all_gather<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<CallSpec> {
        self.times_n("all_gather", "recv buffer", recv.len(), send.len())?;
        Ok(spec(Collective::AllGather { count: send.len() }, None, send, recv))
    }

    pub fn all_gather_in_place<T: Element>(&self, buf: &mut [T]) -> Result<CallSpec> {
        let c = self.blocks("all_gather", buf.len())?;
        let mut s = in_place(Collective::AllGather { count: c }, None, buf);
        // SAFETY: rank * c + c <= buf.len(), since buf.len() == c * n and rank < n.
        s.send = unsafe { s.send.add(self.rank * c * T::DTYPE.size()) };
        s.send_len = c;
        Ok(s)
    }

    pub fn reduce_scatter<T: Element>(&self, send: &[T], recv: &mut [T], op: ReduceOp) -> Result<CallSpec> {
        self.times_n("reduce_scatter", "send buffer", send.len(), recv.len())?;
        Ok(spec(Collective::ReduceScatter { count: recv.len() }, Some(op), send, recv))
    }

    pub fn reduce_scatter_in_place<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<CallSpec> {
        let c = self.blocks("reduce_scatter", buf.len())?;
        let mut s = in_place(Collective::ReduceScatter { count: c }, Some(op), buf);
        // SAFETY: rank * c + c <= buf.len().
        s.recv = unsafe { s.recv.add(self.rank * c * T::DTYPE.size()) };
        s.recv_len = c;
        Ok(s)
    }

    pub fn all_to_all<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<CallSpec> {
        same_len("all_to_all", send.len(), recv.len())?;
        let c = self.blocks("all_to_all", send.len())?;
        Ok(spec(Collective::AllToAll { count: c }, None, send, recv))
    }

    pub fn gather<T: Element>(&self, send: &[T], recv: &mut [T], root: usize) -> Result<CallSpec> {
        self.root("gather", root)?;
        let recv: &mut [T] = if self.rank == root {
            self.times_n("gather", "the root's recv buffer", recv.len(), send.len())?;
            recv
        } else {
            &mut []
        };
        Ok(spec(Collective::Gather { count: send.len(), root }, None, send, recv))
    }

    pub fn scatter<T: Element>(&self, send: &[T], recv: &mut [T], root: usize) -> Result<CallSpec> {
        self.root("scatter", root)?;
        let send: &[T] = if self.rank == root {
            self.times_n("scatter", "the root's send buffer", send.len(), recv.len())?;
            send
        } else {
            &[]
        };
        Ok(spec(Collective::Scatter { count: recv.len(), root }, None, send, recv))
    }

    pub fn send<T: Element>(&self, buf: &[T], peer: usize) -> Result<CallSpec> {
        self.peer("send", peer)?;
        Ok(spec(Collective::Send { count: buf.len(), peer }, None, buf, &mut []))
    }

    pub fn recv<T: Element>(&self, buf: &mut [T], peer: usize) -> Result<CallSpec> {
        self.peer("recv", peer)?;
        Ok(spec::<T>(Collective::Recv { count: buf.len(), peer }, None, &[], buf))
    }

    pub fn barrier(&self) -> CallSpec {
        CallSpec {
            coll: Collective::Barrier,
            dtype: DataType::Uint8,
            op: None,
            send: std::ptr::null(),
            send_len: 0,
            recv: std::ptr::null_mut(),
            recv_len: 0,
        }
    }
}
