//! The edge between C and Rust: every entry point runs its body through [`guard`], which
//! turns an `oxccl::Error` into its `ncclResult_t` (one to one, [`oxccl::Error::nccl_code`])
//! and a panic into `ncclInternalError`, and keeps a one-line reason for
//! `ncclGetLastError`.
//!
//! The reason is per thread: a NUL-terminated string, valid until the next failing call
//! on the same thread.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use crate::abi::{INTERNAL_ERROR, NcclResult, SUCCESS};
use oxccl::Error;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Keeps `msg` (made one line, without NULs) as this thread's last error.
pub fn set_last_error(msg: &str) {
    let line: String = msg.chars().map(|c| if c == '\n' || c == '\r' || c == '\0' { ' ' } else { c }).collect();
    let c = CString::new(line).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

/// This thread's last error ("" if none), valid until the next failing call on it.
pub fn last_error() -> *const std::ffi::c_char {
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

/// The result code of `e`, after keeping its message as the last error.
pub fn fail(what: &str, e: &Error) -> NcclResult {
    set_last_error(&format!("{what}: {e}"));
    e.nccl_code()
}

/// Runs the body of entry point `what`: `Ok` is `ncclSuccess`, an error its code, a panic
/// `ncclInternalError`. Nothing unwinds into C.
pub fn guard(what: &str, f: impl FnOnce() -> oxccl::Result<()>) -> NcclResult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(e)) => fail(what, &e),
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("{what}: internal error (a bug in oxccl, please report it): panic: {why}"));
            INTERNAL_ERROR
        }
    }
}

/// `InvalidArgument` naming a NULL pointer argument.
pub fn null(what: &str) -> Error {
    Error::invalid_argument(format!("{what} is NULL"))
}

/// NCCL's description of a result code, from the library's one table
/// ([`oxccl::NCCL_RESULTS`]).
pub fn error_string(code: NcclResult) -> &'static CStr {
    static TEXTS: OnceLock<Vec<CString>> = OnceLock::new();
    let texts =
        TEXTS.get_or_init(|| oxccl::NCCL_RESULTS.iter().map(|r| CString::new(r.text).unwrap_or_default()).collect());
    usize::try_from(code).ok().and_then(|i| texts.get(i)).map_or(c"unknown result code", |t| t.as_c_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_panics_become_codes_and_one_line_reasons() {
        assert_eq!(guard("ok", || Ok(())), SUCCESS);
        assert_eq!(guard("ncclX", || Err(Error::invalid_argument("bad\nthing"))), 4);
        // SAFETY: last_error returns this thread's NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(last_error()) }.to_str().unwrap().to_string();
        assert_eq!(msg, "ncclX: invalid argument: bad thing");
        assert_eq!(guard("ncclY", || panic!("boom")), INTERNAL_ERROR);
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(last_error()) }.to_str().unwrap().to_string();
        assert!(msg.contains("panic: boom"), "{msg}");
        assert_eq!(guard("t", || Err(Error::timeout("x", Default::default(), vec![]))), 8);
        assert_eq!(error_string(99).to_str().unwrap(), "unknown result code");
    }
}
