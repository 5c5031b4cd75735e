#!/usr/bin/env bash
# Runs every *_perf example as processes under oxccl-run, for each process count, and
# draws one busbw picture per count (perf_plot).
#
#   scripts/perf-suite.sh [OUT_DIR]            # default: perf-out/
#   NPROCS="2 4" SIZES="-b 8 -e 64M -f 4" ITERS="-n 10 -w 3" PEER=peer.csv:label scripts/perf-suite.sh
#
# Writes OUT_DIR/<collective>-n<N>.txt (the table) and .json (-J), and
# OUT_DIR/busbw-n<N>.svg. PEER, if set, is drawn beside ours (CSV size,busbw or JSON).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-perf-out}
nprocs=${NPROCS:-2 4}
read -r -a sizes <<<"${SIZES:--b 8 -e 64M -f 4}"
read -r -a iters <<<"${ITERS:--n 10 -w 3}"
mkdir -p "$out"

cargo build --release --bins --examples
bin=target/release
colls=(all_reduce all_gather reduce_scatter broadcast reduce alltoall sendrecv)

for n in $nprocs; do
  jsons=()
  for c in "${colls[@]}"; do
    echo "=== ${c}_perf, $n processes" >&2
    rm -f "$out/$c-n$n.json"
    "$bin/oxccl-run" -n "$n" --no-tag-output --timeout 900 -- \
      "$bin/examples/${c}_perf" "${sizes[@]}" "${iters[@]}" -J "$out/$c-n$n.json" | tee "$out/$c-n$n.txt"
    jsons+=("$out/$c-n$n.json")
  done
  "$bin/examples/perf_plot" -o "$out/busbw-n$n.svg" "${jsons[@]}" ${PEER:+"$PEER"}
  echo "wrote $out/busbw-n$n.svg" >&2
done
