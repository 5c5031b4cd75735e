#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#
#   ./scripts/test.sh
#
# Installs what it needs when missing, then checks formatting and lints and runs every
# test: unit tests, the multi-rank matrix with ranks as threads and as processes (shared
# memory and TCP), two "hosts" in network namespaces (skipped, by name, without root),
# the launcher, the API tests, the doc tests, and short checked runs of every *_perf
# example with thread ranks and with processes under oxccl-run (with their -J and
# --plot outputs checked).
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

log "all tests passed"
