//! Configuration, read in one place: defaults, then environment variables, then what the
//! caller set in [`Config`]. The result is a [`Settings`], fixed for the communicator's
//! life and printed once at init with `OXCCL_DEBUG=INFO`.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OXCCL_ALGO` | force an algorithm for the ring/tree collectives: `ring`, `tree`, `oneshot`; or per collective, `all_reduce:tree,broadcast:ring` | cost model |
//! | `OXCCL_TIMEOUT` | seconds an operation may wait without progress (`0`: forever) | 600 |
//! | `OXCCL_SLOT_BYTES` | payload bytes per FIFO slot (the pipeline chunk) | 262144 |
//! | `OXCCL_NSLOTS` | slots per FIFO | 8 |
//! | `OXCCL_NT_THRESHOLD` | output bytes from which outputs use non-temporal stores | 33554432 |
//! | `OXCCL_SPINS` | polls before a waiting rank yields its core | 4 when ranks outnumber cores, else 64 |
//! | `OXCCL_YIELD_US` | microseconds of yielding before a waiting rank sleeps | 500, or 50 with sockets |
//! | `OXCCL_SOCKET_IFNAME` | interfaces for bootstrap and TCP: prefixes, `^` excludes, `=` exact | first non-loopback |
//! | `OXCCL_NSOCKS` | connections per TCP link; messages from 64 KiB are striped across them | 1 |
//! | `OXCCL_SHM_DISABLE` | `1`: processes of one host talk over TCP instead of shared memory | 0 |
//! | `OXCCL_HOSTID` | override the host identity (hostname + boot id) | unset |
//! | `OXCCL_IB_DISABLE`, `OXCCL_IB_HCA`, `OXCCL_IB_GID_INDEX`, `OXCCL_IB_QPS_PER_CONNECTION`, `OXCCL_IB_TIMEOUT`, `OXCCL_IB_RETRY_CNT`, `OXCCL_IB_SL`, `OXCCL_IB_TC` | InfiniBand between hosts (feature `ib`; read by `transport::ib::select`, see the README) | IB when every rank has a port |
//! | `OXCCL_SIMD` | force a kernel level: `scalar`, `avx2`, `avx512` | best available |
//! | `OXCCL_DEBUG` | `INFO` prints the configuration, rings and trees at init | off |

use std::time::Duration;

use crate::call::{Algo, Collective};
use crate::error::{Error, Result};

/// The default timeout: generous, so that slow but healthy jobs never trip it, and
/// short enough that a hung job fails within minutes with a message naming the peers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Options a caller can set; anything left unset comes from the environment, then from
/// the defaults.
///
/// ```
/// use std::time::Duration;
/// let cfg = oxccl::Config::new().timeout(Duration::from_secs(30)).slot_bytes(1 << 20);
/// let comms = oxccl::Comm::init_all_with(2, &cfg).unwrap();
/// assert_eq!(comms[0].settings().slot_bytes, 1 << 20);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Config {
    algo: Option<String>,
    timeout: Option<Option<Duration>>,
    slot_bytes: Option<usize>,
    nslots: Option<u32>,
    nt_threshold: Option<usize>,
    debug: Option<bool>,
}

impl Config {
    /// Nothing set: environment and defaults decide.
    pub fn new() -> Config {
        Config::default()
    }

    /// Forces an algorithm for every collective it applies to (a call it does not apply
    /// to fails with `InvalidUsage`).
    pub fn algo(mut self, algo: Algo) -> Config {
        self.algo = Some(algo.name().to_string());
        self
    }

    /// Forces algorithms with `OXCCL_ALGO`'s syntax, e.g. `"all_reduce:tree"`.
    pub fn algo_spec(mut self, spec: &str) -> Config {
        self.algo = Some(spec.to_string());
        self
    }

    /// How long an operation may wait without progress before it fails with `Timeout`.
    pub fn timeout(mut self, t: Duration) -> Config {
        self.timeout = Some(Some(t));
        self
    }

    /// Wait forever.
    pub fn no_timeout(mut self) -> Config {
        self.timeout = Some(None);
        self
    }

    /// Payload bytes per FIFO slot (rounded up to a multiple of 64).
    pub fn slot_bytes(mut self, b: usize) -> Config {
        self.slot_bytes = Some(b);
        self
    }

    /// Slots per FIFO.
    pub fn nslots(mut self, n: u32) -> Config {
        self.nslots = Some(n);
        self
    }

    /// Output size in bytes from which outputs are written with non-temporal stores.
    pub fn nt_threshold(mut self, b: usize) -> Config {
        self.nt_threshold = Some(b);
        self
    }

    /// Print the configuration and topology at init.
    pub fn debug(mut self, on: bool) -> Config {
        self.debug = Some(on);
        self
    }

    /// Resolves defaults, then environment, then the caller's settings.
    pub fn resolve(&self) -> Result<Settings> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// As [`Config::resolve`], reading variables through `env` (for tests).
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let mut s = Settings::default();
        if let Some(v) = env("OXCCL_ALGO").filter(|v| !v.is_empty()) {
            s.algo = AlgoChoice::parse(&v).map_err(|e| Error::invalid_argument(format!("OXCCL_ALGO={v}: {e}")))?;
        }
        if let Some(v) = env("OXCCL_TIMEOUT").filter(|v| !v.is_empty()) {
            let secs: f64 = v.parse().ok().filter(|x: &f64| x.is_finite() && *x >= 0.0).ok_or_else(|| {
                Error::invalid_argument(format!("OXCCL_TIMEOUT={v}: expected seconds (0 for no timeout)"))
            })?;
            s.timeout = (secs > 0.0).then(|| Duration::from_secs_f64(secs));
        }
        let num = |k: &str| -> Result<Option<u64>> {
            match env(k).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => parse_size(&v).map(Some).ok_or_else(|| {
                    Error::invalid_argument(format!("{k}={v}: expected a number of bytes (K, M, G suffixes allowed)"))
                }),
            }
        };
        if let Some(v) = num("OXCCL_SLOT_BYTES")? {
            s.slot_bytes = v as usize;
        }
        if let Some(v) = num("OXCCL_NSLOTS")? {
            s.nslots = v.min(u32::MAX as u64) as u32;
        }
        if let Some(v) = num("OXCCL_NT_THRESHOLD")? {
            s.nt_threshold = v as usize;
        }
        if let Some(v) = num("OXCCL_SPINS")? {
            s.spins = Some(v.min(1 << 20) as u32);
        }
        if let Some(v) = num("OXCCL_YIELD_US")? {
            s.yield_for = Some(Duration::from_micros(v));
        }
        if let Some(v) = env("OXCCL_SOCKET_IFNAME").filter(|v| !v.is_empty()) {
            s.socket_ifname = Some(v);
        }
        if let Some(v) = num("OXCCL_NSOCKS")? {
            if !(1..=64).contains(&v) {
                return Err(Error::invalid_argument(format!("OXCCL_NSOCKS must be between 1 and 64, got {v}")));
            }
            s.nsocks = v as usize;
        }
        if let Some(v) = env("OXCCL_SHM_DISABLE") {
            s.shm_disable = matches!(v.trim(), "1" | "true" | "yes");
        }
        if let Some(v) = env("OXCCL_DEBUG") {
            s.debug = matches!(v.to_ascii_uppercase().as_str(), "INFO" | "TRACE" | "1");
        }
        if let Some(a) = &self.algo {
            s.algo = AlgoChoice::parse(a).map_err(Error::invalid_argument)?;
        }
        if let Some(t) = self.timeout {
            s.timeout = t;
        }
        if let Some(b) = self.slot_bytes {
            s.slot_bytes = b;
        }
        if let Some(n) = self.nslots {
            s.nslots = n;
        }
        if let Some(b) = self.nt_threshold {
            s.nt_threshold = b;
        }
        if let Some(d) = self.debug {
            s.debug = d;
        }
        s.slot_bytes = s.slot_bytes.max(64).div_ceil(64) * 64;
        if !(2..=1024).contains(&s.nslots) || !s.nslots.is_power_of_two() {
            return Err(Error::invalid_argument(format!(
                "OXCCL_NSLOTS must be a power of two between 2 and 1024, got {}",
                s.nslots
            )));
        }
        if s.slot_bytes > 1 << 30 {
            return Err(Error::invalid_argument(format!(
                "OXCCL_SLOT_BYTES must be at most 1 GiB, got {}",
                s.slot_bytes
            )));
        }
        Ok(s)
    }
}

fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mul) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// Forced algorithm choices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlgoChoice {
    all: Option<Algo>,
    per: Vec<(&'static str, Algo)>,
}

impl AlgoChoice {
    const COLLS: [&'static str; 11] = [
        "all_reduce",
        "reduce",
        "broadcast",
        "all_gather",
        "reduce_scatter",
        "all_to_all",
        "gather",
        "scatter",
        "send",
        "recv",
        "barrier",
    ];

    fn parse(spec: &str) -> std::result::Result<AlgoChoice, String> {
        let mut c = AlgoChoice::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parse_algo = |a: &str| {
                Algo::parse(a).ok_or_else(|| format!("'{a}' is not an algorithm (ring, tree, oneshot, direct)"))
            };
            match item.split_once(':') {
                None => c.all = Some(parse_algo(item)?),
                Some((coll, a)) => {
                    let coll = coll.trim().to_ascii_lowercase().replace('-', "_");
                    let coll = match coll.as_str() {
                        "allreduce" => "all_reduce",
                        "allgather" => "all_gather",
                        "reducescatter" => "reduce_scatter",
                        "alltoall" => "all_to_all",
                        other => other,
                    };
                    let name = Self::COLLS
                        .iter()
                        .find(|n| **n == coll)
                        .ok_or_else(|| format!("'{coll}' is not a collective ({})", Self::COLLS.join(", ")))?;
                    c.per.push((name, parse_algo(a.trim())?));
                }
            }
        }
        Ok(c)
    }

    /// The algorithm forced for `coll`, if any. A plain value (`OXCCL_ALGO=ring`) applies
    /// to the collectives that choose between rings, trees and one-shot (all-reduce,
    /// reduce, broadcast, all-gather, reduce-scatter); point-to-point based calls
    /// (send/recv, all-to-all, gather, scatter, barrier) have a single algorithm and are
    /// forced only by name (`all_to_all:direct`).
    pub fn forced(&self, coll: &Collective) -> Option<Algo> {
        let named = self.per.iter().rev().find(|(n, _)| *n == coll.name()).map(|(_, a)| *a);
        named.or(if Algo::P2p.applies_to(coll) { None } else { self.all })
    }

    /// Whether anything is forced.
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.per.is_empty()
    }
}

/// The resolved configuration of a communicator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Forced algorithms.
    pub algo: AlgoChoice,
    /// Longest wait without progress; `None` waits forever.
    pub timeout: Option<Duration>,
    /// Payload bytes per FIFO slot.
    pub slot_bytes: usize,
    /// Slots per FIFO.
    pub nslots: u32,
    /// Output bytes from which outputs use non-temporal stores.
    pub nt_threshold: usize,
    /// Print configuration and topology at init.
    pub debug: bool,
    /// Polls (with a `pause` between them) before a waiting rank starts yielding its core;
    /// `None` picks by load: few when the host runs more ranks than it has cores (the
    /// peer we wait for may need our core), more otherwise.
    pub spins: Option<u32>,
    /// How long a waiting rank keeps yielding before it sleeps on its doorbell (or in a
    /// socket wait); `None` picks by link: 500 µs, or 50 µs when some links are sockets.
    pub yield_for: Option<Duration>,
    /// Which interfaces to use (`OXCCL_SOCKET_IFNAME`, NCCL's syntax).
    pub socket_ifname: Option<String>,
    /// Never use shared memory between processes (`OXCCL_SHM_DISABLE=1`).
    pub shm_disable: bool,
    /// Connections per TCP link; messages from 64 KiB are striped across them
    /// (`OXCCL_NSOCKS`).
    pub nsocks: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            algo: AlgoChoice::default(),
            timeout: Some(DEFAULT_TIMEOUT),
            slot_bytes: 256 << 10,
            nslots: 8,
            nt_threshold: 32 << 20,
            debug: false,
            spins: None,
            yield_for: None,
            socket_ifname: None,
            shm_disable: false,
            nsocks: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_then_env_then_caller() {
        let s = Config::new().resolve_with(env(&[])).unwrap();
        assert_eq!(s.timeout, Some(DEFAULT_TIMEOUT));
        assert!(s.algo.is_empty());
        let vars =
            [("OXCCL_ALGO", "ring"), ("OXCCL_TIMEOUT", "2.5"), ("OXCCL_SLOT_BYTES", "1M"), ("OXCCL_DEBUG", "info")];
        let s = Config::new().resolve_with(env(&vars)).unwrap();
        assert_eq!(s.algo.forced(&Collective::AllGather { count: 1 }), Some(Algo::Ring));
        assert_eq!(s.algo.forced(&Collective::Barrier), None, "barrier has one algorithm");
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(s.slot_bytes, 1 << 20);
        assert!(s.debug);
        let s = Config::new().algo(Algo::Tree).slot_bytes(100).resolve_with(env(&vars)).unwrap();
        assert_eq!(s.algo.forced(&Collective::AllReduce { count: 1 }), Some(Algo::Tree));
        assert_eq!(s.slot_bytes, 128, "rounded up to whole cache lines");
        let s = Config::new().resolve_with(env(&[("OXCCL_TIMEOUT", "0")])).unwrap();
        assert_eq!(s.timeout, None);
    }

    #[test]
    fn per_collective_algorithms() {
        let s = Config::new().algo_spec("allreduce:tree, broadcast:ring").resolve_with(env(&[])).unwrap();
        assert_eq!(s.algo.forced(&Collective::AllReduce { count: 1 }), Some(Algo::Tree));
        assert_eq!(s.algo.forced(&Collective::Broadcast { count: 1, root: 0 }), Some(Algo::Ring));
        assert_eq!(s.algo.forced(&Collective::AllGather { count: 1 }), None);
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        for (k, v) in
            [("OXCCL_ALGO", "fastest"), ("OXCCL_TIMEOUT", "soon"), ("OXCCL_SLOT_BYTES", "lots"), ("OXCCL_NSLOTS", "1")]
        {
            let e = Config::new().resolve_with(env(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(k) || e.contains("NSLOTS"), "{e}");
        }
        assert!(Config::new().algo_spec("all_reduce:warp").resolve_with(env(&[])).is_err());
        assert!(Config::new().algo_spec("allscatter:ring").resolve_with(env(&[])).is_err());
    }
}
