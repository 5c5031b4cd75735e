//! The table of every environment variable oxccl reads: its name, scope, default, what it
//! does, how it is parsed into [`Settings`] and how its effective value is shown. The
//! README's table of settings is checked against this one by a test, and the parameter
//! API of the C ABI lists, reads and dumps it.
//!
//! This file is a table: it is long because every variable has a row, not because it
//! holds several concepts.

use std::path::PathBuf;
use std::time::Duration;

use super::ib::HcaFilter;
use super::{AlgoChoice, Settings};

/// Who a variable applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Each communicator: read at its creation, and [`Config`](super::Config) may set
    /// some of them per communicator.
    Communicator,
    /// The whole process: read once, the first time it matters.
    Process,
    /// How a process finds its job (`Comm::from_env`); launchers set these.
    Launch,
}

/// Parses a value into the settings; the error says what was expected.
type Apply = fn(&mut Settings, &str) -> Result<(), String>;

/// One environment variable.
pub struct Var {
    /// Its name.
    pub name: &'static str,
    /// Who it applies to.
    pub scope: Scope,
    /// Its default, as text.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
    /// Parses a value into the settings (`None`: read elsewhere, by the launcher code).
    pub(super) apply: Option<Apply>,
    /// The effective value (`None`: not kept in [`Settings`]).
    pub(super) show: Option<fn(&Settings) -> String>,
}

impl Var {
    /// The effective value of this variable in `s`, as text, if `Settings` keeps it.
    pub fn value(&self, s: &Settings) -> Option<String> {
        self.show.map(|f| f(s))
    }
}

/// A byte count with an optional K, M or G suffix.
pub(super) fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mul) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

fn size(v: &str) -> Result<u64, String> {
    parse_size(v).ok_or_else(|| "expected a number of bytes (K, M, G suffixes allowed)".to_string())
}

fn number(v: &str, lo: u64, hi: u64) -> Result<u64, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("want a whole number from {lo} to {hi}")),
    }
}

fn flag(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err("want 1 or 0".into()),
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "unset".to_string(), |x| x.to_string())
}

fn secs(t: Option<Duration>) -> String {
    t.map_or_else(|| "0 (none)".to_string(), |t| format!("{}", t.as_secs_f64()))
}

macro_rules! row {
    ($name:literal, $scope:ident, $default:literal, $doc:literal, $apply:expr, $show:expr) => {
        Var { name: $name, scope: Scope::$scope, default: $default, doc: $doc, apply: Some($apply), show: Some($show) }
    };
    ($name:literal, $scope:ident, $default:literal, $doc:literal) => {
        Var { name: $name, scope: Scope::$scope, default: $default, doc: $doc, apply: None, show: None }
    };
}

/// Every variable, in the order the README lists them.
pub const VARS: &[Var] = &[
    row!(
        "OXCCL_ALGO",
        Communicator,
        "measured choice",
        "force an algorithm for the ring/tree collectives: `ring`, `tree`, `oneshot`, `doubling`, `hier` (all-reduce), `direct` (threads); or per collective: `all_reduce:tree,broadcast:ring`. A forced algorithm that cannot run a call makes that call fail.",
        |s, v| {
            s.algo = AlgoChoice::parse(v)?;
            Ok(())
        },
        |s| s.algo.to_string()
    ),
    row!(
        "OXCCL_TIMEOUT",
        Communicator,
        "600",
        "seconds an operation (or init) may wait without progress before it fails with `Timeout` (`0`: never)",
        |s, v| {
            let t: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                .ok_or("expected seconds (0 for no timeout)")?;
            s.timeout = (t > 0.0).then(|| Duration::from_secs_f64(t));
            Ok(())
        },
        |s| secs(s.timeout)
    ),
    row!(
        "OXCCL_SLOT_BYTES",
        Communicator,
        "256K",
        "payload bytes of one FIFO slot, the pipeline chunk (`K`/`M` suffixes)",
        |s, v| {
            s.slot_bytes = size(v)?.min(usize::MAX as u64) as usize;
            Ok(())
        },
        |s| s.slot_bytes.to_string()
    ),
    row!(
        "OXCCL_NSLOTS",
        Communicator,
        "8",
        "slots per FIFO (a power of two)",
        |s, v| {
            s.nslots = size(v)?.min(u32::MAX as u64) as u32;
            Ok(())
        },
        |s| s.nslots.to_string()
    ),
    row!(
        "OXCCL_NT_THRESHOLD",
        Communicator,
        "32M",
        "output size from which outputs are written with non-temporal stores",
        |s, v| {
            s.nt_threshold = size(v)?.min(usize::MAX as u64) as usize;
            Ok(())
        },
        |s| s.nt_threshold.to_string()
    ),
    row!(
        "OXCCL_SPINS",
        Communicator,
        "4 when ranks outnumber cores, else 64",
        "polls before a waiting rank yields its core",
        |s, v| {
            s.spins = Some(size(v)?.min(1 << 20) as u32);
            Ok(())
        },
        |s| opt(&s.spins)
    ),
    row!(
        "OXCCL_YIELD_US",
        Communicator,
        "500, or 50 with sockets",
        "microseconds a waiting rank yields before it sleeps (futex, or poll on sockets)",
        |s, v| {
            s.yield_for = Some(Duration::from_micros(size(v)?));
            Ok(())
        },
        |s| opt(&s.yield_for.map(|d| d.as_micros()))
    ),
    row!(
        "OXCCL_SOCKET_IFNAME",
        Communicator,
        "first non-loopback",
        "interfaces for bootstrap and TCP: prefixes, `^` to exclude, `=` exact (NCCL's syntax)",
        |s, v| {
            s.socket_ifname = Some(v.trim().to_string()).filter(|v| !v.is_empty());
            Ok(())
        },
        |s| opt(&s.socket_ifname)
    ),
    row!(
        "OXCCL_NSOCKS",
        Communicator,
        "1",
        "connections per TCP link; messages from 64 KiB are striped across them",
        |s, v| {
            s.nsocks = number(v, 1, 64)? as usize;
            Ok(())
        },
        |s| s.nsocks.to_string()
    ),
    row!(
        "OXCCL_SHM_DISABLE",
        Communicator,
        "0",
        "`1`: processes of one host talk TCP instead of shared memory",
        |s, v| {
            s.shm_disable = flag(v)?;
            Ok(())
        },
        |s| (s.shm_disable as u8).to_string()
    ),
    row!(
        "OXCCL_IB_DISABLE",
        Communicator,
        "0",
        "`1`: never use InfiniBand/RoCE between hosts (feature `ib`); TCP instead",
        |s, v| {
            s.ib.disabled = flag(v)?;
            Ok(())
        },
        |s| (s.ib.disabled as u8).to_string()
    ),
    row!(
        "OXCCL_IB_HCA",
        Communicator,
        "every device, first active port",
        "RDMA devices and ports to use, NCCL's syntax: `mlx5_0:1,mlx5_1` (prefixes), `^` excludes, `=` exact names",
        |s, v| {
            s.ib.hca = HcaFilter::parse(v)?;
            Ok(())
        },
        |s| s.ib.hca.spec().to_string()
    ),
    row!(
        "OXCCL_IB_GID_INDEX",
        Communicator,
        "the RoCE v2 IPv4 GID (sysfs), else none on InfiniBand",
        "GID index to send from (RoCE)",
        |s, v| {
            s.ib.gid_index = Some(number(v, 0, 255)? as u32);
            Ok(())
        },
        |s| opt(&s.ib.gid_index)
    ),
    row!(
        "OXCCL_IB_QPS_PER_CONNECTION",
        Communicator,
        "1",
        "queue pairs per IB link; messages from 64 KiB are striped across them (must match on every rank)",
        |s, v| {
            s.ib.qps_per_connection = number(v, 1, 64)? as usize;
            Ok(())
        },
        |s| s.ib.qps_per_connection.to_string()
    ),
    row!(
        "OXCCL_IB_TIMEOUT",
        Communicator,
        "14 (67 ms)",
        "ACK timeout exponent of IB queue pairs, 1-31: a retry after 4.096 µs × 2^value (NCCL_IB_TIMEOUT)",
        |s, v| {
            s.ib.tuning.timeout = number(v, 1, 31)? as u8;
            Ok(())
        },
        |s| s.ib.tuning.timeout.to_string()
    ),
    row!(
        "OXCCL_IB_RETRY_CNT",
        Communicator,
        "6",
        "transport retries before an error completion, 0-7 (NCCL_IB_RETRY_CNT); with the timeout it bounds how soon a vanished peer's queue pair fails",
        |s, v| {
            s.ib.tuning.retry_cnt = number(v, 0, 7)? as u8;
            Ok(())
        },
        |s| s.ib.tuning.retry_cnt.to_string()
    ),
    row!(
        "OXCCL_IB_SL",
        Communicator,
        "0",
        "InfiniBand service level, 0-15 (NCCL_IB_SL)",
        |s, v| {
            s.ib.tuning.service_level = number(v, 0, 15)? as u8;
            Ok(())
        },
        |s| s.ib.tuning.service_level.to_string()
    ),
    row!(
        "OXCCL_IB_TC",
        Communicator,
        "0",
        "traffic class of RoCE/global-route packets, 0-255, e.g. 106 for DSCP 26 (NCCL_IB_TC)",
        |s, v| {
            s.ib.tuning.traffic_class = number(v, 0, 255)? as u8;
            Ok(())
        },
        |s| s.ib.tuning.traffic_class.to_string()
    ),
    row!(
        "OXCCL_CUDA_IPC",
        Communicator,
        "0",
        "`1`: device all-reduce between the processes of one host through CUDA IPC instead of staging through host memory (feature `cuda`; not yet measured on a GPU)",
        |s, v| {
            s.cuda_ipc = flag(v)?;
            Ok(())
        },
        |s| (s.cuda_ipc as u8).to_string()
    ),
    row!(
        "OXCCL_DEBUG",
        Process,
        "off",
        "`INFO` prints the effective settings (once per process), the topology, rings, trees, links and init timings",
        |s, v| {
            s.debug = matches!(v.trim().to_ascii_uppercase().as_str(), "INFO" | "TRACE" | "1");
            Ok(())
        },
        |s| if s.debug { "INFO".into() } else { "off".into() }
    ),
    row!(
        "OXCCL_SIMD",
        Process,
        "best available",
        "force the kernel level: `scalar`, `avx2`, `avx512`",
        |s, v| {
            let v = v.trim().to_ascii_lowercase();
            if !["scalar", "avx2", "avx512", ""].contains(&v.as_str()) {
                return Err("want scalar, avx2 or avx512".into());
            }
            s.simd = Some(v).filter(|v| !v.is_empty());
            Ok(())
        },
        |s| opt(&s.simd)
    ),
    row!(
        "OXCCL_HOSTID",
        Process,
        "unset",
        "override the host identity (hostname + boot id)",
        |s, v| {
            s.host_id = Some(v.to_string()).filter(|v| !v.is_empty());
            Ok(())
        },
        |s| opt(&s.host_id)
    ),
    row!(
        "OXCCL_NO_MEMBARRIER",
        Process,
        "unset",
        "set: sleeping waits fence with ordinary fences instead of `membarrier(2)`",
        |s, _| {
            s.no_membarrier = true;
            Ok(())
        },
        |s| (s.no_membarrier as u8).to_string()
    ),
    row!(
        "OXCCL_NVRTC_LIB",
        Process,
        "the loader's path, then $CUDA_PATH, $CUDA_HOME",
        "where libnvrtc is: a file, a directory, or a `pip install --target` directory (feature `cuda`)",
        |s, v| {
            s.nvrtc_lib = Some(PathBuf::from(v));
            Ok(())
        },
        |s| opt(&s.nvrtc_lib.as_ref().map(|p| p.display().to_string()))
    ),
    row!(
        "OXCCL_CUDA_INCLUDE",
        Process,
        "$CUDA_PATH/include, $CUDA_HOME/include",
        "directories holding CUDA's `cuda_fp16.h` (a path list; feature `cuda`)",
        |s, v| {
            s.cuda_include = Some(v.to_string());
            Ok(())
        },
        |s| opt(&s.cuda_include)
    ),
    row!("OXCCL_COMM_ID", Launch, "unset", "`host:port` where rank 0 listens for the others (as NCCL_COMM_ID)"),
    row!("OXCCL_UNIQUE_ID", Launch, "unset", "a unique id as text, instead of `OXCCL_COMM_ID`"),
    row!(
        "OXCCL_RANK",
        Launch,
        "unset",
        "this process's rank (else `RANK`, `OMPI_COMM_WORLD_RANK`, `PMI_RANK`, `SLURM_PROCID`)"
    ),
    row!(
        "OXCCL_NRANKS",
        Launch,
        "unset",
        "the number of ranks (else `WORLD_SIZE`, `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`, `SLURM_NTASKS`)"
    ),
    row!(
        "OXCCL_SECRET",
        Launch,
        "none",
        "shared secret for `OXCCL_COMM_ID`/`MASTER_ADDR` rendezvous (a unique id carries its own)"
    ),
];

/// The row of `name`, if oxccl reads such a variable.
pub fn find(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.name == name)
}

/// The table as Markdown, one row per variable, grouped by scope: `docs/SETTINGS.md`
/// holds it (a test checks that it does).
pub fn markdown() -> String {
    let mut out = String::new();
    for (scope, title) in [
        (Scope::Communicator, "Each communicator (also settable in code with `oxccl::Config` where it has a setter)"),
        (Scope::Process, "The whole process (read once)"),
        (Scope::Launch, "Finding the job (`Comm::from_env`; launchers set these)"),
    ] {
        out.push_str(&format!("\n### {title}\n\n| variable | meaning | default |\n|---|---|---|\n"));
        for v in VARS.iter().filter(|v| v.scope == scope) {
            out.push_str(&format!("| `{}` | {} | {} |\n", v.name, v.doc, v.default));
        }
    }
    out
}
