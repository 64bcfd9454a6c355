#!/usr/bin/env bash
# The measurement behind ADR 0015: one gateway binary against 10k clients (croupier's side of
# `just bench-gateway` only) and `perf stat -e task-clock` of the gateway for 10 s in the middle
# of the measurement, so CPU per event = task-clock / 50 (5 events/s); the same for loadgen
# (its CPU is taken from the same two cores). Run it for two builds in
# turn, under the benchmark lock, several times, and compare medians:
#
#   for i in 1 2 3; do for b in old new; do
#     flock /tmp/bench.lock docs/experiments/gateway-cpu-per-event.sh /tmp/bin-$b/croupier $b
#   done; done
#
# usage: gateway-cpu-per-event.sh <croupier binary to run as gateway> <label>
# env: LOADGEN (croupier binary for loadgen; default: the first argument, use one for every run),
#      LOADGEN_ARGS (more loadgen flags), N (clients, 10000), DUR (20s), PERF_DELAY (15 s: after the ramp-up), PERF_RECORD=1 (instead
#      `perf record -g` of the gateway for 10 s; PERF_RECORD=loadgen: of loadgen, as ADR 0030's
#      session 16 did), OUT (/tmp/gateway-cpu-results).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
gw=$1; label=$2
lg=${LOADGEN:-$gw}
n=${N:-10000}; dur=${DUR:-20s}
out=${OUT:-/tmp/gateway-cpu-results}; mkdir -p "$out"
# shellcheck source=ops/scripts/bench-servers.sh
source "$root/ops/scripts/bench-servers.sh"
bench_start_servers "$gw"
run="$out/$label-$(date +%H%M%S)"
(
  sleep "${PERF_DELAY:-15}"
  lg_pid=$(pgrep -f "loadgen --quiet --url ws://127.0.0.1:$http_port/" | head -1)
  if [ "${PERF_RECORD:-}" = loadgen ]; then
    perf record -F 999 -g -o "$run.data" -p "$lg_pid" -- sleep 10 >/dev/null 2>&1
  elif [ -n "${PERF_RECORD:-}" ]; then
    perf record -F 999 -g -o "$run.data" -p "$gw_pid" -- sleep 10 >/dev/null 2>&1
  else
    perf stat -e task-clock -x, -o "$run.perf" -p "$gw_pid" -- sleep 10 &
    perf stat -e task-clock -x, -o "$run.lg.perf" -p "$lg_pid" -- sleep 10
    wait
  fi
) &
perf_pid=$!
"$lg" loadgen --quiet --url "ws://127.0.0.1:$http_port/ws" --target croupier --table bench \
  --clients "$n" --duration "$dur" --publish-rate 5 --source-addrs 4 \
  --server-pid "$gw_pid" --json "$run.json" ${LOADGEN_ARGS:-} >"$run.txt"
wait "$perf_pid" || true
python3 - "$run" "$label" <<'PY'
import json, os, sys
run, label = sys.argv[1], sys.argv[2]
r = json.load(open(run + ".json")); l = r["latency_ms"]
def cpu(path):
    if os.path.exists(path):
        for line in open(path):
            p = line.strip().split(",")
            if len(p) > 2 and "task-clock" in p[2]:
                return f"{float(p[0]) / 50:.1f}"
    return "-"
print(f"{label:<10} p50 {l['p50']:7.2f} p99 {l['p99']:7.2f} p999 {l['p999']:7.2f} "
      f"deliv/s {r['delivered_per_s']:8.0f} drops {r['drops']} "
      f"KiB/conn {r.get('server_rss_per_connection_kib') or 0:6.2f} gateway CPU/event {cpu(run + '.perf')} ms "
      f"loadgen CPU/event {cpu(run + '.lg.perf')} ms")
PY
