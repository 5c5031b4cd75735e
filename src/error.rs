//! The error type of every fallible oxccl call.
//!
//! An [`Error`] has a [`ErrorKind`], which maps one-to-one onto an NCCL result code
//! (the one table is [`NCCL_RESULTS`]), a message that says what went wrong and, where
//! it can, what to do, and structured fields ([`Error::rank`], [`Error::peer`],
//! [`Error::host`], [`Error::pid`], [`Error::call`], [`Error::op`], ...) so that callers,
//! the C ABI and the Python package can act on an error without parsing its text.

use std::fmt;
use std::io;
use std::time::Duration;

/// Shorthand for `std::result::Result<T, oxccl::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is; each kind is one NCCL result code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An argument is wrong for the call: a buffer length, a count, a root or peer out of
    /// range, an op that does not fit the data type (`ncclInvalidArgument`).
    InvalidArgument,
    /// The call conflicts with the communicator's configuration or with the calls of other
    /// ranks, e.g. a forced algorithm that does not apply, or ranks that called different
    /// collectives (`ncclInvalidUsage`).
    InvalidUsage,
    /// Peers did not take part within the communicator's timeout (`ncclTimeout`).
    Timeout,
    /// The communicator was aborted on this rank; every later call fails the same way
    /// (`ncclRemoteError`, since the abort may come from any rank).
    Aborted,
    /// A peer failed, disconnected or reported an error (`ncclRemoteError`).
    Remote,
    /// An operating-system call failed (`ncclSystemError`).
    System,
    /// An internal invariant broke: a bug in oxccl (`ncclInternalError`).
    Internal,
}

/// One NCCL result code: its value, its name in `nccl.h`, what `ncclGetErrorString`
/// says of it, and the [`ErrorKind`]s that report it.
#[derive(Clone, Copy, Debug)]
pub struct NcclResult {
    /// The `ncclResult_t` value.
    pub code: i32,
    /// Its name in `nccl.h`.
    pub name: &'static str,
    /// What `ncclGetErrorString` returns for it.
    pub text: &'static str,
    /// The kinds of error that map to it (none for the codes that are not errors).
    pub kinds: &'static [ErrorKind],
}

/// Every `ncclResult_t` of `nccl.h`, in order of value: the one table from which the C
/// ABI, its header test and [`ErrorKind::nccl_code`] take their codes.
pub const NCCL_RESULTS: [NcclResult; 9] = [
    NcclResult { code: 0, name: "ncclSuccess", text: "no error", kinds: &[] },
    NcclResult {
        code: 1,
        name: "ncclUnhandledCudaError",
        text: "unhandled cuda error (see ncclGetLastError for the call that failed)",
        kinds: &[],
    },
    NcclResult {
        code: 2,
        name: "ncclSystemError",
        text: "unhandled system error (see ncclGetLastError for the call that failed)",
        kinds: &[ErrorKind::System],
    },
    NcclResult {
        code: 3,
        name: "ncclInternalError",
        text: "internal error - please report this issue to the oxccl developers",
        kinds: &[ErrorKind::Internal],
    },
    NcclResult {
        code: 4,
        name: "ncclInvalidArgument",
        text: "invalid argument (see ncclGetLastError for details)",
        kinds: &[ErrorKind::InvalidArgument],
    },
    NcclResult {
        code: 5,
        name: "ncclInvalidUsage",
        text: "invalid usage (see ncclGetLastError for details)",
        kinds: &[ErrorKind::InvalidUsage],
    },
    NcclResult {
        code: 6,
        name: "ncclRemoteError",
        text: "remote process exited or there was a network error",
        kinds: &[ErrorKind::Remote, ErrorKind::Aborted],
    },
    NcclResult { code: 7, name: "ncclInProgress", text: "operation in progress", kinds: &[] },
    NcclResult {
        code: 8,
        name: "ncclTimeout",
        text: "operation timed out (see ncclGetLastError for the peers it waited for)",
        kinds: &[ErrorKind::Timeout],
    },
];

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::InvalidArgument,
        ErrorKind::InvalidUsage,
        ErrorKind::Timeout,
        ErrorKind::Aborted,
        ErrorKind::Remote,
        ErrorKind::System,
        ErrorKind::Internal,
    ];

    /// The NCCL result code of this kind, from [`NCCL_RESULTS`].
    pub fn nccl(self) -> &'static NcclResult {
        NCCL_RESULTS.iter().find(|r| r.kinds.contains(&self)).unwrap_or(&NCCL_RESULTS[3])
    }

    /// NCCL's `ncclResult_t` value for this kind.
    pub fn nccl_code(self) -> i32 {
        self.nccl().code
    }

    /// The prefix of this kind's messages ("invalid argument", "timeout", ...).
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::InvalidUsage => "invalid usage",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Remote => "remote error",
            ErrorKind::System => "system error",
            ErrorKind::Internal => "internal error (a bug in oxccl, please report it)",
        }
    }
}

/// What went wrong: a kind, a message, and what is known of where.
///
/// ```
/// use oxccl::{Comm, ErrorKind, ReduceOp};
/// let mut comm = Comm::init_all(1)?.pop().unwrap();
/// let e = comm.all_reduce(&[1.0f32; 4], &mut [0.0f32; 3], ReduceOp::Sum).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::InvalidArgument);
/// assert_eq!(e.nccl_code(), 4); // ncclInvalidArgument
/// # Ok::<(), oxccl::Error>(())
/// ```
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    message: String,
    rank: Option<usize>,
    peer: Option<usize>,
    host: Option<String>,
    pid: Option<u32>,
    call: Option<String>,
    op: Option<u64>,
    waited: Option<Duration>,
    waiting_for: Vec<usize>,
    source: Option<io::Error>,
}

impl Error {
    /// An error of `kind` with `message` (what went wrong, and what to do).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            rank: None,
            peer: None,
            host: None,
            pid: None,
            call: None,
            op: None,
            waited: None,
            waiting_for: Vec::new(),
            source: None,
        }))
    }

    /// An [`ErrorKind::InvalidArgument`] error.
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// An [`ErrorKind::InvalidUsage`] error.
    pub fn invalid_usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidUsage, message)
    }

    /// An [`ErrorKind::Aborted`] error.
    pub fn aborted(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Aborted, message)
    }

    /// An [`ErrorKind::Remote`] error.
    pub fn remote(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Remote, message)
    }

    /// An [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// An [`ErrorKind::Timeout`] error: `op` (e.g. "rank 0: all_reduce #41") waited
    /// `waited` for the ranks in `peers` (the peer at fault, when it is one).
    pub fn timeout(op: impl Into<String>, waited: Duration, peers: Vec<usize>) -> Error {
        let mut e = Error::new(ErrorKind::Timeout, op);
        e.0.waited = Some(waited);
        if let [one] = peers[..] {
            e.0.peer = Some(one);
        }
        e.0.waiting_for = peers;
        e
    }

    /// An [`ErrorKind::System`] error: an OS error, with what oxccl was doing.
    pub fn system(context: impl Into<String>, source: io::Error) -> Error {
        let mut e = Error::new(ErrorKind::System, context);
        e.0.source = Some(source);
        e
    }

    /// Names the rank that reports the error.
    pub fn with_rank(mut self, rank: usize) -> Error {
        self.0.rank = Some(rank);
        self
    }

    /// Names the peer at fault (the rank that died, aborted, timed out or called
    /// differently), with its host and process where they are known.
    pub fn with_peer(mut self, peer: usize, host: Option<&str>, pid: Option<u32>) -> Error {
        self.0.peer = Some(peer);
        self.0.host = host.map(str::to_string).or(self.0.host.take());
        self.0.pid = pid.or(self.0.pid);
        self
    }

    /// Names the call that failed ("all_reduce") and its operation number on the
    /// communicator, keeping what an inner layer already named.
    pub fn with_call(mut self, call: &str, op: u64) -> Error {
        if self.0.call.is_none() {
            self.0.call = Some(call.to_string());
            self.0.op = Some(op);
        }
        self
    }

    /// Replaces the message, keeping the kind and every field.
    pub fn with_message(mut self, message: impl Into<String>) -> Error {
        self.0.message = message.into();
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// NCCL's `ncclResult_t` value for this error.
    pub fn nccl_code(&self) -> i32 {
        self.0.kind.nccl_code()
    }

    /// What went wrong, without the kind's prefix that `Display` adds.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The rank that reported the error, where known.
    pub fn rank(&self) -> Option<usize> {
        self.0.rank
    }

    /// The peer at fault, where known.
    pub fn peer(&self) -> Option<usize> {
        self.0.peer
    }

    /// The peer's host, where known.
    pub fn host(&self) -> Option<&str> {
        self.0.host.as_deref()
    }

    /// The peer's process id, where known.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid
    }

    /// The call that failed ("all_reduce", "broadcast+all_gather" for a group), where
    /// known.
    pub fn call(&self) -> Option<&str> {
        self.0.call.as_deref()
    }

    /// The failed call's operation number on its communicator (1 for the first), where
    /// known.
    pub fn op(&self) -> Option<u64> {
        self.0.op
    }

    /// How long a timed-out operation waited.
    pub fn waited(&self) -> Option<Duration> {
        self.0.waited
    }

    /// The ranks a timed-out operation waited for.
    pub fn waiting_for(&self) -> &[usize] {
        &self.0.waiting_for
    }

    /// A copy of this error (an OS error is copied as its kind and text), for a
    /// communicator that returns the error that broke it on every later call.
    pub fn duplicate(&self) -> Error {
        let i = &self.0;
        Error(Box::new(Inner {
            kind: i.kind,
            message: i.message.clone(),
            rank: i.rank,
            peer: i.peer,
            host: i.host.clone(),
            pid: i.pid,
            call: i.call.clone(),
            op: i.op,
            waited: i.waited,
            waiting_for: i.waiting_for.clone(),
            source: i.source.as_ref().map(|s| io::Error::new(s.kind(), s.to_string())),
        }))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        match i.kind {
            ErrorKind::Timeout => {
                let waited = i.waited.unwrap_or_default();
                write!(f, "timeout: {} waited {:.1} s for ", i.message, waited.as_secs_f64())?;
                match i.waiting_for.len() {
                    0 => write!(f, "its peers")?,
                    1 => write!(f, "rank {}", i.waiting_for[0])?,
                    _ => write!(f, "ranks {:?}", i.waiting_for)?,
                }
                write!(f, "; raise the timeout (Config::timeout or OXCCL_TIMEOUT) if they are only slow")
            }
            ErrorKind::System => match &i.source {
                Some(s) => write!(f, "system error while {}: {s}", i.message),
                None => write!(f, "system error: {}", i.message),
            },
            k => write!(f, "{}: {}", k.describe(), i.message),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        let mut d = f.debug_struct("Error");
        d.field("kind", &i.kind).field("message", &i.message);
        macro_rules! opt {
            ($($name:ident),*) => {$(if let Some(v) = &i.$name { d.field(stringify!($name), v); })*};
        }
        opt!(rank, peer, host, pid, call, op, waited, source);
        if !i.waiting_for.is_empty() {
            d.field("waiting_for", &i.waiting_for);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_ref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_nccl_code_and_the_table_is_in_order() {
        for (i, r) in NCCL_RESULTS.iter().enumerate() {
            assert_eq!(r.code, i as i32, "{}", r.name);
        }
        for k in ErrorKind::ALL {
            let n = NCCL_RESULTS.iter().filter(|r| r.kinds.contains(&k)).count();
            assert_eq!(n, 1, "{k:?} must appear in exactly one row");
        }
        assert_eq!(ErrorKind::Timeout.nccl_code(), 8);
        assert_eq!(ErrorKind::Aborted.nccl_code(), 6);
    }

    #[test]
    fn messages_and_fields() {
        let e = Error::timeout("rank 0: all_reduce #3", Duration::from_millis(1500), vec![2])
            .with_rank(0)
            .with_call("all_reduce", 3);
        assert_eq!(
            e.to_string(),
            "timeout: rank 0: all_reduce #3 waited 1.5 s for rank 2; raise the timeout (Config::timeout or OXCCL_TIMEOUT) if they are only slow"
        );
        assert_eq!((e.rank(), e.call(), e.op(), e.waiting_for()), (Some(0), Some("all_reduce"), Some(3), &[2][..]));
        let e = Error::remote("rank 2 (host b, pid 9) died").with_peer(2, Some("b"), Some(9)).with_call("x", 1);
        let d = e.duplicate().with_call("y", 2);
        assert_eq!((d.peer(), d.host(), d.pid(), d.call(), d.op()), (Some(2), Some("b"), Some(9), Some("x"), Some(1)));
        assert_eq!(d.to_string(), "remote error: rank 2 (host b, pid 9) died");
        let s = Error::system("binding", io::Error::other("busy"));
        assert_eq!(s.duplicate().to_string(), "system error while binding: busy");
        assert!(std::error::Error::source(&s).is_some());
        assert_eq!(std::mem::size_of::<Result<()>>(), std::mem::size_of::<usize>());
    }
}
