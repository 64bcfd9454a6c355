# ADR 0035: per-event fan-out end (ms after the event's `at`) from an instrumented run, its
# first third (the ramp-up) left out. usage: ends.py a <fanout.log> (instrument-shards.py: the
# later of the two writers' ends) | ends.py c <fanout2.log> (instrument-chunks.py)
import sys, collections
kind, path = sys.argv[1], sys.argv[2]
rows=[list(map(int,l.split())) for l in open(path)]
if kind == "a":
    rows=[r for r in rows if r[2]>1000]
    ev=collections.defaultdict(list)
    for r in rows: ev[r[0]].append(r)
    ends=[max(x[5] for x in v)/1000 for k,v in sorted(ev.items()) if len(v)==2]
else:
    ends=[r[2]/1000 for r in rows]
ends=ends[len(ends)//3:]
v=sorted(ends); q=lambda p: v[min(int(len(v)*p),len(v)-1)]
print(f"{kind} n {len(v)} fan-out end p50 {q(.5):.1f} p90 {q(.9):.1f} p99 {q(.99):.1f}")
