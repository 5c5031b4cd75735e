#!/usr/bin/env bash
# Side-by-side f32 sum all-reduce: oxccl processes (shared memory, and TCP with
# OXCCL_SHM_DISABLE=1) against the peers of ../shared/peers (Open MPI over shared memory,
# Open MPI over TCP, Gloo over TCP), 2 and 4 processes, 8 B .. 256 MiB, in interleaved
# rounds of the same session; medians over rounds; writes a markdown report.
#
#   scripts/compare-peers.sh [rounds] [report.md]     (defaults: 3, BENCHMARKS-run.md)
#   COMPARE_MAX=16M scripts/compare-peers.sh 1         (a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REPORT=${2:-BENCHMARKS-run.md}
MAX=${COMPARE_MAX:-256M}
PEERS_DIR=../shared/peers
WORK=$(mktemp -d /tmp/oxccl-compare.XXXX)
log() { echo "[compare $(date +%T)] $*" >&2; }

cargo build --release --example all_reduce_perf --bin oxccl-run >&2
RUN=target/release/oxccl-run
PERF=target/release/examples/all_reduce_perf

ours() { # transport np -> rows "size time_us" (out-of-place)
  local tr=$1 np=$2 env=()
  [ "$tr" = tcp ] && env=(OXCCL_SHM_DISABLE=1)
  {
    env "${env[@]}" "$RUN" -n "$np" --no-tag-output --timeout 900 -- "$PERF" -b 8 -e 512K -f 2 -n 1000 -w 100 -c 1
    env "${env[@]}" "$RUN" -n "$np" --no-tag-output --timeout 900 -- "$PERF" -b 1M -e "$MAX" -f 2 -n 10 -w 2 -c 1
  } | awk '/^ +[0-9]/ { if ($9 != "0") { print "WRONG", $1 > "/dev/stderr" } print $1, $6 }'
}

for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: peers"
  if [ -f "$PEERS_DIR/run_peers.sh" ]; then
    PEERS_ONLY="openmpi openmpi-tcp gloo membw" PEERS_MAX="$MAX" PEERS_OUT="$WORK/peers$r" \
      bash "$PEERS_DIR/run_peers.sh" >"$WORK/peers$r.log" 2>&1 || log "run_peers failed (see $WORK/peers$r.log)"
    raw=$(ls -dt /tmp/peers-build/raw-* | head -1)
    for f in "$raw"/*.np*.txt; do
      b=$(basename "$f" .txt)
      awk '/^ +[0-9]/ {print $1, $7}' "$f" >"$WORK/$b.r$r"
    done
    grep -h "^copy .*threads=2" "$raw"/membw.t2.txt | sed 's/.*median= *\([0-9.]*\).*/\1/' >"$WORK/membw.r$r" || true
  fi
  for np in 2 4; do
    for tr in shm tcp; do
      log "round $r/$ROUNDS: oxccl $tr np=$np"
      ours $tr $np >"$WORK/oxccl-$tr.np$np.r$r"
    done
  done
done

python3 - "$WORK" "$ROUNDS" "$REPORT" <<'PY'
import glob, os, statistics as st, sys
work, rounds, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(name):
    per = {}
    for f in glob.glob(f"{work}/{name}.r*"):
        for line in open(f):
            p = line.split()
            if len(p) == 2:
                per.setdefault(int(p[0]), []).append(float(p[1]))
    return {s: st.median(v) for s, v in per.items()}
def fmt_size(s):
    for u, k in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if s >= k and s % k == 0:
            return f"{s // k}{u}"
    return str(s)
membw = [float(l) for f in glob.glob(f"{work}/membw.r*") for l in open(f) if l.strip()]
out = []
out.append(f"Medians over {rounds} interleaved rounds; f32 sum all-reduce, out-of-place; time per op in µs.")
if membw:
    out.append(f"2-thread STREAM copy in the same rounds: {st.median(membw):.1f} GB/s.")
out.append("")
for np in (2, 4):
    cols = [("oxccl shm", f"oxccl-shm.np{np}"), ("Open MPI", f"openmpi.np{np}"),
            ("oxccl tcp", f"oxccl-tcp.np{np}"), ("Open MPI tcp", f"openmpi-tcp.np{np}"), ("Gloo", f"gloo.np{np}")]
    data = {c: load(n) for c, n in cols}
    sizes = sorted(set().union(*[d.keys() for d in data.values()]))
    out.append(f"### {np} processes{' (oversubscribed: 2 cores)' if np > 2 else ''}")
    out.append("")
    out.append("| size | oxccl shm | Open MPI | ratio | oxccl tcp | Open MPI tcp | ratio | Gloo | ratio |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    def c(x): return f"{x:.2f}" if x is not None else "–"
    def ratio(peer, ours): return f"{peer / ours:.2f}" if peer and ours else "–"
    for s in sizes:
        g = {k: data[k].get(s) for k, _ in cols}
        out.append(f"| {fmt_size(s)} | {c(g['oxccl shm'])} | {c(g['Open MPI'])} | {ratio(g['Open MPI'], g['oxccl shm'])} | "
                   f"{c(g['oxccl tcp'])} | {c(g['Open MPI tcp'])} | {ratio(g['Open MPI tcp'], g['oxccl tcp'])} | "
                   f"{c(g['Gloo'])} | {ratio(g['Gloo'], g['oxccl tcp'])} |")
    out.append("")
out.append("ratio = peer time / oxccl time: above 1, oxccl is faster. shm ratios compare with Open MPI over")
out.append("shared memory; tcp ratios with Open MPI over TCP (`--mca btl tcp,self`) and with Gloo (pygloo, TCP).")
open(report, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
log "raw files kept in $WORK; report in $REPORT"
