#!/usr/bin/env bash
# The IB transport against perftest, on the same Soft-RoCE devices in the same VM:
# ib_write_bw and ib_write_lat between rxe0 and rxe1, then all_reduce_perf with 2 rank
# processes as two hosts (rank 0 on rxe0, rank 1 on rxe1), f32 sum, 8 B to 4 MiB.
# Builds all_reduce_perf with the test profile (optimised, default target CPU: the VM
# has no AVX-512). The VM emulates its CPU (TCG): these figures prove the path works
# end to end and compare it with the verbs ceiling of the same devices, not the speed of
# real hardware. Results go to stdout (and target/ib-vm-bench.log).
#
#   scripts/ib-vm-bench.sh [ROUNDS]     # default 3 interleaved rounds
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
VM=${RDMA_VM_SCRIPT:-../shared/rdma-vm/run-in-rdma-vm.sh}
[ -f "$VM" ] || { echo "skipped: rdma-vm cannot boot: $VM not found"; exit 0; }
unset CARGO_ENCODED_RUSTFLAGS
cargo build --profile test --features ib --example all_reduce_perf
perf=$PWD/target/debug/examples/all_reduce_perf
inner='
set -u
g=$RDMA_VM_GID_INDEX
perf=$1
port=29600
for round in $(seq '"$ROUNDS"'); do
  echo "### round $round: ib_write_bw -s 4194304 -n 200 (rxe0 -> rxe1)"
  ib_write_bw -d rxe1 -x $g -s 4194304 -n 200 >/dev/null 2>&1 & s=$!; sleep 1
  ib_write_bw -d rxe0 -x $g -s 4194304 -n 200 $RDMA_VM_IP1 2>&1 | grep -A1 "#bytes"; wait $s
  echo "### round $round: ib_write_bw -s 65536 -n 2000"
  ib_write_bw -d rxe1 -x $g -s 65536 -n 2000 >/dev/null 2>&1 & s=$!; sleep 1
  ib_write_bw -d rxe0 -x $g -s 65536 -n 2000 $RDMA_VM_IP1 2>&1 | grep -A1 "#bytes"; wait $s
  echo "### round $round: ib_write_lat -s 8 -n 1000"
  ib_write_lat -d rxe1 -x $g -s 8 -n 1000 >/dev/null 2>&1 & s=$!; sleep 1
  ib_write_lat -d rxe0 -x $g -s 8 -n 1000 $RDMA_VM_IP1 2>&1 | grep -A1 "#bytes"; wait $s
  for sz in "8 500 20" "4M 10 2"; do
    set -- "$perf" $sz
    echo "### round $round: all_reduce_perf $2, 2 ranks as two hosts (rxe0, rxe1)"
    port=$((port + 1))
    common="OXCCL_COMM_ID=127.0.0.1:$port OXCCL_NRANKS=2"
    args=(-t 1 -b $2 -e $2 -d float -o sum -n $3 -w $4 -c 1)
    env $common OXCCL_RANK=1 OXCCL_HOSTID=b OXCCL_IB_HCA==rxe1 "$perf" "${args[@]}" >/dev/null 2>&1 & s=$!
    env $common OXCCL_RANK=0 OXCCL_HOSTID=a OXCCL_IB_HCA==rxe0 OXCCL_DEBUG=INFO "$perf" "${args[@]}" 2>&1 |
      grep -E "InfiniBand to|^ *[0-9]+ +[0-9]"; wait $s
  done
done
'
RDMA_VM_TIMEOUT=${RDMA_VM_TIMEOUT:-580} RDMA_VM_SHARE=$PWD bash "$VM" bash -c "$inner" bench "$perf" | tee target/ib-vm-bench.log
