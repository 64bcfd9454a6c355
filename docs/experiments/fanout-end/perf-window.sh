#!/usr/bin/env bash
# ADR 0035 part two: one 10k-client run against a gateway built with instrument-chunks.py,
# with `perf record -a` on the realtime clock for 10 s mid-measurement, then per event window
# the samples by thread and, for the fastest and slowest events, by CPU in 10 ms steps
# (windows.py). BENCH_AFFINITY as in ops/scripts/bench-servers.sh (spread unless set): the
# slow events with both workers on one CPU show with BENCH_AFFINITY=off.
#
# usage: perf-window.sh <instrumented croupier>
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
gw=$1
out=/tmp/exp/out; mkdir -p "$out"; rm -f "$out/fanout2.log"
# shellcheck source=ops/scripts/bench-servers.sh
source "$root/ops/scripts/bench-servers.sh"
bench_start_servers "$gw"
(
  sleep 28
  perf record -a -F 1999 -k CLOCK_REALTIME -o "$out/sys.data" -- sleep 10 >/dev/null 2>&1
) &
p=$!
"$gw" loadgen --quiet --url "ws://127.0.0.1:$http_port/ws" --target croupier --table bench \
  --clients 10000 --duration 30s --publish-rate 5 --source-addrs 4 --server-pid "$gw_pid" \
  --json "$out/pw.json" >"$out/pw.txt"
wait $p || true
grep publish "$out/pw.txt"
perf script -i "$out/sys.data" -F comm,tid,cpu,time,ip,sym 2>/dev/null >"$out/sys.txt"
python3 "$here/windows.py" "$out/sys.txt" "$out/fanout2.log"
