#!/usr/bin/env bash
# Two croupier builds against each other in `just bench-gateway`, as ADR 0030's session 16
# measured them: PAIRS pairs of runs (build A, then build B), each one size with its own floor,
# then per build the median (min–max) of each figure, and the per-pair ratio B / A of
# loadgen's and the gateway's CPU per event.
#
# usage: bench-gateway-ab.sh <croupier binary A> <croupier binary B>
# env: PAIRS (5), SIZE (10000), OUT (/tmp/bench-gateway-ab), AFFINITY_A / AFFINITY_B (each
#      side's BENCH_AFFINITY, default BENCH_AFFINITY or `spread`: one binary given twice with
#      AFFINITY_A=off AFFINITY_B=spread is ADR 0035's comparison), and bench-gateway.sh's
#      BENCH_* (BENCH_BURST defaults to 0 here).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
a=$1; b=$2
pairs=${PAIRS:-5}; size=${SIZE:-10000}; out=${OUT:-/tmp/bench-gateway-ab}
mkdir -p "$out"
for i in $(seq 1 "$pairs"); do
  for side in a b; do
    bin=$a; affinity=${AFFINITY_A:-${BENCH_AFFINITY:-spread}}
    if [ "$side" = b ]; then bin=$b; affinity=${AFFINITY_B:-${BENCH_AFFINITY:-spread}}; fi
    BENCH_AFFINITY=$affinity BENCH_BIN=$bin BENCH_OUT="$out/$side-$i" BENCH_RUNS=1 BENCH_SIZES=$size \
      BENCH_SERVERS=croupier BENCH_BURST=${BENCH_BURST:-0} \
      "$root/ops/scripts/bench-gateway.sh" >"$out/$side-$i.log" 2>&1
    echo "pair $i, build $side: done"
  done
done
python3 - "$out" "$pairs" "$size" <<'PY'
import re, statistics as st, sys
out, pairs, size = sys.argv[1], int(sys.argv[2]), sys.argv[3]
labels = ["croupier CPU/ev", "croupier CPU/floor", "croupier loadgen CPU/ev",
          "croupier machine CPU/floor", "croupier p99", "croupier p99/floor",
          "floor CPU/ev", "floor p99", "floor reader CPU/ev"]
def figures(path):
    text = open(path).read()
    found = {}
    for label in labels:
        m = re.search(r"^\s+" + re.escape(size) + " " + re.escape(label) + r"\s+([\d.]+)", text, re.M)
        found[label] = float(m.group(1)) if m else float("nan")
    return found
runs = {side: [figures(f"{out}/{side}-{i}.log") for i in range(1, pairs + 1)] for side in "ab"}
for side in "ab":
    print(f"build {side}")
    for label in labels:
        xs = [r[label] for r in runs[side]]
        print(f"  {label:<28} {st.median(xs):8.2f} ({min(xs):.2f}-{max(xs):.2f})")
for label in ["croupier loadgen CPU/ev", "croupier CPU/ev"]:
    ratios = [b[label] / a[label] for a, b in zip(runs["a"], runs["b"])]
    print(f"{label}, b / a per pair: {', '.join(f'{r:.2f}' for r in ratios)}; median {st.median(ratios):.2f}")
PY
