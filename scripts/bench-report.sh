#!/usr/bin/env bash
# Interleaved measurement of f32 sum all-reduce with ranks as threads, against the
# memory-bound floor 2*n*S/B (B = the 2-thread STREAM copy rate measured in the same run)
# and, when the peers are built (../shared/peers/run_peers.sh), Open MPI in the same run.
#
#   scripts/bench-report.sh [rounds]        (default 5 rounds; about 1 minute per round)
#
# Prints, per rank count and size, the median over rounds of: oxccl out-of-place and
# in-place time, Open MPI time, and the fraction of the floor reached (floor / time).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SIZES=(8 1048576 67108864)
NPS=(2 4)
PEERS=${PEERS_BUILD:-/tmp/peers-build}
MEMBW_SRC=../shared/peers/membw.c
OUT=$(mktemp -d)

cargo build --release --example all_reduce_perf >/dev/null 2>&1
PERF=target/release/examples/all_reduce_perf
MEMBW=""
if [ -f "$MEMBW_SRC" ] && gcc -O3 -march=native -fopenmp -o "$OUT/membw" "$MEMBW_SRC" 2>/dev/null; then
  MEMBW="$OUT/membw"
fi
MPI=""
if [ -x "$PEERS/mpi_bench_openmpi" ] && command -v mpirun.openmpi >/dev/null; then
  MPI="$PEERS/mpi_bench_openmpi"
fi

# Iterations and warm-up per size: small sizes warm up for a few milliseconds, so that
# the scheduler has spread the rank threads over the cores before timing starts.
iters() { case $1 in 8) echo 20000 ;; 1048576) echo 300 ;; *) echo 8 ;; esac; }
warmup() { case $1 in 8) echo 5000 ;; 1048576) echo 30 ;; *) echo 2 ;; esac; }

for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  if [ -n "$MEMBW" ]; then
    OMP_PROC_BIND=false "$MEMBW" -t 2 -r 5 | awk '/^copy/ {for (i=1;i<=NF;i++) if ($i=="median=") print "membw", $(i+1)}' >>"$OUT/raw"
  fi
  for n in "${NPS[@]}"; do
    for s in "${SIZES[@]}"; do
      "$PERF" -b "$s" -e "$s" -t "$n" -n "$(iters "$s")" -w "$(warmup "$s")" -c 0 |
        awk -v n="$n" -v s="$s" '/^ +[0-9]/ {print "oxccl", n, s, $6, $10}' >>"$OUT/raw"
      if [ -n "$MPI" ]; then
        mpirun.openmpi --allow-run-as-root --oversubscribe -np "$n" "$MPI" -b "$s" -e "$s" 2>/dev/null |
          awk -v n="$n" -v s="$s" '/^ +[0-9]/ {print "ompi", n, s, $7}' >>"$OUT/raw"
      fi
    done
  done
done

python3 - "$OUT/raw" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
med = lambda v: st.median(v) if v else float("nan")
B = med([float(r[1]) for r in rows if r[0] == "membw"])  # GB/s
print(f"2-thread copy rate B = {B:.2f} GB/s (median over rounds)" if B == B else "membw not available")
print(f"{'n':>2} {'size':>9} | {'oxccl oop us':>12} {'busbw':>6} {'in-place us':>11} {'busbw':>6} | {'OpenMPI us':>10} {'ratio':>6} | {'floor us':>9} {'oop/floor':>9} {'ip/floor':>8}")
for n in sorted({int(r[1]) for r in rows if r[0] == "oxccl"}):
    for s in sorted({int(r[2]) for r in rows if r[0] == "oxccl"}):
        sel = [r for r in rows if r[0] == "oxccl" and int(r[1]) == n and int(r[2]) == s]
        oop, ip = med([float(r[3]) for r in sel]), med([float(r[4]) for r in sel])
        mpi = med([float(r[3]) for r in rows if r[0] == "ompi" and int(r[1]) == n and int(r[2]) == s])
        bus = lambda t: s / (t * 1e3) * 2 * (n - 1) / n
        floor = 2 * n * s / (B * 1e3) if B == B else float("nan")
        print(f"{n:>2} {s:>9} | {oop:>12.2f} {bus(oop):>6.2f} {ip:>11.2f} {bus(ip):>6.2f} | {mpi:>10.2f} {mpi/oop:>6.2f} | {floor:>9.2f} {floor/oop:>9.2f} {floor/ip:>8.2f}")
print("ratio = Open MPI time / oxccl out-of-place time (above 1: oxccl is faster)")
PY
rm -rf "$OUT"
