//! The C ABI as C and C++ programs see it: the programs under `tests/c/` (and
//! `examples/c/allreduce.c`) are compiled with the system compilers against
//! `include/nccl.h`, linked with the liboxccl that cargo built for this test, and run,
//! each with a deadline. Also: the header compiles as C99/C11 and C++11/C++17, with and
//! without CUDA's headers; its layout and values agree with the library's; install.sh
//! installs a library that pkg-config finds; and a run under valgrind and one under
//! AddressSanitizer are clean.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use oxccl_ffi::abi::{API_MAGIC, NUM_OPS, NcclConfig, UNDEF_INT, VERSION_CODE};

const DEADLINE: Duration = Duration::from_secs(180);

/// The crate's directory (`ffi/`).
fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put this test's artefacts: `<target>/<profile>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("<target>/<profile>/deps/<test>").to_path_buf()
}

/// A scratch directory for this test binary.
fn work_dir() -> PathBuf {
    let d = profile_dir().join("oxccl-c-tests").join(std::process::id().to_string());
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Where cargo built liboxccl_ffi.so and .a for this test: `<profile>/deps` (cargo copies
/// them up to `<profile>` only in `cargo build`, so the copy there may be stale).
fn built_dir() -> PathBuf {
    let deps = profile_dir().join("deps");
    let mtime = |d: &Path| std::fs::metadata(d.join("liboxccl_ffi.so")).and_then(|m| m.modified()).ok();
    match (mtime(&deps), mtime(&profile_dir())) {
        (Some(a), Some(b)) if b > a => profile_dir(),
        (None, Some(_)) => profile_dir(),
        _ => deps,
    }
}

/// A directory holding liboxccl under the names a C linker looks for (`-loxccl`, and the
/// soname `liboxccl.so.0` at run time).
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let built = built_dir();
        let so = built.join("liboxccl_ffi.so");
        let a = built.join("liboxccl_ffi.a");
        assert!(so.exists(), "{} is missing: cargo builds it with this test", so.display());
        let d = work_dir().join("lib");
        std::fs::create_dir_all(&d).unwrap();
        for (src, name) in [(&so, "liboxccl.so"), (&so, "liboxccl.so.0"), (&a, "liboxccl.a")] {
            let dst = d.join(name);
            let _ = std::fs::remove_file(&dst);
            std::fs::copy(src, &dst).unwrap();
        }
        d
    })
}

/// Programs run one at a time: the multi-process tests need the cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `cmd` to completion within `deadline`, killing it (and failing) past it.
fn run(mut cmd: Command, deadline: Duration) -> (bool, String) {
    let what = format!("{cmd:?}");
    let out = work_dir().join(format!("out-{}", rand_suffix()));
    let file = std::fs::File::create(&out).unwrap();
    cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    match status {
        None => panic!("{what} passed its deadline of {deadline:?} and was killed; output:\n{text}"),
        Some(s) => (s.success(), text),
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Runs `cmd` and fails with its output unless it succeeds; returns the output.
fn run_ok(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let (ok, text) = run(cmd, DEADLINE);
    assert!(ok, "{what} failed:\n{text}");
    text
}

const WARNINGS: [&str; 4] = ["-Wall", "-Wextra", "-pedantic", "-Werror"];

/// Compiles (and links, unless `-c` is among `extra`) `srcs` into `out`.
fn compile(cxx: bool, std: &str, srcs: &[PathBuf], out: &Path, extra: &[&str]) {
    let mut c = Command::new(if cxx { "c++" } else { "cc" });
    c.arg(format!("-std={std}")).args(WARNINGS).arg("-O1").arg("-g");
    c.arg("-I").arg(here().join("include")).arg("-I").arg(here().join("tests/c"));
    c.args(srcs).arg("-o").arg(out).args(extra);
    if !extra.contains(&"-c") {
        c.arg("-L").arg(lib_dir()).arg(format!("-Wl,-rpath,{}", lib_dir().display())).arg("-loxccl").arg("-lm");
        c.arg("-pthread");
    }
    run_ok(c);
}

/// Builds `tests/c/<name>.c` as a C99 program.
fn c_program(name: &str, extra: &[&str]) -> PathBuf {
    let exe = work_dir().join(format!("{name}{}", extra.join("").replace(['-', '=', ',', '/'], "_")));
    compile(false, "c99", &[here().join(format!("tests/c/{name}.c"))], &exe, extra);
    exe
}

#[test]
fn collectives_across_processes_2_and_4_ranks() {
    let exe = c_program("collectives", &[]);
    let _s = serial();
    for n in ["2", "4"] {
        let mut c = Command::new(&exe);
        c.arg(n);
        let out = run_ok(c);
        assert!(out.contains(&format!("collectives: {n} ranks OK")), "{out}");
    }
}

#[test]
fn one_thread_drives_all_ranks_in_groups() {
    let exe = c_program("initall_group", &[]);
    let _s = serial();
    assert!(run_ok(Command::new(exe)).contains("initall_group OK"));
}

#[test]
fn invalid_arguments_are_errors_with_reasons() {
    let exe = c_program("invalid_args", &[]);
    let _s = serial();
    let out = run_ok(Command::new(exe));
    assert!(out.contains("invalid_args OK"), "{out}");
    assert!(out.contains("unknown data type 99"), "{out}");
}

/// Faults from C: ncclCommGetAsyncError reports an abort, a peer's death, a timeout and
/// a mismatch on every rank (ncclRemoteError, ncclTimeout, ncclInvalidUsage), with the
/// reason in ncclGetLastError; an abort unblocks a waiting call; later calls fail at once.
/// For thread ranks (ncclCommInitAll), ranks joined by id (ncclCommInitRank) and processes.
#[test]
fn faults_reach_every_rank_with_codes_and_reasons() {
    let exe = c_program("async_errors", &[]);
    let _s = serial();
    let out = run_ok(Command::new(exe));
    assert!(out.contains("async_errors OK"), "{out}");
    for kind in ["initall", "initrank"] {
        for check in ["a", "b", "c", "d", "e"] {
            assert!(out.contains(&format!("ok {kind} {check}: ")), "check {check} of {kind} did not run:\n{out}");
        }
    }
    assert!(out.contains("ok process f: "), "{out}");
    println!("{out}");
}

#[test]
fn cpp_program_includes_the_header() {
    let exe = work_dir().join("header_cpp");
    compile(true, "c++11", &[here().join("tests/c/header.cpp")], &exe, &[]);
    let _s = serial();
    assert!(run_ok(Command::new(exe)).contains("header.cpp OK"));
}

#[test]
fn example_allreduce_c() {
    let exe = work_dir().join("example_allreduce");
    compile(false, "c99", &[here().join("../examples/c/allreduce.c")], &exe, &[]);
    let _s = serial();
    assert_eq!(run_ok(Command::new(exe)).trim(), "1 3 5 7");
}

#[test]
fn static_library_links_too() {
    let exe = work_dir().join("example_static");
    let mut c = Command::new("cc");
    c.arg("-std=c99").args(WARNINGS).arg("-I").arg(here().join("include"));
    c.arg(here().join("../examples/c/allreduce.c")).arg("-o").arg(&exe);
    // As oxccl.pc's Libs.private: --gc-sections drops the code no entry point reaches (with
    // the `mpi` feature, Comm::from_mpi and its MPI references).
    let a = lib_dir().join("liboxccl.a");
    c.arg("-Wl,--gc-sections").arg(&a);
    // Built with the `ib` feature (the workspace's --all-features turns it on for this
    // crate's oxccl too), the library calls libibverbs: oxccl.pc then says -libverbs.
    let bytes = std::fs::read(&a).unwrap();
    if bytes.windows(19).any(|w| w == b"ibv_get_device_list") {
        c.arg("-libverbs");
    }
    c.args(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s", "-lutil"]);
    run_ok(c);
    let _s = serial();
    assert_eq!(run_ok(Command::new(exe)).trim(), "1 3 5 7");
}

/// A translation unit using the header's types, macros and a call with a stream.
const TU: &str = r#"
#include "nccl.h"
int use_header(void);
int use_header(void) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  cudaStream_t stream = 0;
  ncclUniqueId id;
  (void)id;
  return (int)ncclAllReduce(0, 0, 0, ncclFloat, ncclSum, NCCL_COMM_NULL, stream) + (int)config.size;
}
"#;

fn compile_tu(cxx: bool, std: &str, prelude: &str, include: &[&Path], defines: &[&str]) {
    let src = work_dir().join(format!("tu{}.{}", rand_suffix(), if cxx { "cpp" } else { "c" }));
    std::fs::write(&src, format!("{prelude}\n{TU}")).unwrap();
    let mut extra: Vec<String> = vec!["-c".into()];
    for d in include {
        extra.push("-isystem".into());
        extra.push(d.display().to_string());
    }
    extra.extend(defines.iter().map(|d| d.to_string()));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    compile(cxx, std, std::slice::from_ref(&src), &src.with_extension("o"), &extra);
}

#[test]
fn header_compiles_as_c_and_cpp_without_cuda() {
    for (cxx, std) in [(false, "c99"), (false, "c11"), (true, "c++11"), (true, "c++17")] {
        compile_tu(cxx, std, "", &[], &[]);
    }
}

#[test]
fn header_agrees_with_a_stub_cuda_runtime_in_either_order() {
    // CUDA declares cudaStream_t in driver_types.h, under that header's include guard.
    let stub = work_dir().join("stub-cuda");
    std::fs::create_dir_all(&stub).unwrap();
    std::fs::write(
        stub.join("cuda_runtime.h"),
        "#ifndef __CUDA_RUNTIME_H__\n#define __CUDA_RUNTIME_H__\n#ifndef __DRIVER_TYPES_H__\n#define __DRIVER_TYPES_H__\ntypedef struct CUstream_st *cudaStream_t;\n#endif\n#endif\n",
    )
    .unwrap();
    for (cxx, std) in [(false, "c99"), (true, "c++11")] {
        compile_tu(cxx, std, "", &[&stub], &[]);
        compile_tu(cxx, std, "#include <cuda_runtime.h>", &[&stub], &[]);
        compile_tu(cxx, std, "#include <cuda_runtime.h>", &[&stub], &["-DOXCCL_NO_CUDA_HEADERS"]);
    }
}

/// CUDA's real headers, where installed: a toolkit, or the pip wheels
/// nvidia-cuda-runtime-cu12 (cuda_runtime.h) and nvidia-cuda-nvcc-cu12 (crt/), found in
/// Python's site-packages or under the directories of `OXCCL_CUDA_INCLUDE` (include
/// directories, or `pip install --target` directories; scripts/test.sh sets it).
fn cuda_include_dirs() -> Option<Vec<PathBuf>> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("OXCCL_CUDA_INCLUDE") {
        bases.extend(std::env::split_paths(&v));
    }
    bases.push("/usr/local/cuda/include".into());
    if let Ok(o) = Command::new("python3").args(["-c", "import site; print(' '.join(site.getsitepackages()))"]).output()
    {
        bases.extend(String::from_utf8_lossy(&o.stdout).split_whitespace().map(PathBuf::from));
    }
    let roots: Vec<PathBuf> = bases
        .iter()
        .flat_map(|b| [b.clone(), b.join("nvidia/cuda_runtime/include"), b.join("nvidia/cuda_nvcc/include")])
        .collect();
    let runtime = roots.iter().find(|d| d.join("cuda_runtime.h").exists())?.clone();
    let crt = roots.iter().find(|d| d.join("crt/host_config.h").exists())?.clone();
    Some(if runtime == crt { vec![runtime] } else { vec![runtime, crt] })
}

#[test]
fn header_compiles_with_cudas_own_headers() {
    let Some(dirs) = cuda_include_dirs() else {
        println!(
            "skipped: header_compiles_with_cudas_own_headers (no cuda_runtime.h with crt/host_config.h; \
             pip install nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12, then set OXCCL_CUDA_INCLUDE)"
        );
        return;
    };
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    for (cxx, std) in [(false, "c99"), (false, "c11"), (true, "c++11"), (true, "c++17")] {
        compile_tu(cxx, std, "", &dirs, &[]);
        compile_tu(cxx, std, "#include <cuda_runtime.h>", &dirs, &[]);
    }
}

#[test]
fn header_layout_and_values_match_the_library() {
    let exe = c_program("abi_layout", &[]);
    let out = run_ok(Command::new(exe));
    let get = |k: &str| -> i64 {
        out.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{k} missing from:\n{out}"))
            .parse()
            .unwrap()
    };
    macro_rules! off {
        ($($c:ident => $r:ident),* $(,)?) => {$(
            assert_eq!(get(concat!("offset.", stringify!($c))), std::mem::offset_of!(NcclConfig, $r) as i64,
                       concat!("offset of ", stringify!($c)));
        )*};
    }
    off!(size => size, magic => magic, version => version, blocking => blocking,
         cgaClusterSize => cga_cluster_size, minCTAs => min_ctas, maxCTAs => max_ctas, netName => net_name,
         splitShare => split_share, trafficClass => traffic_class, commName => comm_name,
         collnetEnable => collnet_enable, CTAPolicy => cta_policy, shrinkShare => shrink_share,
         nvlsCTAs => nvls_ctas, nChannelsPerNetPeer => n_channels_per_net_peer,
         nvlinkCentricSched => nvlink_centric_sched, graphUsageMode => graph_usage_mode,
         numRmaCtx => num_rma_ctx, maxP2pPeers => max_p2p_peers, graphStreamOrdering => graph_stream_ordering);
    assert_eq!(get("sizeof.ncclConfig_t"), std::mem::size_of::<NcclConfig>() as i64);
    assert_eq!(get("sizeof.ncclUniqueId"), oxccl::UniqueId::BYTES as i64);
    for t in ["ncclResult_t", "ncclDataType_t", "ncclRedOp_t"] {
        assert_eq!(get(&format!("sizeof.{t}")), 4, "{t} is int-sized");
    }
    assert_eq!(get("init.size"), std::mem::size_of::<NcclConfig>() as i64);
    assert_eq!(get("init.magic"), API_MAGIC as i64);
    assert_eq!(get("init.version"), VERSION_CODE as i64);
    assert_eq!(get("init.blocking"), UNDEF_INT as i64);
    assert_eq!(get("NCCL_VERSION_CODE"), VERSION_CODE as i64);
    assert_eq!(get("NCCL_VERSION(2,30,7)"), 23007);
    assert_eq!(get("NCCL_VERSION(2,8,4)"), 2804);
    assert_eq!(get("NCCL_SPLIT_NOCOLOR"), -1);
    assert_eq!(get("ncclNumOps"), NUM_OPS as i64);
    for (i, op) in oxccl::ReduceOp::BUILTIN.iter().enumerate() {
        let name = ["ncclSum", "ncclProd", "ncclMax", "ncclMin", "ncclAvg"][i];
        assert_eq!(get(name), op.code() as i64, "{name}");
    }
    let types = [
        "ncclInt8",
        "ncclUint8",
        "ncclInt32",
        "ncclUint32",
        "ncclInt64",
        "ncclUint64",
        "ncclFloat16",
        "ncclFloat32",
        "ncclFloat64",
        "ncclBfloat16",
        "ncclFloat8e4m3",
        "ncclFloat8e5m2",
    ];
    for (t, name) in oxccl::DataType::ALL.iter().zip(types) {
        assert_eq!(get(name), *t as i64, "{name}");
    }
    assert_eq!(get("ncclNumTypes"), oxccl::DataType::ALL.len() as i64);
    // The library's one table of result codes is the header's, and every kind of error
    // reports its row's code.
    for r in oxccl::NCCL_RESULTS {
        assert_eq!(get(r.name), r.code as i64, "{}", r.name);
        for k in r.kinds {
            assert_eq!(oxccl::Error::new(*k, "").nccl_code(), r.code, "{k:?}");
        }
    }
    assert_eq!(get("ncclNumResults"), oxccl::NCCL_RESULTS.len() as i64);
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

#[test]
fn valgrind_finds_no_errors() {
    if !have("valgrind") {
        println!("skipped: valgrind not installed");
        return;
    }
    let progs = [c_program("invalid_args", &[]), c_program("initall_group", &[])];
    let _s = serial();
    for exe in progs {
        let mut c = Command::new("valgrind");
        c.args(["--error-exitcode=99", "--leak-check=no", "--quiet"]).arg(&exe);
        run_ok(c);
    }
}

#[test]
fn address_sanitizer_finds_no_errors() {
    let flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"];
    let progs =
        [c_program("collectives", &flags), c_program("initall_group", &flags), c_program("async_errors", &flags)];
    let _s = serial();
    for exe in progs {
        let mut c = Command::new(&exe);
        c.arg("2").env("UBSAN_OPTIONS", "halt_on_error=1");
        run_ok(c);
    }
}

#[test]
fn install_sh_installs_what_pkg_config_finds() {
    let prefix = work_dir().join("prefix");
    let mut c = Command::new("bash");
    c.arg(here().join("install.sh")).env("PREFIX", &prefix).env("OXCCL_LIB_DIR", built_dir());
    run_ok(c);
    let lib = prefix.join("lib");
    for f in ["liboxccl.so", "liboxccl.so.0", "liboxccl.a", "pkgconfig/oxccl.pc"] {
        assert!(lib.join(f).exists(), "{f} not installed");
    }
    assert!(prefix.join("include/oxccl/nccl.h").exists());
    if !have("pkg-config") {
        println!("skipped: pkg-config part of install_sh_installs_what_pkg_config_finds (no pkg-config)");
        return;
    }
    let pc = |args: &[&str]| {
        let mut c = Command::new("pkg-config");
        c.args(args).arg("oxccl").env("PKG_CONFIG_PATH", lib.join("pkgconfig"));
        run_ok(c).split_whitespace().map(String::from).collect::<Vec<_>>()
    };
    let exe = work_dir().join("example_pkg_config");
    let mut c = Command::new("cc");
    c.arg("-std=c99").args(WARNINGS).arg(here().join("../examples/c/allreduce.c")).arg("-o").arg(&exe);
    c.args(pc(&["--cflags"])).args(pc(&["--libs"])).arg(format!("-Wl,-rpath,{}", lib.display()));
    run_ok(c);
    // Statically: the archive, then what `--static --libs` adds to -loxccl (Libs.private,
    // -libverbs included when the library was built with `ib`) must be all it needs.
    let exe_static = work_dir().join("example_pkg_config_static");
    let mut c = Command::new("cc");
    c.arg("-std=c99").args(WARNINGS).arg(here().join("../examples/c/allreduce.c")).arg("-o").arg(&exe_static);
    c.args(pc(&["--cflags"])).arg(lib.join("liboxccl.a"));
    c.args(pc(&["--static", "--libs"]).into_iter().filter(|a| a != "-loxccl" && !a.starts_with("-L")));
    run_ok(c);
    let _s = serial();
    assert_eq!(run_ok(Command::new(exe)).trim(), "1 3 5 7");
    assert_eq!(run_ok(Command::new(exe_static)).trim(), "1 3 5 7");
}
