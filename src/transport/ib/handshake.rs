//! Meeting a peer: how an InfiniBand link is made, over the rank's TCP listener.
//!
//! Links are made lazily per (peer, channel, direction), like TCP's: the sender connects
//! to the receiver's data listener, introduces itself with the job's secret and the
//! opener's call descriptor ([`Kind::ConnHello`], through the same
//! [`Gate`](crate::bootstrap::gate::Gate)), then both exchange one [`Kind::IbConnect`]
//! message ([`Hello`]: version, FIFO shape, queue pair numbers, LID/GID, MTU, and
//! the receiver's FIFO address and remote key). The socket stays open afterwards: its end
//! is how a peer that exits or dies is noticed (an RC queue pair to a dead process may
//! stay silent for a long time). Connecting runs in three phases (send links announce
//! themselves, receive links answer, send links finish), so two ranks connecting to each
//! other never wait for each other.
//!
//! This file creates a link's verbs objects, registers its FIFO and hands the link to the
//! transport's state; it posts no data and reads no completion (`data.rs` does).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{Hello, Role};
use super::data::{RECV, region_bytes};
use super::link::{Conns, Ib, RecvLink, SendLink, Wire};
use super::verbs::{Address, CompChannel, Cq, Mr, Qp};
use crate::bootstrap::connect_retry_with;
use crate::call::Desc;
use crate::error::{Error, Result};
use crate::sync::Doorbell;
use crate::transport::fifo::{Fifo, Region};
use crate::transport::hello::ConnHello;
use crate::transport::peers::ConnWait;
use crate::transport::tcp::MAX_UNCLAIMED;
use crate::transport::{Dir, Endpoint, LinkKey};
use crate::wire::{self, Kind};

impl Ib {
    /// Takes the introductions waiting on the listener: each valid one waits in
    /// `accepted` until the link it opens is claimed.
    pub(super) fn accept_pending(&self, conns: &mut Conns) -> Result<()> {
        while let Some(h) = conns.gate.poll()? {
            let (peer, ch, idx, opener) = match ConnHello::decode(&h.body) {
                Ok(v) => (v.peer, v.channel, v.socket, v.opener),
                Err(e) => {
                    conns.gate.refuse(h.from, &e.to_string());
                    continue;
                }
            };
            if peer >= self.addrs.len() || ch > u8::MAX as u32 || idx != 0 {
                conns.gate.refuse(h.from, &format!("rank {peer}, channel {ch}, socket {idx} is out of range"));
                continue;
            }
            if conns.accepted.len() >= MAX_UNCLAIMED {
                conns.gate.refuse(h.from, &format!("{MAX_UNCLAIMED} connections are waiting to be claimed already"));
                continue;
            }
            let _ = h.sock.set_nodelay(true);
            conns.accepted.insert((peer, ch as u8), (h.sock, opener));
        }
        Ok(())
    }

    /// A completion channel, completion queue and `nqps` queue pairs for one link.
    fn verbs_for_link(&self) -> Result<(Arc<CompChannel>, Arc<Cq>, Vec<Qp>)> {
        let depth = 2 * self.shape.nslots + 8;
        let chan = CompChannel::new(&self.dev.ctx)?;
        let cq = Cq::with_channel(&self.dev.ctx, 2 * depth * self.nqps as u32, &chan)?;
        let qps = (0..self.nqps).map(|_| Qp::rc(&self.dev.pd, &cq, depth)).collect::<Result<Vec<_>>>()?;
        Ok((chan, cq, qps))
    }

    fn hello(&self, role: Role, qps: &[Qp], fifo: (u64, u32)) -> Hello {
        Hello {
            role,
            nslots: self.shape.nslots,
            slot_bytes: self.shape.slot_bytes as u64,
            mtu: self.dev.mtu,
            lid: self.dev.lid,
            gid: self.dev.gid,
            qpns: qps.iter().map(Qp::qpn).collect(),
            fifo,
        }
    }

    /// Checks the peer's half and connects our queue pairs to its.
    fn join(&self, peer: usize, h: &Hello, want: Role, qps: &[Qp]) -> Result<()> {
        if h.role != want || h.nslots != self.shape.nslots || h.slot_bytes != self.shape.slot_bytes as u64 {
            return Err(Error::invalid_usage(format!(
                "{} connects with {} slots of {} B, this rank uses {} of {} (OXCCL_NSLOTS and OXCCL_SLOT_BYTES must match on every rank)",
                self.who(peer),
                h.nslots,
                h.slot_bytes,
                self.shape.nslots,
                self.shape.slot_bytes
            )));
        }
        if h.qpns.len() != qps.len() {
            return Err(Error::invalid_usage(format!(
                "{} uses {} queue pairs per connection, this rank {} (OXCCL_IB_QPS_PER_CONNECTION must match on every rank)",
                self.who(peer),
                h.qpns.len(),
                qps.len()
            )));
        }
        let mtu = h.mtu.min(self.dev.mtu);
        for (q, &qpn) in qps.iter().zip(&h.qpns) {
            let to = Address { qpn, psn: 0, lid: h.lid, gid: h.gid };
            q.connect(self.dev.port, self.dev.gid_index, mtu, 0, &to, &self.tuning)?;
        }
        Ok(())
    }

    /// Reads one [`Kind::IbConnect`] frame from a handshake socket, without blocking
    /// past the deadline or a broken communicator.
    fn read_hello(&self, sock: &mut TcpStream, peer: usize, deadline: Option<Instant>) -> Result<Hello> {
        sock.set_nonblocking(false).map_err(|e| Error::system("setting a socket blocking", e))?;
        sock.set_read_timeout(Some(Duration::from_millis(20))).map_err(|e| Error::system("setting a timeout", e))?;
        let mut head = [0u8; wire::HEADER];
        let mut got = 0;
        let mut body: Vec<u8> = Vec::new();
        loop {
            let r = if got < wire::HEADER {
                sock.read(&mut head[got..])
            } else {
                sock.read(&mut body[got - wire::HEADER..])
            };
            match r {
                Ok(0) => return Err(self.closed(peer, "connecting")),
                Ok(k) => {
                    got += k;
                    if got == wire::HEADER {
                        let (kind, len) = wire::parse_head(&head, 4096)?;
                        if kind != Kind::IbConnect {
                            return Err(Error::remote(format!(
                                "{} sent {kind:?} where an InfiniBand connection message was expected",
                                self.who(peer)
                            )));
                        }
                        body = vec![0u8; len];
                    }
                    if got >= wire::HEADER && got - wire::HEADER == body.len() {
                        return Hello::decode(&body);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    self.peers.broken_comm()?;
                    self.accept_pending(&mut *self.lock()?)?;
                    if let Some(m) = self.peers.died(peer) {
                        return Err(Error::remote(format!("{m} while connecting")));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Error::timeout(
                            format!("connecting an InfiniBand link with {}", self.who(peer)),
                            self.peers.timeout.unwrap_or_default(),
                            vec![peer],
                        ));
                    }
                }
                Err(e) => return Err(self.closed(peer, &format!("connecting ({e})"))),
            }
        }
    }

    /// Waits for `peer`'s introduction on `channel` (as the TCP transport does).
    fn claim(&self, me: usize, k: &LinkKey, wait: &mut ConnWait, deadline: Option<Instant>) -> Result<TcpStream> {
        loop {
            let mut c = self.lock()?;
            self.accept_pending(&mut c)?;
            if let Some((s, _)) = c.accepted.remove(&(k.peer, k.channel)) {
                return Ok(s);
            }
            drop(c);
            self.peers.keep_waiting(me, k, wait, deadline)?;
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Connects the links of `keys` (the three phases above), one endpoint per key.
    pub(super) fn connect_links(&self, me: usize, keys: &[LinkKey], opener: Desc) -> Result<Vec<Endpoint>> {
        let deadline = self.peers.deadline();
        let mut out: Vec<Option<Endpoint>> = keys.iter().map(|_| None).collect();
        // 1. Send links: connect, introduce, say who we are. Needs nothing from the peer.
        let mut opening = Vec::new();
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.dir == Dir::Send) {
            let addr =
                *self.addrs.get(k.peer).ok_or_else(|| Error::internal(format!("no address for rank {}", k.peer)))?;
            let (chan, cq, qps) = self.verbs_for_link()?;
            let region = Arc::new(Region::heap(self.shape.region_bytes())?);
            let fifo = Fifo::init(region.clone(), 0, self.shape)?;
            // SAFETY: the region lives in the link next to the registration, which is
            // dropped first (field order of `Wire`).
            let mr = unsafe { Mr::register(&self.dev.pd, region.as_ptr(), region.len())? };
            let mut s = connect_retry_with(
                addr,
                deadline,
                &format!("rank {me}: connecting to {}", self.who(k.peer)),
                Duration::from_millis(200),
                &mut || {
                    self.peers.broken_comm()?;
                    self.accept_pending(&mut *self.lock()?)
                },
            )?;
            let _ = s.set_nodelay(true);
            let hello = ConnHello { peer: me, channel: k.channel as u32, socket: 0, opener };
            wire::send(&mut s, Kind::ConnHello, &hello.encode(&self.secret))
                .map_err(|_| self.closed(k.peer, "connecting"))?;
            let h = self.hello(Role::Sender, &qps, (0, 0));
            wire::send(&mut s, Kind::IbConnect, &h.encode()).map_err(|_| self.closed(k.peer, "connecting"))?;
            opening.push((
                i,
                *k,
                Wire { peer: k.peer, sock: s, qps, cq, chan, armed: Arc::default(), mr, region },
                fifo,
            ));
        }
        // 2. Receive links: answer with our registered FIFO.
        let mut wait = ConnWait::new();
        for (i, k) in keys.iter().enumerate().filter(|(_, k)| k.dir == Dir::Recv) {
            let mut sock = self.claim(me, k, &mut wait, deadline)?;
            let theirs = self.read_hello(&mut sock, k.peer, deadline)?;
            let (chan, cq, qps) = self.verbs_for_link()?;
            self.join(k.peer, &theirs, Role::Sender, &qps)?;
            let region = Arc::new(Region::heap(region_bytes(self.shape))?);
            let fifo = Fifo::init(region.clone(), 0, self.shape)?;
            // SAFETY: as for send links.
            let mr = unsafe { Mr::register(&self.dev.pd, region.as_ptr(), region.len())? };
            for (q, qp) in qps.iter().enumerate() {
                for _ in 0..self.shape.nslots + 4 {
                    qp.post_recv(RECV | q as u64)?;
                }
            }
            let h = self.hello(Role::Receiver, &qps, (region.as_ptr() as u64, mr.rkey()));
            wire::send(&mut sock, Kind::IbConnect, &h.encode()).map_err(|_| self.closed(k.peer, "connecting"))?;
            sock.set_nonblocking(true).map_err(|e| Error::system("setting a socket non-blocking", e))?;
            let n = self.shape.nslots as usize;
            self.lock()?.recvs.push(RecvLink {
                w: Wire { peer: k.peer, sock, qps, cq, chan, armed: Arc::default(), mr, region },
                fifo: fifo.sender(self.bell.clone()),
                arrived: vec![0; n],
                parts: vec![0; n],
                next: 0,
                credited: 0,
                credits_in_flight: 0,
                closed: false,
                stale_since: None,
            });
            out[i] = Some(Endpoint::Rx(fifo.receiver(Doorbell::new_private())));
        }
        // 3. Send links: the peer's answer.
        for (i, k, mut w, fifo) in opening {
            let theirs = self.read_hello(&mut w.sock, k.peer, deadline)?;
            self.join(k.peer, &theirs, Role::Receiver, &w.qps)?;
            for _ in 0..self.shape.nslots + 4 {
                w.qps[0].post_recv(RECV)?;
            }
            w.sock.set_nonblocking(true).map_err(|e| Error::system("setting a socket non-blocking", e))?;
            self.lock()?.sends.push(SendLink {
                w,
                fifo: fifo.receiver(self.bell.clone()),
                remote: theirs.fifo,
                pending: VecDeque::new(),
                posted: 0,
                credited: 0,
                closed_at: None,
            });
            out[i] = Some(Endpoint::Tx(fifo.sender(Doorbell::new_private())));
        }
        out.into_iter().map(|e| e.ok_or_else(|| Error::internal("unconnected IB key"))).collect()
    }
}
