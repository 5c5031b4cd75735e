//! The error type of every fallible oxccl call.
//!
//! Each variant maps one-to-one onto an NCCL result code ([`Error::nccl_code`]) so the C
//! ABI can report it, and each message says what went wrong and, where it can, what to do.

use std::fmt;
use std::io;
use std::time::Duration;

/// Shorthand for `std::result::Result<T, oxccl::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An argument is wrong for the call: a buffer length, a count, a root or peer out of
    /// range, an op that does not fit the data type (`ncclInvalidArgument`).
    InvalidArgument(String),
    /// The call conflicts with the communicator's configuration or with the calls of other
    /// ranks, e.g. a forced algorithm that does not apply (`ncclInvalidUsage`).
    InvalidUsage(String),
    /// Peers did not take part within the communicator's timeout (`ncclTimeout`).
    Timeout {
        /// The operation that was waiting, e.g. "all_reduce #41".
        op: String,
        /// How long it waited.
        waited: Duration,
        /// The ranks it was waiting for.
        peers: Vec<usize>,
    },
    /// The communicator was aborted; every later call fails the same way
    /// (`ncclRemoteError`, since the abort may come from any rank).
    Aborted(String),
    /// A peer failed, disconnected or reported an error (`ncclRemoteError`).
    Remote(String),
    /// An operating-system call failed (`ncclSystemError`).
    System {
        /// What oxccl was doing.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// An internal invariant broke: a bug in oxccl (`ncclInternalError`).
    Internal(String),
}

impl Error {
    /// NCCL's `ncclResult_t` value for this error.
    pub fn nccl_code(&self) -> i32 {
        match self {
            Error::System { .. } => 2,
            Error::Internal(_) => 3,
            Error::InvalidArgument(_) => 4,
            Error::InvalidUsage(_) => 5,
            Error::Remote(_) | Error::Aborted(_) => 6,
            Error::Timeout { .. } => 8,
        }
    }

    /// A copy of this error (an OS error is copied as its kind and text), for a
    /// communicator that returns the error that broke it on every later call.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::InvalidUsage(m) => Error::InvalidUsage(m.clone()),
            Error::Timeout { op, waited, peers } => {
                Error::Timeout { op: op.clone(), waited: *waited, peers: peers.clone() }
            }
            Error::Aborted(m) => Error::Aborted(m.clone()),
            Error::Remote(m) => Error::Remote(m.clone()),
            Error::System { context, source } => {
                Error::System { context: context.clone(), source: io::Error::new(source.kind(), source.to_string()) }
            }
            Error::Internal(m) => Error::Internal(m.clone()),
        }
    }

    /// Wraps an OS error with what oxccl was doing.
    pub fn system(context: impl Into<String>, source: io::Error) -> Error {
        Error::System { context: context.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::InvalidUsage(m) => write!(f, "invalid usage: {m}"),
            Error::Timeout { op, waited, peers } => {
                write!(f, "timeout: {op} waited {:.1} s for ", waited.as_secs_f64())?;
                match peers.len() {
                    0 => write!(f, "its peers")?,
                    1 => write!(f, "rank {}", peers[0])?,
                    _ => write!(f, "ranks {peers:?}")?,
                }
                write!(f, "; raise the timeout (Config::timeout or OXCCL_TIMEOUT) if they are only slow")
            }
            Error::Aborted(m) => write!(f, "aborted: {m}"),
            Error::Remote(m) => write!(f, "remote error: {m}"),
            Error::System { context, source } => {
                write!(f, "system error while {context}: {source}")
            }
            Error::Internal(m) => {
                write!(f, "internal error (a bug in oxccl, please report it): {m}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::System { source, .. } => Some(source),
            _ => None,
        }
    }
}
