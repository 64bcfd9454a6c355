#!/usr/bin/env python3
"""`just bench-gateway`'s tables, from the JSON reports it left in OUT.

usage: bench-gateway-report.py OUT RUNS SIZE...

Each run of each size gives one row per server (croupier, nats) and one for the floor; the
ratios compare a server with the floor of the same client count in the same run. With several
runs, a summary gives each ratio's median and its spread (min-max) over the runs.
"""
import json
import os
import re
import statistics
import sys

out, runs, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]


def load(size, who, run):
    path = f"{out}/{size}-{who}-{run}.json"
    return json.load(open(path)) if os.path.exists(path) else None


def clients_of(size):
    if "x" in size:
        t, c = size.split("x")
        return int(t) * int(c)
    return int(size.rstrip("p"))


def floor_of(size, run):
    """The floor of the same client count in the same run: its latency and senders' CPU."""
    n = clients_of(size)
    for other in sizes:
        if other.isdigit() and int(other) == n:
            f = load(other, "floor", run)
            if f is None:
                continue
            txt = f"{out}/{other}-floor-{run}.txt"
            cpu = reader = None
            if os.path.exists(txt):
                m = re.search(r"CPU/round senders ([\d.]+) ms reader ([\d.]+) ms", open(txt).read())
                cpu, reader = (float(m.group(1)), float(m.group(2))) if m else (None, None)
            return f, cpu, reader
    return None, None, None


def per_conn(r, stage, key="server_rss_kib"):
    samples = {m["at"]: m for m in r.get("memory", [])}
    before, at = samples.get("before", {}).get(key), samples.get(stage, {}).get(key)
    if before is None or at is None or not r["connected"]:
        return None
    return (at - before) / r["connected"]


def tcp_mib(r, stage):
    for m in r.get("memory", []):
        if m["at"] == stage and m.get("kernel_tcp_kib") is not None:
            return m["kernel_tcp_kib"] / 1024
    return None


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


ratios = {}  # (size, what) -> [per-run ratio]


def keep(size, what, value):
    if value is not None:
        ratios.setdefault((size, what), []).append(value)


for run in range(1, runs + 1):
    print(f"\nrun {run}: latency (ms) and CPU per event (ms; per `clients` deliveries)")
    print(f"{'size':>8} {'server':<9} {'p50':>7} {'p99':>7} {'p999':>7} {'deliv/s':>8} {'drops':>5} "
          f"{'CPU/ev':>7} {'bus CPU':>7} {'lg CPU':>7} {'p99/floor':>9} {'CPU/floor':>9}")
    for size in sizes:
        floor, floor_cpu, floor_reader = floor_of(size, run)
        for who in ("croupier", "nats"):
            r = load(size, who, run)
            if r is None:
                continue
            l, cpu = r["latency_ms"], r.get("cpu", {})
            ev = cpu.get("server_ms_per_event")
            p99_ratio = l["p99"] / floor["p99"] if floor and floor["p99"] > 0 else None
            cpu_ratio = ev / floor_cpu if ev is not None and floor_cpu else None
            keep(size, f"{who} p99/floor", p99_ratio)
            keep(size, f"{who} CPU/floor", cpu_ratio)
            keep(size, f"{who} p99", l["p99"])
            keep(size, f"{who} CPU/ev", ev)
            keep(size, f"{who} loadgen CPU/ev", cpu.get("loadgen_ms_per_event"))
            # The two cores' whole work per event against the floor's (its senders and its
            # reader): what the latencies are made of when both sides share the machine.
            lg = cpu.get("loadgen_ms_per_event")
            if ev is not None and lg is not None and floor_cpu and floor_reader:
                keep(size, f"{who} machine CPU/floor", (ev + lg) / (floor_cpu + floor_reader))
            keep(size, f"{who} KiB/conn", per_conn(r, "connected"))
            keep(size, f"{who} drops", r["drops"])
            print(f"{size:>8} {who:<9} {l['p50']:>7.2f} {l['p99']:>7.2f} {l['p999']:>7.2f} "
                  f"{r['delivered_per_s']:>8.0f} {r['drops']:>5} {fmt(ev):>7} "
                  f"{fmt(cpu.get('bus_ms_per_event')):>7} {fmt(cpu.get('loadgen_ms_per_event')):>7} "
                  f"{fmt(p99_ratio):>9} {fmt(cpu_ratio):>9}")
        f = load(size, "floor", run)
        if f is not None:
            keep(size, "floor p99", f["p99"])
            keep(size, "floor CPU/ev", floor_cpu)
            keep(size, "floor reader CPU/ev", floor_reader)
            print(f"{size:>8} {'floor':<9} {f['p50']:>7.2f} {f['p99']:>7.2f} {f['p999']:>7.2f} "
                  f"{'-':>8} {'-':>5} {fmt(floor_cpu):>7} {'-':>7} {fmt(floor_reader):>7} {'-':>9} {'-':>9}")

    print(f"\nrun {run}: memory per connection (KiB): the server's RSS after connecting, after the "
          "measurement, with a tenth of the clients backed up by a burst, and after they caught up; "
          "the kernel's TCP memory (MiB, machine-wide: both ends) and the bus's RSS per connection beside it")
    print(f"{'size':>8} {'server':<9} {'connect':>8} {'measured':>8} {'burst':>8} {'after':>8} "
          f"{'TCP MiB':>8} {'TCP bur':>8} {'bus conn':>8} {'bus CPU ms':>10} {'4008':>5}")
    for size in sizes:
        for who in ("croupier", "nats"):
            r = load(size, who, run)
            if r is None:
                continue
            keep(size, f"{who} KiB/conn measured", per_conn(r, "measured"))
            keep(size, f"{who} KiB/conn burst", per_conn(r, "burst"))
            keep(size, f"{who} bus KiB/conn", per_conn(r, "connected", "bus_rss_kib"))
            keep(size, f"{who} bus CPU/ev", r.get("cpu", {}).get("bus_ms_per_event"))
            b = r.get("burst") or {}
            print(f"{size:>8} {who:<9} {fmt(per_conn(r, 'connected')):>8} "
                  f"{fmt(per_conn(r, 'measured')):>8} {fmt(per_conn(r, 'burst')):>8} "
                  f"{fmt(per_conn(r, 'after_burst')):>8} "
                  f"{fmt(tcp_mib(r, 'connected'), '.1f'):>8} "
                  f"{fmt(tcp_mib(r, 'burst'), '.1f'):>8} "
                  f"{fmt(per_conn(r, 'connected', 'bus_rss_kib')):>8} "
                  f"{fmt(r.get('cpu', {}).get('bus_ms'), 'd') if r.get('cpu', {}).get('bus_ms') is not None else '-':>10} "
                  f"{b.get('slow_consumer_closes', '-'):>5}")


def spread(values):
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}, {len(values)} runs)"


SUMMARY = ("p99", "p99/floor", "CPU/ev", "CPU/floor", "KiB/conn", "KiB/conn measured",
           "KiB/conn burst", "bus KiB/conn", "bus CPU/ev", "loadgen CPU/ev", "machine CPU/floor")
print("\nsummary: median (min-max) over the runs")
for (size, what), values in sorted(ratios.items(), key=lambda kv: (sizes.index(kv[0][0]), kv[0][1])):
    if what.split(" ", 1)[0] == "floor" or what.split(" ", 1)[1] in SUMMARY:
        print(f"{size:>8} {what:<26} {spread(values)}")

# Many tables against one table with player channels: the same clients and channels per client.
for size in sizes:
    if "x" not in size:
        continue
    one = f"{clients_of(size)}p"
    per_run = []
    for run in range(1, runs + 1):
        many, single = load(size, "croupier", run), load(one, "croupier", run)
        if many and single:
            a, b = per_conn(many, "connected"), per_conn(single, "connected")
            if a is not None and b:
                per_run.append(a / b)
    if per_run:
        print(f"{size:>8} {'KiB/conn vs ' + one:<26} {spread(per_run)}")

print("\nfloor: the same fan-out with no server (2 threads sending, 1 reading, bare loopback TCP;")
print("docs/experiments/loopback-floor.sh, ADR 0017); BENCH_FLOOR=0 skips it. CPU/floor compares")
print("the server's CPU per event with the floor's senders' CPU per round (one event to every client);")
print("lg CPU is loadgen's own (the floor's row: its reader's), and machine CPU/floor compares server +")
print("loadgen with the floor's senders + reader: the two cores' whole work per event.")
