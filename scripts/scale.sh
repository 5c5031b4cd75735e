#!/usr/bin/env bash
# How oxccl scales on one host: the whole-job wall time and the peak memory of one rank
# for `oxccl-run -n N -- all_reduce_perf -b 8 -e 8 -w 1 -n 1` (every rank checks its
# result), over shared memory and over TCP, N = 8 .. 256, beside `oxccl-run -n N --
# /bin/true` in the same rounds; the fitted exponent of the time against N; 1024 ranks
# as threads of one process; then one OXCCL_DEBUG=INFO pass per N for the init phases,
# their exponent and the init model (scripts/init-model.py). Medians over interleaved
# rounds; a markdown report.
#
#   scripts/scale.sh [rounds] [report.md]        (defaults: 3, SCALE-run.md)
#   SCALE_N="8 64 256" scripts/scale.sh 1         (a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REPORT=${2:-SCALE-run.md}
NS=${SCALE_N:-8 16 32 64 128 256}
THREADS=${SCALE_THREADS:-1024}
WORK=$(mktemp -d /tmp/oxccl-scale.XXXX)
log() { echo "[scale $(date +%T)] $*" >&2; }

if ! [ -x /usr/bin/time ]; then
  log "installing GNU time (for the ranks' peak memory)"
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq time >/dev/null 2>&1 || true; else sudo -n apt-get install -y -qq time >/dev/null 2>&1 || true; fi
fi
[ -x /usr/bin/time ] || { echo "scale.sh needs GNU time (/usr/bin/time)" >&2; exit 2; }
cargo build --release --example all_reduce_perf --example threads_scale --example init_model --bin oxccl-run >&2
RUN=target/release/oxccl-run
PERF=target/release/examples/all_reduce_perf
# Many processes need many descriptors and processes: raise the soft limits.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

secs() { python3 -c 'import time; print(time.time())'; }

for r in $(seq "$ROUNDS"); do
  for n in $NS; do
    t0=$(secs); "$RUN" -n "$n" -- /bin/true; t1=$(secs)
    echo "$n $(python3 -c "print($t1 - $t0)")" >>"$WORK/true"
    for tr in shm tcp; do
      env=(); [ "$tr" = tcp ] && env=(OXCCL_SHM_DISABLE=1)
      log "round $r/$ROUNDS: $n ranks, $tr"
      t0=$(secs)
      if env "${env[@]}" "$RUN" -n "$n" --timeout 300 -- /usr/bin/time -f "PEAK_KIB %M" "$PERF" -b 8 -e 8 -w 1 -n 1 -c 1 \
        >"$WORK/out.$tr.$n.$r" 2>&1; then
        t1=$(secs)
        grep -q '^ *8 .* 0 *$' "$WORK/out.$tr.$n.$r" || { log "WRONG result: $WORK/out.$tr.$n.$r"; exit 1; }
        peak=$(grep -h PEAK_KIB "$WORK/out.$tr.$n.$r" | awk '{print $2}' | sort -n | tail -1)
        echo "$n $(python3 -c "print($t1 - $t0)") $peak" >>"$WORK/$tr"
      else
        log "FAILED: $n ranks over $tr (see $WORK/out.$tr.$n.$r)"
        echo "$n fail 0" >>"$WORK/$tr"
      fi
    done
  done
  log "round $r/$ROUNDS: $THREADS thread ranks"
  target/release/examples/threads_scale "$THREADS" >>"$WORK/threads" 2>&1 || log "FAILED: threads_scale"
done

# One pass per size over TCP with OXCCL_DEBUG=INFO: every rank's init wall and CPU time
# and the root's CPU, for the init-time exponent and the init model.
for n in $NS; do
  log "init phases: $n ranks, tcp, OXCCL_DEBUG=INFO"
  OXCCL_SHM_DISABLE=1 OXCCL_DEBUG=INFO "$RUN" -n "$n" --timeout 300 -- "$PERF" -b 8 -e 8 -w 1 -n 1 -c 1 \
    >"$WORK/info.$n" 2>&1 || log "FAILED: the INFO pass at $n ranks (see $WORK/info.$n)"
done
target/release/examples/init_model >"$WORK/work"

python3 - "$WORK" "$ROUNDS" "$REPORT" <<'PY'
import math, statistics as st, sys
work, rounds, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(name):
    per = {}
    try:
        for line in open(f"{work}/{name}"):
            p = line.split()
            if p[1] == "fail":
                per.setdefault(int(p[0]), []).append(None)
                continue
            per.setdefault(int(p[0]), []).append(tuple(float(x) for x in p[1:]))
    except FileNotFoundError:
        pass
    return per
true, ranks = load("true"), {tr: load(tr) for tr in ("shm", "tcp")}
out = [f"Medians over {rounds} interleaved rounds. Job: `oxccl-run -n N -- all_reduce_perf -b 8 -e 8 -w 1 -n 1`",
       "(every rank checks its result); wall time of the whole job in seconds; peak RSS of the largest rank.", "",
       "| ranks | `/bin/true` s | shm s | shm / true | shm peak MiB | TCP s | TCP / true | TCP peak MiB |",
       "|---:|---:|---:|---:|---:|---:|---:|---:|"]
fits = {}
for n in sorted(true):
    t = st.median(v[0] for v in true[n])
    row = [f"{n}", f"{t:.2f}"]
    for tr in ("shm", "tcp"):
        vals = ranks[tr].get(n, [])
        ok = [v for v in vals if v is not None]
        if len(ok) < len(vals) or not ok:
            row += ["fail", "–", "–"]
            continue
        w = st.median(v[0] for v in ok)
        peak = st.median(v[1] for v in ok) / 1024
        fits.setdefault(tr, []).append((n, w))
        row += [f"{w:.2f}", f"{w / t:.1f}", f"{peak:.1f}"]
    out.append("| " + " | ".join(row) + " |")
out.append("")
for tr, pts in fits.items():
    if len(pts) >= 3:
        xs = [math.log(n) for n, _ in pts]
        ys = [math.log(w) for _, w in pts]
        mx, my = st.mean(xs), st.mean(ys)
        k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        out.append(f"- {tr}: wall time grows as n^{k:.2f} from {pts[0][0]} to {pts[-1][0]} ranks (least-squares fit of log time on log n).")
def fit(pts):
    xs = [math.log(n) for n, _ in pts]
    ys = [math.log(w) for _, w in pts]
    mx, my = st.mean(xs), st.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
import re
inits, cpus = [], []
for n in sorted(true):
    try:
        found = re.findall(r"init ([0-9.]+) ms \(cpu ([0-9.]+) ms", open(f"{work}/info.{n}", errors="replace").read())
    except FileNotFoundError:
        found = []
    if len(found) == n:
        inits.append((n, max(float(w) for w, _ in found)))
        cpus.append((n, st.median(float(c) for _, c in found)))
if len(inits) >= 3:
    k = fit(inits)
    per = ", ".join(f"{n}: {w:.0f} ms" for n, w in inits)
    out.append(f"- init time (the slowest rank's, TCP, OXCCL_DEBUG=INFO pass) grows as n^{k:.2f} from {inits[0][0]} to {inits[-1][0]} ranks ({per}); "
               f"n log n would be n^{fit([(n, n * math.log(n)) for n, _ in inits]):.2f} over the same range. On this host the ranks share 2 cores, so the total work and the launcher's spread, not the critical path, set it.")
    per = ", ".join(f"{n}: {c:.2f} ms" for n, c in cpus)
    out.append(f"- one rank's init CPU (median over ranks), the critical path on a cluster, grows as n^{fit(cpus):.2f} ({per}); log n would be n^{fit([(n, math.log(n)) for n, _ in cpus]):.2f}.")
try:
    lines = [l.strip() for l in open(f"{work}/threads") if l.startswith("threads")]
    if lines:
        out.append(f"- threads: {lines[len(lines) // 2]}")
except FileNotFoundError:
    pass
import subprocess
model = subprocess.run([sys.executable, "scripts/init-model.py", work], capture_output=True, text=True)
if model.returncode == 0:
    out += ["", model.stdout.rstrip()]
else:
    out.append(f"- init model: failed ({model.stderr.strip()})")
open(report, "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
log "raw files in $WORK; report in $REPORT"
