//! NVRTC loaded at run time: CUDA C source to PTX.

use super::CudaError;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::PathBuf;

type NvrtcProgram = *mut c_void;
type GetErrorString = unsafe extern "C" fn(result: c_int) -> *const c_char;
type Version = unsafe extern "C" fn(major: *mut c_int, minor: *mut c_int) -> c_int;
type CreateProgram = unsafe extern "C" fn(
    prog: *mut NvrtcProgram,
    src: *const c_char,
    name: *const c_char,
    num_headers: c_int,
    headers: *const *const c_char,
    include_names: *const *const c_char,
) -> c_int;
type CompileProgram =
    unsafe extern "C" fn(prog: NvrtcProgram, num_options: c_int, options: *const *const c_char) -> c_int;
type GetSize = unsafe extern "C" fn(prog: NvrtcProgram, size: *mut usize) -> c_int;
type GetText = unsafe extern "C" fn(prog: NvrtcProgram, text: *mut c_char) -> c_int;
type DestroyProgram = unsafe extern "C" fn(prog: *mut NvrtcProgram) -> c_int;

/// A loaded libnvrtc.
pub struct Nvrtc {
    /// Where it was loaded from.
    path: PathBuf,
    error_string: GetErrorString,
    version: Version,
    create: CreateProgram,
    compile: CompileProgram,
    log_size: GetSize,
    log: GetText,
    ptx_size: GetSize,
    ptx: GetText,
    destroy: DestroyProgram,
    /// Keeps the function pointers above valid; dropped last.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvrtc").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The PTX of a compiled program, with NVRTC's log (warnings).
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The PTX text (without its terminating NUL).
    pub ptx: String,
    /// NVRTC's program log; empty when it has nothing to say.
    pub log: String,
}

/// A program, destroyed on drop.
struct Program<'a> {
    nvrtc: &'a Nvrtc,
    prog: NvrtcProgram,
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: `prog` was created by nvrtcCreateProgram of this library and is
        // destroyed once, here.
        unsafe { (self.nvrtc.destroy)(&mut self.prog) };
    }
}

impl Nvrtc {
    /// The library names tried, in order: `$OXCCL_NVRTC_LIB` (a file, a directory
    /// holding `libnvrtc.so.12` or `.13`, or a `pip install --target` directory holding
    /// `nvidia-cuda-nvrtc-cu12` or the CUDA 13 wheel), then `libnvrtc.so.12`,
    /// `libnvrtc.so.13` and `libnvrtc.so` (the dynamic loader's search path), then
    /// `$CUDA_PATH/lib64`, `$CUDA_HOME/lib64` and `/usr/local/cuda/lib64`.
    pub fn candidates() -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(p) = crate::settings::process().nvrtc_lib.clone() {
            for major in ["12", "13"] {
                v.push(p.join(format!("nvidia/cuda_nvrtc/lib/libnvrtc.so.{major}")));
                v.push(p.join(format!("nvidia/cu{major}/lib/libnvrtc.so.{major}")));
                v.push(p.join(format!("libnvrtc.so.{major}")));
            }
            v.push(p);
        }
        v.push("libnvrtc.so.12".into());
        v.push("libnvrtc.so.13".into());
        v.push("libnvrtc.so".into());
        for var in ["CUDA_PATH", "CUDA_HOME"] {
            if let Some(d) = crate::settings::env::var_os(var) {
                v.push(PathBuf::from(d).join("lib64/libnvrtc.so"));
            }
        }
        v.push("/usr/local/cuda/lib64/libnvrtc.so".into());
        v
    }

    /// Loads the first of [`Nvrtc::candidates`] that loads and has every entry point;
    /// [`CudaError::NoNvrtc`], saying what was tried, when none does.
    pub fn load() -> Result<Nvrtc, CudaError> {
        let mut why = Vec::new();
        for c in Self::candidates() {
            // A path with a directory that does not exist is not worth a dlopen.
            if c.components().count() > 1 && !c.is_file() {
                continue;
            }
            match Self::load_from(&c) {
                Ok(n) => return Ok(n),
                Err(CudaError::NoNvrtc(e)) => why.push(e),
                Err(e) => return Err(e),
            }
        }
        Err(CudaError::NoNvrtc(why.join("; ")))
    }

    /// Loads libnvrtc from `path` (a file name alone searches the dynamic loader's path).
    pub fn load_from(path: &std::path::Path) -> Result<Nvrtc, CudaError> {
        let no = |e: libloading::Error| CudaError::NoNvrtc(format!("{}: {e}", path.display()));
        // SAFETY: loading runs libnvrtc's initialisers, which NVIDIA's library provides
        // for exactly this use (it is meant to be dlopened); no Rust invariants depend on
        // them.
        let lib = unsafe { libloading::Library::new(path) }.map_err(no)?;
        // SAFETY: each type is the C prototype of the NVRTC function of that name
        // (nvrtc.h: nvrtcResult is a C enum, an int; nvrtcProgram a pointer); the copied
        // pointers live in the struct that owns `lib`, which outlives every call.
        unsafe {
            Ok(Nvrtc {
                path: path.to_path_buf(),
                error_string: *lib.get::<GetErrorString>(b"nvrtcGetErrorString\0").map_err(no)?,
                version: *lib.get::<Version>(b"nvrtcVersion\0").map_err(no)?,
                create: *lib.get::<CreateProgram>(b"nvrtcCreateProgram\0").map_err(no)?,
                compile: *lib.get::<CompileProgram>(b"nvrtcCompileProgram\0").map_err(no)?,
                log_size: *lib.get::<GetSize>(b"nvrtcGetProgramLogSize\0").map_err(no)?,
                log: *lib.get::<GetText>(b"nvrtcGetProgramLog\0").map_err(no)?,
                ptx_size: *lib.get::<GetSize>(b"nvrtcGetPTXSize\0").map_err(no)?,
                ptx: *lib.get::<GetText>(b"nvrtcGetPTX\0").map_err(no)?,
                destroy: *lib.get::<DestroyProgram>(b"nvrtcDestroyProgram\0").map_err(no)?,
                _lib: lib,
            })
        }
    }

    /// Where the library was loaded from (as it was named).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// NVRTC's version, `(major, minor)`.
    pub fn version(&self) -> Result<(i32, i32), CudaError> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are valid, writable ints.
        let r = unsafe { (self.version)(&mut major, &mut minor) };
        self.check("nvrtcVersion", r, String::new)?;
        Ok((major, minor))
    }

    fn message(&self, r: c_int) -> String {
        // SAFETY: nvrtcGetErrorString accepts any value and returns a static C string
        // (or null, checked).
        let p = unsafe { (self.error_string)(r) };
        if p.is_null() {
            return format!("nvrtcResult {r}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn check(&self, call: &'static str, r: c_int, log: impl FnOnce() -> String) -> Result<(), CudaError> {
        if r == 0 { Ok(()) } else { Err(CudaError::Nvrtc { call, message: self.message(r), log: log() }) }
    }

    /// Reads a program's log or PTX (`size` then `text`).
    fn text(&self, prog: NvrtcProgram, size: GetSize, text: GetText, what: &'static str) -> Result<String, CudaError> {
        let mut n = 0usize;
        // SAFETY: `prog` is a live program; `n` is writable.
        self.check(what, unsafe { size(prog, &mut n) }, String::new)?;
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: the buffer holds the `n` bytes (NUL included) NVRTC reported.
        self.check(what, unsafe { text(prog, buf.as_mut_ptr().cast()) }, String::new)?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(end);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Compiles CUDA C `src` (named `name` in messages) with NVRTC `options` to PTX. A
    /// compile error is [`CudaError::Nvrtc`] with the log.
    pub fn compile(&self, src: &str, name: &str, options: &[String]) -> Result<Compiled, CudaError> {
        let bad = |what: &str| CudaError::Nvrtc {
            call: "nvrtcCreateProgram",
            message: format!("{what} contains a NUL byte"),
            log: String::new(),
        };
        let csrc = CString::new(src).map_err(|_| bad("the source"))?;
        let cname = CString::new(name).map_err(|_| bad("the name"))?;
        let copts: Vec<CString> =
            options.iter().map(|o| CString::new(o.as_str())).collect::<Result<_, _>>().map_err(|_| bad("an option"))?;
        let optp: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: `prog` is writable; the strings are NUL-terminated and alive for the
        // call; no headers are passed (count 0, null arrays).
        let r =
            unsafe { (self.create)(&mut prog, csrc.as_ptr(), cname.as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
        self.check("nvrtcCreateProgram", r, String::new)?;
        let prog = Program { nvrtc: self, prog };
        // SAFETY: a live program; `optp` holds `optp.len()` pointers to the NUL-terminated
        // options in `copts`, alive for the call.
        let r = unsafe { (self.compile)(prog.prog, optp.len() as c_int, optp.as_ptr()) };
        let log = self.text(prog.prog, self.log_size, self.log, "nvrtcGetProgramLog")?;
        self.check("nvrtcCompileProgram", r, || log.clone())?;
        let ptx = self.text(prog.prog, self.ptx_size, self.ptx, "nvrtcGetPTX")?;
        Ok(Compiled { ptx, log })
    }
}
