#!/usr/bin/env bash
# What the *_perf examples leave in a file is nccl-tests' table and nothing else, whatever
# starts them. Each of the seven runs, 2 ranks, small sizes, with -J and --plot:
#   mpirun-mpi   under Open MPI's mpirun, built with the `mpi` feature (a bare mpirun;
#                Open MPI gives each rank a pseudo-terminal), stdout to a file;
#   mpirun-env   under Open MPI's mpirun, built without it (OXCCL_COMM_ID), to a file;
#   oxccl-run    under oxccl-run with its default flags, to a file;
#   pty-mpirun   mpirun inside a pseudo-terminal (`script`), as typed at a terminal;
#   terminal     ranks as threads inside a pseudo-terminal, no launcher: the one place
#                progress notes show; the screen they leave must be the table;
# then all_reduce_perf once more under mpirun, 4 ranks, OXCCL_DEBUG=INFO and stderr in
# the same file: log lines come whole and never inside a row.
# scripts/check-perf-output.py checks each table, and that its JSON and plot agree with it.
#
#   scripts/perf-output-check.sh
#
# Binaries (built beforehand; scripts/test.sh builds them all): PERF_MPI (examples built
# with the `mpi` feature against Open MPI), PERF (examples of any build, for oxccl-run and
# the terminal), PERF_NOMPI (built without the feature), RUN (oxccl-run). A mode whose
# binaries or tools (mpirun.openmpi, script, python3) are missing is skipped by name.
set -euo pipefail
cd "$(dirname "$0")/.."

PERF=${PERF:-target/debug/examples}
PERF_MPI=${PERF_MPI-target/debug/examples}
PERF_NOMPI=${PERF_NOMPI-target/nompi/debug/examples}
RUN=${RUN:-target/debug/oxccl-run}
DEADLINE=120
EXAMPLES=(all_reduce_perf all_gather_perf reduce_scatter_perf broadcast_perf reduce_perf alltoall_perf sendrecv_perf)
# 8 B to 32 KiB by 8: five rows each.
ARGS=(-b 8 -e 32K -f 8 -n 2 -w 1 -c 1)
ROWS=5

need_cmd() { command -v "$1" >/dev/null 2>&1; }
skip() { printf 'SKIPPED: perf output check, %s: %s\n' "$1" "$2" >&2; }

if ! need_cmd python3; then
  skip "every mode" "python3 is missing (scripts/check-perf-output.py)"
  exit 0
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=()

# A TCP port of 127.0.0.1 that nothing listens on now, for rank 0's root.
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo 29500
}

# run MODE CHECK EX CMD...: runs CMD under a deadline, its stdout to $out/MODE.EX.out (and
# its stderr too for CHECK=log, else to .err), then checks the table, JSON and plot as
# CHECK (file, log, pty or terminal).
run() {
  local mode=$1 check=$2 ex=$3 rc=0
  shift 3
  local base=$out/$mode.$ex
  if [ "$check" = log ]; then
    timeout -k 5 "$DEADLINE" "$@" </dev/null >"$base.out" 2>&1 || rc=$?
  else
    timeout -k 5 "$DEADLINE" "$@" </dev/null >"$base.out" 2>"$base.err" || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    echo "FAILED: $ex ($mode): exit status $rc$([ "$rc" -ge 124 ] && echo " (a hang? killed after ${DEADLINE} s)")" >&2
    cat "$base.out" "$base.err" 2>/dev/null | tail -20 >&2
    failed+=("$ex ($mode)")
    return
  fi
  local extra=()
  [ -f "$base.json" ] && extra+=(--json "$base.json" --svg "$base.svg")
  if ! python3 scripts/check-perf-output.py "$ex" "$check" "$base.out" --rows "$ROWS" --ranks 2 --label "$mode" "${extra[@]}"; then
    failed+=("$ex ($mode)")
  fi
}

# outputs MODE EX: the -J and --plot flags of one run.
outputs() { echo "-J $out/$1.$2.json --plot $out/$1.$2.svg"; }

mpirun_cmd=(mpirun.openmpi --allow-run-as-root --oversubscribe)
have_openmpi=$(need_cmd mpirun.openmpi && echo 1 || echo 0)
start=$(date +%s)

for ex in "${EXAMPLES[@]}"; do
  if [ "$have_openmpi" = 1 ] && [ -n "$PERF_MPI" ] && [ -x "$PERF_MPI/$ex" ]; then
    # shellcheck disable=SC2046 # outputs' words are the flags
    run mpirun-mpi file "$ex" "${mpirun_cmd[@]}" -np 2 "$PERF_MPI/$ex" "${ARGS[@]}" $(outputs mpirun-mpi "$ex")
  fi
  if [ "$have_openmpi" = 1 ] && [ -n "$PERF_NOMPI" ] && [ -x "$PERF_NOMPI/$ex" ]; then
    # shellcheck disable=SC2046
    run mpirun-env file "$ex" "${mpirun_cmd[@]}" -np 2 -x OXCCL_COMM_ID="127.0.0.1:$(free_port)" \
      "$PERF_NOMPI/$ex" "${ARGS[@]}" $(outputs mpirun-env "$ex")
  fi
  # shellcheck disable=SC2046
  run oxccl-run file "$ex" "$RUN" -n 2 -- "$PERF/$ex" "${ARGS[@]}" $(outputs oxccl-run "$ex")
  if need_cmd script; then
    if [ "$have_openmpi" = 1 ] && [ -n "$PERF_MPI" ] && [ -x "$PERF_MPI/$ex" ]; then
      run pty-mpirun pty "$ex" script -qec "${mpirun_cmd[*]} -np 2 $PERF_MPI/$ex ${ARGS[*]} $(outputs pty-mpirun "$ex")" /dev/null
    fi
    run terminal terminal "$ex" script -qec "$PERF/$ex -t 2 ${ARGS[*]} $(outputs terminal "$ex")" /dev/null
  fi
done

if [ "$have_openmpi" = 1 ] && [ -n "$PERF_MPI" ] && [ -x "$PERF_MPI/all_reduce_perf" ]; then
  run debug log all_reduce_perf env OXCCL_DEBUG=INFO "${mpirun_cmd[@]}" -np 4 -x OXCCL_DEBUG \
    "$PERF_MPI/all_reduce_perf" "${ARGS[@]}"
fi

[ "$have_openmpi" = 1 ] || skip "mpirun-mpi, mpirun-env, pty-mpirun, debug" "Open MPI's mpirun.openmpi is not installed"
[ "$have_openmpi" = 0 ] || [ -n "$PERF_MPI" ] || skip "mpirun-mpi, pty-mpirun, debug" "no build with the mpi feature (PERF_MPI is empty)"
[ "$have_openmpi" = 0 ] || [ -n "$PERF_NOMPI" ] || skip "mpirun-env" "no build without the mpi feature (PERF_NOMPI is empty)"
need_cmd script || skip "pty-mpirun, terminal" "script (util-linux) is not installed"
echo "perf output check: $(($(date +%s) - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: perf output check: ${failed[*]}" >&2
  exit 1
fi
