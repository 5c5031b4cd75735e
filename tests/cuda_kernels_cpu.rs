//! Runs the CUDA kernels of `src/cuda/kernels.cu` on the CPU and checks every result
//! against the crate's portable CPU kernels (`oxccl::internals::reduce` at `Level::Scalar`, which
//! define the intended arithmetic), plus a table of hand-computed special cases.
//!
//! The test compiles `kernels.cu` as host C++ (`OXCCL_CXX`, else `CXX`, else g++ or
//! clang++) into a shared library under `target/tmp/cuda-cpu/`, with the shim of
//! `tests/cuda_cpu/`: the launch keywords become nothing, `threadIdx`/`blockIdx`/
//! `blockDim`/`gridDim` are globals that the harness sets while it calls the kernel once
//! per simulated thread, block after block (the kernels are grid-stride loops whose
//! threads own disjoint elements, so this order computes what a parallel launch does).
//! `__half`, `__nv_bfloat16` and the fp8 conversions are CUDA's own, from the headers of
//! the pip wheel `nvidia-cuda-runtime-cu12` in host mode, where they are NVIDIA's software
//! emulation of the device instructions; the shim adds the device-only f32/f64
//! intrinsics (`__fadd_rn`, `__fmaf_rn`, `__ull2float_rn`, ...) as single IEEE operations
//! rounded to nearest even, and `fmaxf`/`fmin`/... with the device's NaN rule (a signaling
//! NaN operand yields the other operand, where glibc returns a quiet NaN), and a `uint4`
//! that checks the address of every 16-byte vector load and store: one the device would
//! fault on aborts the test with a message. So this checks the kernels' logic (vector/scalar split,
//! alignment, grid-stride coverage, in place, operand order, integer and special-value
//! semantics), not the GPU's instructions; `tests/cuda_kernels.rs` checks that the same
//! source compiles for sm_80/sm_90, and tests/cuda_collectives.rs (scripts/gpu-check.sh)
//! runs it on a GPU.
//!
//! Every kernel of every type runs over lengths 0..4099, byte offsets 0..16 of the output
//! and of each input (same and different alignments modulo 16, random ones, and in
//! place), on four grid/block shapes, with special values mixed in (NaN, ±inf, -0,
//! subnormals, overflow, fp8 saturation, integer wrap, truncating division); the bytes
//! around the output and the inputs must stay untouched. Results must match bit for bit,
//! except that any NaN matches any NaN (payloads are not specified). PreMulSum's rounding
//! of narrow floats (an f32 FMA, then the type) is pinned separately.
//!
//! Headers: the entries of `OXCCL_CUDA_INCLUDE` (include directories or `pip install
//! --target` directories; scripts/test.sh sets it), then `target/cuda-wheels`. Without a
//! compiler or the headers the test prints `skipped: <reason>` and passes.
#![cfg(all(unix, any(target_arch = "x86_64", target_arch = "aarch64")))]

use oxccl::DataType;
use oxccl::internals::reduce::{self, Level};
use std::collections::hash_map::DefaultHasher;
use std::ffi::{CString, c_void};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

type BinaryK = unsafe extern "C" fn(*mut c_void, u32, u32, *mut u8, *const u8, *const u8, usize);
type MulAddK = unsafe extern "C" fn(*mut c_void, u32, u32, *mut u8, *const u8, *const u8, usize, u64);
type UnaryK = unsafe extern "C" fn(*mut c_void, u32, u32, *mut u8, *const u8, usize, u64);
type CopyK = unsafe extern "C" fn(u32, u32, *mut u8, *const u8, usize);
type SetReverse = unsafe extern "C" fn(i32);

/// The harness library: its launchers and a kernel lookup.
struct Emu {
    handle: *mut c_void,
    binary: BinaryK,
    mul_add: MulAddK,
    unary: UnaryK,
    copy: CopyK,
    set_reverse: SetReverse,
}

// SAFETY: the handle is only used for dlsym, which is thread-safe; the launchers write
// the harness's globals, so they are only called from the one test thread that runs all
// launches (`emu_lock`).
unsafe impl Send for Emu {}
// SAFETY: as above.
unsafe impl Sync for Emu {}

impl Emu {
    fn sym(&self, name: &str) -> *mut c_void {
        let c = CString::new(name).unwrap();
        // SAFETY: `handle` is a live dlopen handle (never closed) and `c` a C string.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        assert!(!p.is_null(), "kernel {name} is missing from the harness library");
        p
    }
}

fn find_cxx() -> Option<String> {
    let mut c: Vec<String> = Vec::new();
    for v in ["OXCCL_CXX", "CXX"] {
        if let Ok(s) = std::env::var(v)
            && !s.trim().is_empty()
        {
            c.push(s.trim().to_string());
        }
    }
    c.extend(["g++", "clang++", "c++"].map(String::from));
    c.into_iter().find(|x| Command::new(x).arg("--version").output().map(|o| o.status.success()).unwrap_or(false))
}

/// (directory holding cuda_fp16.h, directory holding crt/host_defines.h if any).
fn find_headers() -> Option<(PathBuf, Option<PathBuf>)> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("OXCCL_CUDA_INCLUDE") {
        bases.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    bases.push(Path::new(MANIFEST).join("target/cuda-wheels"));
    for b in &bases {
        for inc in [b.clone(), b.join("include"), b.join("nvidia/cuda_runtime/include")] {
            if inc.join("cuda_fp16.h").is_file()
                && inc.join("cuda_bf16.h").is_file()
                && inc.join("cuda_fp8.h").is_file()
            {
                let crt = [inc.clone(), b.join("nvidia/cuda_nvcc/include"), b.join("include")]
                    .into_iter()
                    .find(|d| d.join("crt/host_defines.h").is_file());
                return Some((inc, crt));
            }
        }
    }
    None
}

/// Builds (or reuses) the harness library and opens it.
fn build() -> Result<Emu, String> {
    let cxx = find_cxx().ok_or("no C++ compiler (g++, clang++; or set OXCCL_CXX)")?;
    let (inc, crt) = find_headers().ok_or(
        "CUDA's cuda_fp16.h/cuda_bf16.h/cuda_fp8.h not found (OXCCL_CUDA_INCLUDE, or pip install --target \
         target/cuda-wheels nvidia-cuda-runtime-cu12)",
    )?;
    let root = Path::new(MANIFEST);
    let shim = root.join("tests/cuda_cpu");
    let mut args: Vec<String> =
        ["-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-fPIC", "-shared", "-w"]
            .map(String::from)
            .to_vec();
    args.push(format!("-I{}", shim.display()));
    args.push(format!("-I{}", root.join("src/cuda").display()));
    args.push(format!("-I{}", inc.display()));
    if let Some(c) = &crt {
        args.push(format!("-I{}", c.display()));
    }
    // Last: a minimal crt/host_defines.h, used only where no real one was found.
    args.push(format!("-I{}", shim.join("fallback").display()));

    let mut h = DefaultHasher::new();
    (&cxx, &args).hash(&mut h);
    for f in [
        "src/cuda/kernels.cu",
        "tests/cuda_cpu/shim.h",
        "tests/cuda_cpu/harness.cpp",
        "tests/cuda_cpu/nv/target",
        "tests/cuda_cpu/fallback/crt/host_defines.h",
    ] {
        std::fs::read(root.join(f)).map_err(|e| format!("{f}: {e}"))?.hash(&mut h);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-cpu");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lib = dir.join(format!("libkernels-{:016x}.so", h.finish()));
    // A build of these sources and options, unless it does not open.
    let cached = if lib.is_file() { dlopen(&lib).ok() } else { None };
    let handle = if let Some(h) = cached {
        h
    } else {
        let tmp = dir.join(format!("tmp-{}-{:016x}.so", std::process::id(), h.finish()));
        let out = Command::new(&cxx)
            .args(&args)
            .arg(shim.join("harness.cpp"))
            .arg("-o")
            .arg(&tmp)
            .output()
            .map_err(|e| format!("{cxx}: {e}"))?;
        if !out.status.success() {
            // A compile error in the kernels or the shim is a failure, not a skip.
            panic!(
                "{cxx} {} failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let handle = dlopen(&tmp).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        // Older builds (of earlier sources) are of no further use.
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("libkernels-") && e.path() != lib {
                let _ = std::fs::remove_file(e.path());
            }
        }
        handle
    };
    let get = |n: &str| {
        let c = CString::new(n).unwrap();
        // SAFETY: live handle, C string.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        assert!(!p.is_null(), "{n} missing from {}", lib.display());
        p
    };
    // SAFETY: the symbols are the harness's extern "C" launchers, whose C signatures
    // (tests/cuda_cpu/harness.cpp) are the function pointer types they become.
    unsafe {
        Ok(Emu {
            handle,
            binary: std::mem::transmute::<*mut c_void, BinaryK>(get("emu_binary")),
            mul_add: std::mem::transmute::<*mut c_void, MulAddK>(get("emu_mul_add")),
            unary: std::mem::transmute::<*mut c_void, UnaryK>(get("emu_unary")),
            copy: std::mem::transmute::<*mut c_void, CopyK>(get("emu_copy")),
            set_reverse: std::mem::transmute::<*mut c_void, SetReverse>(get("emu_set_reverse")),
        })
    }
}

/// Opens a harness library (never closed), or says why not (dlerror).
fn dlopen(path: &Path) -> Result<*mut c_void, String> {
    let c = CString::new(path.to_str().ok_or("non-UTF-8 target path")?).unwrap();
    // SAFETY: dlopen of a library this test built; its initialisers only zero globals.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror right after the failed call: a C string (or null), read at once.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".into()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!("dlopen {} failed: {why}", path.display()));
    }
    Ok(handle)
}

fn emu() -> Option<&'static Emu> {
    static EMU: OnceLock<Result<Emu, String>> = OnceLock::new();
    match EMU.get_or_init(build) {
        Ok(e) => Some(e),
        Err(why) => {
            println!("skipped: {why}");
            None
        }
    }
}

/// The harness's thread coordinates are globals: one launch at a time.
fn emu_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- kernels, values ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Bin(reduce::BinOp),
    MulAdd,
    Scale,
    Div,
}

const OPS: [Op; 7] = [
    Op::Bin(reduce::BinOp::Sum),
    Op::Bin(reduce::BinOp::Prod),
    Op::Bin(reduce::BinOp::Max),
    Op::Bin(reduce::BinOp::Min),
    Op::MulAdd,
    Op::Scale,
    Op::Div,
];

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Bin(reduce::BinOp::Sum) => "sum",
        Op::Bin(reduce::BinOp::Prod) => "prod",
        Op::Bin(reduce::BinOp::Max) => "max",
        Op::Bin(reduce::BinOp::Min) => "min",
        Op::MulAdd => "mul_add",
        Op::Scale => "scale",
        Op::Div => "div",
    }
}

fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::Int8 => "i8",
        DataType::Uint8 => "u8",
        DataType::Int32 => "i32",
        DataType::Uint32 => "u32",
        DataType::Int64 => "i64",
        DataType::Uint64 => "u64",
        DataType::Float16 => "f16",
        DataType::Float32 => "f32",
        DataType::Float64 => "f64",
        DataType::Bfloat16 => "bf16",
        DataType::Float8E4M3 => "f8e4m3",
        DataType::Float8E5M2 => "f8e5m2",
    }
}

/// Whether the element's bits are a NaN of the type (integers have none).
fn is_nan(t: DataType, v: u64) -> bool {
    match t {
        DataType::Float16 => v & 0x7c00 == 0x7c00 && v & 0x3ff != 0,
        DataType::Bfloat16 => v & 0x7f80 == 0x7f80 && v & 0x7f != 0,
        DataType::Float32 => f32::from_bits(v as u32).is_nan(),
        DataType::Float64 => f64::from_bits(v).is_nan(),
        DataType::Float8E4M3 => v & 0x7f == 0x7f,
        DataType::Float8E5M2 => v & 0x7c == 0x7c && v & 3 != 0,
        _ => false,
    }
}

/// Interesting elements of a type, as bits: zeros, ones, extremes, subnormals,
/// infinities, NaNs, values whose sums or products overflow or saturate.
fn specials(t: DataType) -> Vec<u64> {
    match t {
        DataType::Int8 | DataType::Uint8 => vec![0, 1, 2, 3, 0x7f, 0x80, 0x81, 0xff, 0xfe, 0x10, 0xf9, 7],
        DataType::Int32 | DataType::Uint32 => {
            vec![0, 1, 3, 7, 0x7fff_ffff, 0x8000_0000, 0x8000_0001, 0xffff_ffff, 0xffff_fff9, 0x1_0000 - 1, 0x10000]
        }
        DataType::Int64 | DataType::Uint64 => {
            vec![0, 1, 7, i64::MAX as u64, i64::MIN as u64, u64::MAX, u64::MAX - 6, 0x1_0000_0000, 0xffff_ffff]
        }
        DataType::Float16 => vec![
            0x0000, 0x8000, 0x3c00, 0xbc00, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e00, 0xfe01, 0x0001, 0x8001, 0x03ff,
            0x0400, 0x3800, 0x5bff, 0x1400,
        ],
        DataType::Bfloat16 => vec![
            0x0000, 0x8000, 0x3f80, 0xbf80, 0x7f7f, 0xff7f, 0x7f80, 0xff80, 0x7fc0, 0xffc1, 0x0001, 0x8001, 0x007f,
            0x0080, 0x3b80, 0x3f81,
        ],
        DataType::Float32 => [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            f32::MIN_POSITIVE,
            f32::from_bits(0x007f_ffff),
            0.1,
            3.0,
            16777217.0,
        ]
        .iter()
        .map(|x| x.to_bits() as u64)
        .collect(),
        DataType::Float64 => [
            0.0f64,
            -0.0,
            1.0,
            -1.0,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(1),
            f64::from_bits(0x8000_0000_0000_0001),
            f64::MIN_POSITIVE,
            0.1,
            3.0,
        ]
        .iter()
        .map(|x| x.to_bits())
        .collect(),
        // e4m3: 0, -0, 1, -1, 448 (max), -448, NaN, -NaN, smallest subnormal, largest
        // subnormal, 240, 0.5.
        DataType::Float8E4M3 => vec![0x00, 0x80, 0x38, 0xb8, 0x7e, 0xfe, 0x7f, 0xff, 0x01, 0x07, 0x77, 0x30, 0x81],
        // e5m2: 0, -0, 1, -1, 57344 (max), -max, inf, -inf, NaN, smallest subnormal, ...
        DataType::Float8E5M2 => {
            vec![0x00, 0x80, 0x3c, 0xbc, 0x7b, 0xfb, 0x7c, 0xfc, 0x7e, 0x01, 0x03, 0x04, 0x81, 0x77]
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `n` elements of `t`: random bits, specials, and (for floats) ordinary moderate values
/// so that sums and products are mostly finite and round.
fn fill(t: DataType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let sz = t.size();
    let sp = specials(t);
    let mut v = Vec::with_capacity(n * sz);
    for _ in 0..n {
        let r = rng.next();
        let e: u64 = match r % 8 {
            0..=2 => sp[(r >> 8) as usize % sp.len()],
            3 if t.is_float() => {
                // A moderate value: an exponent near the bias, random sign and mantissa.
                let m = rng.next();
                match t {
                    DataType::Float16 => (m & 0x83ff) | (0x3400 + ((m >> 20) % 6) * 0x400),
                    DataType::Bfloat16 => (m & 0x807f) | (0x3c00 + ((m >> 20) % 8) * 0x80),
                    DataType::Float32 => (m & 0x807f_ffff) | ((120 + (m >> 40) % 14) << 23),
                    DataType::Float64 => (m & 0x800f_ffff_ffff_ffff) | ((1016 + (m >> 13) % 14) << 52),
                    DataType::Float8E4M3 => (m & 0x87) | ((4 + (m >> 20) % 8) << 3),
                    _ => (m & 0x83) | ((12 + (m >> 20) % 8) << 2),
                }
            }
            _ => rng.next(),
        };
        v.extend_from_slice(&e.to_le_bytes()[..sz]);
    }
    v
}

fn get(t: DataType, buf: &[u8], i: usize) -> u64 {
    let sz = t.size();
    let mut b = [0u8; 8];
    b[..sz].copy_from_slice(&buf[i * sz..(i + 1) * sz]);
    u64::from_le_bytes(b)
}

/// A buffer with guard bytes around a region placed at `off` bytes past a 64-byte
/// boundary.
struct Guarded {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

const GUARD: usize = 64;
const PAT: u8 = 0xa5;

impl Guarded {
    fn new(data: &[u8], off: usize) -> Guarded {
        let mut mem = vec![PAT; data.len() + 2 * GUARD + 128];
        let base = mem.as_ptr() as usize;
        let start = (base + GUARD).next_multiple_of(64) - base + off;
        mem[start..start + data.len()].copy_from_slice(data);
        Guarded { mem, start, len: data.len() }
    }
    fn ptr(&mut self) -> *mut u8 {
        // SAFETY: start + len <= mem.len() by construction.
        unsafe { self.mem.as_mut_ptr().add(self.start) }
    }
    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
    /// Where a byte outside the region changed, if one did.
    fn guard_damage(&self) -> Option<usize> {
        (0..self.mem.len()).find(|&i| (i < self.start || i >= self.start + self.len) && self.mem[i] != PAT)
    }
}

struct Case {
    t: DataType,
    op: Op,
    n: usize,
    grid: u32,
    block: u32,
    dst_off: usize,
    a_off: usize,
    b_off: usize,
    /// The output is the buffer of input a (1) or of input b (2), or its own (0).
    in_place: u8,
    scalar: u64,
    /// Simulated threads run last first (see harness.cpp).
    reverse: bool,
}

/// Runs one case on the emulated kernel and on the CPU reference; returns a description
/// of the first difference.
fn run_case(emu: &Emu, c: &Case, rng: &mut Rng) -> Result<(), String> {
    let t = c.t;
    let sz = t.size();
    let a = fill(t, c.n, rng);
    let b = fill(t, c.n, rng);
    let k = reduce::kernels(t, Level::Scalar);
    let mut want = vec![0u8; c.n * sz];
    // SAFETY: `want`, `a`, `b` hold n elements each; the reference kernels need no alignment.
    unsafe {
        match c.op {
            Op::Bin(op) => (k.binary[op as usize])(want.as_mut_ptr(), a.as_ptr(), b.as_ptr(), c.n),
            Op::MulAdd => (k.mul_add)(want.as_mut_ptr(), a.as_ptr(), b.as_ptr(), c.n, c.scalar),
            Op::Scale => (k.scale)(want.as_mut_ptr(), a.as_ptr(), c.n, c.scalar),
            Op::Div => (k.div)(want.as_mut_ptr(), a.as_ptr(), c.n, c.scalar),
        }
    }
    let mut ga = Guarded::new(&a, c.a_off);
    let mut gb = Guarded::new(&b, c.b_off);
    let mut gd = Guarded::new(&vec![0x5a; c.n * sz], c.dst_off);
    let kern = emu.sym(&format!("oxccl_{}_{}", op_name(c.op), type_name(t)));
    let (ap, bp) = (ga.ptr(), gb.ptr());
    let dp = match c.in_place {
        1 => ap,
        2 => bp,
        _ => gd.ptr(),
    };
    {
        let _g = emu_lock();
        // SAFETY: every pointer covers n elements of t with the guards around it; dst is
        // either one of the inputs (in place) or its own buffer; `kern` has the kernel
        // signature the launcher casts it to; the order flag is a plain int.
        unsafe {
            (emu.set_reverse)(c.reverse as i32);
            match c.op {
                Op::Bin(_) => (emu.binary)(kern, c.grid, c.block, dp, ap, bp, c.n),
                Op::MulAdd => (emu.mul_add)(kern, c.grid, c.block, dp, ap, bp, c.n, c.scalar),
                Op::Scale | Op::Div => (emu.unary)(kern, c.grid, c.block, dp, ap, c.n, c.scalar),
            }
            (emu.set_reverse)(0);
        }
    }
    let got = match c.in_place {
        1 => ga.data().to_vec(),
        2 => gb.data().to_vec(),
        _ => gd.data().to_vec(),
    };
    for i in 0..c.n {
        let (g, w) = (get(t, &got, i), get(t, &want, i));
        if g != w && !(is_nan(t, g) && is_nan(t, w)) {
            let x = get(t, &a, i);
            let y = if matches!(c.op, Op::Bin(_) | Op::MulAdd) {
                format!(", b={:#x}", get(t, &b, i))
            } else {
                String::new()
            };
            return Err(format!("element {i}: a={x:#x}{y}, scalar={:#x}: kernel {g:#x}, CPU {w:#x}", c.scalar));
        }
    }
    for (name, g) in [("a", &ga), ("b", &gb), ("dst", &gd)] {
        if let Some(p) = g.guard_damage() {
            return Err(format!(
                "byte {p} of {name}'s buffer, outside its {} bytes at {}, was written",
                g.len, g.start
            ));
        }
    }
    if c.in_place != 1 && ga.data() != &a[..] {
        return Err("input a was modified".into());
    }
    if c.in_place != 2 && gb.data() != &b[..] {
        return Err("input b was modified".into());
    }
    Ok(())
}

const LENS: [usize; 10] = [0, 1, 7, 8, 9, 15, 16, 17, 1000, 4099];
/// (grid, block): one thread; two blocks of 16 (the unrolled body runs with several
/// threads); three blocks of 5 (a stride of 15 threads, prime to every vector width, so
/// threads start their vectors and their scalar tails at every residue); blocks of the
/// compiled maximum, most threads idle.
const SHAPES: [(u32, u32); 4] = [(1, 1), (2, 16), (3, 5), (4, 512)];

/// The scalars one case draws from: the op's operand (mul_add, scale) or divisor (div).
fn scalars(t: DataType, op: Op) -> Vec<u64> {
    match op {
        Op::Div if t.is_float() => vec![1, 2, 3, 7, 1000, 16_777_217, 1 << 40],
        // Rank counts; then divisors past 32 bits (the kernel divides in 32 bits only
        // below 2^31).
        Op::Div => vec![1, 2, 3, 7, 8, 255, 1000, 0x7fff_ffff, 0x8000_0000, 0x1_0000_0003],
        Op::MulAdd | Op::Scale => specials(t),
        Op::Bin(_) => vec![0],
    }
}

fn check_type(t: DataType) {
    let Some(emu) = emu() else { return };
    let sz = t.size();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let mut failures: Vec<String> = Vec::new();
    let mut cases = 0usize;
    for op in OPS {
        let sc = scalars(t, op);
        for &n in &LENS {
            for &(grid, block) in &SHAPES {
                for dst_off in (0..=16).step_by(sz) {
                    // Same alignment everywhere; a shifted by one element; b shifted; in place
                    // on a; in place on b (two-input kernels); a and b at random offsets.
                    let other = (dst_off + sz) % 16;
                    let mut any = || (rng.next() as usize % (16 / sz + 1)) * sz;
                    let layouts = [
                        (dst_off, dst_off, 0),
                        (other, dst_off, 0),
                        (dst_off, other, 0),
                        (dst_off, other, 1),
                        (other, dst_off, 2),
                        (any(), any(), 0),
                    ];
                    let two_inputs = matches!(op, Op::Bin(_) | Op::MulAdd);
                    for (a_off, b_off, in_place) in layouts.into_iter().filter(|l| two_inputs || l.2 != 2) {
                        let r = rng.next();
                        let (scalar, reverse) = (sc[r as usize % sc.len()], r >> 63 == 1);
                        let c = Case { t, op, n, grid, block, dst_off, a_off, b_off, in_place, scalar, reverse };
                        cases += 1;
                        if let Err(e) = run_case(emu, &c, &mut rng)
                            && failures.len() < 20
                        {
                            failures.push(format!(
                                "oxccl_{}_{} n={n} grid={grid} block={block}{} dst+{dst_off} a+{} b+{b_off}{}: {e}",
                                op_name(op),
                                type_name(t),
                                if reverse { " (threads in reverse)" } else { "" },
                                a_off,
                                ["", " (dst = a)", " (dst = b)"][in_place as usize]
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} ({cases} cases):\n{}", t.name(), failures.join("\n"));
    println!("{}: {cases} cases match the CPU kernels", t.name());
}

/// One test per data type (they run in parallel), and `TESTED`: the types that have one.
macro_rules! type_tests {
    ($($f:ident => $t:expr),* $(,)?) => {
        $(
            #[test]
            fn $f() {
                check_type($t);
            }
        )*
        const TESTED: &[DataType] = &[$($t),*];
    };
}

type_tests! {
    kernels_i8 => DataType::Int8,
    kernels_u8 => DataType::Uint8,
    kernels_i32 => DataType::Int32,
    kernels_u32 => DataType::Uint32,
    kernels_i64 => DataType::Int64,
    kernels_u64 => DataType::Uint64,
    kernels_f16 => DataType::Float16,
    kernels_f32 => DataType::Float32,
    kernels_f64 => DataType::Float64,
    kernels_bf16 => DataType::Bfloat16,
    kernels_f8e4m3 => DataType::Float8E4M3,
    kernels_f8e5m2 => DataType::Float8E5M2,
}

#[test]
fn every_type_has_a_test() {
    assert_eq!(TESTED, &DataType::ALL[..], "a data type without its kernels_<type> test");
}

#[test]
fn copy_kernel() {
    let Some(emu) = emu() else { return };
    let mut rng = Rng(77);
    let mut cases = 0;
    for &n in LENS.iter().chain(&[31, 33, 64, 65, 255]) {
        for &(grid, block) in &SHAPES {
            for dst_off in 0..=16 {
                for src_off in [dst_off, (dst_off + 1) % 16, (dst_off + 5) % 16, 0] {
                    let src = fill(DataType::Uint8, n, &mut rng);
                    let mut gs = Guarded::new(&src, src_off);
                    let mut gd = Guarded::new(&vec![0x5a; n], dst_off);
                    let reverse = rng.next() >> 63 == 1;
                    {
                        let _g = emu_lock();
                        // SAFETY: both regions hold n bytes with guards around; disjoint. The
                        // order flag is a plain int.
                        unsafe {
                            (emu.set_reverse)(reverse as i32);
                            (emu.copy)(grid, block, gd.ptr(), gs.ptr(), n);
                            (emu.set_reverse)(0);
                        }
                    }
                    let what = format!(
                        "oxccl_copy n={n} grid={grid} block={block} dst+{dst_off} src+{src_off}{}",
                        if reverse { " (threads in reverse)" } else { "" }
                    );
                    assert_eq!(gd.data(), &src[..], "{what}: wrong bytes");
                    assert_eq!(gd.guard_damage(), None, "{what}: wrote outside dst");
                    assert_eq!(gs.data(), &src[..], "{what}: modified src");
                    cases += 1;
                }
            }
        }
    }
    println!("oxccl_copy: {cases} cases");
}

/// Hand-computed results, independent of the CPU kernels: each (type, op, a, b or scalar,
/// expected bits) runs with n = 1 (scalar path) and n = 64 with every element the same
/// (vector path; the pairs of f16/bf16 sum/prod).
#[test]
fn special_values() {
    let Some(emu) = emu() else { return };
    use DataType::*;
    use reduce::BinOp::*;
    const NONE: u64 = 0;
    #[rustfmt::skip]
    let table: &[(DataType, Op, u64, u64, u64)] = &[
        // integer wrap
        (Int8, Op::Bin(Sum), 0x7f, 0x01, 0x80),
        (Uint8, Op::Bin(Prod), 16, 16, 0),
        (Int8, Op::Bin(Prod), 0x80, 0xff, 0x80), // -128 * -1 wraps to -128
        (Int32, Op::Bin(Sum), 0x7fff_ffff, 1, 0x8000_0000),
        (Uint64, Op::Bin(Sum), u64::MAX, 2, 1),
        (Int8, Op::Bin(Max), 0x80, 0x7f, 0x7f),
        (Uint8, Op::Bin(Max), 0x80, 0x7f, 0x80),
        (Int64, Op::Bin(Min), i64::MIN as u64, 0, i64::MIN as u64),
        (Uint32, Op::MulAdd, 0xffff_ffff, 2, 5), // acc + s*x = -1 + 3*2
        // truncating division
        (Int8, Op::Div, 0xf9, NONE, 0xfd), // -7 / 2 = -3
        (Int32, Op::Div, (-7i32) as u32 as u64, NONE, (-3i32) as u32 as u64),
        (Int64, Op::Div, (-7i64) as u64, NONE, (-3i64) as u64),
        (Uint8, Op::Div, 0xff, NONE, 0x7f),
        (Uint32, Op::Div, 0xffff_ffff, NONE, 0x7fff_ffff),
        // f32: NaN ignored by max/min, -0 < +0, subnormals kept, overflow to inf
        (Float32, Op::Bin(Max), f32::NAN.to_bits() as u64, 0x3f80_0000, 0x3f80_0000),
        (Float32, Op::Bin(Min), 0x3f80_0000, f32::NAN.to_bits() as u64, 0x3f80_0000),
        (Float32, Op::Bin(Max), 0x8000_0000, 0, 0),
        (Float32, Op::Bin(Min), 0, 0x8000_0000, 0x8000_0000),
        (Float32, Op::Bin(Sum), 1, 1, 2),
        (Float32, Op::Bin(Sum), 0x7f7f_ffff, 0x7f7f_ffff, 0x7f80_0000),
        (Float32, Op::Bin(Sum), 0, 0x8000_0000, 0),
        (Float64, Op::Bin(Max), 0x8000_0000_0000_0000, 0, 0),
        (Float64, Op::Bin(Prod), 1, 0x3fe0_0000_0000_0000, 0), // 2^-1074 * 0.5 ties to even 0
        // f16
        (Float16, Op::Bin(Sum), 0x7bff, 0x7bff, 0x7c00),
        (Float16, Op::Bin(Sum), 0x0001, 0x0001, 0x0002),
        (Float16, Op::Bin(Prod), 0x0001, 0x3800, 0x0000), // 2^-24 * 0.5 ties to even 0
        (Float16, Op::Bin(Max), 0x8000, 0x0000, 0x0000),
        (Float16, Op::Bin(Min), 0x0000, 0x8000, 0x8000),
        (Float16, Op::Bin(Max), 0x7e00, 0xbc00, 0xbc00),
        (Float16, Op::Bin(Min), 0x3c00, 0x7e00, 0x3c00),
        (Float16, Op::Bin(Sum), 0x3c00, 0x1000, 0x3c00), // 1 + 2^-11: tie, to even 1
        (Float16, Op::Bin(Sum), 0x3c01, 0x1000, 0x3c02), // tie, to even 1+2^-9
        // bf16
        (Bfloat16, Op::Bin(Sum), 0x3f80, 0x3b80, 0x3f80), // 1 + 2^-8: tie, to even 1
        (Bfloat16, Op::Bin(Sum), 0x3f81, 0x3b80, 0x3f82),
        (Bfloat16, Op::Bin(Sum), 0x7f7f, 0x7f7f, 0x7f80),
        (Bfloat16, Op::Bin(Max), 0x8000, 0x0000, 0x0000),
        (Bfloat16, Op::Bin(Min), 0x7fc0, 0xbf80, 0xbf80),
        (Bfloat16, Op::Bin(Prod), 0x0001, 0x3f00, 0x0000),
        // fp8: saturation to the largest finite value, NaN stays NaN
        (Float8E4M3, Op::Bin(Sum), 0x7e, 0x7e, 0x7e), // 448 + 448 -> 448
        (Float8E4M3, Op::Bin(Sum), 0xfe, 0xfe, 0xfe),
        (Float8E4M3, Op::Bin(Sum), 0x38, 0x38, 0x40), // 1 + 1 = 2
        (Float8E4M3, Op::Bin(Sum), 0x7f, 0x38, 0x7f),
        (Float8E4M3, Op::Bin(Prod), 0x01, 0x30, 0x00), // 2^-9 * 0.5: tie, to even 0
        (Float8E4M3, Op::Bin(Max), 0x80, 0x00, 0x00),
        (Float8E4M3, Op::Bin(Max), 0x7f, 0x38, 0x38),
        (Float8E5M2, Op::Bin(Sum), 0x7b, 0x7b, 0x7b), // 57344 + 57344 -> 57344
        (Float8E5M2, Op::Bin(Sum), 0x7c, 0x3c, 0x7b), // inf saturates too (__NV_SATFINITE)
        (Float8E5M2, Op::Bin(Sum), 0x7c, 0xfc, 0x7e), // inf - inf: NaN
        (Float8E5M2, Op::Bin(Min), 0x00, 0x80, 0x80),
        (Float8E5M2, Op::Div, 0x01, NONE, 0x00), // 2^-16 / 2: tie, to even 0
    ];
    for &(t, op, x, y, want) in table {
        // Div's divisor is 2; mul_add's scalar is 3.
        let (b, scalar) = match op {
            Op::Div => (0, 2),
            Op::MulAdd => (y, 3),
            _ => (y, 0),
        };
        let sz = t.size();
        for n in [1usize, 64] {
            let a: Vec<u8> = (0..n).flat_map(|_| x.to_le_bytes()[..sz].to_vec()).collect();
            let bb: Vec<u8> = (0..n).flat_map(|_| b.to_le_bytes()[..sz].to_vec()).collect();
            let mut ga = Guarded::new(&a, 0);
            let mut gb = Guarded::new(&bb, 0);
            let mut gd = Guarded::new(&vec![0; n * sz], 0);
            let kern = emu.sym(&format!("oxccl_{}_{}", op_name(op), type_name(t)));
            {
                let _g = emu_lock();
                // SAFETY: n elements in each buffer, 16-byte aligned, disjoint.
                unsafe {
                    match op {
                        Op::Bin(_) => (emu.binary)(kern, 1, 4, gd.ptr(), ga.ptr(), gb.ptr(), n),
                        Op::MulAdd => (emu.mul_add)(kern, 1, 4, gd.ptr(), ga.ptr(), gb.ptr(), n, scalar),
                        _ => (emu.unary)(kern, 1, 4, gd.ptr(), ga.ptr(), n, scalar),
                    }
                }
            }
            for i in 0..n {
                let g = get(t, gd.data(), i);
                assert!(
                    g == want || (is_nan(t, g) && is_nan(t, want)),
                    "oxccl_{}_{}({x:#x}, {b:#x}, s={scalar}) n={n} [{i}] = {g:#x}, expected {want:#x}",
                    op_name(op),
                    type_name(t)
                );
            }
        }
    }
}

/// With the crate's CUDA module: every kernel it names ([`oxccl::cuda::kernel_names`]) is
/// one this test runs (its names are the crate's), exported by the host build, and the
/// largest block of [`SHAPES`] is the kernels' launch bound.
#[cfg(feature = "cuda")]
#[test]
fn covers_every_kernel() {
    use oxccl::cuda::{self, KernelOp};
    let ops = [
        (KernelOp::Sum, Op::Bin(reduce::BinOp::Sum)),
        (KernelOp::Prod, Op::Bin(reduce::BinOp::Prod)),
        (KernelOp::Max, Op::Bin(reduce::BinOp::Max)),
        (KernelOp::Min, Op::Bin(reduce::BinOp::Min)),
        (KernelOp::MulAdd, Op::MulAdd),
        (KernelOp::Scale, Op::Scale),
        (KernelOp::Div, Op::Div),
    ];
    assert_eq!(ops.len(), KernelOp::ALL.len());
    assert_eq!(ops.map(|o| o.1), OPS, "OPS is every kernel op, in KernelOp's order");
    let mut ours: Vec<String> = DataType::ALL
        .iter()
        .flat_map(|&t| {
            ops.iter().map(move |&(k, op)| {
                assert_eq!(k.name(), op_name(op));
                assert_eq!(cuda::type_name(t), type_name(t));
                format!("oxccl_{}_{}", op_name(op), type_name(t))
            })
        })
        .collect();
    ours.push(cuda::COPY_KERNEL.to_string());
    assert_eq!(ours, cuda::kernel_names());
    assert_eq!(SHAPES.iter().map(|s| s.1).max(), Some(cuda::BLOCK_THREADS));
    let Some(emu) = emu() else { return };
    for name in cuda::kernel_names() {
        emu.sym(&name);
    }
}

/// Narrow floats' mul_add (PreMulSum's `acc + s*x`) is one f32 FMA, then a rounding to the
/// type: two roundings, which every path shares (kernels.cu, the scalar and SIMD CPU
/// kernels) but which is not always the correctly rounded `acc + s*x`. This pins what all
/// paths compute, so that a change to one of them alone shows. The cases (found by an
/// exhaustive search over fp8, and over bf16 accumulators with every x and s in [1, 2)):
///   - f16: 510.75 + 1.0009765625 * 1.998046875 = 512.7499980926513671875 lies just
///     below the tie between 512.5 and 513, so it rounds to 512.5 (0x6001); in f32 it is
///     512.75, the tie itself, which rounds to even: 513 (0x6002);
///   - bf16: s*x = 1.015625 * 1.25 = 1.26953125 is a tie of bf16; acc = 0x2501 (about
///     1e-16) puts the exact sum above it (0x3fa3), but vanishes in f32: 0x3fa2;
///   - e5m2: likewise, s*x = 0.005859375 * 49152 = 288 is the tie between 256 and 320;
///     acc = 2^-16 decides it upwards (0x5d) only in exact arithmetic: 0x5c.
///
/// e4m3 has no such case (its range is too narrow for an accumulator to vanish in f32).
#[test]
fn narrow_mul_add_rounds_through_f32() {
    use DataType::*;
    // (type, acc, x, s, what every path computes, the correctly rounded acc + s*x)
    let cases: [(DataType, u64, u64, u64, u64, u64); 3] = [
        (Float16, 0x5ffb, 0x3c01, 0x3ffe, 0x6002, 0x6001),
        (Bfloat16, 0x2501, 0x3f82, 0x3fa0, 0x3fa2, 0x3fa3),
        (Float8E5M2, 0x01, 0x1e, 0x7a, 0x5c, 0x5d),
    ];
    for (t, acc, x, s, want, _exact) in cases {
        let sz = t.size();
        let bytes = |v: u64, n: usize| v.to_le_bytes()[..sz].repeat(n);
        for level in Level::available() {
            let k = reduce::kernels(t, level);
            let mut out = [0u8; 8];
            // SAFETY: one element of t in each buffer.
            unsafe { (k.mul_add)(out.as_mut_ptr(), bytes(acc, 1).as_ptr(), bytes(x, 1).as_ptr(), 1, s) };
            assert_eq!(get(t, &out, 0), want, "{} mul_add, CPU kernels at {level:?}", t.name());
        }
        let Some(emu) = emu() else { return };
        let kern = emu.sym(&format!("oxccl_mul_add_{}", type_name(t)));
        for n in [1usize, 64] {
            let mut ga = Guarded::new(&bytes(acc, n), 0);
            let mut gx = Guarded::new(&bytes(x, n), 0);
            let mut gd = Guarded::new(&vec![0; sz * n], 0);
            {
                let _g = emu_lock();
                // SAFETY: n elements of t in each buffer, 16-byte aligned, disjoint.
                unsafe { (emu.mul_add)(kern, 1, 4, gd.ptr(), ga.ptr(), gx.ptr(), n, s) };
            }
            for i in 0..n {
                assert_eq!(get(t, gd.data(), i), want, "oxccl_mul_add_{} n={n} [{i}]", type_name(t));
            }
        }
    }
}
