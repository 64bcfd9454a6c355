# Sourced by ops/scripts/bench-gateway.sh and docs/experiments/gateway-cpu-per-event.sh: the
# servers a gateway benchmark runs against — nats-server with JetStream and its own WebSocket
# listener (ops/nats/bench-ws.conf), and a gateway on it — on free ports, in a work directory,
# all stopped when the script exits.
#
# bench_start_servers <croupier binary> sets nats_port, ws_port, http_port, nats_pid, gw_pid and
# exports NATS_URL and CROUPIER_HTTP_ADDR (for loadgen too); bench_stop_servers stops them.
bench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench_work=$(mktemp -d /tmp/croupier-bench-XXXXXX)
bench_pids=()
bench_cleanup() {
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$bench_work"
}
trap bench_cleanup EXIT

export CROUPIER_JWT_SECRET=bench-secret-bench-secret-bench-secret CROUPIER_ENDPOINTS_FILE=/nonexistent
export RUST_LOG=warn

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
}

bench_start_servers() {
  local gateway=$1
  nats_port=$(free_port); ws_port=$(free_port); http_port=$(free_port)
  # The config's websocket port is fixed; this run's copy gets a free one.
  sed "s/127.0.0.1:9222/127.0.0.1:$ws_port/" "$bench_root/ops/nats/bench-ws.conf" >"$bench_work/ws.conf"
  rm -rf "$bench_work/js"
  "$bench_root/.tools/venv/bin/nats-server" -c "$bench_work/ws.conf" -a 127.0.0.1 -p "$nats_port" \
    -sd "$bench_work/js" >>"$bench_work/nats.log" 2>&1 &
  nats_pid=$!; bench_pids+=("$nats_pid")
  wait_port "$nats_port"; wait_port "$ws_port"
  export NATS_URL="nats://127.0.0.1:$nats_port" CROUPIER_HTTP_ADDR="127.0.0.1:$http_port"
  CROUPIER_WORKER_AFFINITY=${BENCH_AFFINITY:-spread} "$gateway" run gateway >>"$bench_work/gateway.log" 2>&1 &
  gw_pid=$!; bench_pids+=("$gw_pid")
  wait_port "$http_port"
}

bench_stop_servers() {
  kill "$gw_pid" "$nats_pid" 2>/dev/null || true
  wait "$gw_pid" "$nats_pid" 2>/dev/null || true
}
