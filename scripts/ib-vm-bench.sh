#!/usr/bin/env bash
# The IB transport against perftest, on the same Soft-RoCE devices in the same VM, round
# after round (interleaved, so that the host's noise hits both alike):
#   ib_write_bw 4 MiB (rxe0 -> rxe1), ib_write_bw -b 4 MiB (both directions at once, as a
#   ring all-reduce runs them), ib_write_lat 8 B, then all_reduce_perf with 2 rank
#   processes as two hosts (rank 0 on rxe0, rank 1 on rxe1), f32 sum, at 8 B and 4 MiB.
# Prints every round, then the medians and the ratios to perftest that BENCHMARKS.md reports:
#   4 MiB busbw / ib_write_bw (target >= 0.70), 8 B time / ib_write_lat (target <= 3).
# A 2-rank all-reduce's busbw is its algbw (size / time); ib_write_lat's figure is
# one-way (half a round trip); ib_write_bw -b reports both directions added up.
# Builds all_reduce_perf with the test profile (optimised, default target CPU: the VM
# has no AVX-512). The VM emulates its CPU (TCG): the figures prove the path works and
# compare it with the verbs ceiling of the same devices, not the speed of real hardware.
# Output also goes to target/ib-vm-bench.log. Takes about 1.5 minutes per round.
#
#   scripts/ib-vm-bench.sh [ROUNDS]     # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
VM=${RDMA_VM_SCRIPT:-../shared/rdma-vm/run-in-rdma-vm.sh}
[ -f "$VM" ] || { echo "skipped: rdma-vm cannot boot: $VM not found"; exit 0; }
unset CARGO_ENCODED_RUSTFLAGS
if [[ "${RUSTFLAGS:-}" == *target-cpu=native* ]]; then
  RUSTFLAGS=$(sed -E 's/(-C *)?target-cpu=native//g' <<<"$RUSTFLAGS")
  export RUSTFLAGS
fi
cargo build --profile test --features ib --example all_reduce_perf
perf=$PWD/target/debug/examples/all_reduce_perf
inner='
set -u
g=$RDMA_VM_GID_INDEX
perf=$1 rounds=$2
port=29600
peer() { # name, then the perftest command line for both ends
  local name=$1; shift
  "$@" -d rxe1 >/dev/null 2>&1 & local s=$!; sleep 1
  echo "$name $("$@" -d rxe0 $RDMA_VM_IP1 2>&1 | grep -A1 "#bytes" | tail -1)"; wait $s
}
ours() { # name, size, iterations, warm-up
  port=$((port + 1))
  local c="OXCCL_COMM_ID=127.0.0.1:$port OXCCL_NRANKS=2"
  local a=(-t 1 -b $2 -e $2 -d float -o sum -n $3 -w $4 -c 0)
  env $c OXCCL_RANK=1 OXCCL_HOSTID=b OXCCL_IB_HCA==rxe1 "$perf" "${a[@]}" >/dev/null 2>&1 & local s=$!
  echo "$1 $(env $c OXCCL_RANK=0 OXCCL_HOSTID=a OXCCL_IB_HCA==rxe0 "$perf" "${a[@]}" 2>&1 | grep -E "^ *[0-9]+ +[0-9]")"
  wait $s
}
for r in $(seq $rounds); do
  echo "### round $r"
  peer write_bw ib_write_bw -x $g -s 4194304 -n 50
  peer write_bw_bidir ib_write_bw -b -x $g -s 4194304 -n 50
  peer write_lat ib_write_lat -x $g -s 8 -n 1000
  ours allreduce_8 8 1000 50
  ours allreduce_4M 4M 8 2
done
'
log=target/ib-vm-bench.log
RDMA_VM_TIMEOUT=${RDMA_VM_TIMEOUT:-$((120 + 120 * ROUNDS))} RDMA_VM_SHARE=$PWD \
  bash "$VM" bash -c "$inner" bench "$perf" "$ROUNDS" | tee "$log"
# Medians and ratios, of the lines above whose figures parsed (a run that printed none
# is left out). perftest, after our name: ib_write_bw's BW average (MB/s) is field 5,
# ib_write_lat's t_typical field 6 and t_avg field 7; all_reduce_perf: out-of-place time
# (us) is field 7, in-place field 11.
awk '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  $2 !~ /^[0-9]+$/       { next }
  $1 == "write_bw"       { bw[++nbw] = $5 }
  $1 == "write_bw_bidir" { bi[++nbi] = $5 / 2 }
  $1 == "write_lat"      { lat[++nlat] = $7; typ[++ntyp] = $6 }
  $1 == "allreduce_8"    { s8[++n8] = ($7 + $11) / 2 }
  $1 == "allreduce_4M"   { b4[++n4] = 4194304 / (($7 + $11) / 2) }
  END {
    if (!nbw || !nbi || !nlat || !n8 || !n4) { print "ib-vm-bench: some runs gave no figure (see above)"; exit 1 }
    mbw = median(bw, nbw); mbi = median(bi, nbi); mlat = median(lat, nlat); mtyp = median(typ, ntyp)
    m8 = median(s8, n8); m4 = median(b4, n4)
    printf "\nmedians of %d rounds (all_reduce_perf: mean of out-of-place and in-place)\n", n4
    printf "  ib_write_bw 4 MiB          %8.2f MB/s\n", mbw
    printf "  ib_write_bw -b, per dir    %8.2f MB/s\n", mbi
    printf "  all-reduce 4 MiB busbw     %8.2f MB/s   %.2f of ib_write_bw (target >= 0.70), %.2f of one direction of -b\n", m4, m4 / mbw, m4 / mbi
    printf "  ib_write_lat 8 B avg (typ) %8.1f (%.1f) us\n", mlat, mtyp
    printf "  all-reduce 8 B             %8.1f us      %.2fx ib_write_lat avg (target <= 3), %.2fx typical\n", m8, m8 / mlat, m8 / mtyp
  }' "$log" >"$log.sum"
cat "$log.sum" | tee -a "$log"
rm -f "$log.sum"
