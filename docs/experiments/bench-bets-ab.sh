#!/usr/bin/env bash
# Two croupier builds against each other in `bench_bets`, as ADR 0032 measured them: PAIRS
# pairs of runs (build A, then build B), each copied over target/release/croupier (the binary
# bench_bets starts; the one that was there is put back at the end), then per build and step
# the median (min–max) of the runs' due→answer p50 and p99 and the per-pair ratio B / A.
#
# usage: bench-bets-ab.sh <croupier binary A> <croupier binary B>
# env: PAIRS (3), OUT (/tmp/bench-bets-ab), and bench_bets's BENCH_RATES (500,1000,2000 here)
#      and BENCH_STEP_S (30 here).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
a=$1; b=$2
pairs=${PAIRS:-3}; out=${OUT:-/tmp/bench-bets-ab}
mkdir -p "$out"
target=$root/target/release/croupier
cp "$target" "$out/croupier.kept"
trap 'cp "$out/croupier.kept" "$target"' EXIT
for i in $(seq 1 "$pairs"); do
  for side in a b; do
    bin=$a; [ "$side" = b ] && bin=$b
    cp "$bin" "$target"
    BENCH_RATES=${BENCH_RATES:-500,1000,2000} BENCH_STEP_S=${BENCH_STEP_S:-30} \
      "$root/target/release/examples/bench_bets" >"$out/$side-$i.log" 2>&1 || true
    echo "pair $i, build $side: done"
  done
done
python3 - "$out" "$pairs" <<'PY'
import re, statistics as st, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def steps(path):
    found = {}
    for line in open(path):
        m = re.match(r"\| (\d+) \(\d+\) \| [^|]+\| [^|]+\| [^|]+\| ([\d.]+) / ([\d.]+) / ([\d.]+) \|", line)
        if m:
            found[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return found
runs = {side: [steps(f"{out}/{side}-{i}.log") for i in range(1, pairs + 1)] for side in "ab"}
rates = sorted(set().union(*[r.keys() for side in runs.values() for r in side]))
def spread(xs):
    return f"{st.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})" if xs else "-"
for rate in rates:
    for k, name in ((0, "p50"), (1, "p99")):
        a = [r[rate][k] for r in runs["a"] if rate in r]
        b = [r[rate][k] for r in runs["b"] if rate in r]
        pair = [y / x for x, y in zip(a, b)]
        print(f"{rate}/s {name}: a {spread(a)} ms, b {spread(b)} ms, per-pair b / a {spread(pair)}")
PY
