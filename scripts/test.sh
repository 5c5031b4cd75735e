#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#
#   ./scripts/test.sh
#
# Installs what it needs when missing, then checks formatting and lints and runs every
# test: unit tests, the multi-rank matrix with ranks as threads and as processes (shared
# memory and TCP), two "hosts" in network namespaces (skipped, by name, without root),
# the launcher, the API tests, the doc tests, the CUDA kernels run on the CPU (a host C++
# build of kernels.cu, checked against the CPU kernels) and compiled by NVRTC and ptxas
# for sm_80/sm_90 (pip wheels, no GPU), the C ABI's C and C++ programs (built with
# the system compilers; one run under valgrind, one under ASan), short checked runs of every *_perf example
# with thread ranks and with processes under oxccl-run (with their -J and --plot outputs
# checked) and of the data_parallel training example; then jobs under mpirun, with 2 and
# 4 ranks, under both Open MPI and MPICH: all_reduce_perf built without the `mpi` feature
# (ranks from the launcher's environment, OXCCL_COMM_ID), and Comm::from_mpi (the `mpi`
# feature, built once against each MPI); the perf examples' tables as they reach files
# (scripts/perf-output-check.sh); then every cargo-fuzz target for 30 s when a
# nightly toolchain is there (else a SKIPPED: fuzzing line).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

need_cmd() { command -v "$1" >/dev/null 2>&1; }

# --- prerequisites -----------------------------------------------------------------
if ! need_cmd cargo; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) and re-run" >&2
  exit 1
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if need_cmd rustup; then
      log "installing rustup component $comp"
      rustup component add "$comp"
    else
      echo "cargo $comp is missing and rustup is not available to install it" >&2
      exit 1
    fi
  fi
done

# --- MPI and libclang ---------------------------------------------------------------
# The `mpi` feature (rsmpi) links an MPI library, and mpi-sys generates its bindings with
# bindgen, which loads libclang. CI builds and tests with every feature, and runs jobs
# under Open MPI's and MPICH's mpirun: install both (Debian/Ubuntu packages) when missing.
MPI_PKGS=(openmpi-bin libopenmpi-dev mpich libmpich-dev libclang-dev pkg-config)
# The C ABI's tests (ffi/tests/c_abi.rs) compile C and C++ programs against nccl.h, link
# liboxccl, install it with pkg-config, and run a program under valgrind.
MPI_PKGS+=(gcc g++ valgrind)
# The `ib` feature (rdma-sys, also through bindgen) links libibverbs and librdmacm.
MPI_PKGS+=(libibverbs-dev librdmacm-dev)

# Runs a command as root: directly, or through sudo (without a password prompt when
# there is no terminal to type one).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif need_cmd sudo; then
    if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
  else
    return 1
  fi
}

if need_cmd dpkg-query && need_cmd apt-get; then
  missing=()
  for p in "${MPI_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    if ! { as_root apt-get update -qq >/dev/null &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      echo "could not install ${missing[*]}: run as root, or with sudo" >&2
    fi
  fi
fi

have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] || ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'
}
HAVE_OPENMPI=0
HAVE_MPICH=0
need_cmd mpirun.openmpi && need_cmd mpicc.openmpi && HAVE_OPENMPI=1
need_cmd mpirun.mpich && need_cmd mpicc.mpich && HAVE_MPICH=1

# mpi-sys binds to the MPI that MPICC names (else `mpicc`, which Debian points at Open
# MPI), once, when first built: name it, so that target/ holds an Open MPI build.
if [ "$HAVE_OPENMPI" = 1 ]; then
  export MPICC=mpicc.openmpi
  MAIN_MPI=openmpi
elif [ "$HAVE_MPICH" = 1 ]; then
  export MPICC=mpicc.mpich
  MAIN_MPI=mpich
else
  MAIN_MPI=
fi
have_verbs() {
  have_libclang && ldconfig -p 2>/dev/null | grep -q 'librdmacm\.so ' && ldconfig -p 2>/dev/null | grep -q 'libibverbs\.so '
}
if have_libclang && have_verbs && { [ -n "$MAIN_MPI" ] || need_cmd mpicc; }; then
  FEATURES=(--all-features)
  WITH_MPI=1
else
  # Every feature but `mpi`, as `oxccl/NAME` (the workspace has two packages).
  # (and `ib` too when libibverbs, librdmacm or libclang is missing).
  no_ib=$(have_verbs || echo ib)
  others=$(awk '/^\[features\]/ { f = 1; next } /^\[/ { f = 0 } f && /^[A-Za-z0-9_-]+ *=/ { print $1 }' Cargo.toml |
    grep -vx -e default -e mpi -e "${no_ib:-mpi}" | sed 's|^|oxccl/|' | paste -sd, -)
  FEATURES=(--features "$others")
  WITH_MPI=0
  printf '\nSKIPPED: the `mpi` feature and every mpirun test: they need an MPI library (mpicc) and libclang,\n' >&2
  printf 'which could not be installed (%s); building with --features %s instead of --all-features\n' \
    "${MPI_PKGS[*]}" "$others" >&2
fi

# --- CUDA's headers, NVRTC and ptxas (pip wheels, no GPU) --------------------------
# nccl.h must compile with CUDA's own cuda_runtime.h (the C ABI's header test), and
# tests/cuda_kernels_cpu.rs builds kernels.cu as host C++ against these headers and runs it;
# tests/cuda_kernels.rs compiles every CUDA kernel with NVRTC for sm_80 and sm_90 and
# assembles it with `ptxas -v` (failing on a register spill). Without a toolkit, the pip
# wheels nvidia-cuda-runtime-cu12 (cuda_runtime.h, cuda_fp16.h, ...), nvidia-cuda-nvcc-cu12
# (crt/, ptxas) and nvidia-cuda-nvrtc-cu12 (libnvrtc) provide them without a GPU, in a
# cache folder under target/; the tests skip themselves, by name, when they are missing.
CUDA_WHEELS=target/cuda-wheels
if [ ! -f "$CUDA_WHEELS/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ] || [ ! -x "$CUDA_WHEELS/nvidia/cuda_nvcc/bin/ptxas" ] ||
  [ ! -f "$CUDA_WHEELS/nvidia/cuda_runtime/include/cuda_fp16.h" ]; then
  if need_cmd python3 && python3 -m pip --version >/dev/null 2>&1; then
    log "installing CUDA's headers, NVRTC and ptxas (pip wheels) into $CUDA_WHEELS"
    python3 -m pip install -q --no-deps --upgrade --target "$CUDA_WHEELS" \
      nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12 ||
      echo "could not install the CUDA wheels: the header and kernel compilation tests will be skipped" >&2
  fi
fi
export OXCCL_CUDA_INCLUDE=$PWD/$CUDA_WHEELS${OXCCL_CUDA_INCLUDE:+:$OXCCL_CUDA_INCLUDE}
export OXCCL_NVRTC_LIB=${OXCCL_NVRTC_LIB:-$PWD/$CUDA_WHEELS}
export OXCCL_PTXAS=${OXCCL_PTXAS:-$PWD/$CUDA_WHEELS}

# --- static checks -----------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, ${FEATURES[*]}, warnings are errors)"
cargo clippy --workspace --all-targets "${FEATURES[@]}" -- -D warnings

# --- tests -------------------------------------------------------------------------
# The test profile is optimised (Cargo.toml) but keeps debug assertions.
# With the `mpi` feature this includes tests/mpi.rs: Comm::from_mpi under the mpirun of
# the MPI it was built against (OXCCL_TEST_MPI: and no other).
log "cargo test (unit, multi-rank, API, fault injection, mismatches, a 2 minute soak, doc tests, the C ABI's C/C++ programs, from_mpi under ${MAIN_MPI:-no} MPI)"
OXCCL_TEST_MPI=$MAIN_MPI cargo test --workspace "${FEATURES[@]}"

# The GPU tests pass without a GPU by skipping; run them again uncaptured so that their
# "skipped: ..." lines (or, on a GPU machine, their results) show in the log by name.
if [[ " ${FEATURES[*]} " == *all-features* ]]; then
  log "GPU tests by name (scripts/gpu-check.sh runs them on a machine with a GPU)"
  # (Display only: both already passed in the run above.)
  cargo test -q --features cuda --test cuda_collectives -- --nocapture --test-threads=1 2>&1 |
    grep -oE "skipped: .*|[0-9]+ process.*|test result.*" || true
  (cd ffi && cargo test -q --features cuda --test cuda_abi -- --nocapture 2>&1 |
    grep -oE "skipped: .*|ncclAllReduce.*|test result.*") || true
fi

log "all_reduce_perf smoke run: every type and op, 3 thread ranks, results checked"
target/debug/examples/all_reduce_perf -b 8 -e 256K -f 8 -t 3 -d all -o all -n 2 -w 1 -c 1

log "all_reduce_perf under oxccl-run: 3 processes over shared memory, then over TCP"
target/debug/oxccl-run -n 3 --no-tag-output --timeout 300 -- \
  target/debug/examples/all_reduce_perf -b 8 -e 4M -f 8 -d all -o sum -n 2 -w 1 -c 1
OXCCL_SHM_DISABLE=1 target/debug/oxccl-run -n 3 --no-tag-output --timeout 300 -- \
  target/debug/examples/all_reduce_perf -b 8 -e 4M -f 8 -d float -o all -n 2 -w 1 -c 1

PERF=target/debug/examples
RUN3=(target/debug/oxccl-run -n 3 --no-tag-output --timeout 300 --)

log "the other perf examples: 3 thread ranks, then 3 processes under oxccl-run"
for ex in all_gather_perf reduce_scatter_perf broadcast_perf reduce_perf alltoall_perf sendrecv_perf; do
  case $ex in
    broadcast_perf | reduce_perf) extra=(-r all) ;;
    *) extra=() ;;
  esac
  log "$ex -t 3"
  "$PERF/$ex" -b 8 -e 256K -f 8 -t 3 -d all -o all "${extra[@]}" -n 2 -w 1 -c 1
  log "$ex under oxccl-run -n 3"
  "${RUN3[@]}" "$PERF/$ex" -b 8 -e 1M -f 8 -d float -o all "${extra[@]}" -n 2 -w 1 -c 1
done

log "perf examples: a bad flag is refused with status 2 and a message, not a panic"
rc=0
"$PERF/reduce_perf" --no-such-flag 2>"${TMPDIR:-/tmp}/oxccl-perf-badflag.$$" >/dev/null || rc=$?
msg=$(cat "${TMPDIR:-/tmp}/oxccl-perf-badflag.$$")
rm -f "${TMPDIR:-/tmp}/oxccl-perf-badflag.$$"
if [[ $rc -ne 2 || $msg != *"invalid option '--no-such-flag'"* || $msg == *panicked* ]]; then
  echo "reduce_perf --no-such-flag: status $rc, stderr:" >&2
  echo "$msg" >&2
  exit 1
fi

log "perf examples: -J (threads and processes), --plot with a peer, perf_plot merging"
perf_out=$(mktemp -d)
trap 'rm -rf "$perf_out"' EXIT
printf 'size,busbw\n8,0.01\n1K,0.5\n1M,2.5\n' >"$perf_out/peer.csv"
"$PERF/all_gather_perf" -b 8 -e 1M -f 8 -t 3 -n 2 -w 1 -c 1 -J "$perf_out/ag.json" \
  --plot "$perf_out/ag.svg" --plot-peer "$perf_out/peer.csv:a peer"
"${RUN3[@]}" "$PERF/all_reduce_perf" -b 8 -e 1M -f 8 -n 2 -w 1 -c 1 -J "$perf_out/ar.json"
"$PERF/perf_plot" -o "$perf_out/both.svg" "$perf_out/ag.json" "$perf_out/ar.json" "$perf_out/peer.csv:a peer"
for f in ag.json ar.json ag.svg both.svg; do
  [[ -s "$perf_out/$f" ]] || { echo "missing or empty: $f" >&2; exit 1; }
done
for f in ag.svg both.svg; do
  head -c 4 "$perf_out/$f" | grep -q '<svg' || { echo "$f is not an SVG" >&2; exit 1; }
done
if need_cmd python3; then
  python3 - "$perf_out/ag.json" "$perf_out/ar.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    with open(path) as f:
        doc = json.load(f)
    rows = doc["results"]
    assert rows, f"{path}: no results"
    assert all(r["out_of_place"]["nwrong"] == 0 for r in rows), f"{path}: wrong values"
    assert doc["out_of_bounds"]["count"] == 0, path
    print(f"{path}: {doc['collective']}, {doc['config']['nranks']} ranks, {len(rows)} rows: valid JSON")
PY
elif need_cmd jq; then
  jq -e '.results | length > 0' "$perf_out/ag.json" "$perf_out/ar.json" >/dev/null
else
  echo "neither python3 nor jq: the JSON files are not parsed"
fi

# The training example checks itself: the loss falls, weights are bit-identical on every
# rank and in both schedules (overlapped and after the backward pass).
# Built optimised (the test profile, whose library `cargo test` already built): it trains.
log "data_parallel: 3 thread ranks, then 2 processes under oxccl-run"
cargo build --profile test "${FEATURES[@]}" --example data_parallel
dp_args=(-s 40 -B 8)
target/debug/examples/data_parallel -t 3 "${dp_args[@]}"
target/debug/oxccl-run -n 2 --no-tag-output --timeout 300 -- target/debug/examples/data_parallel "${dp_args[@]}"

# --- mpirun --------------------------------------------------------------------------
# Each mpirun has a deadline: a hang fails with a message instead of stalling CI.
MPI_DEADLINE=120

# mpi_run WHAT MPIRUN ARGS...: runs an mpirun under `timeout`; exits on failure or hang.
mpi_run() {
  local what=$1 rc=0
  shift
  timeout -k 10 "$MPI_DEADLINE" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "FAILED: $what did not end within ${MPI_DEADLINE} s (a hang?): killed" >&2
    exit 1
  elif [ "$rc" -ne 0 ]; then
    echo "FAILED: $what: exit status $rc" >&2
    exit 1
  fi
}

# A TCP port of 127.0.0.1 that nothing listens on now, for rank 0's root.
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo 29500
}

MPIS=()
[ "$HAVE_OPENMPI" = 1 ] && MPIS+=(openmpi)
[ "$HAVE_MPICH" = 1 ] && MPIS+=(mpich)
if [ "${#MPIS[@]}" -gt 0 ]; then
  # Without the feature: the harness takes the rank and size from mpirun's environment
  # (Open MPI: OMPI_COMM_WORLD_RANK/SIZE; MPICH's hydra: PMI_RANK/PMI_SIZE) and rank 0's
  # address from OXCCL_COMM_ID, which mpirun passes on (-x, -env).
  log "building the perf examples without the mpi feature (target/nompi)"
  CARGO_TARGET_DIR=target/nompi cargo build --example all_reduce_perf --example all_gather_perf \
    --example reduce_scatter_perf --example broadcast_perf --example reduce_perf --example alltoall_perf \
    --example sendrecv_perf
  perf=target/nompi/debug/examples/all_reduce_perf
  perf_args=(-b 8 -e 1M -f 32 -d float -o sum -n 2 -w 1 -c 1)
  for n in 2 4; do
    for m in "${MPIS[@]}"; do
      log "all_reduce_perf under $m's mpirun, $n ranks, OXCCL_COMM_ID"
      if [ "$m" = openmpi ]; then
        mpi_run "mpirun.openmpi -np $n all_reduce_perf" \
          mpirun.openmpi --allow-run-as-root --oversubscribe -np "$n" -x OXCCL_COMM_ID="127.0.0.1:$(free_port)" \
          "$perf" "${perf_args[@]}"
      else
        mpi_run "mpirun.mpich -np $n all_reduce_perf" \
          mpirun.mpich -np "$n" -env OXCCL_COMM_ID "127.0.0.1:$(free_port)" "$perf" "${perf_args[@]}"
      fi
    done
  done
fi

# With the feature (cargo test built the examples with it, against $MAIN_MPI): a bare
# mpirun, no OXCCL_COMM_ID; MPI hands out the unique id (Comm::from_env_or_mpi).
if [ "$WITH_MPI" = 1 ] && [ -n "$MAIN_MPI" ]; then
  for n in 2 4; do
    log "all_reduce_perf built with --features mpi under $MAIN_MPI's mpirun, $n ranks, no OXCCL_COMM_ID"
    if [ "$MAIN_MPI" = openmpi ]; then
      mpirun_main=(mpirun.openmpi --allow-run-as-root --oversubscribe -np "$n")
    else
      mpirun_main=(mpirun.mpich -np "$n")
    fi
    mpi_run "${mpirun_main[*]} all_reduce_perf (mpi feature)" \
      "${mpirun_main[@]}" target/debug/examples/all_reduce_perf -b 8 -e 1M -f 32 -d float -o sum -n 2 -w 1 -c 1
  done
  log "data_parallel built with --features mpi under $MAIN_MPI's mpirun, 4 ranks"
  mpi_run "${mpirun_main[*]} data_parallel (mpi feature)" \
    "${mpirun_main[@]}" target/debug/examples/data_parallel "${dp_args[@]}"
fi

# The table each perf example leaves in a file is nccl-tests' bytes, whatever starts it
# (Open MPI's mpirun with and without the feature, oxccl-run, a pseudo-terminal), and its
# -J and --plot outputs agree with it; about 15 s.
log "perf examples' output in files: mpirun, oxccl-run, pseudo-terminals (scripts/perf-output-check.sh)"
PERF_MPI=$([ "$WITH_MPI" = 1 ] && [ "$MAIN_MPI" = openmpi ] && echo target/debug/examples || true) \
  PERF_NOMPI=$([ "$HAVE_OPENMPI" = 1 ] && echo target/nompi/debug/examples || true) \
  scripts/perf-output-check.sh

# With the feature, against the other MPI: mpi-sys binds to one MPI per build, so build
# the test again into its own target directory (tests/mpi.rs picks the matching mpirun).
if [ "$WITH_MPI" = 1 ] && [ "${#MPIS[@]}" = 2 ]; then
  other=$([ "$MAIN_MPI" = openmpi ] && echo mpich || echo openmpi)
  log "Comm::from_mpi under $other (--features mpi, MPICC=mpicc.$other, target/$other)"
  MPICC=mpicc.$other CARGO_TARGET_DIR=target/$other OXCCL_TEST_MPI=$other \
    cargo test --features mpi --test mpi
fi
if [ "${#MPIS[@]}" -lt 2 ]; then
  printf '\nSKIPPED: mpirun jobs under %s: not installed (%s)\n' \
    "$([ "$HAVE_OPENMPI" = 1 ] && echo MPICH || echo 'Open MPI')$([ "${#MPIS[@]}" = 0 ] && echo ' and MPICH')" \
    "${MPI_PKGS[*]}" >&2
fi

# --- InfiniBand verbs in the Soft-RoCE VM ----------------------------------------------
# In the `cargo test` runs above, tests/ib_verbs.rs (the verbs wrapper) and tests/ib.rs
# (the IB transport between rank processes) skip themselves (no RDMA device on this
# machine); their "skipped: ..." lines are shown here first. Then both run for real,
# against two software RDMA devices (rxe0, rxe1) inside the QEMU VM of
# ../shared/rdma-vm/run-in-rdma-vm.sh, a sibling of the repository (build, ~5 s boot, the
# tests: about a minute; the VM emulates its CPU); skipped, saying why, where that script
# is missing, the VM cannot boot, or the `ib` feature could not be built.
if [[ " ${FEATURES[*]} " == *all-features* ]] || [[ " ${FEATURES[*]} " == *oxccl/ib* ]]; then
  log "InfiniBand tests outside the VM (they skip themselves, by name)"
  cargo test -q "${FEATURES[@]}" --test ib_verbs --test ib -- --nocapture --test-threads=1 2>&1 |
    grep -oE "skipped: .*|test result.*" || true
  log "InfiniBand verbs and transport on Soft-RoCE (scripts/ib-vm-test.sh: tests/ib_verbs.rs, tests/ib.rs)"
  scripts/ib-vm-test.sh
else
  printf '\nSKIPPED: tests/ib_verbs.rs and tests/ib.rs in the Soft-RoCE VM: the ib feature needs libibverbs-dev, librdmacm-dev and libclang\n' >&2
fi

# --- the Python package and the torch.distributed backend -----------------------------
# scripts/python-test.sh: clippy of python/ (its own workspace), `pip install ./python`
# into a cached virtual environment with a pinned torch from PyPI, then pytest
# (python/tests: 2, 3 and 4 rank jobs with deadlines; about 4 minutes on 2 cores once
# the environment is cached, plus the native module's release build).
log "the Python package and the torch backend (scripts/python-test.sh)"
nice -n 10 scripts/python-test.sh

# --- fuzzing ---------------------------------------------------------------------------
# Every decoder of a peer's or a user's bytes has a cargo-fuzz target (fuzz/). CI runs
# each for FUZZ_SECONDS (20 s: with the nightly build of the targets, about 3-5 minutes on
# 2 cores, which keeps the suite, with its 2 minute soak, under its 30 minute budget);
# scripts/fuzz.sh 3600 hunts longer. Needs the nightly toolchain; cargo-fuzz is installed
# when missing.
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if ! cargo +nightly --version >/dev/null 2>&1; then
  printf '\nSKIPPED: fuzzing: no nightly toolchain (rustup toolchain install nightly; then scripts/fuzz.sh)\n' >&2
else
  if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || true
  fi
  if cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "fuzzing every target for ${FUZZ_SECONDS} s (scripts/fuzz.sh)"
    scripts/fuzz.sh "$FUZZ_SECONDS"
  else
    printf '\nSKIPPED: fuzzing: cargo-fuzz is not installed and could not be (cargo install cargo-fuzz --locked)\n' >&2
  fi
fi

log "all tests passed"
