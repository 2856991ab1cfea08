#!/usr/bin/env bash
# `make stress`: the integration suite N times in a row while every core is busy, to shake
# out tests that only pass on an idle machine.
#
#   scripts/stress.sh [RUNS] [-- PROVE_ARGS...]     (defaults: 5 runs, prove -r t)
#
# STRESS_HOGS: number of busy-loop processes (default: nproc). STRESS_NICE: their nice level
# (default 0: they compete with the tests as equals, like other engineers' jobs do).
# Logs go to build/stress/run-N.log; the exit status is non-zero if any run failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

runs=${STRESS_RUNS:-5}
if [ $# -gt 0 ] && [ "$1" != "--" ]; then runs=$1; shift; fi
[ "${1:-}" = "--" ] && shift
prove_args=("$@")
[ ${#prove_args[@]} -eq 0 ] && prove_args=(-r t)
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "stress: RUNS must be a positive integer" >&2; exit 2; }

module=${STALE_CACHE_MODULE:-$root/build/ngx_http_stale_cache_module.so}
[ -f "$module" ] || { echo "stress: $module not found (make module)" >&2; exit 2; }
export STALE_CACHE_MODULE=$module
hogs=${STRESS_HOGS:-$(nproc)}
nice_level=${STRESS_NICE:-0}
logdir=$root/build/stress
mkdir -p "$logdir"

hog_pids=()
cleanup() {
    # Only the hogs this script started, by pid.
    for p in "${hog_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${hog_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
# A signal exits, which runs the EXIT trap once.
trap cleanup EXIT
trap "exit 130" INT TERM HUP

for _ in $(seq "$hogs"); do
    nice -n "$nice_level" sh -c 'while :; do :; done' &
    hog_pids+=($!)
done
echo "stress: $runs run(s) of prove ${prove_args[*]} with $hogs CPU hog(s) (nice $nice_level) on $(nproc) core(s)"

failed_runs=0
start_all=$SECONDS
for i in $(seq "$runs"); do
    log=$logdir/run-$i.log
    t0=$SECONDS
    if prove "${prove_args[@]}" >"$log" 2>&1; then
        printf 'run %d/%d: PASS (%ds, load %s)\n' "$i" "$runs" $((SECONDS - t0)) \
            "$(cut -d' ' -f1-3 /proc/loadavg)"
    else
        failed_runs=$((failed_runs + 1))
        printf 'run %d/%d: FAIL (%ds), see %s\n' "$i" "$runs" $((SECONDS - t0)) "$log"
        # The failing checks and their blocks, labelled with their file: without a terminal
        # prove prints a file's name after the file's diagnostics.
        awk '/^#   (Failed test|at TEST)/ { sub(/^#   /, ""); p = p "\n      " $0 }
             /^t\/.*\.t \.+/ { if (p != "") print "    " $1 ":" p; p = "" }' "$log" | head -40
        sed -n '/^Test Summary Report/,$p' "$log" | grep -E '^t/|Failed tests?:' | sed 's/^/    /'
    fi
done
echo "stress: $failed_runs of $runs run(s) failed, $((SECONDS - start_all))s in all"
[ "$failed_runs" -eq 0 ]
