#!/usr/bin/env bash
# Runs the InfiniBand verbs tests for real: builds tests/ib_verbs.rs (feature `ib`,
# default target CPU: the VM's emulated CPU has no AVX-512) and runs it inside the
# Soft-RoCE VM of ../shared/rdma-vm (two RDMA devices, rxe0 and rxe1, on a veth pair).
# Where the VM cannot boot, says why and exits 0 (the test is then skipped by name).
set -uo pipefail
cd "$(dirname "$0")/.."
VM=${RDMA_VM_SCRIPT:-../shared/rdma-vm/run-in-rdma-vm.sh}
if [ ! -x "$VM" ]; then
  echo "SKIPPED: write_with_immediate_between_rxe0_and_rxe1: rdma-vm cannot boot: $VM not found"
  exit 0
fi
out=$(cargo test --features ib --no-run --test ib_verbs --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*ib_verbs[^"]*"' | tail -1 | cut -d'"' -f4)
if [ -z "$out" ]; then
  echo "building tests/ib_verbs.rs failed" >&2
  cargo test --features ib --no-run --test ib_verbs
  exit 1
fi
RDMA_VM_TIMEOUT=${RDMA_VM_TIMEOUT:-300} "$VM" "$out" --nocapture --test-threads=1
rc=$?
if [ $rc -eq 125 ]; then
  echo "SKIPPED: write_with_immediate_between_rxe0_and_rxe1: rdma-vm cannot boot (exit 125; see its output above)"
  exit 0
fi
exit $rc
