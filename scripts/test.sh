#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#
#   ./scripts/test.sh
#
# Installs what it needs when missing, then checks formatting and lints and runs every
# test: unit tests, the multi-rank matrix with ranks as threads and as processes (shared
# memory and TCP), two "hosts" in network namespaces (skipped, by name, without root),
# the launcher, the API tests, the doc tests, and short checked runs of all_reduce_perf
# with thread ranks and with processes under oxccl-run.
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

# --- static checks -----------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# --- tests -------------------------------------------------------------------------
# The test profile is optimised (Cargo.toml) but keeps debug assertions.
log "cargo test (unit, multi-rank, API, doc tests)"
cargo test --workspace --all-features

log "all_reduce_perf smoke run: every type and op, 3 thread ranks, results checked"
target/debug/examples/all_reduce_perf -b 8 -e 256K -f 8 -t 3 -d all -o all -n 2 -w 1 -c 1

log "all_reduce_perf under oxccl-run: 3 processes over shared memory, then over TCP"
target/debug/oxccl-run -n 3 --no-tag-output --timeout 300 -- \
  target/debug/examples/all_reduce_perf -b 8 -e 4M -f 8 -d all -o sum -n 2 -w 1 -c 1
OXCCL_SHM_DISABLE=1 target/debug/oxccl-run -n 3 --no-tag-output --timeout 300 -- \
  target/debug/examples/all_reduce_perf -b 8 -e 4M -f 8 -d float -o all -n 2 -w 1 -c 1

# The training example checks itself: the loss falls, weights are bit-identical on every
# rank and in both schedules (overlapped and after the backward pass).
# Built optimised (the test profile, whose library `cargo test` already built): it trains.
log "data_parallel: 3 thread ranks, then 2 processes under oxccl-run"
cargo build --profile test --example data_parallel
dp_args=(-s 25 -w 256 -B 8 -k 256)
target/debug/examples/data_parallel -t 3 "${dp_args[@]}"
target/debug/oxccl-run -n 2 --no-tag-output --timeout 300 -- target/debug/examples/data_parallel "${dp_args[@]}"

log "all tests passed"
