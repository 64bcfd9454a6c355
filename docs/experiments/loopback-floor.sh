#!/usr/bin/env bash
# The floor under `just bench-gateway` on this machine (ADR 0017): the configurations of
# docs/experiments/loopback-floor/src/main.rs in turn, RUNS times each (interleaved), under the
# benchmark lock, then each configuration's median. No gateway is involved: only the kernel's
# loopback TCP sends and receives, with the least user-space work there is.
#
# usage: docs/experiments/loopback-floor.sh          env: RUNS (3), FLOOR_CLIENTS (10000)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
cargo build -q --release --manifest-path docs/experiments/loopback-floor/Cargo.toml \
  --target-dir target/experiments
bin=target/experiments/release/loopback-floor
configs=(
  "FLOOR_SENDERS=1 FLOOR_READER=none"
  "FLOOR_SENDERS=2 FLOOR_READER=none"
  "FLOOR_SENDERS=2 FLOOR_READER=epoll"
  "FLOOR_SENDERS=2 FLOOR_READER=epoll FLOOR_URING=64"
  "FLOOR_SENDERS=2 FLOOR_READER=epoll FLOOR_CC=reno"
)
out=$(mktemp /tmp/loopback-floor-XXXXXX)
for _ in $(seq 1 "${RUNS:-3}"); do
  for c in "${configs[@]}"; do
    env $c flock /tmp/bench.lock nice -n -15 "$bin" | tee -a "$out"
  done
done
echo "== medians"
python3 - "$out" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    head, *parts = line.split(" | ")
    nums = [float(x) for x in re.findall(r"(?<!\w)(nan|\d+(?:\.\d+)?)", " | ".join(parts), re.I)]
    rows.setdefault(head.strip(), []).append(nums)
for head, runs in rows.items():
    med = [statistics.median(col) for col in zip(*runs)]
    print(f"{head} | send {med[0]:.1f} ms | latency p50 {med[1]:.1f} p99 {med[2]:.1f} ms"
          f" | CPU/round senders {med[3]:.1f} ms reader {med[4]:.1f} ms  ({len(runs)} runs)")
PY
