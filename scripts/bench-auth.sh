#!/usr/bin/env bash
# What authentication costs on the write path, side by side in one run: two task service + gateway
# pairs (each on its own database, same PostgreSQL and NATS), one with AUTH=on and a plain user's
# token (the user owns the board: JWT verification in the gateway, the service token and user in
# the gRPC metadata, the membership probe inside the create's SQL), one with AUTH=off. `hey` POSTs
# creates at each in turn (OFF, ON, OFF, ON…), and the CPU of each process is read from /proc.
# Rate limits are off in both pairs (they are not what is measured).
#
# Usage: scripts/bench-auth.sh [SECONDS] [ROUNDS] [CONCURRENCY]   (defaults 10, 3, 32)
# Results: bench/results/auth-<timestamp>.txt (machine, summary); raw output in bench/runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

case "${1:-}" in -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
secs=${1:-10}
rounds=${2:-3}
conc=${3:-32}

pids=()
dbs=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  stop_pids "${pids[@]}"
  for db in "${dbs[@]}"; do psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
  stop_private_services
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_postgres
ensure_nats
command -v hey >/dev/null || apt_install hey
log "building (release)"
cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway
bin=target/release
ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/runs/auth-$ts # raw output, not kept in git; the summary goes to bench/results/
mkdir -p "$out"
dev_auth "$TB_STATE_DIR/auth"
export RATE_ADDRESS_PER_SEC=0 RATE_USER_WRITES_PER_SEC=0 RATE_USER_CONNECTS_PER_SEC=0

start_pair() { # auth → sets gw_pid tasks_pid url
  local auth=$1 db grpc http
  db=tb_bench_auth_${auth}_${ts,,}
  dbs+=("$db")
  ensure_database "$PG_ADMIN_URL" "$db"
  grpc=$(free_port) http=$(free_port)
  AUTH=$auth RUST_LOG=warn DATABASE_URL=$(database_url "$PG_ADMIN_URL" "$db") NATS_URL=$NATS_URL \
    NATS_SUBJECT_PREFIX="auth$auth$ts" PORT=$grpc METRICS_PORT=0 DB_POOL_SIZE=32 "$bin/taskboard-tasks" &
  tasks_pid=$!
  pids+=("$tasks_pid")
  AUTH=$auth RUST_LOG=warn HTTP_PORT=$http TASK_SERVICE_ADDR=127.0.0.1:$grpc NATS_URL=$NATS_URL \
    NATS_SUBJECT_PREFIX="auth$auth$ts" METRICS_PORT=0 BIND_ADDR=127.0.0.1 "$bin/taskboard-gateway" &
  gw_pid=$!
  pids+=("$gw_pid")
  url=http://127.0.0.1:$http
  for _ in $(seq 1 200); do curl -fsS "$url/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  die "the AUTH=$auth pair never became ready"
}
start_pair off
off_gw=$gw_pid off_tasks=$tasks_pid off_url=$url
start_pair on
on_gw=$gw_pid on_tasks=$tasks_pid on_url=$url

token=$("$bin/taskboard-token" --user 1 --ttl-secs 86400)
board=$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"name":"bench"}' "$on_url/api/boards" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

cpu() { # pid → user+system clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
pg_cpu() { # all PostgreSQL processes, clock ticks
  local t=0 p
  for p in $(pgrep -x postgres || true); do t=$((t + $(cpu "$p" 2>/dev/null || echo 0))); done
  echo "$t"
}

run() { # label url gw tasks auth_header…
  local label=$1 u=$2 gw=$3 tasks=$4 n=$5
  shift 5
  local g0 t0 p0
  g0=$(cpu "$gw") t0=$(cpu "$tasks") p0=$(pg_cpu)
  hey -z "${secs}s" -c "$conc" -m POST -T application/json "$@" \
    -d "{\"board_id\":$board,\"title\":\"bench\"}" "$u/api/tasks" >"$out/$label-$n.txt"
  echo "$label $(($(cpu "$gw") - g0)) $(($(cpu "$tasks") - t0)) $(($(pg_cpu) - p0))" >>"$out/cpu.txt"
  grep -E "Requests/sec|99% in" "$out/$label-$n.txt" | sed "s/^/  $label: /" >&2
}

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
  echo "hey: ${secs}s x $conc connections, $rounds rounds alternating"
} | tee "$out/machine.txt"
for n in $(seq 1 "$rounds"); do
  run off "$off_url" "$off_gw" "$off_tasks" "$n"
  run on "$on_url" "$on_gw" "$on_tasks" "$n" -H "Authorization: Bearer $token"
done

python3 - "$out" "$(getconf CLK_TCK)" <<'PY' | tee "$out/summary.txt"
import re, sys, glob, os
out, tck = sys.argv[1], int(sys.argv[2])
res = {}
for f in sorted(glob.glob(f"{out}/o*-*.txt")):
    label = os.path.basename(f).split("-")[0]
    t = open(f).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    p99 = float(re.search(r"99% in ([\d.]+) secs", t).group(1)) * 1000
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", t))
    res.setdefault(label, []).append((rps, p99, codes))
cpu = {}
for line in open(f"{out}/cpu.txt"):
    label, g, ts, pg = line.split()
    cpu.setdefault(label, []).append((int(g), int(ts), int(pg)))
print("| run | creates/s | p99 ms | gateway µs/create | tasks µs/create | PostgreSQL µs/create | statuses |")
print("| --- | --- | --- | --- | --- | --- | --- |")
tot = {}
for label in ("off", "on"):
    for (rps, p99, codes), (g, ts, pg) in zip(res[label], cpu[label]):
        n = sum(int(v) for v in codes.values())
        us = lambda ticks: ticks / tck * 1e6 / max(n, 1)
        print(f"| AUTH={label} | {rps:,.0f} | {p99:.1f} | {us(g):.0f} | {us(ts):.0f} | {us(pg):.0f} | {codes} |")
        t = tot.setdefault(label, [0, 0, 0, 0, 0])
        for i, v in enumerate((rps, us(g), us(ts), us(pg), p99)):
            t[i] += v
k = len(res["on"])
r = [tot["on"][i] / tot["off"][i] for i in range(5)]
print(f"\nON ÷ OFF (means of {k} runs): creates/s {r[0]:.2f}, gateway CPU/create {r[1]:.2f}, "
      f"tasks CPU/create {r[2]:.2f}, PostgreSQL CPU/create {r[3]:.2f}, p99 {r[4]:.2f}")
PY
{ cat "$out/machine.txt"; echo; cat "$out/summary.txt"; } >"bench/results/auth-$ts.txt"
log "results: bench/results/auth-$ts.txt (raw output in $out/)"
