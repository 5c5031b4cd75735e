//! Entry points for the library and communicators' lives: version and errors, unique
//! ids, creation (`ncclCommInitRank`, `ncclCommInitRankConfig`, `ncclCommInitAll`,
//! `ncclCommSplit`), queries, finalize, destroy and abort.

use std::ffi::{c_char, c_int};

use crate::abi::{ConfigReader, NcclConfig, NcclResult, NcclUniqueId, SPLIT_NOCOLOR, VERSION_CODE};
use crate::boundary::{error_string, guard, last_error, null};
use crate::group::{self, HandlePtr};
use crate::handle::{Handle, Slot};
use oxccl::UniqueId;
use oxccl::{Comm, Config, Error, Result};

/// `ncclComm_t`: a pointer to a [`Handle`].
#[allow(non_camel_case_types)]
pub type ncclComm_t = *mut Handle;

/// Writes `v` through the out-pointer `p`, which must be non-NULL and aligned.
///
/// # Safety
/// A non-NULL `p` must be valid for a write of `T`.
pub(crate) unsafe fn put<T>(p: *mut T, what: &str, v: T) -> Result<()> {
    if p.is_null() {
        return Err(null(what));
    }
    if !p.is_aligned() {
        return Err(Error::invalid_argument(format!("{what} {p:p} is not aligned for its type")));
    }
    // SAFETY: non-NULL, aligned, and valid for a write by the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

/// `nranks` and `rank` as sizes, checked.
fn rank_of(nranks: c_int, rank: c_int) -> Result<(usize, usize)> {
    if nranks < 1 {
        return Err(Error::invalid_argument(format!("nranks {nranks} must be at least 1")));
    }
    if rank < 0 || rank >= nranks {
        return Err(Error::invalid_argument(format!("rank {rank} is out of range for {nranks} ranks")));
    }
    Ok((rank as usize, nranks as usize))
}

/// The oxccl configuration for an `ncclConfig_t` (fields oxccl uses are checked; the GPU
/// tuning fields are ignored).
///
/// # Safety
/// As [`ConfigReader::read`].
unsafe fn config_of(config: *const NcclConfig) -> Result<Config> {
    // SAFETY: forwarded.
    let _read = unsafe { ConfigReader::read(config) }?;
    // Calls always complete before returning, which both blocking modes allow.
    Ok(Config::new())
}

/// Reports the version of the NCCL API implemented (`NCCL_VERSION_CODE`, 23007 for 2.30.7).
///
/// # Safety
/// `version` must be NULL or valid for writing an `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclGetVersion(version: *mut c_int) -> NcclResult {
    // SAFETY: the caller's contract.
    guard("ncclGetVersion", || unsafe { put(version, "version", VERSION_CODE) })
}

/// A static description of a result code.
#[unsafe(no_mangle)]
pub extern "C" fn ncclGetErrorString(result: NcclResult) -> *const c_char {
    error_string(result).as_ptr()
}

/// This thread's last error, one line ("" if none); `comm` is not used.
#[unsafe(no_mangle)]
pub extern "C" fn ncclGetLastError(_comm: ncclComm_t) -> *const c_char {
    last_error()
}

/// Creates a unique id and starts its bootstrap root in this process.
///
/// # Safety
/// `unique_id` must be NULL or valid for writing an `ncclUniqueId`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclGetUniqueId(unique_id: *mut NcclUniqueId) -> NcclResult {
    guard("ncclGetUniqueId", || {
        if unique_id.is_null() {
            return Err(null("uniqueId"));
        }
        let id = UniqueId::new()?;
        let mut out = NcclUniqueId { internal: [0; 128] };
        for (o, b) in out.internal.iter_mut().zip(id.to_bytes()) {
            *o = b as c_char;
        }
        // SAFETY: the caller's contract.
        unsafe { put(unique_id, "uniqueId", out) }
    })
}

fn id_of(id: &NcclUniqueId) -> Result<UniqueId> {
    let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
    UniqueId::from_bytes(&bytes)
}

/// Creation of one rank, for both entry points.
///
/// # Safety
/// As [`ncclCommInitRankConfig`].
unsafe fn init_rank(
    what: &str,
    comm: *mut ncclComm_t,
    nranks: c_int,
    comm_id: NcclUniqueId,
    rank: c_int,
    config: *mut NcclConfig,
) -> NcclResult {
    group::guard(what, || {
        if comm.is_null() {
            return Err(null("comm"));
        }
        let (rank, nranks) = rank_of(nranks, rank)?;
        let id = id_of(&comm_id)?;
        // SAFETY: the caller's contract.
        let config = unsafe { config_of(config) }?;
        if group::active() {
            // Created at the group's end, with the other ranks this thread creates.
            let h = Handle::create(Slot::Pending, Some((rank, nranks)), current_device());
            group::add_init(group::Init { handle: HandlePtr(h), id, rank, nranks, config });
            // SAFETY: the caller's contract.
            return unsafe { put(comm, "comm", h) };
        }
        let c = Comm::init_rank(&id, rank, nranks, &config)?;
        // SAFETY: the caller's contract.
        unsafe { put(comm, "comm", Handle::create(Slot::Ready(Box::new(c)), None, current_device())) }
    })
}

/// As `ncclCommInitRank`, with a configuration (NULL: defaults).
///
/// # Safety
/// `comm` must be NULL or valid for writing an `ncclComm_t`; `config` NULL or an
/// `ncclConfig_t` set up by `NCCL_CONFIG_INITIALIZER`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommInitRankConfig(
    comm: *mut ncclComm_t,
    nranks: c_int,
    comm_id: NcclUniqueId,
    rank: c_int,
    config: *mut NcclConfig,
) -> NcclResult {
    // SAFETY: forwarded.
    unsafe { init_rank("ncclCommInitRankConfig", comm, nranks, comm_id, rank, config) }
}

/// Joins the job `comm_id` as `rank` of `nranks`; returns once all ranks have joined (or,
/// inside a group, at the group's end).
///
/// # Safety
/// As [`ncclCommInitRankConfig`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommInitRank(
    comm: *mut ncclComm_t,
    nranks: c_int,
    comm_id: NcclUniqueId,
    rank: c_int,
) -> NcclResult {
    // SAFETY: forwarded.
    unsafe { init_rank("ncclCommInitRank", comm, nranks, comm_id, rank, std::ptr::null_mut()) }
}

/// Creates `ndev` communicators whose ranks are threads of this process. `devlist`
/// (optional) only sets what `ncclCommCuDevice` reports.
///
/// # Safety
/// `comm` must be NULL or valid for writing `ndev` handles; `devlist` NULL or valid for
/// reading `ndev` ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommInitAll(comm: *mut ncclComm_t, ndev: c_int, devlist: *const c_int) -> NcclResult {
    guard("ncclCommInitAll", || {
        if comm.is_null() {
            return Err(null("comm"));
        }
        if ndev < 1 {
            return Err(Error::invalid_argument(format!("ndev {ndev} must be at least 1")));
        }
        let n = ndev as usize;
        if !comm.is_aligned() || (!devlist.is_null() && !devlist.is_aligned()) {
            return Err(Error::invalid_argument("comm or devlist is not aligned for its type"));
        }
        let devices: Vec<c_int> = if devlist.is_null() {
            (0..ndev).collect()
        } else {
            // SAFETY: the caller's contract: ndev readable ints.
            unsafe { std::slice::from_raw_parts(devlist, n) }.to_vec()
        };
        let comms = Comm::init_all(n)?;
        for (i, (c, d)) in comms.into_iter().zip(devices).enumerate() {
            let h = Handle::create(Slot::Ready(Box::new(c)), None, d);
            // SAFETY: the caller's contract: ndev writable handles.
            unsafe { comm.add(i).write(h) };
        }
        Ok(())
    })
}

/// Splits `comm`: ranks with the same colour form a new communicator, ordered by key.
/// `NCCL_SPLIT_NOCOLOR` takes part and gets NULL.
///
/// # Safety
/// `comm` a live handle; `newcomm` NULL or valid for writing an `ncclComm_t`; `config`
/// NULL or initialized.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommSplit(
    comm: ncclComm_t,
    color: c_int,
    key: c_int,
    newcomm: *mut ncclComm_t,
    config: *mut NcclConfig,
) -> NcclResult {
    group::guard("ncclCommSplit", || {
        // SAFETY: the caller's contract.
        let h = unsafe { Handle::get(comm) }?;
        if newcomm.is_null() {
            return Err(null("newcomm"));
        }
        let color = match color {
            SPLIT_NOCOLOR => None,
            c if c < 0 => {
                return Err(Error::invalid_argument(format!(
                    "color {c} is negative (NCCL_SPLIT_NOCOLOR, -1, is the only negative colour)"
                )));
            }
            c => Some(c as u32),
        };
        // SAFETY: the caller's contract.
        let _ = unsafe { config_of(config) }?;
        if group::active() {
            let child = color.map(|_| Handle::create(Slot::Pending, None, h.device));
            group::add_split(group::Split { parent: HandlePtr(comm), child: child.map(HandlePtr), color, key });
            // SAFETY: the caller's contract.
            return unsafe { put(newcomm, "newcomm", child.unwrap_or(std::ptr::null_mut())) };
        }
        let new = h.with_comm(|c| c.split(color, key))?;
        let p = match new {
            Some(c) => Handle::create(Slot::Ready(Box::new(c)), None, h.device),
            None => std::ptr::null_mut(),
        };
        // SAFETY: the caller's contract.
        unsafe { put(newcomm, "newcomm", p) }
    })
}

/// Marks `comm` finished: every operation has completed already (calls return when
/// done), and later operations are refused.
///
/// # Safety
/// `comm` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommFinalize(comm: ncclComm_t) -> NcclResult {
    guard("ncclCommFinalize", || {
        // SAFETY: the caller's contract.
        unsafe { Handle::get(comm) }?.finalize()
    })
}

fn not_in_group(comm: ncclComm_t, what: &str) -> Result<()> {
    if group::holds(comm) {
        return Err(Error::invalid_usage(format!(
            "the communicator has work recorded in this thread's group; call ncclGroupEnd before {what}"
        )));
    }
    Ok(())
}

/// Frees `comm` (local: no other rank takes part).
///
/// # Safety
/// `comm` a live handle that no other thread uses.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommDestroy(comm: ncclComm_t) -> NcclResult {
    guard("ncclCommDestroy", || {
        // SAFETY: the caller's contract.
        unsafe { Handle::get(comm) }?;
        not_in_group(comm, "ncclCommDestroy")?;
        // SAFETY: live, and the caller's contract.
        unsafe { Handle::destroy(comm) }
    })
}

/// Aborts `comm`'s operations (a call blocked in another thread returns with an error
/// promptly), then frees it.
///
/// # Safety
/// `comm` a live handle; other threads may be blocked in operations on it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommAbort(comm: ncclComm_t) -> NcclResult {
    guard("ncclCommAbort", || {
        // SAFETY: the caller's contract.
        unsafe { Handle::get(comm) }?.abort();
        not_in_group(comm, "ncclCommAbort")?;
        // SAFETY: live; destroy waits for the operation an abort unblocked.
        unsafe { Handle::destroy(comm) }
    })
}

/// `ncclSuccess`, `ncclInProgress` (created in a group that has not ended), or the
/// error that broke the communicator.
///
/// # Safety
/// `comm` a live handle; `async_error` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommGetAsyncError(comm: ncclComm_t, async_error: *mut NcclResult) -> NcclResult {
    guard("ncclCommGetAsyncError", || {
        // SAFETY: the caller's contract.
        let h = unsafe { Handle::get(comm) }?;
        let code = h.async_error();
        // The reason goes where ncclGetLastError finds it.
        if let Some(why) = h.async_reason() {
            crate::boundary::set_last_error(&why);
        }
        // SAFETY: the caller's contract.
        unsafe { put(async_error, "asyncError", code) }
    })
}

fn as_int(v: usize) -> c_int {
    c_int::try_from(v).unwrap_or(c_int::MAX)
}

/// The number of ranks.
///
/// # Safety
/// `comm` a live handle; `count` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommCount(comm: ncclComm_t, count: *mut c_int) -> NcclResult {
    guard("ncclCommCount", || {
        // SAFETY: the caller's contract.
        let (_, n) = unsafe { Handle::get(comm) }?.shape()?;
        // SAFETY: the caller's contract.
        unsafe { put(count, "count", as_int(n)) }
    })
}

/// The device number: `devlist[i]` (or `i`) for `ncclCommInitAll`, the parent's for a
/// split, -1 (no CUDA device) for `ncclCommInitRank`.
///
/// # Safety
/// `comm` a live handle; `device` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommCuDevice(comm: ncclComm_t, device: *mut c_int) -> NcclResult {
    guard("ncclCommCuDevice", || {
        // SAFETY: the caller's contract.
        let d = unsafe { Handle::get(comm) }?.device;
        // SAFETY: the caller's contract.
        unsafe { put(device, "device", d) }
    })
}

/// This rank.
///
/// # Safety
/// `comm` a live handle; `rank` NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommUserRank(comm: ncclComm_t, rank: *mut c_int) -> NcclResult {
    guard("ncclCommUserRank", || {
        // SAFETY: the caller's contract.
        let (r, _) = unsafe { Handle::get(comm) }?.shape()?;
        // SAFETY: the caller's contract.
        unsafe { put(rank, "rank", as_int(r)) }
    })
}

/// Starts a group (groups nest).
#[unsafe(no_mangle)]
pub extern "C" fn ncclGroupStart() -> NcclResult {
    guard("ncclGroupStart", || {
        group::start();
        Ok(())
    })
}

/// Ends a group; the outermost end runs what the group recorded and returns when done.
#[unsafe(no_mangle)]
pub extern "C" fn ncclGroupEnd() -> NcclResult {
    guard("ncclGroupEnd", group::end)
}

/// The CUDA device current on this thread when a rank is created, as NCCL records it for
/// `ncclCommCuDevice` (-1 without the `cuda` feature, a driver or a current context).
fn current_device() -> c_int {
    #[cfg(feature = "cuda")]
    if let Some(d) = oxccl::cuda::driver::current_device() {
        return d as c_int;
    }
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_checked() {
        assert!(rank_of(0, 0).is_err());
        assert!(rank_of(4, 4).is_err());
        assert!(rank_of(4, -1).is_err());
        assert_eq!(rank_of(4, 3).unwrap(), (3, 4));
    }
}
