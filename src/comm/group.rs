//! Group calls: operations recorded together and run as one batch.

use std::marker::PhantomData;

use super::{CallSpec, spec, spec_in_place};
use crate::algo::Collective;
use crate::error::{Error, Result};
use crate::types::{Element, ReduceOp};

/// Operations being collected by [`Comm::group`](super::Comm::group). The buffers stay
/// borrowed until the group has run.
pub struct Group<'b> {
    rank: usize,
    nranks: usize,
    specs: Vec<CallSpec>,
    _bufs: PhantomData<&'b mut ()>,
}

impl<'b> Group<'b> {
    pub(super) fn new(rank: usize, nranks: usize) -> Group<'b> {
        Group { rank, nranks, specs: Vec::new(), _bufs: PhantomData }
    }

    fn check_peer(&self, what: &str, peer: usize) -> Result<()> {
        if peer >= self.nranks {
            return Err(Error::InvalidArgument(format!(
                "{what}: peer {peer} is out of range for a communicator of {} ranks",
                self.nranks
            )));
        }
        Ok(())
    }

    /// Adds a send of `buf` to `peer`.
    pub fn send<T: Element>(&mut self, buf: &'b [T], peer: usize) -> Result<()> {
        self.check_peer("send", peer)?;
        let coll = Collective::Send { count: buf.len(), peer };
        self.specs.push(spec::<T>(coll, None, buf, &mut []));
        Ok(())
    }

    /// Adds a receive into `buf` from `peer`.
    pub fn recv<T: Element>(&mut self, buf: &'b mut [T], peer: usize) -> Result<()> {
        self.check_peer("recv", peer)?;
        let coll = Collective::Recv { count: buf.len(), peer };
        self.specs.push(spec::<T>(coll, None, &[], buf));
        Ok(())
    }

    /// Adds an all-reduce (see [`Comm::all_reduce`](super::Comm::all_reduce)).
    pub fn all_reduce<T: Element>(&mut self, send: &'b [T], recv: &'b mut [T], op: ReduceOp) -> Result<()> {
        if send.len() != recv.len() {
            return Err(Error::InvalidArgument(format!(
                "all_reduce: send buffer has {} elements, recv buffer {}; they must match",
                send.len(),
                recv.len()
            )));
        }
        self.specs.push(spec::<T>(Collective::AllReduce { count: send.len() }, Some(op), send, recv));
        Ok(())
    }

    /// Adds an in-place all-reduce.
    pub fn all_reduce_in_place<T: Element>(&mut self, buf: &'b mut [T], op: ReduceOp) -> Result<()> {
        self.specs.push(spec_in_place::<T>(Collective::AllReduce { count: buf.len() }, Some(op), buf));
        Ok(())
    }

    /// Checks and returns the batch. A send to self is paired, in order, with a receive
    /// from self and becomes a local copy.
    pub(super) fn finish(self) -> Result<Vec<CallSpec>> {
        let me = self.rank;
        let mut out = Vec::with_capacity(self.specs.len());
        let mut self_sends = std::collections::VecDeque::new();
        let mut self_recvs = std::collections::VecDeque::new();
        for s in self.specs {
            match s.coll {
                Collective::Send { peer, .. } if peer == me => self_sends.push_back(s),
                Collective::Recv { peer, .. } if peer == me => self_recvs.push_back(s),
                _ => out.push(s),
            }
        }
        if self_sends.len() != self_recvs.len() {
            return Err(Error::InvalidUsage(format!(
                "group has {} sends to self (rank {me}) but {} receives from self; they must pair up",
                self_sends.len(),
                self_recvs.len()
            )));
        }
        for (s, r) in self_sends.into_iter().zip(self_recvs) {
            if s.send_len != r.recv_len || s.dtype != r.dtype {
                return Err(Error::InvalidArgument(format!(
                    "send to self of {} {} elements does not match the receive from self of {} {} elements",
                    s.send_len, s.dtype, r.recv_len, r.dtype
                )));
            }
            out.push(CallSpec {
                coll: Collective::SelfCopy { count: s.send_len },
                dtype: s.dtype,
                op: None,
                send: s.send,
                send_len: s.send_len,
                recv: r.recv,
                recv_len: r.recv_len,
            });
        }
        Ok(out)
    }
}
