//! The CUDA kernels compile, without a GPU: NVRTC compiles every kernel of
//! `src/cuda/kernels.cu` to PTX for sm_80 and sm_90, and `ptxas -v` assembles it; any
//! compile error, missing kernel or register spill fails. Prints each architecture's
//! register use.
//!
//! Needs libnvrtc (`OXCCL_NVRTC_LIB`, else the loader's path or a CUDA toolkit), CUDA's
//! headers (`OXCCL_CUDA_INCLUDE`, see `oxccl::cuda::find_include_dir`) and ptxas
//! (`OXCCL_PTXAS`, else `PATH` or the toolkit); scripts/test.sh installs the PyPI wheels
//! `nvidia-cuda-nvrtc-cu12`, `nvidia-cuda-runtime-cu12` and `nvidia-cuda-nvcc-cu12` into
//! target/cuda-wheels and sets the three. Without them the test prints `skipped: ...`.
#![cfg(feature = "cuda")]

use oxccl::DataType;
use oxccl::cuda::{self, Nvrtc};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// What ptxas reported for one kernel.
#[derive(Default, Debug)]
struct Usage {
    registers: u32,
    stack: u64,
    spill_stores: u64,
    spill_loads: u64,
}

fn find_ptxas() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("OXCCL_PTXAS") {
        let p = PathBuf::from(p);
        c.push(p.join("nvidia/cuda_nvcc/bin/ptxas"));
        c.push(p.join("ptxas"));
        c.push(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        c.extend(std::env::split_paths(&path).map(|d| d.join("ptxas")));
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(d) = std::env::var_os(var) {
            c.push(PathBuf::from(d).join("bin/ptxas"));
        }
    }
    c.push("/usr/local/cuda/bin/ptxas".into());
    c.into_iter().find(|p| p.is_file())
}

fn num_before(line: &str, unit: &str) -> Option<u64> {
    let i = line.find(unit)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Parses `ptxas -v` output: per entry function, registers, stack frame and spills.
fn parse_ptxas(out: &str) -> BTreeMap<String, Usage> {
    let mut m: BTreeMap<String, Usage> = BTreeMap::new();
    let mut cur = String::new();
    for line in out.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            cur = rest.split('\'').next().unwrap_or_default().to_string();
            m.entry(cur.clone()).or_default();
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            cur = rest.trim().to_string();
        } else if line.contains("spill stores") {
            let u = m.entry(cur.clone()).or_default();
            u.stack = num_before(line, "bytes stack frame").unwrap_or(0);
            u.spill_stores = num_before(line, "bytes spill stores").expect("spill stores");
            u.spill_loads = num_before(line, "bytes spill loads").expect("spill loads");
        } else if line.contains("Used ") && line.contains(" registers") {
            m.entry(cur.clone()).or_default().registers = num_before(line, "registers").expect("registers") as u32;
        }
    }
    m
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    let nvrtc = match Nvrtc::load() {
        Ok(n) => n,
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    let Some(include) = cuda::find_include_dir() else {
        println!(
            "skipped: CUDA's headers (cuda_fp16.h, cuda_bf16.h, cuda_fp8.h) not found: set OXCCL_CUDA_INCLUDE \
             (pip install --target DIR nvidia-cuda-runtime-cu12)"
        );
        return;
    };
    let Some(ptxas) = find_ptxas() else {
        println!("skipped: ptxas not found: set OXCCL_PTXAS (pip install --target DIR nvidia-cuda-nvcc-cu12)");
        return;
    };
    let version = nvrtc.version().expect("nvrtcVersion");
    println!(
        "NVRTC {}.{} ({}), headers {}, {}",
        version.0,
        version.1,
        nvrtc.path().display(),
        include.display(),
        ptxas.display()
    );

    let dir = std::env::temp_dir().join(format!("oxccl-cuda-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let names = cuda::kernel_names();
    let mut failures = Vec::new();
    for sm in [80u32, 90] {
        let opts = cuda::compile_options(sm, Some(&include), None);
        let compiled = match nvrtc.compile(cuda::KERNELS_SOURCE, cuda::KERNELS_FILE_NAME, &opts) {
            Ok(c) => c,
            Err(e) => panic!("NVRTC, sm_{sm}: {e}"),
        };
        if !compiled.log.trim().is_empty() {
            println!("NVRTC log, sm_{sm}:\n{}", compiled.log);
        }
        for n in &names {
            assert!(compiled.ptx.contains(&format!(".entry {n}(")), "sm_{sm}: no entry {n} in the PTX");
        }
        let ptx = dir.join(format!("kernels_sm{sm}.ptx"));
        std::fs::write(&ptx, &compiled.ptx).unwrap();
        let out = Command::new(&ptxas)
            .args(["-v", &format!("-arch=sm_{sm}"), "-o"])
            .arg(dir.join(format!("kernels_sm{sm}.cubin")))
            .arg(&ptx)
            .output()
            .expect("run ptxas");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "ptxas -arch=sm_{sm} failed ({}):\n{text}", out.status);
        for l in text.lines().filter(|l| l.contains("warning")) {
            println!("ptxas sm_{sm}: {l}");
        }
        let usage = parse_ptxas(&text);
        for n in &names {
            let Some(u) = usage.get(n) else { panic!("sm_{sm}: ptxas did not report {n}:\n{text}") };
            if u.spill_stores > 0 || u.spill_loads > 0 {
                failures.push(format!(
                    "sm_{sm} {n}: {} bytes spill stores, {} bytes spill loads",
                    u.spill_stores, u.spill_loads
                ));
            }
        }
        let (max_n, max_u) = usage.iter().max_by_key(|(_, u)| u.registers).unwrap();
        let (min_n, min_u) = usage.iter().min_by_key(|(_, u)| u.registers).unwrap();
        let spills: u64 = usage.values().map(|u| u.spill_stores + u.spill_loads).sum();
        let stack: Vec<_> =
            usage.iter().filter(|(_, u)| u.stack > 0).map(|(n, u)| format!("{n} {} B", u.stack)).collect();
        println!(
            "sm_{sm}: {} kernels, registers {}..{} (max {max_n}, min {min_n}), spill bytes {spills}, stack frames: {}",
            usage.len(),
            min_u.registers,
            max_u.registers,
            if stack.is_empty() { "none".to_string() } else { stack.join(", ") }
        );
        for t in DataType::ALL {
            let row: Vec<String> = cuda::KernelOp::ALL
                .iter()
                .map(|&op| format!("{} {}", op.name(), usage[&cuda::kernel_name(op, t)].registers))
                .collect();
            println!("  sm_{sm} {:>7}: {}", cuda::type_name(t), row.join(", "));
        }
        println!("  sm_{sm} copy: {}", usage[cuda::COPY_KERNEL].registers);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "register spills:\n{}", failures.join("\n"));
}

/// A compilation per data type holds that type's kernels and the copy, and nothing else.
#[test]
fn one_type_compiles_alone() {
    let (Ok(nvrtc), Some(include)) = (Nvrtc::load(), cuda::find_include_dir()) else {
        println!("skipped: NVRTC or CUDA's headers not found (OXCCL_NVRTC_LIB, OXCCL_CUDA_INCLUDE)");
        return;
    };
    for t in [DataType::Float16, DataType::Float8E5M2] {
        let c = nvrtc
            .compile(cuda::KERNELS_SOURCE, cuda::KERNELS_FILE_NAME, &cuda::compile_options(80, Some(&include), Some(t)))
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        let entries = c.ptx.matches(".entry ").count();
        assert_eq!(entries, cuda::KernelOp::ALL.len() + 1, "{t}");
        for op in cuda::KernelOp::ALL {
            assert!(c.ptx.contains(&format!(".entry {}(", cuda::kernel_name(op, t))));
        }
        assert!(c.ptx.contains(&format!(".entry {}(", cuda::COPY_KERNEL)));
    }
}

#[test]
fn a_compile_error_is_an_error_with_the_log() {
    let Ok(nvrtc) = Nvrtc::load() else {
        println!("skipped: NVRTC not found (OXCCL_NVRTC_LIB)");
        return;
    };
    let e = nvrtc.compile("__global__ void k() { undeclared(); }", "bad.cu", &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("nvrtcCompileProgram") && msg.contains("undeclared"), "{msg}");
}
