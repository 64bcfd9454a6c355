# Croupier's recipes. `just --list` shows them; docs/contract/cli.md fixes their names.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The build `just up` runs: `release` (optimised) unless CROUPIER_PROFILE=debug (ADR 0024).
profile := env_var_or_default("CROUPIER_PROFILE", "release")

# Show the recipes.
default:
    @just --list

# Install what a fresh Debian/Ubuntu machine lacks (PostgreSQL, pinned nats-server, just).
deps:
    @ops/scripts/deps.sh

# Format check, clippy with warnings denied, and every test against real NATS and Postgres.
test: deps
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace

# Build the croupier binary `just up` runs (target/release/, or target/debug/ with
# CROUPIER_PROFILE=debug).
build:
    cargo build -p croupier {{ if profile == "release" { "--release" } else { "" } }}

# Start NATS, Postgres and the services in the foreground (Ctrl-C or `just down` stops them).
up: deps build
    @CROUPIER_PROFILE={{profile}} ops/scripts/stack.sh up

# The production topology on loopback: a three-node NATS cluster (streams with three replicas),
# Postgres, and every role twice as its own process (gms-1/2, gs-1/2, gateway-1/2).
up-cluster: deps build
    @CROUPIER_PROFILE={{profile}} ops/scripts/stack.sh up-cluster

# Send SIGNAL (default KILL) to one process of a running stack, e.g. `just kill nats-2`.
kill NAME SIGNAL="KILL":
    @ops/scripts/stack.sh kill {{NAME}} {{SIGNAL}}

# Start a process `just kill` stopped (or that died), as the stack started it.
revive NAME:
    @ops/scripts/stack.sh revive {{NAME}}

# SIGSTOP one process of a running stack, SIGCONT after SECONDS.
freeze NAME SECONDS:
    @ops/scripts/stack.sh freeze {{NAME}} {{SECONDS}}

# Stop everything `just up` started, and nothing else.
down:
    @ops/scripts/stack.sh down

# Remove .data/ (NATS and Postgres data together).
clean:
    @ops/scripts/stack.sh clean

# Stop / start the Postgres of a running stack (degraded-mode drills).
pg-stop:
    @ops/scripts/stack.sh pg-stop

pg-start:
    @ops/scripts/stack.sh pg-start

# Hold the event store's head row lock for SECONDS: Postgres answers but appends wait (store_slow).
pg-slow SECONDS:
    @ops/scripts/stack.sh pg-slow {{SECONDS}}

# Freeze the stack's own Postgres cluster (SIGSTOP, then SIGCONT after SECONDS): a hung database.
pg-freeze SECONDS:
    @ops/scripts/stack.sh pg-freeze {{SECONDS}}

# Stop / start the NATS server of a running stack.
nats-stop:
    @ops/scripts/stack.sh nats-stop

nats-start:
    @ops/scripts/stack.sh nats-start

# Regenerate the JSON Schemas in schemas/ from the Rust wire types (a test fails when stale).
schemas:
    cargo run -q -p protocol --example gen-schemas
    cargo run -q -p audit --example gen-audit-schemas

# Two `croupier run gms` processes, the leader killed with SIGKILL 5 times. Flags, e.g. `--lease-ttl-ms 1500`.
# GMS figures: transition lag p50/p99 over 150 transitions and failover time (median of 5 kills).
bench-gms *ARGS: build
    cargo run -q -p gms --example bench-gms -- --croupier target/{{profile}}/croupier {{ARGS}}

# Croupier's gateway vs nats-server's WebSocket listener at 1k and 10k clients (BENCH_SIZES,
# BENCH_DURATION, BENCH_RATE override); tables of latency, delivered/s and server RSS/connection.
bench-gateway: deps
    ops/scripts/bench-gateway.sh

# DATABASE_URL picks a server; by default a private durable one is started.
# Event store write path (durable Postgres): batched append vs COPY and INSERT; 10k/100k settlement.
bench-store: deps
    cargo run --release -q -p gs --example bench_store

# Building, encoding and decoding 10k events (the MessagePack every service writes and reads),
# beside a bare walk of the same bytes: medians of 9.
bench-encode:
    cargo run --release -q -p protocol --example bench-encode

# `croupier replay` on a history of 1M+ events made through the real write paths (GMS, GS,
# outbox), against COPY and ordered-consumer anchors; medians of 3. DATABASE_URL + NATS_URL keep
# the history between runs (database croupier_bench_replay, prefix bench_replay).
bench-replay: deps
    cargo build --release -q -p croupier
    cargo run --release -q -p croupier --example bench_replay

# GS's outbox alone: 20k committed events published to a private nats-server; events/s, median
# of 3. BENCH_CROUPIER=/path/to/croupier measures another build.
bench-outbox: deps
    cargo build --release -q -p croupier
    cargo run --release -q -p croupier --example bench_outbox

# The degraded-mode drills (pg-stop, pg-freeze, pg-slow, nats-stop) on `just up`'s own stack under
# load: per drill, time to betting off and back on, answers by code, events missed or doubled.
bench-degraded: deps
    cargo build --release -q -p croupier
    cargo run --release -q -p croupier --example bench_degraded

# The bet path end to end on `just up`'s stack: steps of offered bets/s (BENCH_RATES=500,1000,…,
# BENCH_STEP_S=60) with open-loop bettors; accepted bets/s, latency, settlement, outbox, CPU/bet.
bench-bets: deps
    cargo build --release -q -p croupier
    cargo build --release -q -p gs --example bench_store
    cargo run --release -q -p croupier --example bench_bets

# Every scenario of issue 17 on `just up-cluster`'s stack (release) under 2,000 clients and 500
# bets/s: a GS, the GMS leader, a gateway and a NATS node killed, a NATS node frozen, Postgres
# stopped, frozen, and stopped past the duplicate window; the report as a table and JSON
# (artifacts/chaos.json). CHAOS_SCENARIOS, CHAOS_CLIENTS, CHAOS_BET_RATE, CHAOS_FAULT_S.
chaos: deps
    cargo build --release -q -p croupier
    cargo run --release -q -p croupier --example chaos

# Every benchmark.
bench: bench-encode bench-store bench-gms bench-gateway bench-replay bench-outbox bench-degraded bench-bets

# Flags: `--table T --from-round N --to-round M --json`.
# Verify the event store end to end (gapless positions, hash chain); exit 0 only when it holds.
replay *ARGS: build
    target/{{profile}}/croupier replay {{ARGS}}

# The demo page in headless Chromium (also part of `just test`); screenshots: artifacts/demo-page.png,
# artifacts/demo-page-paused.png.
test-page: deps
    cargo test -p croupier --test gateway_browser
