//! Entry points for memory: `ncclMemAlloc` / `ncclMemFree` (host memory, page aligned,
//! until the CUDA path exists) and `ncclCommRegister` / `ncclCommDeregister` (handles
//! only: host buffers need no registration).

use std::collections::HashSet;
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::abi::NcclResult;
use crate::boundary::{guard, null};
use crate::handle::Handle;
use crate::lifecycle::{ncclComm_t, put};
use oxccl::Error;

/// Alignment of `ncclMemAlloc`'s memory: a page.
const ALIGN: usize = 4096;

/// The addresses `ncclMemAlloc` returned and `ncclMemFree` has not freed.
fn allocations() -> MutexGuard<'static, HashSet<usize>> {
    static ALLOCS: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    ALLOCS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Allocates `size` bytes of host memory, page aligned.
///
/// # Safety
/// `ptr` NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclMemAlloc(ptr: *mut *mut c_void, size: usize) -> NcclResult {
    guard("ncclMemAlloc", || {
        if ptr.is_null() {
            return Err(null("ptr"));
        }
        if size == 0 {
            return Err(Error::invalid_argument("size is 0"));
        }
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: posix_memalign writes one pointer to `p`; ALIGN is a power of two and a
        // multiple of the pointer size.
        let rc = unsafe { libc::posix_memalign(&mut p, ALIGN, size) };
        if rc != 0 || p.is_null() {
            return Err(Error::system(
                format!("allocating {size} bytes of host memory"),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        allocations().insert(p as usize);
        // SAFETY: the caller's contract.
        unsafe { put(ptr, "ptr", p) }
    })
}

/// Frees memory from `ncclMemAlloc`; NULL is a no-op, any other pointer an error.
///
/// # Safety
/// `ptr` is not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclMemFree(ptr: *mut c_void) -> NcclResult {
    guard("ncclMemFree", || {
        if ptr.is_null() {
            return Ok(());
        }
        if !allocations().remove(&(ptr as usize)) {
            return Err(Error::invalid_argument(format!(
                "ptr {ptr:p} was not allocated by ncclMemAlloc (or was freed already)"
            )));
        }
        // SAFETY: `ptr` came from posix_memalign and is freed once (it left the table).
        unsafe { libc::free(ptr) };
        Ok(())
    })
}

/// Registers `size` bytes at `buff` with `comm`, returning a handle for
/// `ncclCommDeregister`. Host buffers need no registration: this only checks and records.
///
/// # Safety
/// `comm` a live handle; `handle` NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommRegister(
    comm: ncclComm_t,
    buff: *mut c_void,
    size: usize,
    handle: *mut *mut c_void,
) -> NcclResult {
    guard("ncclCommRegister", || {
        // SAFETY: the caller's contract.
        let h = unsafe { Handle::get(comm) }?;
        if buff.is_null() {
            return Err(null("buff"));
        }
        if (buff as usize).checked_add(size).is_none() {
            return Err(Error::invalid_argument(format!("{size} bytes at {buff:p} run past the address space")));
        }
        if handle.is_null() {
            return Err(null("handle"));
        }
        let token = h.register(buff as usize, size);
        // SAFETY: the caller's contract.
        unsafe { put(handle, "handle", token as *mut c_void) }
    })
}

/// Forgets a registration of `comm`.
///
/// # Safety
/// `comm` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ncclCommDeregister(comm: ncclComm_t, handle: *mut c_void) -> NcclResult {
    guard("ncclCommDeregister", || {
        // SAFETY: the caller's contract.
        let h = unsafe { Handle::get(comm) }?;
        if handle.is_null() {
            return Err(null("handle"));
        }
        h.deregister(handle as usize)
    })
}
