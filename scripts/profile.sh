#!/usr/bin/env bash
# Where the time goes: `perf record --call-graph dwarf` on the services under load, and a summary
# that puts every sample in the first group of code on its stack (bench/perf-groups.py).
#
# Usage: scripts/profile.sh fanout [SECONDS] [-- fanout args…]
#          a task service + two gateways (auth and rate limits off); the load suite's subscribers
#          on the first, its events created through the second; perf on the first for SECONDS
#          (default 20) in the middle of the run (fanout args default: 200 subscribers, 1 board,
#          20 events/s)
#        scripts/profile.sh creates [SECONDS]
#          a task service + one gateway; `wrk -c64` POSTs creates over 100 boards; perf on both
#          services for SECONDS (default 10)
#   PERF_FREQ (default 999) the sampling frequency; BIN (default target/release) the binaries.
# Results: bench/runs/profile-<timestamp>/ (perf data, logs, summary.txt; not kept in git: quote
# what matters in BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

mode=${1:-}
case "$mode" in
  fanout|creates) shift ;;
  -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64 ;;
esac
secs=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  secs=$1
  shift
fi
if [ "${1:-}" = "--" ]; then shift; fi
freq=${PERF_FREQ:-999}
bin=${BIN:-target/release}

pids=()
db=""
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  stop_pids "${pids[@]}"
  if [ -n "$db" ]; then
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
  fi
  stop_private_services
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v perf >/dev/null || apt_install linux-perf
ensure_postgres
ensure_nats
if [ -z "${BIN:-}" ]; then
  log "building (release)"
  cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway -p taskboard-loadtest
fi
ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/runs/profile-$ts
mkdir -p "$out"
db=tb_profile_${ts,,}
ensure_database "$PG_ADMIN_URL" "$db"
grpc=$(free_port)
RUST_LOG=warn DATABASE_URL=$(database_url "$PG_ADMIN_URL" "$db") NATS_URL=$NATS_URL \
  NATS_SUBJECT_PREFIX="prof$ts" PORT=$grpc METRICS_PORT=0 AUTH=off DB_POOL_SIZE=32 \
  "$bin/taskboard-tasks" >"$out/tasks.log" 2>&1 &
tasks_pid=$!
pids+=("$tasks_pid")
gateway() { # → sets gw_pid gw_url
  local http
  http=$(free_port)
  RUST_LOG=warn TASK_SERVICE_ADDR=127.0.0.1:$grpc NATS_URL=$NATS_URL NATS_SUBJECT_PREFIX="prof$ts" \
    HTTP_PORT=$http METRICS_PORT=0 AUTH=off RATE_ADDRESS_PER_SEC=0 \
    "$bin/taskboard-gateway" >>"$out/gateway.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  gw_url=http://127.0.0.1:$http
  for _ in $(seq 1 100); do curl -fsS "$gw_url/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "$gw_url/ready" >/dev/null || die "gateway not ready (see $out/gateway.log)"
}
record() { # name pid seconds
  perf record -F "$freq" --call-graph dwarf,16384 -o "$out/$1.data" -p "$2" -- sleep "$3" \
    >"$out/perf-$1.log" 2>&1
}
summary() { # name
  {
    echo "== $1: by binary"
    perf report -i "$out/$1.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -5
    echo "== $1: by group (first match on the stack)"
    perf script -i "$out/$1.data" 2>/dev/null | python3 bench/perf-groups.py
    echo "== $1: top self time"
    perf report -i "$out/$1.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
  } | tee -a "$out/summary.txt"
}

case "$mode" in
  fanout)
    secs=${secs:-20}
    [ $# -gt 0 ] || set -- --subscribers 200 --boards 1 --rate 20
    gateway
    sub_pid=$gw_pid sub_url=$gw_url
    gateway
    log "fan-out for $((secs + 8)) s, perf on the subscribers' gateway for $secs s"
    (sleep 4; record gateway "$sub_pid" "$secs") &
    perf_pid=$!
    "$bin/taskboard-loadtest" fanout --url "$sub_url" --publish-url "$gw_url" --server-pid "$sub_pid" \
      --duration "$((secs + 8))" "$@" --json "$out/fanout.json" | tee "$out/fanout.log" | tail -12
    wait "$perf_pid"
    summary gateway
    ;;
  creates)
    secs=${secs:-10}
    command -v wrk >/dev/null || apt_install wrk
    gateway
    cat >"$out/create.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/api/tasks", nil, '{"board_id":' .. (1 + n % 100) .. ',"title":"t' .. n .. '"}')
end
LUA
    wrk -t2 -c64 -d3s -s "$out/create.lua" "$gw_url" >/dev/null
    log "creates for $((secs + 6)) s, perf on both services for $secs s"
    (sleep 3; record gateway "$gw_pid" "$secs") &
    p1=$!
    (sleep 3; record tasks "$tasks_pid" "$secs") &
    p2=$!
    wrk -t2 -c64 -d"$((secs + 6))s" -s "$out/create.lua" "$gw_url" | tee "$out/wrk.txt" | grep -E 'Requests/sec|Latency'
    wait "$p1" "$p2"
    summary gateway
    summary tasks
    ;;
esac
log "results: $out/"
