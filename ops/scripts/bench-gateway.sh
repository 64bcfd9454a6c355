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
# shellcheck source=ops/scripts/bench-servers.sh
source ops/scripts/bench-servers.sh

cargo build -q --release -p croupier
bin=$root/target/release/croupier
if [ "${BENCH_FLOOR:-1}" != 0 ]; then
  cargo build -q --release --manifest-path docs/experiments/loopback-floor/Cargo.toml \
    --target-dir target/experiments
  floor=$root/target/experiments/release/loopback-floor
fi
# measure <server> <url> <pid>: one loadgen run against it, the report in $out/<server>-$n.json.
measure() {
  echo "== $n clients, $1"
  "$bin" loadgen --quiet --url "$2" --target "$1" --table bench \
    --clients "$n" --duration "$duration" --publish-rate "$rate" --source-addrs 4 \
    --server-pid "$3" --json "$out/$1-$n.json"
}

for n in $sizes; do
  rm -f "$out/croupier-$n.json" "$out/nats-$n.json" "$out/floor-$n.json"
  # Fresh servers for every size: a server's RSS per connection is (RSS with the clients - RSS
  # before them), and memory a previous size's clients left in the allocator would hide part of
  # the next size's.
  bench_start_servers "$bin"
  if [[ " $servers " == *" croupier "* ]]; then measure croupier "ws://127.0.0.1:$http_port/ws" "$gw_pid"; fi
  if [[ " $servers " == *" nats "* ]]; then measure nats "ws://127.0.0.1:$ws_port" "$nats_pid"; fi
  bench_stop_servers
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
