#!/usr/bin/env bash
# Runs the InfiniBand tests for real: builds tests/ib_verbs.rs and tests/ib.rs (feature `ib`, for
# the default target CPU: the VM's emulated CPU has no AVX-512, so never
# target-cpu=native) and runs the binary inside the Soft-RoCE VM of
# ../shared/rdma-vm/run-in-rdma-vm.sh (a sibling of the repository; two RDMA devices,
# rxe0 and rxe1, on a veth pair; see its README.md). Boot ~5 s, then the tests.
# Where the VM script is missing or the VM cannot boot (its exit code 125), prints
# `skipped: tests/ib_verbs.rs and tests/ib.rs in the Soft-RoCE VM (...): rdma-vm cannot
# boot: <why>` and exits 0. Otherwise exits with the tests' code.
# RDMA_VM_SCRIPT overrides the VM script's path; RDMA_VM_TIMEOUT bounds
# the run (default 480 s; the tests take about 2.5 minutes there).
set -uo pipefail
cd "$(dirname "$0")/.."
VM=${RDMA_VM_SCRIPT:-../shared/rdma-vm/run-in-rdma-vm.sh}
if [ ! -f "$VM" ]; then
  echo "skipped: tests/ib_verbs.rs and tests/ib.rs in the Soft-RoCE VM (every test in them): rdma-vm cannot boot: $VM not found"
  exit 0
fi
# The default target CPU, whatever the caller's RUSTFLAGS say.
if [[ "${RUSTFLAGS:-}" == *target-cpu=native* ]]; then
  RUSTFLAGS=$(sed -E 's/(-C *)?target-cpu=native//g' <<<"$RUSTFLAGS")
  export RUSTFLAGS
fi
unset CARGO_ENCODED_RUSTFLAGS
# tests/ib_verbs.rs (the wrapper) and tests/ib.rs (the transport between rank
# processes), built together and run one after the other in one VM (one boot).
tests=(ib_verbs ib)
build=(cargo test --features ib --no-run)
for t in "${tests[@]}"; do build+=(--test "$t"); done
json=$("${build[@]}" --message-format=json 2>/dev/null)
bins=()
for t in "${tests[@]}"; do
  b=$(grep -o "\"executable\":\"[^\"]*/deps/${t}-[^\"]*\"" <<<"$json" | tail -1 | cut -d'"' -f4)
  if [ -z "$b" ]; then
    echo "building tests/$t.rs failed:" >&2
    "${build[@]}"
    exit 1
  fi
  bins+=("$b")
done
# In the VM: every binary, all of them even if one fails; the first failure's code.
inner='rc=0; for b in "$@"; do echo "=== $b"; "$b" --nocapture --test-threads=1 || { r=$?; [ $rc -eq 0 ] && rc=$r; }; done; exit $rc'
bin="${bins[*]}"
echo "running $bin in the Soft-RoCE VM ($VM)"
err=$(mktemp)
trap 'rm -f "$err"' EXIT
RDMA_VM_TIMEOUT=${RDMA_VM_TIMEOUT:-480} RDMA_VM_SHARE=$PWD bash "$VM" bash -c "$inner" ib-tests "${bins[@]}" 2>"$err"
rc=$?
cat "$err" >&2
if [ $rc -eq 125 ]; then
  why=$(grep -v '^[[:space:]]*$' "$err" | tail -1)
  echo "skipped: tests/ib_verbs.rs and tests/ib.rs in the Soft-RoCE VM (every test in them): rdma-vm cannot boot: ${why:-exit code 125, no message}"
  exit 0
fi
exit $rc
