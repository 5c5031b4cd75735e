//! How a failure reaches every rank: the communicator's fault state and the messengers
//! that carry it.
//!
//! A rank's [`Fault`] records the first thing that broke its communicator: an abort on
//! this rank, an error this rank hit (a dead peer, a timeout, a mismatched call), or a
//! fault another rank announced. Every wait polls [`Fault::tripped`] (one relaxed load)
//! and ends with [`Fault::error`]; every later call fails with the same error at once.
//!
//! A fault is announced to the other ranks of the communicator as soon as it is recorded,
//! so that ranks which are not waiting for the failed one (or are not in a call at all)
//! learn of it within milliseconds instead of at their timeout:
//! - ranks that are threads of one process share a [`Board`];
//! - ranks that are processes keep the bootstrap ring's two sockets after init, and a
//!   [`Sentinel`] thread per communicator floods the fault both ways around the ring.
//!
//! The fault state also keeps the record of this rank's recent collectives
//! ([`recent`]), from which mismatch errors name both ranks' calls ([`mismatch`]).

mod board;
pub mod mismatch;
pub mod msg;
pub mod recent;
mod sentinel;

pub use board::Board;
pub use mismatch::{STALL, mismatched};
pub use sentinel::{Neighbour, Sentinel};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::call::Desc;
use crate::error::{Error, ErrorKind};
use crate::sync::Doorbell;
use crate::sys::eventfd::EventFd;
use crate::topology::PeerInfo;
use msg::{Culprit, Notice};

/// What kind of failure a fault is; it decides the error class other ranks report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    /// A rank aborted its communicator.
    Aborted = 1,
    /// A rank saw a mismatched call: the others report `InvalidUsage` too.
    Mismatch = 2,
    /// A rank timed out waiting for a peer.
    Timeout = 3,
    /// Anything else: a dead peer, a broken connection, a system error.
    Failed = 4,
}

impl Class {
    fn of(e: &Error) -> Class {
        match e.kind() {
            ErrorKind::Aborted => Class::Aborted,
            ErrorKind::InvalidUsage => Class::Mismatch,
            ErrorKind::Timeout => Class::Timeout,
            _ => Class::Failed,
        }
    }

    fn from_u8(v: u8) -> Class {
        match v {
            1 => Class::Aborted,
            2 => Class::Mismatch,
            3 => Class::Timeout,
            _ => Class::Failed,
        }
    }
}

/// The first failure of a communicator.
struct Reason {
    /// What every rank learns of it.
    notice: Notice,
    /// The error itself, where it happened on this rank.
    local: Option<Error>,
}

impl Reason {
    fn class(&self) -> Class {
        Class::from_u8(self.notice.class)
    }
}

/// The rank an error names as its cause, if it names one.
fn culprit(e: &Error) -> Option<Culprit> {
    Some(Culprit { rank: e.peer()?, host: e.host().map(str::to_string), pid: e.pid() })
}

#[derive(Default)]
struct Inner {
    /// `abort` was called on this rank.
    aborted_here: bool,
    reason: Option<Reason>,
    /// The sentinel has sent this rank's own fault to its neighbours.
    announced: bool,
    /// Where to announce faults recorded here.
    herald: Option<Herald>,
}

/// Who carries a fault recorded on this rank to the others.
enum Herald {
    /// Thread ranks of one process.
    Board(Arc<Board>),
    /// The sentinel thread of a process rank (woken through an eventfd).
    Sentinel(Arc<EventFd>),
}

/// An error's message without the class prefix its display adds (the receiving rank
/// adds its own).
fn plain(e: &Error) -> String {
    match e.kind() {
        ErrorKind::InvalidUsage | ErrorKind::Remote | ErrorKind::Aborted => e.message().to_string(),
        _ => e.to_string(),
    }
}

/// One rank's view of whether its communicator is broken, shared by the communicator,
/// its engine, its abort handles and its sentinel.
pub struct Fault {
    rank: usize,
    /// This process's identity, named when this rank aborts.
    who: String,
    /// This rank as the culprit of its own abort.
    me: Culprit,
    tripped: AtomicBool,
    /// The recent collectives of this rank.
    recent: recent::Recent,
    /// A wait is stuck: the sentinel tells the ring where this rank is.
    stalled: AtomicBool,
    inner: Mutex<Inner>,
    /// Woken when a fault is recorded, so sleeping waits notice at once.
    bell: Doorbell,
}

impl Fault {
    /// A healthy fault state for `rank`, whose waits sleep on `bell`.
    pub fn new(rank: usize, bell: Doorbell) -> Arc<Fault> {
        let me = PeerInfo::local();
        Arc::new(Fault {
            rank,
            who: me.describe(),
            me: Culprit { rank, host: Some(me.hostname.to_string()), pid: Some(me.pid) },
            tripped: AtomicBool::new(false),
            recent: recent::Recent::default(),
            stalled: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            bell,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the communicator is broken (aborted, failed here, or failed elsewhere).
    #[inline]
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    /// The error a call on this rank returns now, if the communicator is broken.
    pub fn error(&self) -> Option<Error> {
        if !self.tripped() {
            return None;
        }
        let g = self.lock();
        if g.aborted_here {
            return Some(Error::aborted(format!("rank {}: the communicator was aborted", self.rank)));
        }
        let r = g.reason.as_ref()?;
        if let Some(e) = &r.local {
            return Some(e.duplicate());
        }
        let e = match r.class() {
            Class::Mismatch => Error::invalid_usage(r.notice.text.clone()),
            _ => Error::remote(r.notice.text.clone()),
        };
        Some(match &r.notice.culprit {
            Some(c) => e.with_peer(c.rank, c.host.as_deref(), c.pid),
            None => e,
        })
    }

    /// Records that this rank entered collective number `tag` (operation `seq`) described
    /// by `d`.
    #[inline]
    pub fn enter(&self, tag: u64, d: Desc, seq: u64) {
        self.recent.record(tag, d, seq);
    }

    /// This rank's recent collectives.
    pub fn recent(&self) -> &recent::Recent {
        &self.recent
    }

    /// The rank where the first failure happened, if any.
    pub fn origin(&self) -> Option<usize> {
        self.lock().reason.as_ref().map(|r| r.notice.origin)
    }

    /// Aborts the communicator on this rank: every pending and later call fails with
    /// `Aborted`, and the other ranks learn that this rank aborted.
    pub fn abort(&self) {
        self.stop(format!("rank {} ({}) aborted its communicator", self.rank, self.who));
    }

    /// Aborts the communicator because this rank's thread panicked while it was open (it
    /// is being dropped during unwinding): the other ranks learn that rather than take
    /// the drop for an orderly goodbye and wait for calls that will never come.
    pub fn abandon(&self) {
        self.stop(format!(
            "rank {} ({}) panicked with the communicator open (it was dropped while unwinding)",
            self.rank, self.who
        ));
    }

    /// Trips the fault as an abort with `text` as the announced reason (unless another
    /// failure came first).
    fn stop(&self, text: String) {
        let herald = {
            let mut g = self.lock();
            g.aborted_here = true;
            if g.reason.is_none() {
                let notice =
                    Notice { class: Class::Aborted as u8, origin: self.rank, text, culprit: Some(self.me.clone()) };
                g.reason = Some(Reason { notice, local: None });
            }
            self.tripped.store(true, Ordering::SeqCst);
            g.herald.as_ref().map(Herald::handle)
        };
        self.bell.wake();
        if let Some(h) = herald {
            h.announce(self);
        }
    }

    /// Records an error this rank hit that leaves the links in an unknown state, and
    /// announces it, unless the communicator already failed. Where the failure came from
    /// elsewhere, `e` (how this rank's call reported it, naming the call) becomes the
    /// error every later call returns.
    pub fn fail(&self, e: &Error) {
        let herald = {
            let mut g = self.lock();
            if let Some(r) = &mut g.reason {
                if r.local.is_none() {
                    r.local = Some(e.duplicate());
                }
                return;
            }
            let notice = Notice { class: Class::of(e) as u8, origin: self.rank, text: plain(e), culprit: culprit(e) };
            g.reason = Some(Reason { notice, local: Some(e.duplicate()) });
            self.tripped.store(true, Ordering::SeqCst);
            g.herald.as_ref().map(Herald::handle)
        };
        self.bell.wake();
        if let Some(h) = herald {
            h.announce(self);
        }
    }

    /// Records a fault another rank announced; returns whether it is the first (the
    /// sentinel then passes it on).
    fn receive(&self, notice: Notice) -> bool {
        {
            let mut g = self.lock();
            if g.reason.is_some() {
                return false;
            }
            g.reason = Some(Reason { notice, local: None });
            self.tripped.store(true, Ordering::SeqCst);
        }
        self.bell.wake();
        true
    }

    /// The fault to send to the other ranks, once.
    fn to_announce(&self) -> Option<Notice> {
        let mut g = self.lock();
        if g.announced {
            return None;
        }
        let out = g.reason.as_ref()?.notice.clone();
        g.announced = true;
        Some(out)
    }

    fn set_herald(&self, h: Herald) {
        self.lock().herald = Some(h);
    }
}

impl Herald {
    fn handle(&self) -> Herald {
        match self {
            Herald::Board(b) => Herald::Board(b.clone()),
            Herald::Sentinel(e) => Herald::Sentinel(e.clone()),
        }
    }

    fn announce(&self, from: &Fault) {
        match self {
            Herald::Board(b) => b.announce(from),
            Herald::Sentinel(e) => e.notify(),
        }
    }
}
