#!/usr/bin/env bash
# Side-by-side f32 sum all-reduce, in interleaved rounds of one session, medians over
# rounds, written as a markdown report with ratios:
#   - oxccl processes over shared memory, and over TCP (OXCCL_SHM_DISABLE=1);
#   - optionally an earlier oxccl build in the same rounds (COMPARE_BASELINE=DIR holding
#     its oxccl-run and all_reduce_perf): before/after a change, from one run;
#   - the peers of ../shared/peers: Open MPI (shared memory and TCP), Gloo (pygloo), the
#     C prototype of the practical ceiling (ceiling-stg: staging, ceiling-reg: registered
#     buffers, ceiling-mb: mailbox), a STREAM-like copy;
#   - torch.distributed with Gloo, when a Python with torch is found (the venv that
#     scripts/python-test.sh makes, or COMPARE_TORCH_PY).
#
#   scripts/compare-peers.sh [rounds] [report.md]      (defaults: 3, BENCHMARKS-run.md)
#   COMPARE_MAX=16M scripts/compare-peers.sh 1          (a quick look)
#   COMPARE_NP="2" COMPARE_PEERS="openmpi ceiling-stg" scripts/compare-peers.sh 5
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REPORT=${2:-BENCHMARKS-run.md}
MAX=${COMPARE_MAX:-256M}
NPS=${COMPARE_NP:-2 4}
BASE=${COMPARE_BASELINE:-}
PEERS=${COMPARE_PEERS:-openmpi openmpi-tcp gloo membw ceiling-stg ceiling-reg ceiling-mb}
PEERS_DIR=../shared/peers
WORK=$(mktemp -d /tmp/oxccl-compare.XXXX)
log() { echo "[compare $(date +%T)] $*" >&2; }

cargo build --release --example all_reduce_perf --bin oxccl-run >&2
if [ -n "$BASE" ] && ! { [ -x "$BASE/oxccl-run" ] && [ -x "$BASE/all_reduce_perf" ]; }; then
  echo "COMPARE_BASELINE=$BASE must hold oxccl-run and all_reduce_perf" >&2
  exit 2
fi
TORCH_PY=${COMPARE_TORCH_PY:-}
if [ -z "$TORCH_PY" ]; then
  for p in "$HOME"/.cache/oxccl/venv-*/bin/python; do
    [ -x "$p" ] && "$p" -c "import torch.distributed" 2>/dev/null && TORCH_PY=$p && break
  done
fi
[ -n "$TORCH_PY" ] || log "SKIPPED: torch-gloo (no Python with torch; scripts/python-test.sh makes one)"

# ours RUN PERF LABEL transport np -> "size time_us" rows, out-of-place (checked: #wrong
# must be 0)
ours() {
  local run=$1 perf=$2 label=$3 tr=$4 np=$5 env=()
  [ "$tr" = tcp ] && env=(OXCCL_SHM_DISABLE=1)
  {
    env "${env[@]}" "$run" -n "$np" --timeout 900 -- "$perf" -b 8 -e 512K -f 2 -n 1000 -w 100 -c 1
    env "${env[@]}" "$run" -n "$np" --timeout 900 -- "$perf" -b 1M -e "$MAX" -f 2 -n 10 -w 2 -c 1
  } | awk -v who="$label" '/^ +[0-9]/ { if ($9 != "0") { print "WRONG", who, $1 > "/dev/stderr" } print $1, $6 }'
}

# rows RAWDIR ROUND: the peers' rows (combine.py's normalised ROW lines) into $WORK
rows() {
  python3 "$PEERS_DIR/combine.py" rows "$1" 2>/dev/null |
    awk -v w="$WORK" -v r="$2" '$1 == "ROW" { print $4, $5 > (w "/" $2 ".np" $3 ".r" r) }'
}

for r in $(seq "$ROUNDS"); do
  if [ -f "$PEERS_DIR/run_peers.sh" ]; then
    log "round $r/$ROUNDS: peers ($PEERS)"
    PEERS_ONLY="$PEERS" PEERS_MAX="$MAX" PEERS_NP="$NPS" PEERS_OUT="$WORK/peers$r" \
      bash "$PEERS_DIR/run_peers.sh" >"$WORK/peers$r.log" 2>&1 || log "run_peers failed (see $WORK/peers$r.log)"
    raw=$(ls -dt /tmp/peers-build/raw-* | head -1)
    rows "$raw" "$r"
    grep -h "^copy .*threads=2" "$raw"/membw.t2.txt 2>/dev/null | sed 's/.*median= *\([0-9.]*\).*/\1/' >"$WORK/membw.r$r" || true
  fi
  for np in $NPS; do
    if [ -n "$TORCH_PY" ]; then
      log "round $r/$ROUNDS: torch-gloo np=$np"
      tdir="$WORK/torch$r"
      mkdir -p "$tdir"
      timeout 600 "$TORCH_PY" "$PEERS_DIR/torch_gloo_allreduce_bench.py" -n "$np" -b 8 -e "$MAX" -f 2 -k 16 \
        >"$tdir/torch-gloo.np$np.txt" 2>"$tdir/torch-gloo.np$np.err" || log "torch-gloo np=$np failed"
      rows "$tdir" "$r"
    fi
    for tr in shm tcp; do
      log "round $r/$ROUNDS: oxccl $tr np=$np"
      ours target/release/oxccl-run target/release/examples/all_reduce_perf oxccl "$tr" "$np" >"$WORK/oxccl-$tr.np$np.r$r"
      [ -z "$BASE" ] && continue
      log "round $r/$ROUNDS: baseline $tr np=$np"
      ours "$BASE/oxccl-run" "$BASE/all_reduce_perf" baseline "$tr" "$np" >"$WORK/base-$tr.np$np.r$r"
    done
  done
done

python3 - "$WORK" "$ROUNDS" "$REPORT" "$NPS" "${BASE:+1}" <<'PY'
import glob, statistics as st, sys
work, rounds, report, nps, base = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5] == "1"
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
def c(x): return f"{x:.2f}" if x is not None else "–"
def ratio(peer, ours): return f"{peer / ours:.2f}" if peer and ours else "–"
membw = [float(l) for f in glob.glob(f"{work}/membw.r*") for l in open(f) if l.strip()]
out = [f"Medians over {rounds} interleaved rounds; f32 sum all-reduce, out-of-place; time per op in µs;",
       "ratio = other's time / oxccl's time (above 1: oxccl is faster)."]
if membw:
    out.append(f"2-thread STREAM copy in the same rounds: {st.median(membw):.1f} GB/s.")
out.append("")
for np in nps:
    d = {k: load(f"{k}.np{np}") for k in ("oxccl-shm", "oxccl-tcp", "base-shm", "base-tcp", "openmpi", "openmpi-tcp",
                                             "gloo", "torch-gloo", "ceiling-stg", "ceiling-reg", "ceiling-mb")}
    sizes = sorted(set(d["oxccl-shm"]) | set(d["oxccl-tcp"]))
    over = " (oversubscribed: 2 cores)" if int(np) > 2 else ""
    out += [f"### {np} processes, shared memory{over}", ""]
    cols = [("before", "base-shm")] if base else []
    cols += [("Open MPI", "openmpi"), ("ceiling stg", "ceiling-stg"), ("ceiling reg", "ceiling-reg"), ("ceiling mb", "ceiling-mb")]
    out.append("| size | oxccl | " + " | ".join(f"{n} | ratio" for n, _ in cols) + " |")
    out.append("|---:|---:|" + "---:|---:|" * len(cols))
    for s in sizes:
        o = d["oxccl-shm"].get(s)
        out.append(f"| {fmt_size(s)} | {c(o)} | " + " | ".join(f"{c(d[k].get(s))} | {ratio(d[k].get(s), o)}" for _, k in cols) + " |")
    out += ["", f"### {np} processes, TCP (loopback){over}", ""]
    cols = [("before", "base-tcp")] if base else []
    cols += [("Open MPI tcp", "openmpi-tcp"), ("Gloo", "gloo"), ("torch Gloo", "torch-gloo")]
    out.append("| size | oxccl | " + " | ".join(f"{n} | ratio" for n, _ in cols) + " |")
    out.append("|---:|---:|" + "---:|---:|" * len(cols))
    for s in sizes:
        o = d["oxccl-tcp"].get(s)
        out.append(f"| {fmt_size(s)} | {c(o)} | " + " | ".join(f"{c(d[k].get(s))} | {ratio(d[k].get(s), o)}" for _, k in cols) + " |")
    out.append("")
out.append("Peers: Open MPI over shared memory (vader) and over TCP (`--mca btl tcp,self`), Gloo (pygloo, ring, TCP),")
out.append("torch.distributed with Gloo, and the C prototype of ../shared/peers/ceiling (stg: staging through shared")
out.append("slots, reg: registered buffers read in place, mb: cache-line mailbox up to 64 KiB).")
open(report, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
log "raw files kept in $WORK; report in $REPORT"
