#!/usr/bin/env bash
# Two gateway builds side by side in one run: the same task service, NATS and database, the same
# load, runs alternated A, B, A, B so the machine's noise hits both. Reports ratios (B ÷ A) of
# deliveries per gateway CPU-second, latency and REST creates/s, and checks every delivery.
#
# Usage: scripts/bench-ab.sh BASE [SECONDS]
#   BASE     a git revision (built in release mode into target/ab-base from a worktree), or a
#            directory that holds a taskboard-gateway binary
#   SECONDS  length of each run (default 8)
#   B_ENV="VAR=value …" in the environment: extra settings for side B's gateway only (e.g.
#         B_ENV=WS_DIRECT_BUDGET_US=0 with BASE target/release, the working tree's own binary)
# A is BASE, B is the working tree. Results: bench/results/ab-<timestamp>/ (JSON per run, summary).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

case "${1:-}" in
  -h|--help|"") sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] && exit 0; exit 64 ;;
esac
base=$1
secs=${2:-8}

pids=()
worktree=""
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  stop_pids "${pids[@]}"
  if [ -n "$worktree" ]; then git worktree remove --force "$worktree" >/dev/null 2>&1 || true; fi
  stop_private_services
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 65536 2>/dev/null || true
ensure_postgres
ensure_nats

log "building the working tree (release)"
cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway -p taskboard-loadtest
if [ -d "$base" ]; then
  base_bin=$base
else
  rev=$(git rev-parse --verify "$base^{commit}") || die "$base is neither a directory nor a git revision"
  worktree=$TB_STATE_DIR/ab-base
  git worktree add --detach --force "$worktree" "$rev" >/dev/null
  log "building $base ($rev) in release mode into target/ab-base (slow the first time)"
  CARGO_TARGET_DIR=$PWD/target/ab-base cargo build --release --quiet \
    --manifest-path "$worktree/Cargo.toml" -p taskboard-gateway
  base_bin=$PWD/target/ab-base/release
fi
[ -x "$base_bin/taskboard-gateway" ] || die "no taskboard-gateway in $base_bin"
bin=target/release
lt=$bin/taskboard-loadtest

ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/runs/ab-$ts # raw output, not kept in git; the summary goes to bench/results/
mkdir -p "$out"
db=tb_bench_ab_${ts,,}
ensure_database "$PG_ADMIN_URL" "$db"
db_url=$(database_url "$PG_ADMIN_URL" "$db")

# Both builds against one task service; authentication off, since a base build from before
# authentication would not present a token (bench.sh measures with it on). With authentication
# off every client is limited per address (100/s): the REST flood would be answered 429 and a
# later run's WebSocket connects from the same address refused, so that limit is off here.
export AUTH=off RATE_ADDRESS_PER_SEC=0

grpc_port=$(free_port)
RUST_LOG=warn DATABASE_URL=$db_url NATS_URL=$NATS_URL NATS_SUBJECT_PREFIX="ab$ts" PORT=$grpc_port \
  METRICS_PORT=0 BIND_ADDR=127.0.0.1 DB_POOL_SIZE=32 "$bin/taskboard-tasks" &
pids+=("$!")

start_gateway() { # binary [VAR=value…] → sets gw_port, gw_pid
  gw_port=$(free_port)
  local binary=$1
  shift
  RUST_LOG=warn HTTP_PORT=$gw_port TASK_SERVICE_ADDR=127.0.0.1:$grpc_port NATS_URL=$NATS_URL \
    NATS_SUBJECT_PREFIX="ab$ts" METRICS_PORT="$(free_port)" BIND_ADDR=127.0.0.1 env "$@" "$binary" &
  gw_pid=$!
  pids+=("$gw_pid")
  for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$gw_port/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  die "gateway $binary never became ready"
}
start_gateway "$base_bin/taskboard-gateway"
a_port=$gw_port a_pid=$gw_pid
# shellcheck disable=SC2086 # B_ENV is a list of VAR=value words
start_gateway "$bin/taskboard-gateway" ${B_ENV:-}
b_port=$gw_port b_pid=$gw_pid

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
  echo "A = $base ($base_bin/taskboard-gateway), B = working tree $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')${B_ENV:+ with $B_ENV}"
} | tee "$out/machine.txt"

run() { # name side args…
  local name=$1 side=$2 port pid
  shift 2
  if [ "$side" = A ]; then port=$a_port pid=$a_pid; else port=$b_port pid=$b_pid; fi
  log "$name $side"
  "$lt" fanout --url "http://127.0.0.1:$port" --server-pid "$pid" --duration "$secs" "$@" \
    --json "$out/$name-$side-$round.json" >"$out/$name-$side-$round.log" 2>&1 \
    || log "$name $side reported a failure (see $out/$name-$side-$round.log)"
}

rest() { # side
  local side=$1 port
  if [ "$side" = A ]; then port=$a_port; else port=$b_port; fi
  log "rest-creates $side"
  "$lt" rest --create-only --boards 100 --board-base $((RANDOM * 1000 + 7000000)) \
    --host "http://127.0.0.1:$port" --users 32 --increase-rate 32 --run-time "${secs}s" --quiet \
    --report-file "$out/rest-$side-$round.goose.json" >"$out/rest-$side-$round.log" 2>&1 || log "rest $side failed (see $out/rest-$side-$round.log)"
}

for round in 1 2; do
  # Alternate which side goes first.
  if [ "$round" = 1 ]; then order="A B"; else order="B A"; fi
  for side in $order; do run fanout-1k-1board-100ps "$side" --subscribers 1000 --boards 1 --rate 100; done
  for side in $order; do run fanout-1k-100boards-100ps "$side" --subscribers 1000 --boards 100 --rate 100; done
  for side in $order; do run fanout-200-1board-20ps "$side" --subscribers 200 --boards 1 --rate 20; done
  for side in $order; do rest "$side"; done
done

python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, pathlib, re, statistics, sys
out = pathlib.Path(sys.argv[1])
def rest_rate(p):
    # Goose's own JSON report (--report-file), never its text output.
    report = p.with_suffix(".goose.json")
    if not report.exists():
        return None
    for r in json.loads(report.read_text())["raw_request_metrics"]:
        if r["method"] == "POST" and r["name"] == "/api/tasks":
            return r["requests_per_second"]
    return None
rows = {}
for p in sorted(q for q in out.glob("*.json") if not q.name.endswith(".goose.json")):
    name, side, _ = p.stem.rsplit("-", 2)
    r = json.loads(p.read_text())
    d = r["deliveries"]
    bad = d["missing"] + d["duplicates"] + d["out_of_order"]
    rows.setdefault(name, {}).setdefault(side, []).append(
        (r["deliveries_per_server_cpu_s"] or 0, r["latency"]["p50_ms"], r["latency"]["p99_ms"], bad))
print(f"{'scenario':30} {'deliveries/CPU-s A':>19} {'B':>9} {'B/A':>6}   {'p50 ms A/B':>13}   {'p99 ms A/B':>13}  missing/dup/order")
for name, sides in rows.items():
    a, b = sides.get("A", []), sides.get("B", [])
    if not a or not b:
        continue
    ea, eb = statistics.mean(x[0] for x in a), statistics.mean(x[0] for x in b)
    print(f"{name:30} {ea:19,.0f} {eb:9,.0f} {eb/ea:6.2f}   "
          f"{statistics.mean(x[1] for x in a):5.1f} / {statistics.mean(x[1] for x in b):5.1f}   "
          f"{statistics.mean(x[2] for x in a):5.1f} / {statistics.mean(x[2] for x in b):5.1f}  "
          f"{sum(x[3] for x in a)} / {sum(x[3] for x in b)}")
ra = [v for p in sorted(out.glob("rest-A-*.log")) if (v := rest_rate(p))]
rb = [v for p in sorted(out.glob("rest-B-*.log")) if (v := rest_rate(p))]
if ra and rb:
    print(f"{'rest creates/s (100 boards, 32 users)':38} A {statistics.mean(ra):8,.0f}   B {statistics.mean(rb):8,.0f}   B/A {statistics.mean(rb)/statistics.mean(ra):.2f}")
PY
{ cat "$out/machine.txt"; echo; cat "$out/summary.txt"; } >"bench/results/ab-$ts.txt"
log "results: bench/results/ab-$ts.txt (raw output in $out/)"
