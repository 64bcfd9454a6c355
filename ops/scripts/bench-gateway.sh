#!/usr/bin/env bash
# `just bench-gateway`: Croupier's gateway against nats-server's own WebSocket listener, side
# by side on this machine, at 1k and 10k clients receiving 5 events/s on one table. Reports
# publish->client latency, delivered/s and each SERVER's own RSS per connection (loadgen
# reads the server's /proc/<pid>/status before and after connecting its clients).
# A benchmark, not a test: it prints figures and asserts nothing.
# env: BENCH_SIZES ("1000 10000"), BENCH_SERVERS ("croupier nats"), BENCH_DURATION (30s),
#      BENCH_RATE (5 events/s), BENCH_OUT (artifacts/bench-gateway: one JSON report per run),
#      BENCH_FLOOR (1: after each size, the kernel's floor for the same fan-out, no server)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
sizes=${BENCH_SIZES:-"1000 10000"}
servers=${BENCH_SERVERS:-"croupier nats"}
duration=${BENCH_DURATION:-30s}
rate=${BENCH_RATE:-5}
out=${BENCH_OUT:-$root/artifacts/bench-gateway}
mkdir -p "$out"
work=$(mktemp -d /tmp/croupier-bench-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build -q --release -p croupier
bin=$root/target/release/croupier
if [ "${BENCH_FLOOR:-1}" != 0 ]; then
  cargo build -q --release --manifest-path docs/experiments/loopback-floor/Cargo.toml \
    --target-dir target/experiments
  floor=$root/target/experiments/release/loopback-floor
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

export CROUPIER_JWT_SECRET=bench-secret-bench-secret-bench-secret CROUPIER_ENDPOINTS_FILE=/nonexistent
export RUST_LOG=warn

# Fresh servers for every size: a server's RSS per connection is (RSS with the clients - RSS
# before them), and memory a previous size's clients left in the allocator would hide part of
# the next size's.
start_servers() {
  nats_port=$(free_port); ws_port=$(free_port); http_port=$(free_port)
  # The config's websocket port is fixed; this run's copy gets a free one.
  sed "s/127.0.0.1:9222/127.0.0.1:$ws_port/" ops/nats/bench-ws.conf >"$work/ws.conf"
  rm -rf "$work/js"
  .tools/venv/bin/nats-server -c "$work/ws.conf" -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >>"$work/nats.log" 2>&1 &
  nats_pid=$!; pids+=("$nats_pid")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$ws_port") 2>/dev/null && break; sleep 0.1; done
  NATS_URL="nats://127.0.0.1:$nats_port" CROUPIER_HTTP_ADDR="127.0.0.1:$http_port" \
    "$bin" run gateway >>"$work/gateway.log" 2>&1 &
  gw_pid=$!; pids+=("$gw_pid")
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$http_port") 2>/dev/null && break; sleep 0.1; done
}
stop_servers() {
  kill "$gw_pid" "$nats_pid" 2>/dev/null || true
  wait "$gw_pid" "$nats_pid" 2>/dev/null || true
}

for n in $sizes; do
  rm -f "$out/croupier-$n.json" "$out/nats-$n.json" "$out/floor-$n.json"
  start_servers
  if [[ " $servers " == *" croupier "* ]]; then
  echo "== $n clients, croupier gateway"
  NATS_URL="nats://127.0.0.1:$nats_port" "$bin" loadgen --quiet --url "ws://127.0.0.1:$http_port/ws" \
    --target croupier --table bench \
    --clients "$n" --duration "$duration" --publish-rate "$rate" --source-addrs 4 \
    --server-pid "$gw_pid" --json "$out/croupier-$n.json"
  fi
  if [[ " $servers " == *" nats "* ]]; then
  echo "== $n clients, nats-server websocket"
  NATS_URL="nats://127.0.0.1:$nats_port" "$bin" loadgen --quiet --url "ws://127.0.0.1:$ws_port" \
    --target nats --table bench \
    --clients "$n" --duration "$duration" --publish-rate "$rate" --source-addrs 4 \
    --server-pid "$nats_pid" --json "$out/nats-$n.json"
  fi
  stop_servers
  if [ "${BENCH_FLOOR:-1}" != 0 ]; then
    # The same fan-out with no server at all (ADR 0017): what this machine's kernel allows.
    echo "== $n clients, loopback floor (no server)"
    FLOOR_CLIENTS=$n FLOOR_SENDERS=2 FLOOR_READER=epoll FLOOR_JSON="$out/floor-$n.json" "$floor"
  fi
done

python3 - "$out" $sizes <<'PY'
import json, os, sys
out, sizes = sys.argv[1], sys.argv[2:]
print()
print(f"{'clients':>8} {'server':<10} {'p50 ms':>8} {'p99 ms':>8} {'p999 ms':>8} {'deliv/s':>9} {'drops':>6} {'KiB/conn':>9}")
for n in sizes:
    for name in ("croupier", "nats"):
        if not os.path.exists(f"{out}/{name}-{n}.json"):
            continue
        r = json.load(open(f"{out}/{name}-{n}.json"))
        l = r["latency_ms"]
        per = r.get("server_rss_per_connection_kib")
        per = f"{per:.2f}" if per is not None else "-"
        print(f"{n:>8} {name:<10} {l['p50']:>8.2f} {l['p99']:>8.2f} {l['p999']:>8.2f} {r['delivered_per_s']:>9.0f} {r['drops']:>6} {per:>9}")
    if os.path.exists(f"{out}/floor-{n}.json"):
        f = json.load(open(f"{out}/floor-{n}.json"))
        label = "floor" if f["clients"] == int(n) else f"floor@{f['clients']}"
        print(f"{n:>8} {label:<10} {f['p50']:>8.2f} {f['p99']:>8.2f} {f['p999']:>8.2f} {'-':>9} {'-':>6} {'-':>9}")
print()
print("floor: the same fan-out with no server (2 threads sending, 1 reading, bare loopback TCP;")
print("docs/experiments/loopback-floor.sh, ADR 0017); BENCH_FLOOR=0 skips it.")
PY
