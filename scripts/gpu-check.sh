#!/usr/bin/env bash
# The GPU check: one script for a machine with one NVIDIA GPU. It
#   - builds with --features cuda (or, where the machine has no Rust toolchain, uses the
#     binaries `scripts/gpu-check.sh --prepare` built elsewhere into target/gpu-bin);
#   - runs every GPU test: device collectives with 1, 2 and 4 processes on the one GPU,
#     the C ABI on device pointers, the kernels compiled for this GPU;
#   - runs the kernel bench (GB/s of f32, bf16 and f16 sum next to a device-to-device
#     copy, same run);
#   - runs cuda_all_reduce_perf on device buffers from 8 B to 1 GiB with 2 and 4
#     processes;
#   - writes everything to $OUT/gpu-check.log (./gpu-check.log without $OUT);
#   - stays under 8 minutes (each step has its own time limit).
#
#   scripts/gpu-check.sh --prepare   # here: build and strip the binaries into target/gpu-bin
#   scripts/gpu-check.sh             # there: run the check
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${OXCCL_GPU_BIN:-target/gpu-bin}

# Copies the newest build of test `name` (target/release/deps/name-HASH) to $BIN/name.
take_test() {
  local f
  f=$(ls -t target/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -1)
  [ -n "$f" ] || { echo "no test binary $1" >&2; exit 1; }
  cp "$f" "$BIN/$1"
}

prepare() {
  set -e
  cargo build --release --features cuda --bins --example cuda_all_reduce_perf --example cuda_kernel_bench
  cargo test --release --features cuda --no-run --test cuda_collectives --test cuda_kernels
  (cd ffi && cargo test --release --features cuda --no-run --test cuda_abi)
  rm -rf "$BIN" && mkdir -p "$BIN"
  cp target/release/oxccl-run target/release/examples/cuda_all_reduce_perf target/release/examples/cuda_kernel_bench "$BIN/"
  take_test cuda_collectives
  take_test cuda_kernels
  take_test cuda_abi
  strip "$BIN"/*
  # The Python package's wheel (abi3): the torch CUDA case below installs it there.
  if command -v maturin >/dev/null 2>&1; then
    (cd python && maturin build --release -q -o "../$BIN") || echo "no wheel: the torch CUDA case will skip"
  fi
  du -sh "$BIN"
}

if [ "${1:-}" = "--prepare" ]; then
  prepare
  exit 0
fi

OUTDIR=${OUT:-.}
LOG=$OUTDIR/gpu-check.log
mkdir -p "$OUTDIR"
exec > >(tee "$LOG") 2>&1
START=$(date +%s)
FAILED=()
step() { # step NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name (limit ${limit}s, at +$(($(date +%s) - START))s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  [ $rc -eq 0 ] || { echo "=== $name FAILED (exit $rc)"; FAILED+=("$name"); }
}

echo "=== gpu-check $(date -u +%FT%TZ) on $(hostname)"
GPU=1
nvidia-smi -L || { GPU=0; echo "NO NVIDIA GPU HERE (nvidia-smi failed): the steps below can only show that they skip cleanly"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true

# NVRTC and CUDA's headers: the toolkit's, or the Python wheels'.
for d in /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include; do
  [ -f "$d/cuda_fp16.h" ] && export OXCCL_CUDA_INCLUDE=${OXCCL_CUDA_INCLUDE:-$d}
done
for f in /usr/local/cuda/lib64/libnvrtc.so /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda/lib64/libnvrtc.so.12; do
  [ -f "$f" ] && export OXCCL_NVRTC_LIB=${OXCCL_NVRTC_LIB:-$f}
done
if [ -z "${OXCCL_NVRTC_LIB:-}" ]; then
  f=$(python3 -c 'import glob, nvidia, os; print(next(iter(sorted(glob.glob(os.path.join(nvidia.__path__[0], "**", "libnvrtc.so.1*"), recursive=True))), ""))' 2>/dev/null)
  [ -n "$f" ] && export OXCCL_NVRTC_LIB=$f
fi
[ -x /usr/local/cuda/bin/ptxas ] && export OXCCL_PTXAS=${OXCCL_PTXAS:-/usr/local/cuda/bin/ptxas}
echo "NVRTC: ${OXCCL_NVRTC_LIB:-not found}; headers: ${OXCCL_CUDA_INCLUDE:-not found}; ptxas: ${OXCCL_PTXAS:-not found}"

if command -v cargo >/dev/null; then
  step "build (--features cuda)" 400 bash "$0" --prepare
elif [ -x "$BIN/cuda_all_reduce_perf" ]; then
  echo "no Rust toolchain here: using the binaries in $BIN (built by 'scripts/gpu-check.sh --prepare')"
else
  echo "no Rust toolchain and no prebuilt binaries in $BIN: run 'scripts/gpu-check.sh --prepare' where cargo is"
  exit 1
fi

# The limits add up to under 8 minutes.
step "device collectives, 1, 2 and 4 processes on one GPU, staged and IPC" 90 \
  "$BIN/cuda_collectives" --test-threads=1 --nocapture
step "C ABI on device pointers" 30 "$BIN/cuda_abi" --nocapture
step "kernels: NVRTC + ptxas for sm_80/sm_90, no spills" 60 "$BIN/cuda_kernels" --nocapture
step "kernel bench (256 MiB)" 40 "$BIN/cuda_kernel_bench" --mib 256 --iters 20
for n in 2 4; do
  step "cuda_all_reduce_perf, $n processes, staged, 8 B - 1 GiB" 70 \
    "$BIN/oxccl-run" -n "$n" -- "$BIN/cuda_all_reduce_perf" -b 8 -e 1G -f 2 -n 5 -w 2
done
for n in 2 4; do
  step "cuda_all_reduce_perf, $n processes, CUDA IPC, 8 B - 1 GiB" 50 \
    env OXCCL_CUDA_IPC=1 "$BIN/oxccl-run" -n "$n" -- "$BIN/cuda_all_reduce_perf" -b 8 -e 1G -f 2 -n 20 -w 5
done

# torch.distributed on oxccl with CUDA tensors (python/tests/test_torch.py's CUDA case:
# 2 processes on the GPU, all_reduce and all_gather_into_tensor on the current stream),
# where the machine has a torch with CUDA and the wheel was prepared.
whl=$(ls "$BIN"/oxccl-*.whl 2>/dev/null | head -1)
if [ -n "$whl" ] && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  step "torch backend: CUDA tensors (pytest -k cuda)" 120 bash -c \
    "python3 -m pip install -q --no-deps --force-reinstall '$whl' && cd python/tests && python3 -m pytest -q -rs -k cuda test_torch.py"
else
  echo "=== SKIPPED: torch backend with CUDA tensors: no torch with CUDA here, or no prepared wheel in $BIN"
fi

echo
echo "=== done in $(($(date +%s) - START)) s"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "=== FAILED: ${FAILED[*]}"
  exit 1
fi
if [ $GPU = 0 ]; then
  echo "=== no GPU: every GPU step skipped; nothing was measured"
else
  echo "=== all GPU checks passed"
fi
