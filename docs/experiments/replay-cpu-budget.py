#!/usr/bin/env python3
"""The CPU budget of one whole `croupier replay` (ADR 0018, "Session 11"): the replay's own
CPU (user + system, from its rusage), nats-server's and every Postgres process's (from /proc,
before and after), and their sum over two cores, the least wall time any overlap could reach.
Runs on `just bench-replay`'s history kept on `just up`'s servers (see replay-ab.sh).

usage: replay-cpu-budget.py [croupier binary, default target/release/croupier] [runs, default 3]
"""
import json, os, resource, subprocess, sys, time

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "target/release/croupier")
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
tick = os.sysconf("SC_CLK_TCK")

def stat(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()

def cpu_of(match):
    """CPU seconds of every process whose command line contains `match` (with reaped children)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if match in open(f"/proc/{pid}/cmdline").read().replace("\0", " "):
                f = stat(pid)
                total += sum(int(x) for x in f[11:15]) / tick
        except OSError:
            pass
    return total

env = dict(os.environ)
for line in open(os.path.join(root, ".data/endpoints.env")):
    if "=" in line and not line.startswith("#"):
        key, value = line.strip().split("=", 1)
        env[key] = value.strip("'")
env.update(DATABASE_URL=env["DATABASE_URL"].rsplit("/", 1)[0] + "/croupier_bench_replay",
           CROUPIER_NATS_PREFIX="bench_replay", CROUPIER_ENDPOINTS_FILE="/nonexistent")
nats_conf = os.path.join(root, "ops/nats/nats.conf")
for _ in range(runs):
    nats0, pg0, t0 = cpu_of(nats_conf), cpu_of("postgres"), time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([binary, "replay", "--json"], env=env, capture_output=True, check=False)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    replay = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    nats, pg = cpu_of(nats_conf) - nats0, cpu_of("postgres") - pg0
    ok = json.loads(out.stdout)["ok"]
    total = replay + nats + pg
    print(f"wall {wall:.2f} s; CPU: replay {replay:.2f} s, nats-server {nats:.2f} s, "
          f"postgres {pg:.2f} s, sum {total:.2f} s = {total / 2:.2f} s of two cores; ok={ok}")
