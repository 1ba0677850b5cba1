#!/usr/bin/env bash
# Runs Taskboard on this machine: PostgreSQL and NATS (the running ones, or private ones started
# from the system binaries, installed from Debian when missing), then the task service and the
# gateway, built in release mode. Prints the URLs; Ctrl-C stops everything it started.
#
# Usage: scripts/run.sh [--debug] [--prometheus] [--no-auth]
#   Authentication is on: a development secret and service token are kept in
#   ~/.local/state/taskboard/dev-auth; the page URL printed at the end signs you in as user 1.
#   --no-auth runs with AUTH=off (anyone may do anything, as the Go original; development only).
#   --prometheus also starts a local Prometheus (Debian's package) scraping both services, with the
#   alert rules of dashboards/alerts.yml loaded.
#   HTTP_PORT (8080) and PORT (50051) choose the ports; DB_NAME (taskboard) the database.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

profile=release
with_prometheus=0
auth=on
for arg in "$@"; do
  case "$arg" in
    --debug) profile=debug ;;
    --prometheus) with_prometheus=1 ;;
    --no-auth) auth=off ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $arg (try --help)" ;;
  esac
done

pids=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping services"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  stop_private_services
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup)"
ensure_postgres
ensure_nats

http_port=${HTTP_PORT:-8080}
grpc_port=${PORT:-50051}
port_open 127.0.0.1 "$http_port" && die "port $http_port is taken (set HTTP_PORT)"
port_open 127.0.0.1 "$grpc_port" && die "port $grpc_port is taken (set PORT)"

gw_metrics=9090
port_open 127.0.0.1 "$gw_metrics" && gw_metrics=$(free_port)
tasks_metrics=9091
port_open 127.0.0.1 "$tasks_metrics" && tasks_metrics=$(free_port)

db=${DB_NAME:-taskboard}
ensure_database "$PG_ADMIN_URL" "$db"

log "building ($profile; the first build takes a few minutes)"
if [ "$profile" = release ]; then
  cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway
else
  cargo build --quiet -p taskboard-tasks -p taskboard-gateway
fi
bin=target/$profile

if [ "$auth" = on ]; then
  auth_dir=${XDG_STATE_HOME:-$HOME/.local/state}/taskboard/dev-auth
  dev_auth "$auth_dir"
else
  export AUTH=off
fi

DATABASE_URL=$(database_url "$PG_ADMIN_URL" "$db") NATS_URL=$NATS_URL PORT=$grpc_port \
  METRICS_PORT=$tasks_metrics BIND_ADDR=127.0.0.1 "$bin/taskboard-tasks" &
pids+=($!)
HTTP_PORT=$http_port TASK_SERVICE_ADDR=127.0.0.1:$grpc_port NATS_URL=$NATS_URL \
  METRICS_PORT=$gw_metrics BIND_ADDR=127.0.0.1 "$bin/taskboard-gateway" &
pids+=($!)

prom_line=""
if [ "$with_prometheus" = 1 ]; then
  command -v prometheus >/dev/null || apt_install prometheus
  prom_port=9099
  port_open 127.0.0.1 "$prom_port" && prom_port=$(free_port)
  mkdir -p "$TB_STATE_DIR/prometheus"
  cp dashboards/alerts.yml "$TB_STATE_DIR/prometheus/alerts.yml"
  sed -e "s/127.0.0.1:9090/127.0.0.1:$gw_metrics/" -e "s/127.0.0.1:9091/127.0.0.1:$tasks_metrics/" \
    dashboards/prometheus.yml >"$TB_STATE_DIR/prometheus/prometheus.yml"
  prometheus --config.file="$TB_STATE_DIR/prometheus/prometheus.yml" \
    --storage.tsdb.path="$TB_STATE_DIR/prometheus/data" --web.listen-address="127.0.0.1:$prom_port" \
    >"$TB_STATE_DIR/prometheus/log" 2>&1 &
  pids+=($!)
  prom_line="    Prometheus   http://localhost:$prom_port/ (scraping both; alerts loaded)"
fi

# With authentication: a token for user 1 and a board of theirs (the first one, or a new one).
signed_in() {
  local token board
  token=$("$bin/taskboard-token" --user 1)
  board=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$http_port/api/boards" |
    python3 -c 'import json,sys; b=json.load(sys.stdin)["boards"]; print(b[0]["id"] if b else "")')
  if [ -z "$board" ]; then
    board=$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d '{"name":"My board"}' "http://127.0.0.1:$http_port/api/boards" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  fi
  cat <<MSG
    Board page   http://localhost:$http_port/#board=$board&token=$token
                 (signs this browser in as user 1; the token lasts 12 h)
    REST API     curl -H "Authorization: Bearer \$TOKEN" http://localhost:$http_port/api/tasks?board_id=$board
    WebSocket    ws://localhost:$http_port/ws?board_id=$board  (header or subprotocol bearer.\$TOKEN)
    Tokens       JWT_SECRET_FILE=$JWT_SECRET_FILE $bin/taskboard-token --user N [--service]
MSG
}

for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$http_port/ready" >/dev/null 2>&1; then
    if [ "$auth" = on ]; then
      urls=$(signed_in) || die "could not sign in to the running gateway"
    else
      urls="    Board page   http://localhost:$http_port/#board=1   (AUTH=off: development only)
    REST API     http://localhost:$http_port/api/tasks?board_id=1
    WebSocket    ws://localhost:$http_port/ws?board_id=1"
    fi
    cat >&2 <<MSG

  Taskboard is running.
$urls
    Health       http://localhost:$http_port/health   http://localhost:$http_port/ready
    gRPC         127.0.0.1:$grpc_port (task.v1.TaskService; AUTH=$AUTH)
    Metrics      http://127.0.0.1:$gw_metrics/metrics (gateway)   http://127.0.0.1:$tasks_metrics/metrics (tasks)
    OpenAPI      http://localhost:$http_port/openapi.json
$prom_line

  Press Ctrl-C to stop.
MSG
    wait -n "${pids[@]}" || true
    die "a service exited; see the log above"
  fi
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || die "a service failed to start; see the log above"; done
  sleep 0.1
done
die "the gateway did not become ready within 30 s"
