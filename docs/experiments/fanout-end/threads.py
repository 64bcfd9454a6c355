#!/usr/bin/env python3
# usage: threads.py <pid> <seconds> : per-thread CPU (ms), run-queue wait (ms), slices over the window
import os, sys, time
pid, dur = sys.argv[1], float(sys.argv[2])
def snap():
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            run, wait, slices = map(int, open(f"/proc/{pid}/task/{tid}/schedstat").read().split())
            st = open(f"/proc/{pid}/task/{tid}/status").read()
            vol = int([l for l in st.splitlines() if l.startswith("voluntary_ctxt")][0].split()[1])
            nvol = int([l for l in st.splitlines() if l.startswith("nonvoluntary_ctxt")][0].split()[1])
            out[tid] = (comm, run, wait, slices, vol, nvol)
        except Exception:
            pass
    return out
a = snap(); time.sleep(dur); b = snap()
tot = [0, 0]
rows = []
for tid, (comm, run, wait, sl, vol, nvol) in b.items():
    if tid not in a: continue
    _, r0, w0, s0, v0, n0 = a[tid]
    dr, dw = (run - r0) / 1e6, (wait - w0) / 1e6
    if dr < 1 and dw < 1: continue
    rows.append((dr, f"{tid:>8} {comm:<18} cpu {dr:8.1f} ms  runq-wait {dw:8.1f} ms  slices {sl - s0:6d}  vol {vol - v0:6d} invol {nvol - n0:6d}"))
    tot[0] += dr; tot[1] += dw
for _, r in sorted(rows, reverse=True): print(r)
print(f"total cpu {tot[0]:.1f} ms  runq-wait {tot[1]:.1f} ms over {dur}s")
