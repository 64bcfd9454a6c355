# Croupier's recipes. `just --list` shows them; DESIGN §9 fixes their names.

set shell := ["bash", "-euo", "pipefail", "-c"]

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

# Build the croupier binary.
build:
    cargo build -p croupier

# Start NATS, Postgres and the services in the foreground (Ctrl-C or `just down` stops them).
up: deps build
    @ops/scripts/stack.sh up

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

# Stop / start the NATS server of a running stack.
nats-stop:
    @ops/scripts/stack.sh nats-stop

nats-start:
    @ops/scripts/stack.sh nats-start

# Regenerate the JSON Schemas in schemas/ from the Rust wire types (a test fails when stale).
schemas:
    cargo run -q -p protocol --example gen-schemas
