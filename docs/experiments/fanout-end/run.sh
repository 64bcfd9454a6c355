#!/usr/bin/env bash
# ADR 0035's measurement: one 10k-client run of `croupier loadgen` against a gateway build
# that logs, per event, when its fan-out ended (see the instrument-*.py files: temporary edits
# of crates/gateway/src/hub.rs, built, copied out, then reverted with `git checkout`), plus the
# run-queue wait and CPU of every thread of the gateway, loadgen and nats-server for 10 s
# mid-measurement (threads.py, from /proc/<pid>/task/*/schedstat).
#
# usage: run.sh <instrumented croupier> <label>   (then: python3 ends.py a|c <log>)
# The gateway's workers are placed as BENCH_AFFINITY says (ops/scripts/bench-servers.sh:
# `spread` unless set). ADR 0035's unpinned runs: BENCH_AFFINITY=off; its run "pinned by
# hand" (then with `taskset`) is BENCH_AFFINITY=spread on a build of ADR 0035 instrumented
# with instrument-chunks.py.
#
# env: DELAY (28 s: past the clients' ramp-up), OUT (/tmp/exp/out; the instrumented builds
#      append to /tmp/exp/out/fanout.log (instrument-shards.py) or fanout2.log
#      (instrument-chunks.py)).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
gw=$1; label=$2
out=${OUT:-/tmp/exp/out}; mkdir -p "$out"
# shellcheck source=ops/scripts/bench-servers.sh
source "$root/ops/scripts/bench-servers.sh"
bench_start_servers "$gw"
(
  sleep "${DELAY:-28}"
  lg_pid=$(pgrep -f "loadgen --quiet --url ws://127.0.0.1:$http_port/" | head -1)
  python3 "$here/threads.py" "$gw_pid" 10 >"$out/$label.gw" &
  python3 "$here/threads.py" "$lg_pid" 10 >"$out/$label.lg" &
  python3 "$here/threads.py" "$nats_pid" 10 >"$out/$label.nats" &
  wait
) &
p=$!
"$gw" loadgen --quiet --url "ws://127.0.0.1:$http_port/ws" --target croupier --table bench \
  --clients 10000 --duration 30s --publish-rate 5 --source-addrs 4 \
  --server-pid "$gw_pid" --json "$out/$label.json" >"$out/$label.txt"
wait $p || true
grep -E "publish->client" "$out/$label.txt"
