//! Group calls: operations recorded together and run as one batch.

use std::marker::PhantomData;

use super::CallSpec;
use super::calls::Ranks;
use crate::call::Collective;
use crate::error::{Error, Result};
use crate::types::{Element, ReduceOp};

/// Operations being collected by [`Comm::group`](super::Comm::group). The buffers stay
/// borrowed until the group has run. Every method checks its arguments as the
/// communicator's method of the same name does.
pub struct Group<'b> {
    ranks: Ranks,
    specs: Vec<CallSpec>,
    _bufs: PhantomData<&'b mut ()>,
}

impl<'b> Group<'b> {
    pub(super) fn new(ranks: Ranks) -> Group<'b> {
        Group { ranks, specs: Vec::new(), _bufs: PhantomData }
    }

    fn push(&mut self, s: Result<CallSpec>) -> Result<()> {
        self.specs.push(s?);
        Ok(())
    }

    /// Adds a send of `buf` to `peer`.
    pub fn send<T: Element>(&mut self, buf: &'b [T], peer: usize) -> Result<()> {
        self.push(self.ranks.send(buf, peer))
    }

    /// Adds a receive into `buf` from `peer`.
    pub fn recv<T: Element>(&mut self, buf: &'b mut [T], peer: usize) -> Result<()> {
        self.push(self.ranks.recv(buf, peer))
    }

    /// Adds an all-reduce.
    pub fn all_reduce<T: Element>(&mut self, send: &'b [T], recv: &'b mut [T], op: ReduceOp) -> Result<()> {
        self.push(self.ranks.all_reduce(send, recv, op))
    }

    /// Adds an in-place all-reduce.
    pub fn all_reduce_in_place<T: Element>(&mut self, buf: &'b mut [T], op: ReduceOp) -> Result<()> {
        self.push(self.ranks.all_reduce_in_place(buf, op))
    }

    /// Adds a reduce.
    pub fn reduce<T: Element>(&mut self, send: &'b [T], recv: &'b mut [T], op: ReduceOp, root: usize) -> Result<()> {
        self.push(self.ranks.reduce(send, recv, op, root))
    }

    /// Adds a broadcast.
    pub fn broadcast<T: Element>(&mut self, send: &'b [T], recv: &'b mut [T], root: usize) -> Result<()> {
        self.push(self.ranks.broadcast(send, recv, root))
    }

    /// Adds an all-gather.
    pub fn all_gather<T: Element>(&mut self, send: &'b [T], recv: &'b mut [T]) -> Result<()> {
        self.push(self.ranks.all_gather(send, recv))
    }

    /// Adds a reduce-scatter.
    pub fn reduce_scatter<T: Element>(&mut self, send: &'b [T], recv: &'b mut [T], op: ReduceOp) -> Result<()> {
        self.push(self.ranks.reduce_scatter(send, recv, op))
    }

    /// Adds an all-to-all.
    pub fn all_to_all<T: Element>(&mut self, send: &'b [T], recv: &'b mut [T]) -> Result<()> {
        self.push(self.ranks.all_to_all(send, recv))
    }

    /// Checks and returns the batch. A send to self is paired, in order, with a receive
    /// from self and becomes a local copy.
    pub(super) fn finish(self) -> Result<Vec<CallSpec>> {
        pair_self_copies(self.ranks.rank, self.specs)
    }
}

/// Pairs each send to self (rank `me`), in order, with a receive from self into a local
/// copy; the other calls pass unchanged.
pub(super) fn pair_self_copies(me: usize, specs: Vec<CallSpec>) -> Result<Vec<CallSpec>> {
    let mut out = Vec::with_capacity(specs.len());
    let mut self_sends = std::collections::VecDeque::new();
    let mut self_recvs = std::collections::VecDeque::new();
    for s in specs {
        match s.coll {
            Collective::Send { peer, .. } if peer == me => self_sends.push_back(s),
            Collective::Recv { peer, .. } if peer == me => self_recvs.push_back(s),
            _ => out.push(s),
        }
    }
    if self_sends.len() != self_recvs.len() {
        return Err(Error::invalid_usage(format!(
            "group has {} sends to self (rank {me}) but {} receives from self; they must pair up",
            self_sends.len(),
            self_recvs.len()
        )));
    }
    for (s, r) in self_sends.into_iter().zip(self_recvs) {
        if s.send_len != r.recv_len || s.dtype != r.dtype {
            return Err(Error::invalid_argument(format!(
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
