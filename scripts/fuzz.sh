#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60).
#
#   scripts/fuzz.sh            # 60 s per target (what CI runs: scripts/test.sh)
#   scripts/fuzz.sh 3600       # an hour per target, for a longer hunt
#   scripts/fuzz.sh 600 handshake unique_id   # only these targets
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked).
# Starts from the seeds kept in fuzz/corpus/<target>/ (left untouched: new inputs go to a
# scratch corpus under fuzz/target/) and from fuzz/regressions/<target>/ (inputs that
# once crashed a target). A crash stops the script with status 1; libFuzzer saves the
# input under fuzz/artifacts/<target>/. To keep it as a regression: copy it to
# fuzz/regressions/<target>/, fix the bug, and add a unit test (`cargo test --features
# fuzzing fuzzing` replays every kept input). Prints each target's executions per second.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

scratch=target/scratch-corpus
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "corpus/$t" "regressions/$t"
  echo "=== fuzzing $t for ${secs} s"
  log=$(mktemp)
  rc=0
  cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>"$log" || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)' "$log" |
    sed "s/^/  $t: /" || true
  if [ "$rc" -ne 0 ]; then
    tail -60 "$log" >&2
    rm -f "$log"
    echo "FAILED: fuzz target $t found a crash (input saved under fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  rm -f "$log"
done
echo "fuzzing: ${#targets[@]} targets, ${secs} s each: no crash"
