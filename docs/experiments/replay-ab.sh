#!/usr/bin/env bash
# The before/after figures of ADR 0018's "Session 11": `croupier replay --json` of one history
# by several builds, interleaved, wall and CPU (user + system) medians per build. The history
# is `just bench-replay`'s, kept on `just up`'s servers (run `just up`, then
# `set -a; . .data/endpoints.env; set +a; just bench-replay` once to build it).
#
#   N=8 docs/experiments/replay-ab.sh /tmp/old/croupier target/release/croupier            # --no-bus
#   N=3 WHOLE=1 docs/experiments/replay-ab.sh /tmp/old/croupier target/release/croupier    # with the bus
#
# usage: replay-ab.sh <croupier binary>...
# env: N (runs per binary, 5), WHOLE=1 (compare with the bus too; default --no-bus),
#      ENDPOINTS (.data/endpoints.env). Every run's report must say ok, else the script stops.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
set -a; . "${ENDPOINTS:-$root/.data/endpoints.env}"; set +a
export DATABASE_URL="${DATABASE_URL%/*}/croupier_bench_replay" CROUPIER_NATS_PREFIX=bench_replay \
  CROUPIER_ENDPOINTS_FILE=/nonexistent
args=(replay --json)
[ "${WHOLE:-0}" = 1 ] || args+=(--no-bus)
raw=$(mktemp); report=$(mktemp); trap 'rm -f "$raw" "$report"' EXIT
for _ in $(seq "${N:-5}"); do
  for bin in "$@"; do
    /usr/bin/time -o "$raw" -a -f "$bin %e %U %S" "$bin" "${args[@]}" > "$report"
    python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["ok"], sys.argv[2]' "$report" "$bin"
  done
done
python3 - "$raw" "$@" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 4]
for bin in sys.argv[2:]:
    runs = [(float(w), float(u) + float(s)) for b, w, u, s in rows if b == bin]
    print(f"{bin}: {len(runs)} runs, wall median {st.median(r[0] for r in runs):.2f} s "
          f"(min {min(r[0] for r in runs):.2f}), CPU median {st.median(r[1] for r in runs):.2f} s")
PY
