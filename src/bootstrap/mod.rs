//! Bootstrap: how the ranks of a job find each other before any data moves.
//!
//! 1. Every rank connects to the root (whose address and secret are in the
//!    [`UniqueId`]) and says who it is: secret, rank, number of ranks, and the address of
//!    its own bootstrap listener.
//! 2. The root ([`root`]) checks the job is consistent (same number of ranks everywhere,
//!    every rank exactly once) and tells each rank the addresses of its partners, the
//!    ranks `2^k` ahead of it; or tells every rank what is wrong.
//! 3. Each rank connects to its partners ([`mesh`]): `ceil(log2 n)` connections out and
//!    as many in. Over them the ranks all-gather what they need to know about each other
//!    (hosts, transport addresses) in `ceil(log2 n)` rounds, and run barriers. The
//!    connections to the neighbours (`k = 0`, a ring) stay after init, for the fault
//!    sentinel.
//!
//! Every connection presents the secret first; connections that do not are refused and
//! logged (rate-limited), without failing the job. Listeners take their connections
//! through a [`gate::Gate`], which never blocks on one client, so garbage, stalled or
//! flooding clients cannot hold up the ranks. Every wait is bounded by the communicator's
//! timeout. The messages are the
//! versioned, length-checked frames of [`wire`].

pub mod gate;
pub mod id;
mod mesh;
pub mod msg;
mod root;

pub use id::{Secret, UniqueId};
pub use mesh::Bootstrap;
pub use root::spawn_root;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::wire::{self, Kind};

pub(super) fn io_err(what: impl Into<String>, e: std::io::Error) -> Error {
    let what = what.into();
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::timeout(what, Duration::ZERO, vec![]),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            Error::remote(format!("{what}: the peer closed the connection ({e})"))
        }
        _ => Error::system(what, e),
    }
}

pub(super) fn recv_frame(s: &mut TcpStream, what: &str, limit: usize) -> Result<(Kind, Vec<u8>)> {
    wire::recv(s, limit).map_err(|e| match e {
        Ok(io) => io_err(what.to_string(), io),
        Err(e) => e,
    })
}

/// Connects to `addr`, retrying until `deadline` (the peer may not listen yet).
pub fn connect_retry(addr: SocketAddr, deadline: Option<Instant>, what: &str) -> Result<TcpStream> {
    connect_retry_with(addr, deadline, what, Duration::from_secs(2), &mut || Ok(()))
}

/// As [`connect_retry`], each attempt bounded by `attempt`, calling `meanwhile` between
/// attempts: a rank that connects to a peer must keep accepting its own connections, or
/// ranks whose listen queues are full (a flood of stray connections) wait on each other.
pub fn connect_retry_with(
    addr: SocketAddr,
    deadline: Option<Instant>,
    what: &str,
    attempt: Duration,
    meanwhile: &mut dyn FnMut() -> Result<()>,
) -> Result<TcpStream> {
    let mut nap = Duration::from_millis(5);
    loop {
        match TcpStream::connect_timeout(&addr, attempt) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::timeout(
                        format!("{what}: could not connect to {addr} ({e})"),
                        Duration::ZERO,
                        vec![],
                    ));
                }
                meanwhile()?;
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
        }
    }
}
