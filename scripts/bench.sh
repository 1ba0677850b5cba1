#!/usr/bin/env bash
# Benchmarks, side by side in one run: our gateway's WebSocket fan-out against nats-server's own
# WebSocket fan-out (the peer) and against the kernel's ceiling (plain TCP writes), idle
# connections, REST create throughput against pgbench doing the same SQL. Builds in release mode,
# starts what it needs, writes bench/results/<timestamp>.json (every run's figures and the
# machine) and .html (the plot); logs in bench/runs/<timestamp>/.
#
# Usage: scripts/bench.sh [--quick | --deflate | --mixed]
#   --quick    a small matrix, under two minutes once built
#   --deflate  only the permessage-deflate A/B (wire bytes and gateway CPU per delivered frame)
#   --mixed    only the Goose mixed scenario: 2,000 watchers over 1,000 Zipf(1.1) boards, 50
#              browsers, 50 writers (~200 writes/s), 60 s; Goose's Markdown report and the delivery
#              summary go to bench/results/mixed-<timestamp>.{goose,delivery}.md
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  --deflate) quick=deflate ;;
  --mixed) quick=mixed ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown option $1 (try --help)" ;;
esac

pids=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  stop_pids "${pids[@]}"
  stop_private_services
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# Many sockets: raise the descriptor limit and widen the ephemeral port range where allowed.
ulimit -n 1048576 2>/dev/null || ulimit -n 262144 2>/dev/null || ulimit -n 65536 2>/dev/null || true
if [ "$(id -u)" = 0 ]; then
  sysctl -qw net.ipv4.ip_local_port_range="1024 65000" 2>/dev/null || true
  sysctl -qw net.core.somaxconn=65535 2>/dev/null || true
  sysctl -qw net.ipv4.tcp_max_syn_backlog=65535 2>/dev/null || true
fi

ensure_postgres
ensure_nats
ensure_nats_binary
command -v pgbench >/dev/null || apt_install postgresql-contrib postgresql-client

log "building (release)"
# Two invocations, so the services' build is the very one scripts/run.sh makes (same features).
cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway
cargo build --release --quiet -p taskboard-loadtest
bin=target/release
lt=$bin/taskboard-loadtest

ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/runs/$ts # raw output (not kept in git); the summary is bench/results/$ts.json
mkdir -p "$out"
db=tb_bench_${ts,,}
ensure_database "$PG_ADMIN_URL" "$db"
db_url=$(database_url "$PG_ADMIN_URL" "$db")

# As deployed: authentication on, and the load suite holding a service-role token (every board).
dev_auth "$TB_STATE_DIR/auth"
TASKBOARD_TOKEN=$("$bin/taskboard-token" --service --ttl-secs 86400)
export TASKBOARD_TOKEN

grpc_port=$(free_port)
http_port=$(free_port)
RUST_LOG=warn DATABASE_URL=$db_url NATS_URL=$NATS_URL NATS_SUBJECT_PREFIX="bench$ts" PORT=$grpc_port \
  METRICS_PORT="$(free_port)" BIND_ADDR=127.0.0.1 DB_POOL_SIZE=32 "$bin/taskboard-tasks" &
tasks_pid=$!
pids+=("$tasks_pid")
RUST_LOG=warn HTTP_PORT=$http_port TASK_SERVICE_ADDR=127.0.0.1:$grpc_port NATS_URL=$NATS_URL \
  NATS_SUBJECT_PREFIX="bench$ts" METRICS_PORT="$(free_port)" BIND_ADDR=127.0.0.1 "$bin/taskboard-gateway" &
gw_pid=$!
pids+=("$gw_pid")

# The same gateway binary with metrics off (METRICS_PORT=0: no recorder, every metric a no-op), for
# the A/B of what recording metrics on the hot path costs; also the replica the fan-out runs create
# their events through (a second gateway on the same task service and NATS subjects).
http_port_nm=$(free_port)
RUST_LOG=warn HTTP_PORT=$http_port_nm TASK_SERVICE_ADDR=127.0.0.1:$grpc_port NATS_URL=$NATS_URL \
  NATS_SUBJECT_PREFIX="bench$ts" METRICS_PORT=0 BIND_ADDR=127.0.0.1 "$bin/taskboard-gateway" &
gw_nm_pid=$!
pids+=("$gw_nm_pid")

# The peer: nats-server with its WebSocket listener, a private instance used only for this.
peer_port=$(free_port)
peer_ws=$(free_port)
cat >"$TB_STATE_DIR/peer.conf" <<CONF
listen: 127.0.0.1:$peer_port
websocket { host: 127.0.0.1, port: $peer_ws, no_tls: true }
CONF
nats-server -c "$TB_STATE_DIR/peer.conf" -l "$TB_STATE_DIR/peer.log" &
peer_pid=$!
pids+=("$peer_pid")

for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$http_port/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$http_port/ready" >/dev/null || die "gateway not ready"
for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$http_port_nm/ready" >/dev/null 2>&1 && break; sleep 0.1; done
wait_port 127.0.0.1 "$peer_ws" "nats-server (peer)"

gw_url=http://127.0.0.1:$http_port
{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
  echo "gateway pid $gw_pid, task service pid $tasks_pid, peer nats-server pid $peer_pid"
  nats-server --version
  psql "$PG_ADMIN_URL" -Atc 'select version()'
} | tee "$out/machine.txt"

run() { # name, loadtest args…
  local name=$1
  shift
  log "$name"
  "$lt" "$@" --json "$out/$name.json" >"$out/$name.log" 2>&1 || log "$name reported a failure (see $out/$name.log)"
  grep -E 'deliveries |missing|latency|server-CPU|bytes/conn|connections |result' "$out/$name.log" | sed 's/^/    /' >&2 || true
}

fanout_pair() { # name subscribers boards rate seconds
  local name=$1 subs=$2 boards=$3 rate=$4 secs=$5
  # The ceiling sends every event to every socket, so it gets the rate that gives each socket as
  # many frames per second as a subscriber of one of the B boards receives.
  local limit_rate
  limit_rate=$(python3 -c "print($rate / $boards)")
  run "$name-limit" limit --subscribers "$subs" --rate "$limit_rate" --duration "$secs" --source-ips 32
  # The events are created through the second gateway replica, as nats-server's run has them
  # published by the harness: the measured gateway only fans out what arrives from NATS.
  run "$name-gateway" fanout --url "$gw_url" --publish-url "http://127.0.0.1:$http_port_nm" \
    --subscribers "$subs" --boards "$boards" --rate "$rate" \
    --duration "$secs" --source-ips 32 --server-pid "$gw_pid"
  run "$name-nats-ws" fanout --target nats-ws --nats-ws "127.0.0.1:$peer_ws" \
    --nats-url "nats://127.0.0.1:$peer_port" --subscribers "$subs" --boards "$boards" --rate "$rate" \
    --duration "$secs" --source-ips 32 --server-pid "$peer_pid"
}

metrics_ab() { # seconds
  run metrics-ab-on fanout --url "$gw_url" --subscribers 1000 --boards 1 --rate 100 --duration "$1" \
    --server-pid "$gw_pid"
  run metrics-ab-off fanout --url "http://127.0.0.1:$http_port_nm" --subscribers 1000 --boards 1 --rate 100 \
    --duration "$1" --server-pid "$gw_nm_pid"
}

deflate_ab() { # name subscribers rate seconds rounds
  # Alternating rounds against the one gateway (WS_DEFLATE=on, its default): subscribers that do
  # not offer permessage-deflate, then subscribers that do, so drift on this noisy machine falls on
  # both sides alike. Events are created through the replica, so the measured process only fans out.
  local name=$1 subs=$2 rate=$3 secs=$4 rounds=$5 r
  for r in $(seq 1 "$rounds"); do
    local common=(fanout --url "$gw_url" --publish-url "http://127.0.0.1:$http_port_nm"
      --subscribers "$subs" --boards 1 --rate "$rate" --duration "$secs" --source-ips 32
      --server-pid "$gw_pid")
    run "$name-plain-r$r" "${common[@]}"
    run "$name-deflate-r$r" "${common[@]}" --deflate
  done
}

pgbench_run() { # name clients seconds board_lo board_hi
  local name=$1 clients=$2 secs=$3 lo=$4 hi=$5
  log "$name"
  pgbench -n -M prepared -c "$clients" -j 2 -T "$secs" -D board_lo="$lo" -D board_hi="$hi" \
    -f bench/pgbench-create.sql "$db_url" >"$out/$name.log" 2>&1 || log "$name failed (see $out/$name.log)"
  local tps
  tps=$(awk '/^tps = /{print $3; exit}' "$out/$name.log")
  printf '{"mode":"pgbench","target":"postgresql","params":{"clients":%s,"seconds":%s,"boards":%s},"creates_per_s":%s}\n' \
    "$clients" "$secs" "$((hi - lo + 1))" "${tps:-0}" >"$out/$name.json"
  echo "    creates/s $tps" >&2
}

rest_run() { # name boards users seconds
  local name=$1 boards=$2 users=$3 secs=$4
  log "$name"
  "$lt" rest --create-only --boards "$boards" --board-base $((RANDOM * 1000 + 5000000)) --host "$gw_url" \
    --users "$users" --increase-rate "$users" --run-time "${secs}s" --quiet \
    --report-file "$out/$name.html" --report-file "$out/$name.goose-report.json" >"$out/$name.log" 2>&1 ||
    log "$name failed (see $out/$name.log)"
  local rps
  # From Goose's own JSON report, never its text output.
  rps=$(python3 -c 'import json,sys
print(next((r["requests_per_second"] for r in json.load(open(sys.argv[1]))["raw_request_metrics"]
            if r["method"] == "POST" and r["name"] == "/api/tasks"), 0))' "$out/$name.goose-report.json" 2>/dev/null || echo 0)
  printf '{"mode":"rest","target":"gateway","params":{"boards":%s,"users":%s,"seconds":%s},"creates_per_s":%s}\n' \
    "$boards" "$users" "$secs" "${rps:-0}" >"$out/$name.json"
  echo "    creates/s $rps" >&2
}

mixed_run() { # seconds: the Goose mixed scenario through the measured gateway
  log "mixed: 2000 watchers / 1000 boards (Zipf 1.1), 50 browsers, 50 writers, ${1}s"
  "$lt" mixed --host "$gw_url" --users 2100 --watchers 2000 --browsers 50 --writers 50 --think-ms 250 \
    --boards 1000 --zipf 1.1 --increase-rate 500 --run-time "${1}s" --quiet \
    --report-file "$out/mixed.html" --report-file "bench/results/mixed-$ts.goose.md" \
    --summary "bench/results/mixed-$ts.delivery.md" >"$out/mixed.log" 2>&1 ||
    log "mixed reported a delivery fault or failed (see $out/mixed.log)"
  # The JSON twin stays with the logs; the committed results are the two Markdown reports.
  mv "bench/results/mixed-$ts.delivery.summary.json" "$out/mixed.delivery.json" 2>/dev/null || true
  sed -n '1,8p' "bench/results/mixed-$ts.delivery.md" | sed 's/^/    /' >&2 || true
}

if [ "$quick" = mixed ]; then
  mixed_run 60
  log "results: bench/results/mixed-$ts.goose.md, bench/results/mixed-$ts.delivery.md, logs in $out/"
  exit 0
elif [ "$quick" = deflate ]; then
  deflate_ab deflate-200-1board-20ps 200 20 10 3
  deflate_ab deflate-1k-1board-100ps 1000 100 10 3
elif [ "$quick" = 1 ]; then
  run idle-5k-gateway connections --url "$gw_url" --connections 5000 --ramp 5000 --hold 3 --server-pid "$gw_pid"
  fanout_pair fanout-1k-1board-100ps 1000 1 100 5
  run fanout-1k-100boards-100ps-gateway fanout --url "$gw_url" --subscribers 1000 --boards 100 --rate 100 \
    --duration 5 --server-pid "$gw_pid"
  metrics_ab 5
  rest_run rest-creates-100boards 100 32 5
  pgbench_run pgbench-creates-100boards 32 5 1 100
else
  # Idle connections first, while the gateway process is fresh: freed memory that earlier runs
  # leave in the allocator would otherwise be reused and hide the real cost per connection.
  # 100k is the aim; a process can hold only as many sockets as its descriptor limit allows (the
  # hard limit, which needs CAP_SYS_RESOURCE to raise), and both the server and the harness are
  # single processes.
  idle=$(( $(ulimit -Hn) - 1000 ))
  [ "$idle" -gt 100000 ] && idle=100000
  log "idle connections: $idle (descriptor hard limit $(ulimit -Hn))"
  run idle-max-gateway connections --url "$gw_url" --connections "$idle" --ramp 5000 --hold 10 \
    --source-ips 64 --server-pid "$gw_pid"
  run idle-max-nats-ws connections --target nats-ws --nats-ws "127.0.0.1:$peer_ws" --connections "$idle" \
    --ramp 5000 --hold 10 --source-ips 64 --server-pid "$peer_pid"
  fanout_pair fanout-200-1board-20ps 200 1 20 10
  fanout_pair fanout-1k-1board-100ps 1000 1 100 10
  fanout_pair fanout-1k-100boards-100ps 1000 100 100 10
  fanout_pair fanout-10k-1board-10ps 10000 1 10 10
  fanout_pair fanout-10k-100boards-100ps 10000 100 100 10
  fanout_pair fanout-1k-1board-1000ps 1000 1 1000 10
  fanout_pair fanout-10k-1board-100ps 10000 1 100 10
  metrics_ab 10
  deflate_ab deflate-200-1board-20ps 200 20 10 3
  deflate_ab deflate-1k-1board-100ps 1000 100 10 3
  mixed_run 60
  rest_run rest-creates-1board 1 64 15
  rest_run rest-creates-100boards 100 64 15
  # As many concurrent statements as the task service's pool (DB_POOL_SIZE=32) runs.
  pgbench_run pgbench-creates-1board 32 15 900000001 900000001
  pgbench_run pgbench-creates-100boards 32 15 900000101 900000200
fi

python3 - "$out" "bench/results/$ts.json" <<'PY'
import json, pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# Goose's own JSON reports and the mixed run's per-board summary stay with the logs.
runs = {p.stem: json.loads(p.read_text()) for p in sorted(src.glob("*.json"))
        if ".goose-report." not in p.name and p.name != "mixed.delivery.json"}
machine = (src / "machine.txt").read_text()
json.dump({"machine": machine, "runs": runs}, dst.open("w"), indent=1)
# The deflate A/B, as ratios of the medians over the rounds (deflate / plain).
import re, statistics
pairs = {}
for name, r in runs.items():
    m = re.fullmatch(r"(deflate-.+)-(plain|deflate)-r\d+", name)
    if m and r.get("deliveries", {}).get("delivered") and r.get("server_cpu_seconds"):
        d = r["deliveries"]["delivered"]
        pairs.setdefault(m[1], {}).setdefault(m[2], []).append(
            (r["server_cpu_seconds"] * 1e6 / d, r.get("wire_bytes", 0) / d, r["latency"]["p99_ms"]))
for case, sides in sorted(pairs.items()):
    if len(sides) < 2:
        continue
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in sides.items()}
    p, z = med["plain"], med["deflate"]
    print(f"{case}: CPU us/delivery plain {p[0]:.2f} deflate {z[0]:.2f} ({z[0] / p[0]:.2f}x); "
          f"wire bytes/delivery plain {p[1]:.0f} deflate {z[1]:.0f} ({z[1] / p[1]:.2f}x); "
          f"p99 ms plain {p[2]:.2f} deflate {z[2]:.2f} ({len(sides['plain'])} rounds each)", file=sys.stderr)
PY
"$lt" plot --out "bench/results/$ts.html" "$out"/*-limit.json "$out"/*-gateway.json "$out"/*-nats-ws.json 2>/dev/null \
  || "$lt" plot --out "bench/results/$ts.html" "$out"/*.json
log "results: bench/results/$ts.json, bench/results/$ts.html, logs in $out/"
