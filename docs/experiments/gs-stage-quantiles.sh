#!/usr/bin/env bash
# GS's histograms around one load: scrapes `/metrics` before and after a command and prints,
# per histogram that moved, its count and the bucket bounds holding p50, p90 and p99 of what
# the command added. ADR 0032's stage table came from it, on `just up`'s stack after funding
# players bb-0…bb-399 (`croupier wallet deposit --player bb-$i --amount 100000000`):
#
#   docs/experiments/gs-stage-quantiles.sh target/release/croupier loadgen --quiet \
#     --url ws://127.0.0.1:8080/ws --table roulette-1,roulette-2 --clients 400 --bettors 400 \
#     --players bb --bet-rate 500 --duration 30s
#
# usage: gs-stage-quantiles.sh <command…>; env: METRICS (http://127.0.0.1:8080/metrics).
set -euo pipefail
metrics=${METRICS:-http://127.0.0.1:8080/metrics}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
curl -fsS "$metrics" >"$dir/before"
"$@" >"$dir/command.log" 2>&1
curl -fsS "$metrics" >"$dir/after"
python3 - "$dir/before" "$dir/after" <<'PY'
import collections, re, sys
def load(path):
    buckets = collections.defaultdict(dict)
    for line in open(path):
        m = re.match(r'(\w+)_bucket\{(.*)le="([^"]+)"\} (\S+)', line)
        if m:
            name, labels, le, value = m.groups()
            buckets[(name, labels)][float("inf") if le == "+Inf" else float(le)] = float(value)
    return buckets
before, after = load(sys.argv[1]), load(sys.argv[2])
for key in sorted(after):
    bounds = sorted(after[key])
    counts = [after[key][b] - before.get(key, {}).get(b, 0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        continue
    def at(q):
        return next(b for b, c in zip(bounds, counts) if c >= q * total)
    print(f"{key[0]}{{{key[1]}}} n={total:.0f} p50<={at(.5)} p90<={at(.9)} p99<={at(.99)}")
PY
