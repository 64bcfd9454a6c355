#!/usr/bin/env bash
# Two `bench_store` builds against each other, as ADR 0032 measured them: PAIRS pairs of runs
# (build A, then build B) with BENCH_STAGES=1, then per run the median over its batches of
# "indexed COPY time / our batch time" (the figure bench-store's verdict uses), and per build
# the median (min–max) of those run medians. Works with a build whose settlement step fails
# (a throwaway variant): the batch lines come before it.
#
# usage: bench-store-ab.sh <bench_store binary A> <bench_store binary B>
# env: PAIRS (5), OUT (/tmp/bench-store-ab); DATABASE_URL as bench_store takes it.
set -euo pipefail
a=$1; b=$2
pairs=${PAIRS:-5}; out=${OUT:-/tmp/bench-store-ab}
mkdir -p "$out"
for i in $(seq 1 "$pairs"); do
  for side in a b; do
    bin=$a; [ "$side" = b ] && bin=$b
    BENCH_STAGES=1 "$bin" >"$out/$side-$i.log" 2>&1 || true
    echo "pair $i, build $side: done"
  done
done
python3 - "$out" "$pairs" <<'PY'
import re, statistics as st, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def run_median(path):
    ratios = []
    for line in open(path):
        m = re.match(r"batch \d+: ours ([\d.]+) ms, indexed COPY ([\d.]+) ms", line)
        if m:
            ratios.append(float(m.group(2)) / float(m.group(1)))
    return st.median(ratios) if ratios else float("nan")
runs = {side: [run_median(f"{out}/{side}-{i}.log") for i in range(1, pairs + 1)] for side in "ab"}
for side in "ab":
    r = runs[side]
    print(f"build {side}: append / indexed COPY per run {[round(x, 2) for x in r]}, "
          f"median {st.median(r):.2f} ({min(r):.2f}–{max(r):.2f})")
pair = [b / a for a, b in zip(runs["a"], runs["b"])]
print(f"per-pair ratio b / a: median {st.median(pair):.2f} ({min(pair):.2f}–{max(pair):.2f})")
PY
