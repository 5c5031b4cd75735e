//! What nccl-tests does over MPI, between the ranks of a run: combining their results
//! (times under `-a`, wrong-value counts, output hashes: [`Ranks`], [`Fold`]) and
//! gathering each rank's pid, host and CPU for the header ([`gather_devices`]). With
//! ranks as threads, they meet at a barrier beside the library under test ([`Shared`]);
//! with ranks as processes, the results travel through the communicator under test.
//! Only used outside the timed loops.

use std::sync::{Barrier, Mutex};

use oxccl::{Comm, ReduceOp};

use super::output::fail;

/// How per-rank values combine into one, the same on every rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fold {
    /// Rank 0's value.
    Rank0,
    /// The sum (wrapping for integers).
    Sum,
    /// The smallest.
    Min,
    /// The largest.
    Max,
}

impl Fold {
    /// How `-a` combines the ranks' times (the average is the sum divided by the ranks).
    pub(super) fn of_average(a: u32) -> Fold {
        match a {
            0 => Fold::Rank0,
            2 => Fold::Min,
            3 => Fold::Max,
            _ => Fold::Sum,
        }
    }

    pub(super) fn op(self) -> ReduceOp {
        match self {
            Fold::Rank0 | Fold::Sum => ReduceOp::Sum,
            Fold::Min => ReduceOp::Min,
            Fold::Max => ReduceOp::Max,
        }
    }
}

/// Where the ranks of this run are, hence how they combine per-rank results (times,
/// wrong values, output hashes). Only used outside the timed loops; everything else about
/// a rank is the same in both cases.
pub(super) enum Ranks {
    /// Every rank is a thread of this process (`-t N`): they meet at a barrier, apart from
    /// the library under test (as nccl-tests' threads do).
    Threads(Shared),
    /// This process is one rank of a job a launcher started: the results travel through
    /// the communicator under test (as nccl-tests' travel through MPI).
    Process,
}

impl Ranks {
    /// Every rank calls this with its values `v`; each becomes its fold over the ranks.
    /// `what` names the results in an error message.
    pub(super) fn fold_u64(&self, comm: &mut Comm, v: &mut [u64], how: Fold, what: &dyn Fn() -> String) {
        let r = match self {
            Ranks::Threads(sh) => {
                let all = sh.exchange(comm.rank(), v);
                for (i, x) in v.iter_mut().enumerate() {
                    let col = all.iter().map(|r| r[i]);
                    *x = match how {
                        Fold::Rank0 => all[0][i],
                        Fold::Sum => col.fold(0, u64::wrapping_add),
                        Fold::Min => col.min().unwrap_or(*x),
                        Fold::Max => col.max().unwrap_or(*x),
                    };
                }
                Ok(())
            }
            Ranks::Process => match how {
                Fold::Rank0 => comm.broadcast_in_place(v, 0),
                _ => comm.all_reduce_in_place(v, how.op()),
            },
        };
        if let Err(e) = r {
            fail(e, &format!("combining the ranks' {}", what()));
        }
    }

    /// As [`Ranks::fold_u64`], for one `f64`. With threads the ranks' values fold in rank
    /// order (a sum starting at 0, a max at -inf).
    pub(super) fn fold_f64(&self, comm: &mut Comm, v: f64, how: Fold, what: &dyn Fn() -> String) -> f64 {
        match self {
            Ranks::Threads(sh) => {
                let all = sh.exchange(comm.rank(), &[v.to_bits()]);
                let vals = all.iter().map(|r| f64::from_bits(r[0]));
                match how {
                    Fold::Rank0 => f64::from_bits(all[0][0]),
                    Fold::Sum => vals.fold(0.0, |a, b| a + b),
                    Fold::Min => vals.fold(f64::INFINITY, f64::min),
                    Fold::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                }
            }
            Ranks::Process => {
                let mut b = [v];
                let r = match how {
                    Fold::Rank0 => comm.broadcast_in_place(&mut b, 0),
                    _ => comm.all_reduce_in_place(&mut b, how.op()),
                };
                if let Err(e) = r {
                    fail(e, &format!("combining the ranks' {}", what()));
                }
                b[0]
            }
        }
    }
}

/// Where rank threads meet: every rank leaves its values in its slot, and reads all.
pub(super) struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u64>>>,
}

impl Shared {
    pub(super) fn new(n: usize) -> Shared {
        Shared { barrier: Barrier::new(n), slots: Mutex::new(vec![Vec::new(); n]) }
    }

    /// Every rank contributes `v`; every rank gets all contributions, in rank order.
    pub(super) fn exchange(&self, rank: usize, v: &[u64]) -> Vec<Vec<u64>> {
        {
            let mut s = self.slots.lock().unwrap();
            s[rank].clear();
            s[rank].extend_from_slice(v);
        }
        self.barrier.wait();
        let all = self.slots.lock().unwrap().clone();
        self.barrier.wait();
        all
    }
}

/// One rank's line in the header's device list (and in the `-J` document).
pub struct Device {
    pub(super) pid: u64,
    pub(super) host: String,
    /// The device number: the rank's index among the ranks of its host.
    pub(super) dev: usize,
    /// What the rank is (`CPU thread, <cpu model>` or `process, <cpu model>`).
    pub(super) what: String,
}

/// Bytes of a rank's record in [`gather_devices`]: pid, host name, CPU model.
pub(super) const DEVICE_RECORD: usize = 256;
pub(super) const RECORD_HOST: std::ops::Range<usize> = 8..72;
pub(super) const RECORD_CPU: std::ops::Range<usize> = 72..DEVICE_RECORD;

/// Every rank's pid, host and CPU, gathered through the communicator (ranks as
/// processes): a fixed-size record per rank, texts cut to fit and NUL-padded.
pub(super) fn gather_devices(comm: &mut Comm) -> Vec<Device> {
    pub(super) fn put(dst: &mut [u8], s: &str) {
        let mut end = s.len().min(dst.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        dst[..end].copy_from_slice(&s.as_bytes()[..end]);
    }
    pub(super) fn get(src: &[u8]) -> String {
        let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
        String::from_utf8_lossy(&src[..end]).into_owned()
    }
    let mut mine = [0u8; DEVICE_RECORD];
    mine[..8].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    put(&mut mine[RECORD_HOST], &oxccl::internals::hostname());
    put(&mut mine[RECORD_CPU], &cpu_name());
    let mut all = vec![0u8; DEVICE_RECORD * comm.size()];
    if let Err(e) = comm.all_gather(&mine, &mut all) {
        fail(e, "gathering the ranks' hosts and pids");
    }
    let mut devs: Vec<Device> = Vec::with_capacity(comm.size());
    for rec in all.chunks_exact(DEVICE_RECORD) {
        let host = get(&rec[RECORD_HOST]);
        let dev = devs.iter().filter(|d| d.host == host).count();
        devs.push(Device {
            pid: u64::from_le_bytes(rec[..8].try_into().unwrap()),
            host,
            dev,
            what: format!("process, {}", get(&rec[RECORD_CPU])),
        });
    }
    devs
}

/// The CPU's model name (from `/proc/cpuinfo`), else the architecture: what a rank runs
/// on, for the header's device list.
pub(super) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
