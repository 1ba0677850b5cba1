#!/usr/bin/env bash
# Drives the running services with schemathesis (PyPI) from gateway/static/openapi.json: a bounded
# number of generated requests per operation, valid and invalid, with authentication on and a
# service-role token, then a plain user's. Fails on any 5xx, any status code or header the document does not list, and
# any body that does not match its schema.
#
# Usage: scripts/check-openapi.sh [BIN_DIR] [EXAMPLES_PER_OPERATION]   (defaults: target/debug, 40)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

bin=${1:-target/debug}
examples=${2:-40}
venv=.tools/venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  log "installing schemathesis into $venv (PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis
fi

pids=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
  [ -n "${db:-}" ] && psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1
  stop_private_services
}
trap cleanup EXIT

ensure_postgres
ensure_nats
db=tb_openapi_$$
ensure_database "$PG_ADMIN_URL" "$db"
dev_auth "$TB_STATE_DIR/auth"
grpc=$(free_port) http=$(free_port)
RUST_LOG=error DATABASE_URL=$(database_url "$PG_ADMIN_URL" "$db") NATS_URL=$NATS_URL \
  NATS_SUBJECT_PREFIX="openapi$$" PORT=$grpc METRICS_PORT=0 "$bin/taskboard-tasks" &
pids+=($!)
# Rate limits off: at fuzzing speed a plain user would mostly meet 429 and leave the logic behind
# it untested (the limits have their own tests).
RATE_ADDRESS_PER_SEC=0 RATE_USER_WRITES_PER_SEC=0 RATE_USER_CONNECTS_PER_SEC=0 \
RUST_LOG=error HTTP_PORT=$http TASK_SERVICE_ADDR=127.0.0.1:$grpc NATS_URL=$NATS_URL \
  NATS_SUBJECT_PREFIX="openapi$$" METRICS_PORT=0 BIND_ADDR=127.0.0.1 "$bin/taskboard-gateway" &
pids+=($!)
for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$http/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$http/ready" >/dev/null || die "gateway not ready"
# Twice: as the service role (every board: creates, updates and deletes succeed) and as a plain
# user who owns one board (most generated ids are someone else's: the 403/404 paths).
declare -A tokens
tokens[service]=$("$bin/taskboard-token" --service --ttl-secs 3600)
tokens[user]=$("$bin/taskboard-token" --user 1 --ttl-secs 3600)
curl -fsS -H "Authorization: Bearer ${tokens[user]}" -H 'Content-Type: application/json' -d '{"name":"mine"}' \
  "http://127.0.0.1:$http/api/boards" >/dev/null
for who in service user; do
  log "schemathesis as the $who: $examples examples per operation against /openapi.json"
  "$venv/bin/schemathesis" run "http://127.0.0.1:$http/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --max-examples "$examples" --generation-deterministic \
    -H "Authorization: Bearer ${tokens[$who]}" --no-color
done
