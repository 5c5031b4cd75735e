//! Launching: whether this process is one rank of a job a launcher started (oxccl-run,
//! mpirun, srun, torchrun: [`job_from_env`], [`launched`]) or the whole run, and the two
//! starts: `-t` rank threads with [`Comm::init_all_with`] ([`run_threads`]), or this
//! process as one rank with [`Comm::from_env_with`] (or, with the `mpi` feature, through
//! MPI: [`run_process`]). Both agree on the sizes, print the header and hand every rank to
//! [`super::timing::rank_main`].

use oxccl::internals::launcher;
use oxccl::{Comm, Config, DataType, ReduceOp};

use super::args::{Opts, sizes};
use super::buffers::{caps, fit_memory, reduce_max_bytes};
use super::check::OpKind;
use super::collective::Collective;
use super::output::{column_header, err, fail, header, out};
use super::ranks::{Device, Ranks, Shared, cpu_name, gather_devices};
use super::report;
use super::timing::{Plan, Summary, rank_main};

/// Where a job's launcher says this process stands (the variables `Comm::from_env` reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobEnv {
    /// This process's rank, when it parses.
    pub rank: Option<usize>,
    /// The number of ranks, when it parses.
    pub nranks: Option<usize>,
}

/// Whether this process is one rank of a job (`Some`) rather than the whole run (`None`):
/// the launcher's rank and size variables (the library's
/// [`oxccl::internals::launcher::rank_and_size`]) say more than one rank (or do not
/// parse: `Comm::from_env` will say why), or `OXCCL_COMM_ID` is set. A pair that says one
/// rank (a single srun task, say) keeps ranks as threads.
pub fn job_from_env(env: impl Fn(&str) -> Option<String>) -> Option<JobEnv> {
    let (job, several) = match launcher::rank_and_size(&env) {
        Ok(Some(rs)) => (JobEnv { rank: Some(rs.rank), nranks: Some(rs.nranks) }, rs.nranks > 1),
        Ok(None) => (JobEnv { rank: None, nranks: None }, false),
        Err(_) => (JobEnv { rank: None, nranks: None }, true),
    };
    (several || env("OXCCL_COMM_ID").is_some_and(|v| !v.trim().is_empty())).then_some(job)
}

/// Whether a launcher started this process (any of its rank, size or address variables
/// is set, whatever the number of ranks it says).
pub use launcher::launched;

/// Exits (status 2) when `-r` names no rank of `n`.
pub(super) fn check_root<C: Collective>(opts: &Opts, n: usize) {
    if let (true, Some(r)) = (C::ROOTED, opts.root)
        && r >= n
    {
        err(&format!("{}: invalid root {r} for {n} ranks", C::NAME));
        std::process::exit(2);
    }
}

/// The roots each size runs with: `-r`, or every rank in turn (`-r all`); one (unused)
/// root for collectives without one.
pub(super) fn roots<C: Collective>(opts: &Opts, n: usize) -> Vec<usize> {
    match (C::ROOTED, opts.root) {
        (true, Some(r)) => vec![r],
        (true, None) => (0..n).collect(),
        (false, _) => vec![0],
    }
}

/// Ranks as threads: `-t` of them in this process, each with its communicator of
/// [`Comm::init_all_with`].
pub(super) fn run_threads<C: Collective>(
    coll: &C,
    mut opts: Opts,
    types: Vec<DataType>,
    ops: Vec<OpKind>,
    cfg: &Config,
) -> Summary {
    let n = opts.nthreads;
    let reduced_note = fit_memory(coll, &opts, &types, n, n);
    if let Some(max) = reduced_note {
        reduce_max_bytes(&mut opts, max);
    }
    let (pid, host, cpu) = (u64::from(std::process::id()), oxccl::internals::hostname(), cpu_name());
    let devices: Vec<Device> =
        (0..n).map(|r| Device { pid, host: host.clone(), dev: r, what: format!("CPU thread, {cpu}") }).collect();
    out(&header(C::NAME, &opts, &devices, reduced_note));
    if let Err(m) = open_report::<C>(&opts, &devices, false) {
        err(&format!("{}: {m}", C::NAME));
        std::process::exit(2);
    }

    let comms = match Comm::init_all_with(n, cfg) {
        Ok(c) => c,
        Err(e) => {
            err(&format!("oxccl error: {e}"));
            std::process::exit(1);
        }
    };

    out(&column_header());

    let (send_cap, recv_cap) = caps(coll, &opts, &types, n, opts.max_bytes);
    let sizes = sizes(&opts);
    let roots = roots::<C>(&opts, n);
    let plan = Plan { coll, opts: &opts, types, ops, roots, sizes, ranks: Ranks::Threads(Shared::new(n)) };
    let summaries: Vec<Summary> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let plan = &plan;
                std::thread::Builder::new()
                    .name(format!("rank{}", comm.rank()))
                    .spawn_scoped(s, move || rank_main(plan, comm, send_cap, recv_cap))
                    .expect("cannot start a rank thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    summaries[0]
}

/// Ranks as processes: this one joins the job of its launcher ([`Comm::from_env_with`])
/// and runs its rank on this thread. Returns the summary and whether this is rank 0 (the
/// one that prints).
pub(super) fn run_process<C: Collective>(
    coll: &C,
    mut opts: Opts,
    types: Vec<DataType>,
    ops: Vec<OpKind>,
    cfg: &Config,
) -> (Summary, bool) {
    // With the `mpi` feature, a bare mpirun works: MPI hands out the unique id.
    #[cfg(feature = "mpi")]
    let joined = Comm::from_env_or_mpi(cfg);
    #[cfg(not(feature = "mpi"))]
    let joined = Comm::from_env_with(cfg);
    let mut comm = match joined {
        Ok(c) => c,
        Err(e) => {
            err(&format!("oxccl error: {e}"));
            std::process::exit(1);
        }
    };
    let (rank, n) = (comm.rank(), comm.size());
    check_root::<C>(&opts, n);
    let devices = gather_devices(&mut comm);
    // Every rank sweeps the same sizes: the smallest that fits on every host.
    let local = devices.iter().filter(|d| d.host == devices[rank].host).count();
    let mut max = [fit_memory(coll, &opts, &types, n, local).unwrap_or(opts.max_bytes) as u64];
    if let Err(e) = comm.all_reduce_in_place(&mut max, ReduceOp::Min) {
        fail(e, "agreeing on the largest size");
    }
    let reduced_note = (max[0] < opts.max_bytes as u64).then_some(max[0] as usize);
    if let Some(max) = reduced_note {
        reduce_max_bytes(&mut opts, max);
    }
    // Rank 0 opens the -J and --plot files; every rank stops (status 2) if it cannot.
    let mut ok = [1u64];
    if rank == 0 {
        out(&header(C::NAME, &opts, &devices, reduced_note));
        if let Err(m) = open_report::<C>(&opts, &devices, true) {
            err(&format!("{}: {m}", C::NAME));
            ok[0] = 0;
        }
    }
    if let Err(e) = comm.broadcast_in_place(&mut ok, 0) {
        fail(e, "agreeing on the output files");
    }
    if ok[0] == 0 {
        std::process::exit(2);
    }
    if rank == 0 {
        out(&column_header());
    }

    let (send_cap, recv_cap) = caps(coll, &opts, &types, n, opts.max_bytes);
    let sizes = sizes(&opts);
    let roots = roots::<C>(&opts, n);
    let plan = Plan { coll, opts: &opts, types, ops, roots, sizes, ranks: Ranks::Process };
    (rank_main(&plan, comm, send_cap, recv_cap), rank == 0)
}

/// Rank 0: prepares the `-J` and `--plot` outputs and says so under the header.
pub(super) fn open_report<C: Collective>(opts: &Opts, devices: &[Device], processes: bool) -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let note = report::prepare(C::NAME, opts, &args, devices, processes)?;
    out(&note);
    Ok(())
}
