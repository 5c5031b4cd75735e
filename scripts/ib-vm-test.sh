#!/usr/bin/env bash
# Runs the InfiniBand verbs tests for real: builds tests/ib_verbs.rs (feature `ib`, for
# the default target CPU: the VM's emulated CPU has no AVX-512, so never
# target-cpu=native) and runs the binary inside the Soft-RoCE VM of
# ../shared/rdma-vm/run-in-rdma-vm.sh (a sibling of the repository; two RDMA devices,
# rxe0 and rxe1, on a veth pair; see its README.md). Boot ~5 s, then the tests.
# Where the VM script is missing or the VM cannot boot (its exit code 125), prints
# `skipped: rdma-vm cannot boot: <why>` and exits 0. Otherwise exits with the tests' code.
# RDMA_VM_SCRIPT overrides the VM script's path; RDMA_VM_TIMEOUT (default 300 s) bounds
# the run.
set -uo pipefail
cd "$(dirname "$0")/.."
VM=${RDMA_VM_SCRIPT:-../shared/rdma-vm/run-in-rdma-vm.sh}
if [ ! -f "$VM" ]; then
  echo "skipped: rdma-vm cannot boot: $VM not found"
  exit 0
fi
# The default target CPU, whatever the caller's RUSTFLAGS say.
if [[ "${RUSTFLAGS:-}" == *target-cpu=native* ]]; then
  RUSTFLAGS=$(sed -E 's/(-C *)?target-cpu=native//g' <<<"$RUSTFLAGS")
  export RUSTFLAGS
fi
unset CARGO_ENCODED_RUSTFLAGS
build=(cargo test --features ib --no-run --test ib_verbs)
bin=$("${build[@]}" --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*ib_verbs[^"]*"' | tail -1 | cut -d'"' -f4)
if [ -z "$bin" ]; then
  echo "building tests/ib_verbs.rs failed:" >&2
  "${build[@]}"
  exit 1
fi
echo "running $bin in the Soft-RoCE VM ($VM)"
err=$(mktemp)
trap 'rm -f "$err"' EXIT
RDMA_VM_TIMEOUT=${RDMA_VM_TIMEOUT:-300} RDMA_VM_SHARE=$PWD bash "$VM" "$bin" --nocapture --test-threads=1 2>"$err"
rc=$?
cat "$err" >&2
if [ $rc -eq 125 ]; then
  why=$(grep -v '^[[:space:]]*$' "$err" | tail -1)
  echo "skipped: rdma-vm cannot boot: ${why:-exit code 125, no message}"
  exit 0
fi
exit $rc
