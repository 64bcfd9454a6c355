# ADR 0035 part two: `perf script -F comm,tid,cpu,time,ip,sym` of a system-wide recording and
# an instrumented gateway's fan-out ends (instrument-chunks.py), on the same realtime clock.
# Prints, for the fastest half and the slowest fifth of the events, samples per event by
# thread name, the gateway workers' top symbols, and for a few events which threads ran on
# each CPU in 10 ms steps. usage: windows.py <sys.txt> <fanout2.log>
import bisect, collections, re, sys

samples = []
for line in open(sys.argv[1]):
    m = re.match(r'\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+[0-9a-f]+\s+(.*)', line)
    if m:
        comm, tid, cpu, t, sym = m.groups()
        samples.append((float(t), comm, int(cpu), int(tid), re.sub(r'\+0x[0-9a-f]+', '', sym.strip())))
samples.sort()
ts = [s[0] for s in samples]
events = []
for line in open(sys.argv[2]):
    _, at, end = map(int, line.split())
    if ts and ts[0] < at / 1e6 and at / 1e6 + end / 1e6 < ts[-1]:
        events.append((at / 1e6, end / 1e6))
events.sort(key=lambda e: e[1])
worker = lambda comm: comm.startswith(('tokio-rt', 'croupier-rt'))
def window(at, end):
    return samples[bisect.bisect_left(ts, at):bisect.bisect_left(ts, at + end)]
n = len(events)
for label, group in [("fastest half", events[: n // 2]), ("slowest fifth", events[-max(1, n // 5):])]:
    if not group:
        continue
    by_thread, by_symbol = collections.Counter(), collections.Counter()
    for at, end in group:
        for s in window(at, end):
            by_thread['gateway worker' if worker(s[1]) else s[1]] += 1
            if worker(s[1]):
                by_symbol[s[4][:70]] += 1
    mean = sum(e for _, e in group) / len(group) * 1000
    print(f"{label}: {len(group)} events, mean fan-out {mean:.1f} ms; samples per event:")
    for k, v in by_thread.most_common(6):
        print(f"   {k:20} {v / len(group):7.1f}")
    print("   gateway workers' top symbols:")
    for k, v in by_symbol.most_common(6):
        print(f"      {v / len(group):6.1f} {k}")
print("per CPU in 10 ms steps (W<tid%100> = a gateway worker), fastest 2 and slowest 3 events:")
for at, end in events[:2] + events[-3:]:
    steps = []
    for b in range(int(end * 100) + 1):
        cells = []
        for cpu in (0, 1):
            c = collections.Counter(('W%d' % (s[3] % 100)) if worker(s[1]) else s[1][:4]
                                    for s in window(at + b / 100, 0.01) if s[2] == cpu)
            cells.append(",".join(f"{k}{v}" for k, v in c.most_common(2)))
        steps.append("|".join(cells))
    print(f"{end * 1000:6.1f} ms: " + "  ".join(steps))
