//! Settings, read in one place: defaults, then environment variables (the table in
//! [`vars`], read once per process through [`mod@env`]), then what the caller set in a
//! [`Config`]. The result is a [`Settings`], fixed for a communicator's life; with
//! `OXCCL_DEBUG=INFO` the effective settings are printed once per process.
//!
//! Settings of the whole process (`OXCCL_DEBUG`, `OXCCL_SIMD`, `OXCCL_HOSTID`, ...) come
//! from [`process`]; a communicator's come from [`Config::resolve`].

pub mod env;
pub mod ib;
pub mod vars;

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::call::{Algo, Collective};
use crate::error::{Error, Result};
pub use ib::{HcaFilter, IbSettings, QpTuning};
pub use vars::{Scope, VARS, Var};

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

    /// Resolves defaults, then the process's environment, then the caller's settings.
    pub fn resolve(&self) -> Result<Settings> {
        let p = process_checked()?;
        self.apply(p.clone())
    }

    /// As [`Config::resolve`], reading variables through `env` instead of the process's
    /// environment (for tests).
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        self.apply(Settings::from_env(env)?)
    }

    fn apply(&self, mut s: Settings) -> Result<Settings> {
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
        s.check()?;
        Ok(s)
    }
}

/// The process's settings: defaults and the environment, read once. An invalid variable
/// leaves the defaults in place here; [`Config::resolve`] reports it, so that the first
/// communicator fails with a message naming the variable.
pub fn process() -> &'static Settings {
    match process_result() {
        Ok(s) => s,
        Err(_) => {
            static DEFAULTS: OnceLock<Settings> = OnceLock::new();
            DEFAULTS.get_or_init(Settings::default)
        }
    }
}

fn process_result() -> &'static std::result::Result<Settings, String> {
    static PROCESS: OnceLock<std::result::Result<Settings, String>> = OnceLock::new();
    PROCESS.get_or_init(|| Settings::from_env(env::var).map_err(|e| e.message().to_string()))
}

fn process_checked() -> Result<&'static Settings> {
    process_result().as_ref().map_err(|e| Error::invalid_argument(e.clone()))
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
                Algo::parse(a).ok_or_else(|| {
                    format!("'{a}' is not an algorithm (ring, tree, oneshot, doubling, hier, direct, p2p)")
                })
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

impl fmt::Display for AlgoChoice {
    /// `OXCCL_ALGO`'s syntax, or "cost model" when nothing is forced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("cost model");
        }
        let items: Vec<String> = self
            .all
            .iter()
            .map(|a| a.name().to_string())
            .chain(self.per.iter().map(|(c, a)| format!("{c}:{}", a.name())))
            .collect();
        f.write_str(&items.join(","))
    }
}

/// The resolved settings of a communicator (and of the process).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    /// Forced algorithms (`OXCCL_ALGO`).
    pub algo: AlgoChoice,
    /// Longest wait without progress; `None` waits forever (`OXCCL_TIMEOUT`).
    pub timeout: Option<Duration>,
    /// Payload bytes per FIFO slot (`OXCCL_SLOT_BYTES`).
    pub slot_bytes: usize,
    /// Slots per FIFO (`OXCCL_NSLOTS`).
    pub nslots: u32,
    /// Output bytes from which outputs use non-temporal stores (`OXCCL_NT_THRESHOLD`).
    pub nt_threshold: usize,
    /// Print configuration and topology at init (`OXCCL_DEBUG=INFO`).
    pub debug: bool,
    /// Polls (with a `pause` between them) before a waiting rank starts yielding its core;
    /// `None` picks by load: few when the host runs more ranks than it has cores (the
    /// peer we wait for may need our core), more otherwise (`OXCCL_SPINS`).
    pub spins: Option<u32>,
    /// How long a waiting rank keeps yielding before it sleeps on its doorbell (or in a
    /// socket wait); `None` picks by link: 500 µs, or 50 µs when some links are sockets
    /// (`OXCCL_YIELD_US`).
    pub yield_for: Option<Duration>,
    /// Which interfaces to use (`OXCCL_SOCKET_IFNAME`, NCCL's syntax).
    pub socket_ifname: Option<String>,
    /// Never use shared memory between processes (`OXCCL_SHM_DISABLE=1`).
    pub shm_disable: bool,
    /// Connections per TCP link; messages from 64 KiB are striped across them
    /// (`OXCCL_NSOCKS`).
    pub nsocks: usize,
    /// InfiniBand between hosts (`OXCCL_IB_*`).
    pub ib: IbSettings,
    /// Device all-reduce through CUDA IPC (`OXCCL_CUDA_IPC=1`).
    pub cuda_ipc: bool,
    /// A forced kernel level (`OXCCL_SIMD`): `scalar`, `avx2` or `avx512`.
    pub simd: Option<String>,
    /// The host identity (`OXCCL_HOSTID`), instead of hostname and boot id.
    pub host_id: Option<String>,
    /// Fence sleeping waits without `membarrier(2)` (`OXCCL_NO_MEMBARRIER`).
    pub no_membarrier: bool,
    /// Where libnvrtc is (`OXCCL_NVRTC_LIB`).
    pub nvrtc_lib: Option<PathBuf>,
    /// Where CUDA's headers are, a path list (`OXCCL_CUDA_INCLUDE`).
    pub cuda_include: Option<String>,
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
            ib: IbSettings::default(),
            cuda_ipc: false,
            simd: None,
            host_id: None,
            no_membarrier: false,
            nvrtc_lib: None,
            cuda_include: None,
        }
    }
}

impl Settings {
    /// Defaults, then every variable of [`VARS`] that `env` sets; an invalid value is an
    /// `InvalidArgument` error naming the variable.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let mut s = Settings::default();
        for v in VARS {
            let (Some(apply), Some(value)) = (v.apply, env(v.name)) else { continue };
            if value.trim().is_empty() && v.name != "OXCCL_NO_MEMBARRIER" {
                continue;
            }
            apply(&mut s, &value).map_err(|e| Error::invalid_argument(format!("{}={value}: {e}", v.name)))?;
        }
        s.check()?;
        Ok(s)
    }

    /// Checks the values that depend on each other, and rounds the slot size.
    fn check(&mut self) -> Result<()> {
        self.slot_bytes = self.slot_bytes.max(64).div_ceil(64) * 64;
        if !(2..=1024).contains(&self.nslots) || !self.nslots.is_power_of_two() {
            return Err(Error::invalid_argument(format!(
                "OXCCL_NSLOTS must be a power of two between 2 and 1024, got {}",
                self.nslots
            )));
        }
        if self.slot_bytes > 1 << 30 {
            return Err(Error::invalid_argument(format!(
                "OXCCL_SLOT_BYTES must be at most 1 GiB, got {}",
                self.slot_bytes
            )));
        }
        Ok(())
    }

    /// Every variable kept in the settings with its effective value, as one line
    /// (`OXCCL_TIMEOUT=600 OXCCL_SLOT_BYTES=262144 ...`); values that differ from the
    /// defaults are marked with `*`.
    pub fn summary(&self) -> String {
        let d = Settings::default();
        VARS.iter()
            .filter_map(|v| {
                let now = v.value(self)?;
                let mark = if v.value(&d).as_deref() == Some(now.as_str()) { "" } else { "*" };
                Some(format!("{}={now}{mark}", v.name))
            })
            .collect::<Vec<_>>()
            .join(" ")
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
        assert_eq!(s.algo.to_string(), "all_reduce:tree,broadcast:ring");
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        for (k, v) in [
            ("OXCCL_ALGO", "fastest"),
            ("OXCCL_TIMEOUT", "soon"),
            ("OXCCL_SLOT_BYTES", "lots"),
            ("OXCCL_NSLOTS", "1"),
            ("OXCCL_NSOCKS", "65"),
            ("OXCCL_SIMD", "sse9"),
            ("OXCCL_SHM_DISABLE", "maybe"),
        ] {
            let e = Config::new().resolve_with(env(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
        assert!(Config::new().algo_spec("all_reduce:warp").resolve_with(env(&[])).is_err());
        assert!(Config::new().algo_spec("allscatter:ring").resolve_with(env(&[])).is_err());
    }

    #[test]
    fn infiniband_settings_come_from_the_environment_within_their_ranges() {
        let s = Settings::from_env(env(&[])).unwrap().ib;
        assert!(!s.disabled && s.gid_index.is_none() && s.qps_per_connection == 1);
        assert_eq!(s.tuning, QpTuning { timeout: 14, retry_cnt: 6, service_level: 0, traffic_class: 0 });
        let s = Settings::from_env(env(&[
            ("OXCCL_IB_DISABLE", "1"),
            ("OXCCL_IB_HCA", "=rxe1"),
            ("OXCCL_IB_GID_INDEX", "3"),
            ("OXCCL_IB_QPS_PER_CONNECTION", "4"),
            ("OXCCL_IB_TIMEOUT", "20"),
            ("OXCCL_IB_RETRY_CNT", "7"),
            ("OXCCL_IB_SL", "3"),
            ("OXCCL_IB_TC", "106"),
        ]))
        .unwrap()
        .ib;
        assert!(s.disabled && s.gid_index == Some(3) && s.qps_per_connection == 4 && s.hca.accepts("rxe1", 1));
        assert_eq!(s.tuning, QpTuning { timeout: 20, retry_cnt: 7, service_level: 3, traffic_class: 106 });
        for (k, v, want) in [
            ("OXCCL_IB_QPS_PER_CONNECTION", "0", "from 1 to 64"),
            ("OXCCL_IB_GID_INDEX", "x", "OXCCL_IB_GID_INDEX=x"),
            ("OXCCL_IB_GID_INDEX", "256", "from 0 to 255"),
            ("OXCCL_IB_TIMEOUT", "0", "OXCCL_IB_TIMEOUT=0: want a whole number from 1 to 31"),
            ("OXCCL_IB_RETRY_CNT", "8", "from 0 to 7"),
            ("OXCCL_IB_SL", "16", "from 0 to 15"),
            ("OXCCL_IB_TC", "256", "from 0 to 255"),
            ("OXCCL_IB_HCA", "mlx5_0:0", "bad port"),
        ] {
            let e = Settings::from_env(env(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
    }

    #[test]
    fn the_summary_shows_every_kept_variable_and_marks_changes() {
        let s = Settings::from_env(env(&[("OXCCL_NSOCKS", "4")])).unwrap();
        let line = s.summary();
        assert!(line.contains("OXCCL_NSOCKS=4*") && line.contains("OXCCL_TIMEOUT=600 "), "{line}");
        let kept = VARS.iter().filter(|v| v.show.is_some()).count();
        assert_eq!(line.matches("OXCCL_").count(), kept);
        assert!(VARS.iter().all(|v| v.name.starts_with("OXCCL_") && !v.doc.is_empty()));
        let names: std::collections::HashSet<&str> = VARS.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), VARS.len(), "each variable once");
    }
}
