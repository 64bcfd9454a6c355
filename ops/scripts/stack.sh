#!/usr/bin/env bash
# The development stack behind `just up`, `just down`, `just clean`, `just pg-stop|pg-start`
# and `just nats-stop|nats-start` (docs/contract/cli.md).
#
#   up          start NATS and Postgres under .data/ (unless NATS_URL / DATABASE_URL name
#               adequate ones), write .data/endpoints.env, start the services, and stay in the
#               foreground with every log prefixed by its service; Ctrl-C (or `down`) stops it all.
#   up-cluster  the same with the production topology on loopback: a three-node NATS JetStream
#               cluster (ops/nats/cluster/, streams and buckets with three replicas), Postgres,
#               and every role twice as its own process: gms-1/gms-2 (one leads each table, the
#               other stands by), gs-1/gs-2, gateway-1/gateway-2 on two ports.
#   kill NAME [SIGNAL]
#               send SIGNAL (default KILL) to one process of a running stack (nats-2, gs-1,
#               gateway-2, postgres, ...); it stays down until `revive NAME`.
#   revive NAME start it again, exactly as `up` started it.
#   freeze NAME SECONDS
#               SIGSTOP one process (and its children), SIGCONT after SECONDS.
#   down        stop what `up` started, and nothing else.
#   pg-stop|pg-start|nats-stop|nats-start
#               stop or start one server of a running stack (drills of degraded mode).
#   pg-slow SECONDS
#               hold the event store's head row lock for SECONDS: Postgres answers, appends wait.
#   pg-freeze SECONDS
#               SIGSTOP every process of the stack's own Postgres cluster (found from its data
#               directory's postmaster.pid, and no other Postgres), SIGCONT after SECONDS.
#   clean       remove .data/ (NATS and Postgres data together); refuses while the stack runs.
#
# Servers run detached with their pids in .data/run/, so `down` finds them even if `up` died.
# The standard ports are often taken by other servers: `up` keeps the ports it chose the first
# time (.data/run/*.port) and picks the next free one when the default is busy.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# CROUPIER_DATA_DIR moves the stack's data (tests use a temporary one); default .data/.
data="${CROUPIER_DATA_DIR:-$root/.data}"
run="$data/run"
logs="$data/log"
venv_bin="$root/.tools/venv/bin"
endpoints="$data/endpoints.env"

say() { printf '[up] %s\n' "$*"; }
die() { printf '[up] error: %s\n' "$*" >&2; exit 1; }

pg_bin() {
  if [[ -n ${CROUPIER_PG_BIN:-} ]]; then echo "$CROUPIER_PG_BIN"; return; fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $dir ]] || die "no PostgreSQL binaries: run 'just deps'"
  echo "$dir"
}

as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -f $run/$1.pid ]] && cat "$run/$1.pid" || true; }

# A port is free when nothing accepts a connection on it.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() { # name default
  local file="$run/$1.port" port
  if [[ -f $file ]]; then
    port=$(cat "$file")
    port_free "$port" && { echo "$port"; return; }
  fi
  for port in $(seq "$2" $(($2 + 100))); do
    if port_free "$port"; then echo "$port" >"$file"; echo "$port"; return; fi
  done
  die "no free port from $2"
}

# Starts a command detached (its own session, stdin closed), logging to .data/log/<name>.log.
# The command line is kept in .data/run/<name>.cmd, so `revive NAME` starts it again as it was.
start_detached() { # name stop-signal command...
  local name=$1 sig=$2; shift 2
  setsid "$@" </dev/null >>"$logs/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
  echo "$sig" >"$run/$name.signal"
  printf '%q ' "$sig" "$@" >"$run/$name.cmd"
}

# Every process the stack has started and not stopped for good: names of .data/run/*.pid.
started_names() {
  local f
  for f in "$run"/*.pid; do
    [[ -e $f ]] || continue
    f=${f##*/}; f=${f%.pid}
    [[ $f == up ]] || echo "$f"
  done
}

stop_one() { # name
  local name=$1 pid sig
  pid=$(pid_of "$name")
  sig=$(cat "$run/$name.signal" 2>/dev/null || echo TERM)
  if alive "$pid"; then
    kill -s CONT "$pid" 2>/dev/null || true
    kill -s "$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -s KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$run/$name.pid" "$run/$name.signal"
}

# ---- NATS -----------------------------------------------------------------------------------

nats_info() { # host port -> the INFO line
  local line
  exec 3<>"/dev/tcp/$1/$2" || return 1
  IFS= read -r -t 3 line <&3 || true
  exec 3<&-
  echo "$line"
}

check_nats_url() {
  local hostport=${NATS_URL#*://}
  hostport=${hostport##*@}; hostport=${hostport%%,*}; hostport=${hostport%/}
  local host=${hostport%:*} port=${hostport##*:}
  local info version
  info=$(nats_info "$host" "$port") || die "NATS_URL=$NATS_URL does not answer"
  version=$(sed -n 's/.*"version":"\([0-9.]*\).*/\1/p' <<<"$info")
  [[ -n $version ]] || die "NATS_URL=$NATS_URL did not greet like nats-server"
  if [[ $(printf '%s\n2.10.0\n' "$version" | sort -V | head -n 1) != 2.10.0 ]]; then
    die "NATS_URL=$NATS_URL runs nats-server $version; Croupier needs >= 2.10 (unset NATS_URL to use our own)"
  fi
  grep -q '"jetstream":true' <<<"$info" || die "NATS_URL=$NATS_URL runs without JetStream"
}

start_nats() {
  local port=$1
  [[ -x $venv_bin/nats-server ]] || die "nats-server missing: run 'just deps'"
  mkdir -p "$data/nats"
  start_detached nats TERM "$venv_bin/nats-server" -c "$root/ops/nats/nats.conf" \
    -a 127.0.0.1 -p "$port" -sd "$data/nats"
  for _ in $(seq 1 100); do
    nats_info 127.0.0.1 "$port" >/dev/null 2>&1 && return 0
    alive "$(pid_of nats)" || break
    sleep 0.1
  done
  tail -n 20 "$logs/nats.log" >&2
  die "nats-server did not start (log: $logs/nats.log)"
}

# The stack's own /healthz of a cluster node: 200 once JetStream has a meta leader and its
# assets are current.
http_status() { # port path
  local line
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  IFS= read -r -t 3 line <&3 || true
  exec 3<&-
  set -- $line
  echo "${2:-}"
}

# Three nodes from ops/nats/cluster/n<k>.conf, on their configured ports unless those are busy
# (then the next free ones, kept in .data/run/nats-<k>*.port), each with its store in
# .data/cluster/n<k>.
start_nats_cluster() {
  [[ -x $venv_bin/nats-server ]] || die "nats-server missing: run 'just deps'"
  local k ports=() routes=() monitors=() route_list=""
  for k in 1 2 3; do
    ports+=("$(pick_port "nats-$k" $((4230 + k)))")
    routes+=("$(pick_port "nats-$k-route" $((6230 + k)))")
    monitors+=("$(pick_port "nats-$k-monitor" $((8230 + k)))")
  done
  for k in 0 1 2; do route_list+="${route_list:+,}nats-route://127.0.0.1:${routes[$k]}"; done
  # A cluster name of this data directory's own: nodes of another stack on this machine that
  # still dial a route port this one has since taken are refused instead of merged.
  local cluster_name
  cluster_name="croupier-$(printf '%s' "$data" | sha256sum | cut -c1-8)"
  for k in 1 2 3; do
    mkdir -p "$data/cluster/n$k"
    start_detached "nats-$k" TERM "$venv_bin/nats-server" -c "$root/ops/nats/cluster/n$k.conf" \
      -a 127.0.0.1 -p "${ports[$((k - 1))]}" -sd "$data/cluster/n$k" -m "${monitors[$((k - 1))]}" \
      --cluster_name "$cluster_name" --cluster "nats://127.0.0.1:${routes[$((k - 1))]}" --routes "$route_list"
  done
  for k in 1 2 3; do
    local ok=
    for _ in $(seq 1 300); do
      [[ $(http_status "${monitors[$((k - 1))]}" /healthz 2>/dev/null) == 200 ]] && { ok=1; break; }
      alive "$(pid_of "nats-$k")" || break
      sleep 0.1
    done
    [[ -n $ok ]] || { tail -n 20 "$logs/nats-$k.log" >&2; die "nats-$k did not become healthy (log: $logs/nats-$k.log)"; }
  done
  NATS_URL=""
  for k in 0 1 2; do NATS_URL+="${NATS_URL:+,}nats://127.0.0.1:${ports[$k]}"; done
  export NATS_URL
}

# ---- Postgres -------------------------------------------------------------------------------

# The cluster lives in .data/pg. Postgres refuses to run as root, so as root it runs as the
# `postgres` user, which must be able to reach the directory; when the checkout sits below a
# directory that user cannot enter (e.g. /root), the cluster goes to /var/tmp and .data/pg is a
# link to it, so it still persists and is still removed by `just clean`.
pg_dir() {
  local dir="$data/pg"
  if [[ $(id -u) -eq 0 && ! -e $dir ]]; then
    mkdir -p "$data"
    if ! setpriv --reuid=postgres --regid=postgres --init-groups -- test -x "$data"; then
      local elsewhere
      elsewhere="/var/tmp/croupier-pg-$(printf '%s' "$data" | sha256sum | cut -c1-12)"
      mkdir -p "$elsewhere"
      ln -s "$elsewhere" "$dir"
    fi
  fi
  mkdir -p "$dir"
  [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir/" && chmod 0700 "$dir/"
  echo "$dir"
}

start_pg() {
  local port=$1 bin dir
  bin=$(pg_bin)
  dir=$(pg_dir)
  if [[ ! -f $dir/PG_VERSION ]]; then
    say "initialising a Postgres cluster in .data/pg"
    as_postgres "$bin/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C >>"$logs/postgres.log" 2>&1 \
      || { tail -n 20 "$logs/postgres.log" >&2; die "initdb failed"; }
  fi
  local sock="$dir/sock"
  as_postgres mkdir -p "$sock"
  local cmd=("$bin/postgres" -D "$dir" -p "$port" -k "$sock" -c listen_addresses=127.0.0.1 -c max_connections=300)
  if [[ $(id -u) -eq 0 ]]; then
    cmd=(setpriv --reuid=postgres --regid=postgres --init-groups -- "${cmd[@]}")
  fi
  # SIGINT is Postgres's fast shutdown: it does not wait for clients to disconnect.
  start_detached postgres INT "${cmd[@]}"
  for _ in $(seq 1 300); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres && break
    alive "$(pid_of postgres)" || { tail -n 20 "$logs/postgres.log" >&2; die "postgres did not start"; }
    sleep 0.1
  done
  "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAq \
    -c "SELECT 1 FROM pg_database WHERE datname = 'croupier'" | grep -q 1 \
    || "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -q -c "CREATE DATABASE croupier" >/dev/null
}

# ---- services -------------------------------------------------------------------------------

croupier_bin() {
  local profile=${CROUPIER_PROFILE:-release}
  echo "$root/target/$profile/croupier"
}

start_services() {
  # The CLI grows `migrate` and `run` with the walking skeleton (issue 5); until the binary has
  # them there is nothing to run, and `up` serves NATS and Postgres alone.
  local bin
  bin=$(croupier_bin)
  # The CLI reads .data/endpoints.env only from the working directory up; say where it is.
  export CROUPIER_ENDPOINTS_FILE="$endpoints"
  # The demo page's "Mint a dev token" needs /dev/token: on for the development stack only
  # (ADR 0011); CROUPIER_DEV_TOKENS=0 turns it off.
  export CROUPIER_DEV_TOKENS=${CROUPIER_DEV_TOKENS:-1}
  if "$bin" help run >/dev/null 2>&1; then
    "$bin" migrate >>"$logs/croupier.log" 2>&1 || { tail -n 20 "$logs/croupier.log" >&2; die "migrations failed"; }
    start_detached croupier INT "$bin" run all
    # Demo balances, idempotent by deposit id: credited once per data directory.
    for player in alice bob; do
      "$bin" wallet deposit --player "$player" --amount 100000 --deposit-id "demo-$player" \
        >>"$logs/croupier.log" 2>&1 || say "demo deposit for $player failed (see .data/log/croupier.log)"
    done
  fi
}

# Every role twice, each its own process (up-cluster).
start_cluster_services() {
  local bin
  bin=$(croupier_bin)
  export CROUPIER_ENDPOINTS_FILE="$endpoints"
  export CROUPIER_DEV_TOKENS=${CROUPIER_DEV_TOKENS:-1}
  "$bin" migrate >>"$logs/croupier.log" 2>&1 || { tail -n 20 "$logs/croupier.log" >&2; die "migrations failed"; }
  # Every CROUPIER_* setting of this shell goes into each command line, so that `revive` from
  # another shell starts a process exactly as it was (same round timings, same tables).
  local inherited=()
  mapfile -t inherited < <(env | grep -E '^(CROUPIER_[A-Z_]*|RUST_LOG)=' | grep -vE '^CROUPIER_(HTTP|METRICS)_ADDR=' || true)
  local common=(env "${inherited[@]}" "NATS_URL=$NATS_URL" "DATABASE_URL=$DATABASE_URL" "CROUPIER_NATS_REPLICAS=3"
    "CROUPIER_TABLES=$CROUPIER_TABLES" "CROUPIER_JWT_SECRET=$CROUPIER_JWT_SECRET"
    "CROUPIER_SEED_SECRET=$CROUPIER_SEED_SECRET" "CROUPIER_DEV_TOKENS=$CROUPIER_DEV_TOKENS"
    "CROUPIER_ENDPOINTS_FILE=$endpoints")
  local i name
  for i in 1 2; do
    for role in gs gms; do
      name="$role-$i"
      local base=9100
      [[ $role == gms ]] && base=9110
      start_detached "$name" INT "${common[@]}" \
        "CROUPIER_METRICS_ADDR=127.0.0.1:$(pick_port "$name-metrics" $((base + i)))" \
        "$bin" run "$role"
    done
  done
  for i in 1 2; do
    name="gateway-$i"
    start_detached "$name" INT "${common[@]}" "CROUPIER_HTTP_ADDR=${gateway_addrs[$((i - 1))]}" \
      "$bin" run gateway
  done
  for player in alice bob; do
    "$bin" wallet deposit --player "$player" --amount 100000 --deposit-id "demo-$player" \
      >>"$logs/croupier.log" 2>&1 || say "demo deposit for $player failed (see .data/log/croupier.log)"
  done
}

write_endpoints() {
  local secret=${CROUPIER_JWT_SECRET:-}
  if [[ -z $secret && -f $endpoints ]]; then
    # Keep the secret of the previous run, so dev tokens stay valid across restarts.
    secret=$(sed -n "s/^CROUPIER_JWT_SECRET='\(.*\)'$/\1/p" "$endpoints")
  fi
  if [[ -z $secret ]]; then
    secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    say "generated a CROUPIER_JWT_SECRET (kept in .data/endpoints.env)"
  fi
  local tmp="$endpoints.tmp"
  (
    umask 077
    {
      echo "# Written by 'just up' on $(date -u +%Y-%m-%dT%H:%M:%SZ); source it from a POSIX shell."
      printf "NATS_URL='%s'\n" "$NATS_URL"
      printf "DATABASE_URL='%s'\n" "$DATABASE_URL"
      printf "CROUPIER_HTTP_ADDR='%s'\n" "${CROUPIER_HTTP_ADDR:-127.0.0.1:8080}"
      printf "CROUPIER_JWT_SECRET='%s'\n" "$secret"
      if [[ -n ${CROUPIER_WS_URLS:-} ]]; then
        printf "CROUPIER_WS_URLS='%s'\n" "$CROUPIER_WS_URLS"
        printf "CROUPIER_NATS_REPLICAS='%s'\n" 3
      fi
    } >"$tmp"
  )
  mv "$tmp" "$endpoints"
  export CROUPIER_JWT_SECRET=$secret
  # GMS derives round seeds from this master secret (ADR 0007). It lives with the data, so a
  # restarted stack completes rounds in progress, and `just clean` drops it with the round
  # history (a restarted round count under the same secret would repeat seeds).
  if [[ -z ${CROUPIER_SEED_SECRET:-} ]]; then
    if [[ ! -s $data/seed.secret ]]; then
      (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$data/seed.secret")
    fi
    CROUPIER_SEED_SECRET=$(cat "$data/seed.secret")
    export CROUPIER_SEED_SECRET
  fi
}

# ---- commands -------------------------------------------------------------------------------

stop_all() {
  local name
  # Services first, then the bus, then the store.
  for name in $(started_names); do
    case $name in nats* | postgres) ;; *) stop_one "$name" ;; esac
  done
  for name in $(started_names); do
    case $name in nats*) stop_one "$name" ;; esac
  done
  stop_one postgres
  rm -f "$run/up.pid" "$run"/*.stopped
}

cmd_up() { # topology: single | cluster
  local topology=${1:-single}
  mkdir -p "$run" "$logs"
  local up_pid
  up_pid=$(pid_of up)
  if alive "$up_pid"; then die "the stack already runs (pid $up_pid): 'just down' first"; fi
  echo $$ >"$run/up.pid"
  # The log relay is this shell's own child: end it with the stack.
  relay=
  trap 'stop_all; [[ -n $relay ]] && kill "$relay" 2>/dev/null; say "stopped"' EXIT
  # Ctrl-C and `just down` are the normal ways to stop: a clean stop exits 0.
  trap 'exit 0' INT TERM

  if [[ $topology == cluster ]]; then
    [[ -z ${NATS_URL:-} ]] || die "up-cluster starts its own NATS cluster: unset NATS_URL"
    start_nats_cluster
    say "NATS cluster on $NATS_URL (data in .data/cluster)"
  elif [[ -n ${NATS_URL:-} ]]; then
    check_nats_url
    say "using NATS at $NATS_URL"
  else
    local nats_port
    nats_port=$(pick_port nats 4222)
    start_nats "$nats_port"
    export NATS_URL="nats://127.0.0.1:$nats_port"
    say "NATS on $NATS_URL (data in .data/nats)"
  fi
  if [[ -n ${DATABASE_URL:-} ]]; then
    "$(pg_bin)/psql" "$DATABASE_URL" -tAqc 'SELECT 1' >/dev/null || die "DATABASE_URL does not answer"
    say "using Postgres at $DATABASE_URL"
  else
    local pg_port
    pg_port=$(pick_port postgres 5432)
    start_pg "$pg_port"
    export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/croupier"
    say "Postgres on $DATABASE_URL (data in .data/pg)"
  fi
  if [[ $topology == cluster ]]; then
    gateway_addrs=("127.0.0.1:$(pick_port gateway-1 8080)" "127.0.0.1:$(pick_port gateway-2 8081)")
    export CROUPIER_HTTP_ADDR=${gateway_addrs[0]}
    export CROUPIER_WS_URLS="ws://${gateway_addrs[0]}/ws,ws://${gateway_addrs[1]}/ws"
    export CROUPIER_TABLES=${CROUPIER_TABLES:-roulette-1,roulette-2}
  fi
  write_endpoints
  if [[ $topology == cluster ]]; then start_cluster_services; else start_services; fi
  local http=${CROUPIER_HTTP_ADDR:-127.0.0.1:8080} cli
  cli=$(croupier_bin); cli=${cli#"$root"/}
  say "ready. The stack runs in this terminal; its logs follow, each line prefixed with its service."
  say "  demo page  http://$http/  (open it in a browser: the live table, a dev token, bets)"
  case ${CROUPIER_DEV_TOKENS:-1} in
    0 | false | no | off | n | f) say "  token      $cli token --player alice  (in another shell; sign in as alice)" ;;
    *) say "  token      http://$http/dev/token?player=alice  (or: $cli token --player alice)" ;;
  esac
  say "  play       ws://$http/ws?token=<token>  (alice and bob start with 100000; README: Playing a round by hand)"
  if [[ $topology == cluster ]]; then
    say "  metrics    http://<gateway>/metrics, GS and GMS on $(for n in gs-1 gs-2 gms-1 gms-2; do printf '%s ' "$(cat "$run/$n-metrics.port")"; done)(127.0.0.1)"
  else
    say "  metrics    http://$http/metrics  (GMS, GS and gateway; Prometheus: prometheus --config.file=ops/prometheus/prometheus.yml, dashboard ops/grafana/croupier.json)"
  fi
  say "  endpoints  ${endpoints#"$root"/}  (NATS_URL, DATABASE_URL, ...: the croupier CLI finds the stack through it)"
  if [[ $topology == cluster ]]; then
    say "  gateways   $CROUPIER_WS_URLS (CROUPIER_WS_URLS)"
    say "  faults     just kill NAME [SIGNAL] | just revive NAME | just freeze NAME SECONDS  (names: $(started_names | tr '\n' ' '))"
  fi
  say "  stop       Ctrl-C here, or 'just down' in another shell"

  # Relay every log with its service's name until told to stop: one tail over all logs, its
  # file headers turned into prefixes (one process to stop, and no procps needed for it).
  local files=() names
  names=$(started_names)
  for name in $names; do files+=("$logs/$name.log"); done
  tail -n 0 -F "${files[@]}" 2>/dev/null > >(awk '
    /^==> .* <==$/ { n = $2; sub(/.*\//, "", n); sub(/\.log$/, "", n); next }
    /^$/ { next }
    { print "[" n "] " $0; fflush() }') &
  relay=$!
  while true; do
    for name in $names; do
      local pid
      pid=$(pid_of "$name")
      [[ -f $run/$name.pid ]] || continue
      if ! alive "$pid" && [[ ! -f $run/$name.stopped ]]; then
        if [[ $topology == cluster ]]; then
          # Losing one node is what the cluster is for: say so, and keep the rest running.
          say "$name exited unexpectedly; the others carry on ('just revive $name' starts it again)"
          touch "$run/$name.stopped"
        else
          say "$name exited unexpectedly; stopping the stack (log: .data/log/$name.log)"
          exit 1
        fi
      fi
    done
    sleep 1
  done
}

cmd_down() {
  local up_pid
  up_pid=$(pid_of up)
  if alive "$up_pid"; then
    kill -s TERM "$up_pid"
    for _ in $(seq 1 300); do alive "$up_pid" || break; sleep 0.1; done
  fi
  # Whatever `up` could not stop (it was killed, say) is still recorded here.
  [[ -d $run ]] && stop_all
  echo "[down] stopped"
}

cmd_stop_server() { # name
  alive "$(pid_of up)" || die "the stack is not running"
  touch "$run/$1.stopped"
  stop_one "$1"
  echo "[$1] stopped (the stack keeps running; 'just $2-start' starts it again)"
}

cmd_start_server() { # name
  alive "$(pid_of up)" || die "the stack is not running"
  alive "$(pid_of "$1")" && { echo "[$1] already running"; return; }
  case $1 in
    nats) start_nats "$(cat "$run/nats.port")" ;;
    postgres) start_pg "$(cat "$run/postgres.port")" ;;
  esac
  rm -f "$run/$1.stopped"
  echo "[$1] started"
}

seconds_arg() { # value
  [[ ${1:-} =~ ^[0-9]+$ && $1 -gt 0 ]] || die "give a number of seconds, e.g. 'just $2 10'"
  echo "$1"
}

# The database URL the stack's services use (from .data/endpoints.env).
stack_database_url() {
  [[ -f $endpoints ]] || die "no $endpoints: is the stack running ('just up')?"
  sed -n "s/^DATABASE_URL='\(.*\)'$/\1/p" "$endpoints"
}

cmd_pg_slow() { # seconds
  local seconds url
  seconds=$(seconds_arg "${1:-}" pg-slow)
  alive "$(pid_of up)" || die "the stack is not running"
  url=$(stack_database_url)
  echo "[pg-slow] holding the event store's head row lock for ${seconds}s: appends wait, Postgres answers"
  "$(pg_bin)/psql" "$url" -v ON_ERROR_STOP=1 -qAt -c "BEGIN; SELECT 'locked at position ' || position FROM event_head WHERE id FOR UPDATE; SELECT pg_sleep($seconds); ROLLBACK;" >/dev/null
  echo "[pg-slow] released"
}

# The processes whose parent is $1, from /proc (no procps needed).
children_of() { # parent
  local stat fields ppid pid
  for stat in /proc/[0-9]*/stat; do
    fields=$(cat "$stat" 2>/dev/null) || continue
    fields=${fields##*) } # after "pid (comm) ": "state ppid …"
    read -r _ ppid _ <<<"$fields"
    if [[ $ppid == "$1" ]]; then pid=${stat#/proc/}; echo "${pid%/stat}"; fi
  done
}

cmd_pg_freeze() { # seconds
  local seconds pid
  seconds=$(seconds_arg "${1:-}" pg-freeze)
  alive "$(pid_of up)" || die "the stack is not running"
  [[ -f $data/pg/postmaster.pid ]] || die "no $data/pg/postmaster.pid: the stack's own Postgres is not running (a DATABASE_URL stack cannot be frozen from here)"
  pid=$(head -n 1 "$data/pg/postmaster.pid")
  alive "$pid" || die "postmaster $pid is not running"
  # Global, for the EXIT trap: whatever happens to this shell, the cluster is let go.
  frozen="$pid"
  trap 'kill -s CONT ${frozen:-} 2>/dev/null || true' EXIT
  kill -s STOP "$pid"
  frozen="$(children_of "$pid") $pid"
  # shellcheck disable=SC2086
  kill -s STOP $frozen 2>/dev/null || true
  echo "[pg-freeze] froze postmaster $pid and $(($(wc -w <<<"$frozen") - 1)) processes for ${seconds}s"
  sleep "$seconds"
  # shellcheck disable=SC2086
  kill -s CONT $frozen 2>/dev/null || true
  echo "[pg-freeze] thawed"
}

cmd_kill() { # name [signal]
  local name=${1:-} sig=${2:-KILL} pid
  [[ -n $name ]] || die "give a process name: $(started_names | tr '\n' ' ')"
  alive "$(pid_of up)" || die "the stack is not running"
  [[ -f $run/$name.pid ]] || die "no process $name in this stack: $(started_names | tr '\n' ' ')"
  pid=$(pid_of "$name")
  alive "$pid" || die "$name is not running ('just revive $name')"
  touch "$run/$name.stopped"
  kill -s "$sig" "$pid"
  echo "[$name] sent SIG$sig to pid $pid ('just revive $name' starts it again)"
}

cmd_revive() { # name
  local name=${1:-} cmd sig
  [[ -n $name ]] || die "give a process name"
  alive "$(pid_of up)" || die "the stack is not running"
  [[ -f $run/$name.cmd ]] || die "no process $name in this stack"
  alive "$(pid_of "$name")" && { echo "[$name] already running"; return; }
  # The command line as `up` started it: its stop signal, then the command.
  eval "cmd=($(cat "$run/$name.cmd"))"
  sig=${cmd[0]}
  start_detached "$name" "$sig" "${cmd[@]:1}"
  rm -f "$run/$name.stopped"
  echo "[$name] started (pid $(pid_of "$name"))"
}

cmd_freeze() { # name seconds
  local name=${1:-} seconds pid procs
  seconds=$(seconds_arg "${2:-}" "freeze $name")
  alive "$(pid_of up)" || die "the stack is not running"
  pid=$(pid_of "$name")
  alive "$pid" || die "$name is not running"
  procs="$pid $(children_of "$pid")"
  frozen="$procs"
  trap 'kill -s CONT ${frozen:-} 2>/dev/null || true' EXIT
  # shellcheck disable=SC2086
  kill -s STOP $procs
  echo "[$name] frozen for ${seconds}s"
  sleep "$seconds"
  # shellcheck disable=SC2086
  kill -s CONT $procs 2>/dev/null || true
  echo "[$name] thawed"
}

cmd_clean() {
  alive "$(pid_of up)" && die "the stack runs: 'just down' first"
  if [[ -L $data/pg ]]; then rm -rf "$(readlink "$data/pg")"; fi
  rm -rf "$data"
  echo "[clean] removed $data"
}

case ${1:-} in
  up) cmd_up single ;;
  up-cluster) cmd_up cluster ;;
  kill) cmd_kill "${2:-}" "${3:-}" ;;
  revive) cmd_revive "${2:-}" ;;
  freeze) cmd_freeze "${2:-}" "${3:-}" ;;
  down) cmd_down ;;
  pg-stop) cmd_stop_server postgres pg ;;
  pg-start) cmd_start_server postgres ;;
  nats-stop) cmd_stop_server nats nats ;;
  nats-start) cmd_start_server nats ;;
  pg-slow) cmd_pg_slow "${2:-}" ;;
  pg-freeze) cmd_pg_freeze "${2:-}" ;;
  clean) cmd_clean ;;
  *) echo "usage: $0 up|up-cluster|down|kill NAME [SIGNAL]|revive NAME|freeze NAME SECONDS|pg-stop|pg-start|pg-slow SECONDS|pg-freeze SECONDS|nats-stop|nats-start|clean" >&2; exit 2 ;;
esac
