#!/usr/bin/env bash
# One test run again and again beside busy loops, to catch a failure that `just test`'s load
# shows now and then (ADR 0026's amendment caught the intake failure this way: 3 in 536 runs
# before, 0 in 600 and 360 after). Failed runs keep their log in OUT; the rest are deleted.
#
# usage: test-under-load.sh <package> <test target> <test name>
#   e.g. test-under-load.sh gs intake concurrent_bets_are_batched_each_gets_its_own_answer_and_garbage_gets_bad_message
# env: WORKERS (6 at a time), RUNS (60 per worker), BUSY (2 busy loops beside them),
#      TEST_LOG (gs=warn,store=warn), OUT (/tmp/test-under-load)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
package=$1; target=$2; name=$3
workers=${WORKERS:-6}; runs=${RUNS:-60}; busy=${BUSY:-2}
out=${OUT:-/tmp/test-under-load}; mkdir -p "$out"; rm -f "$out"/*.log
bin=$(cargo test -p "$package" --test "$target" --no-run 2>&1 \
  | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | head -1)
[ -x "$bin" ] || { echo "no test binary for $package/$target" >&2; exit 1; }
loops=()
for _ in $(seq 1 "$busy"); do (while :; do :; done) & loops+=($!); done
trap 'kill "${loops[@]}" 2>/dev/null || true' EXIT
worker() {
  for i in $(seq 1 "$runs"); do
    log="$out/w$1-$i.log"
    if TEST_LOG=${TEST_LOG:-gs=warn,store=warn} timeout 300 "$bin" "$name" --exact --nocapture >"$log" 2>&1; then
      rm -f "$log"
    else
      echo "failed: worker $1, run $i ($log)"
    fi
  done
}
pids=()
for w in $(seq 1 "$workers"); do worker "$w" & pids+=($!); done
wait "${pids[@]}"
failed=$(find "$out" -name '*.log' | wc -l)
echo "$((workers * runs)) runs, $failed failed (logs in $out)"
