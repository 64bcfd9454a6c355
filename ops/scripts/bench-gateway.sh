#!/usr/bin/env bash
# `just bench-gateway`: Croupier's gateway against nats-server's own WebSocket listener, side
# by side on this machine, with the machine's floor for the same fan-out (no server) in the same
# run. Reports publish->client latency, delivered/s, each server's CPU per event and RSS per
# connection (read from /proc by loadgen: after connecting, after the measurement, and around a
# burst that a tenth of the clients does not read), the kernel's TCP memory beside it, and the
# ratios to the floor. A benchmark, not a test: it prints figures and asserts nothing.
#
# Sizes (BENCH_SIZES, default "1000 10000 10000p 100x100"):
#   N       N clients on one table, 5 events/s
#   Np      the same, every client also on its own player channel
#   TxC     T tables x C clients each (T*C clients), every client also on its own player
#           channel, 5 events/s per table
# Only plain sizes run against nats-server and the floor (they have no player channels); a
# TxC or Np size is compared with the floor of the same client count where one ran.
#
# env: BENCH_SIZES, BENCH_SERVERS ("croupier nats"), BENCH_DURATION (30s), BENCH_RATE (5 events/s
#      per table), BENCH_BURST (200 events per table; 0 skips the burst), BENCH_RUNS (1: rounds
#      of every size and server, interleaved; the summary gives each ratio's median and spread),
#      BENCH_OUT (artifacts/bench-gateway: one JSON report per run), BENCH_FLOOR (1: the floor
#      after each plain size; 0 skips it), BENCH_BIN (a croupier binary to measure instead of
#      building one: A/B runs of two builds), BENCH_AFFINITY (the gateway's
#      CROUPIER_WORKER_AFFINITY: `spread`, as on a node with its CPUs to itself, or `off`;
#      ADR 0035)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
sizes=${BENCH_SIZES:-"1000 10000 10000p 100x100"}
servers=${BENCH_SERVERS:-"croupier nats"}
duration=${BENCH_DURATION:-30s}
rate=${BENCH_RATE:-5}
burst=${BENCH_BURST:-200}
runs=${BENCH_RUNS:-1}
out=${BENCH_OUT:-$root/artifacts/bench-gateway}
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.txt
# shellcheck source=ops/scripts/bench-servers.sh
source ops/scripts/bench-servers.sh

if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  cargo build -q --release -p croupier
  bin=$root/target/release/croupier
fi
if [ "${BENCH_FLOOR:-1}" != 0 ]; then
  cargo build -q --release --manifest-path docs/experiments/loopback-floor/Cargo.toml \
    --target-dir target/experiments
  floor=$root/target/experiments/release/loopback-floor
fi

# measure <server> <url> <pid> [loadgen flags]: one loadgen run, its report in $out/<size>-<server>-<run>.json.
measure() {
  local server=$1 url=$2 pid=$3
  shift 3
  local affinity=""; [ "$server" = croupier ] && affinity=", worker affinity ${BENCH_AFFINITY:-spread}"
  echo "== $size ($n clients), $server, run $run$affinity"
  "$bin" loadgen --quiet --url "$url" --target "$server" --table "$tables" \
    --clients "$n" --duration "$duration" --publish-rate "$rate" --source-addrs 4 \
    --burst "$burst" --server-pid "$pid" --json "$out/$size-$server-$run.json" "$@"
}

for run in $(seq 1 "$runs"); do
  for size in $sizes; do
    extra=()
    case $size in
      *x*)
        count=${size%x*}; per=${size#*x}; n=$((count * per))
        tables=$(seq -s, -f "bench-%g" 1 "$count")
        extra=(--player-channels) ;;
      *p) n=${size%p}; tables=bench; extra=(--player-channels) ;;
      *) n=$size; tables=bench ;;
    esac
    # Fresh servers for every size and server: a server's RSS per connection is (RSS with the
    # clients - RSS before them), and memory a previous run's clients left in the allocator
    # would hide part of the next one's.
    if [[ " $servers " == *" croupier "* ]]; then
      bench_start_servers "$bin"
      measure croupier "ws://127.0.0.1:$http_port/ws" "$gw_pid" --bus-pid "$nats_pid" "${extra[@]}"
      bench_stop_servers
    fi
    if [[ " $servers " == *" nats "* && ${#extra[@]} -eq 0 ]]; then
      bench_start_servers "$bin"
      measure nats "ws://127.0.0.1:$ws_port" "$nats_pid"
      bench_stop_servers
    fi
    if [[ "${BENCH_FLOOR:-1}" != 0 && ${#extra[@]} -eq 0 ]]; then
      # The same fan-out with no server at all (ADR 0017): what this machine's kernel allows.
      # Its stdout line carries the senders' CPU per round (one event to every client).
      echo "== $size ($n clients), loopback floor (no server), run $run"
      FLOOR_CLIENTS=$n FLOOR_SENDERS=2 FLOOR_READER=epoll FLOOR_JSON="$out/$size-floor-$run.json" \
        "$floor" | tee "$out/$size-floor-$run.txt"
    fi
  done
done

python3 ops/scripts/bench-gateway-report.py "$out" "$runs" $sizes
