#!/usr/bin/env bash
# The write path of two builds side by side in one run: a task service + gateway pair built from
# BASE and one from the working tree, each on its own database (same PostgreSQL and NATS), both
# with AUTH=on and a plain user's token (the production path). `wrk` POSTs creates at each in turn
# (A, B, A, B…), on one board and spread over 100 boards; the CPU of the gateway, the task service,
# all PostgreSQL processes and nats-server is read from /proc for each run. Then the load suite's
# fan-out (REST create → WebSocket frame) at 200 subscribers × 20 events/s and 1k × 100/s on one
# board, for the latency of the whole event path. Reports creates/s, p99, µs of CPU per create in
# each process, fan-out latency and deliveries, and B ÷ A.
#
# Usage: scripts/bench-write.sh BASE [SECONDS] [ROUNDS] [CONNECTIONS]   (defaults 10, 2, 64)
#   BASE  a git revision (built in release mode into target/ab-base) or a directory holding
#         taskboard-tasks and taskboard-gateway binaries
#   ORIGINAL=DIR in the environment: also the Go original's task-service and api-gateway from DIR
#         (built as in TOOLS.md) as side O, creates only (it has no auth, no seq, no boards API)
#   FANOUT=0 in the environment: creates only (no fan-out runs)
#   PIN=1 in the environment: wrk on CPU 0, everything under test (both pairs, PostgreSQL,
#         nats-server) on CPU 1, so latency is the servers', not the load generator's
#   B_ENV="VAR=value …" in the environment: extra settings for side B's two services only (e.g.
#         B_ENV=TOKIO_WORKER_THREADS=1 with BASE the working tree's own binaries, target/release);
#         A_ENV the same for side A (e.g. A_ENV=CREATE_CALLS=0: one binary, a setting off and on)
# Results: bench/results/write-<timestamp>.md (machine and summary); raw output in bench/runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

case "${1:-}" in
  -h|--help|"") sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] && exit 0; exit 64 ;;
esac
base=$1
secs=${2:-10}
rounds=${3:-2}
conns=${4:-64}
pin=${PIN:-0}

pids=()
dbs=()
worktree=""
pinned=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  stop_pids "${pids[@]}"
  for p in "${pinned[@]}"; do taskset -a -p -c "0-$(($(nproc) - 1))" "$p" >/dev/null 2>&1 || true; done
  for db in "${dbs[@]}"; do psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
  if [ -n "$worktree" ]; then git worktree remove --force "$worktree" >/dev/null 2>&1 || true; fi
  stop_private_services
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_postgres
ensure_nats
command -v wrk >/dev/null || apt_install wrk
log "building the working tree (release)"
cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway -p taskboard-loadtest
if [ -d "$base" ]; then
  base_bin=$base
else
  rev=$(git rev-parse --verify "$base^{commit}") || die "$base is neither a directory nor a git revision"
  worktree=$TB_STATE_DIR/write-base
  git worktree add --detach --force "$worktree" "$rev" >/dev/null
  log "building $base ($rev) in release mode into target/ab-base (slow the first time)"
  CARGO_TARGET_DIR=$PWD/target/ab-base cargo build --release --quiet \
    --manifest-path "$worktree/Cargo.toml" -p taskboard-tasks -p taskboard-gateway
  base_bin=$PWD/target/ab-base/release
fi
for b in taskboard-tasks taskboard-gateway; do [ -x "$base_bin/$b" ] || die "no $b in $base_bin"; done
bin=target/release

ts=$(date -u +%Y%m%dT%H%M%SZ)
# Raw output (wrk per run, cpu.txt) in bench/runs/ (not kept in git); the summary, with the
# machine, is bench/results/write-<timestamp>.md.
out=bench/runs/write-$ts
mkdir -p "$out"
dev_auth "$TB_STATE_DIR/write-auth"
export RATE_ADDRESS_PER_SEC=0 RATE_USER_WRITES_PER_SEC=0 RATE_USER_CONNECTS_PER_SEC=0
token=$("$bin/taskboard-token" --user 1 --ttl-secs 86400)

under_test() { # command… : becomes it (so $! is its pid), on CPU 1 when pinned
  if [ "$pin" = 1 ]; then exec taskset -c 1 "$@"; else exec "$@"; fi
}
if [ "$pin" = 1 ]; then
  # Whatever PostgreSQL and NATS run now (and every backend they fork later) go to CPU 1.
  for p in $(pgrep -x postgres || true) $(pgrep -x nats-server || true); do
    taskset -a -p -c 1 "$p" >/dev/null && pinned+=("$p")
  done
fi

start_pair() { # label dir [VAR=value…] → sets gw_pid tasks_pid url
  local label=$1 dir=$2 db grpc http
  shift 2
  local extra=("$@")
  db=tb_bench_write_${label}_${ts,,}
  dbs+=("$db")
  ensure_database "$PG_ADMIN_URL" "$db"
  grpc=$(free_port) http=$(free_port)
  RUST_LOG=warn DATABASE_URL=$(database_url "$PG_ADMIN_URL" "$db") NATS_URL=$NATS_URL \
    NATS_SUBJECT_PREFIX="w$label$ts" PORT=$grpc METRICS_PORT=0 DB_POOL_SIZE=32 \
    under_test env "${extra[@]}" "$dir/taskboard-tasks" &
  tasks_pid=$!
  pids+=("$tasks_pid")
  RUST_LOG=warn HTTP_PORT=$http TASK_SERVICE_ADDR=127.0.0.1:$grpc NATS_URL=$NATS_URL \
    NATS_SUBJECT_PREFIX="w$label$ts" METRICS_PORT=0 BIND_ADDR=127.0.0.1 \
    under_test env "${extra[@]}" "$dir/taskboard-gateway" &
  gw_pid=$!
  pids+=("$gw_pid")
  url=http://127.0.0.1:$http
  for _ in $(seq 1 300); do curl -fsS "$url/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  die "the $label pair never became ready"
}

boards_of() { # url n → n board ids the token's user owns, space-separated
  local u=$1 n=$2 ids=()
  for _ in $(seq 1 "$n"); do
    ids+=("$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d '{"name":"bench"}' "$u/api/boards" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
  done
  echo "${ids[*]}"
}

original=${ORIGINAL:-}
if [ -n "$original" ]; then
  for b in task-service api-gateway; do [ -x "$original/$b" ] || die "no $b in $original"; done
  db=tb_bench_write_o_${ts,,}
  dbs+=("$db")
  ensure_database "$PG_ADMIN_URL" "$db"
  o_grpc=$(free_port) o_http=$(free_port)
  # Its database port is fixed at 5432; it creates its table at start.
  PORT=$o_grpc DB_HOST=127.0.0.1 DB_USER=postgres DB_PASSWORD='' DB_NAME=$db NATS_URL=$NATS_URL \
    under_test "$original/task-service" >"$out/original-tasks.log" 2>&1 &
  o_tasks=$!
  pids+=("$o_tasks")
  sleep 1
  HTTP_PORT=$o_http TASK_SERVICE_ADDR=127.0.0.1:$o_grpc NATS_URL=$NATS_URL \
    under_test "$original/api-gateway" >"$out/original-gateway.log" 2>&1 &
  o_gw=$!
  pids+=("$o_gw")
  o_url=http://127.0.0.1:$o_http
  for _ in $(seq 1 100); do curl -fsS "$o_url/health" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "$o_url/health" >/dev/null || die "the original never became healthy (see $out/original-*.log)"
fi

# shellcheck disable=SC2086 # A_ENV is a list of VAR=value words
start_pair a "$base_bin" ${A_ENV:-}
a_gw=$gw_pid a_tasks=$tasks_pid a_url=$url
# shellcheck disable=SC2086 # B_ENV is a list of VAR=value words
start_pair b "$bin" ${B_ENV:-}
b_gw=$gw_pid b_tasks=$tasks_pid b_url=$url
a_one=$(boards_of "$a_url" 1) b_one=$(boards_of "$b_url" 1)
a_many=$(boards_of "$a_url" 100) b_many=$(boards_of "$b_url" 100)

cpu() { # pid → user+system clock ticks (threads included)
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
sum_cpu() { # process name → ticks of all its processes
  local t=0 p
  for p in $(pgrep -x "$1" || true); do t=$((t + $(cpu "$p"))); done
  echo "$t"
}

run() { # label scenario url gw tasks boards n
  local label=$1 scen=$2 u=$3 gw=$4 tasks=$5 boards=$6 n=$7 g0 t0 p0 n0 gen=()
  [ "$pin" = 1 ] && gen=(taskset -c 0)
  g0=$(cpu "$gw") t0=$(cpu "$tasks") p0=$(sum_cpu postgres) n0=$(sum_cpu nats-server)
  BOARDS=$boards TOKEN=$token "${gen[@]}" wrk -t2 -c"$conns" -d"${secs}s" --latency \
    -s bench/create.lua "$u" >"$out/$label-$scen-$n.txt"
  echo "$label $scen $(($(cpu "$gw") - g0)) $(($(cpu "$tasks") - t0)) $(($(sum_cpu postgres) - p0)) $(($(sum_cpu nats-server) - n0))" >>"$out/cpu.txt"
  grep -E "Requests/sec|99%|Non-2xx" "$out/$label-$scen-$n.txt" | sed "s/^/  $label $scen: /" >&2
}

{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
  echo "A = $base ($base_bin), B = working tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo +changes))${B_ENV:+ with $B_ENV}${A_ENV:+; A with $A_ENV}"
  echo "wrk: ${secs}s x $conns connections, $rounds rounds alternating, pinned: $pin"
} | tee "$out/machine.txt"
fan() { # label scenario url gw tasks n loadtest-args…
  local label=$1 scen=$2 u=$3 gw=$4 tasks=$5 n=$6 gen=()
  shift 6
  [ "$pin" = 1 ] && gen=(taskset -c 0)
  "${gen[@]}" "$bin/taskboard-loadtest" fanout --url "$u" --token "$svc" --server-pid "$gw" \
    --server-pid "$tasks" --duration "$secs" "$@" --json "$out/fan-$label-$scen-$n.json" \
    >"$out/fan-$label-$scen-$n.log" 2>&1 || log "fan-out $label $scen reported a failure (see $out/fan-$label-$scen-$n.log)"
}
svc=$("$bin/taskboard-token" --service --ttl-secs 86400)

for n in $(seq 1 "$rounds"); do
  [ "${FANOUT:-1}" = 0 ] && continue
  fan a 200x20 "$a_url" "$a_gw" "$a_tasks" "$n" --subscribers 200 --boards 1 --rate 20
  fan b 200x20 "$b_url" "$b_gw" "$b_tasks" "$n" --subscribers 200 --boards 1 --rate 20
  fan a 1kx100 "$a_url" "$a_gw" "$a_tasks" "$n" --subscribers 1000 --boards 1 --rate 100
  fan b 1kx100 "$b_url" "$b_gw" "$b_tasks" "$n" --subscribers 1000 --boards 1 --rate 100
done
for n in $(seq 1 "$rounds"); do
  if [ -n "$original" ]; then
    run o one "$o_url" "$o_gw" "$o_tasks" "1" "$n"
    run o many "$o_url" "$o_gw" "$o_tasks" "$(seq -s ' ' 1 100)" "$n"
  fi
  run a one "$a_url" "$a_gw" "$a_tasks" "$a_one" "$n"
  run b one "$b_url" "$b_gw" "$b_tasks" "$b_one" "$n"
  run a many "$a_url" "$a_gw" "$a_tasks" "$a_many" "$n"
  run b many "$b_url" "$b_gw" "$b_tasks" "$b_many" "$n"
done

# The original logs every request: keep the end (start-up failures show at the top of a short run).
for f in "$out"/original-*.log; do [ -f "$f" ] && { tail -n 200 "$f" >"$f.tail" && mv "$f.tail" "$f"; }; done

python3 - "$out" "$(getconf CLK_TCK)" <<'PY' | tee "$out/summary.md"
import re, sys, os
out, tck = sys.argv[1], int(sys.argv[2])
def ms(v, unit):
    return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
rows = {}
cpu = {}
for line in open(f"{out}/cpu.txt"):
    label, scen, *t = line.split()
    cpu.setdefault((label, scen), []).append([int(x) for x in t])
for (label, scen), runs in sorted(cpu.items()):
    for n, ticks in enumerate(runs, 1):
        t = open(f"{out}/{label}-{scen}-{n}.txt").read()
        total = int(re.search(r"(\d+) requests in", t).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
        bad = int(bad.group(1)) if bad else 0
        errs = re.search(r"Socket errors: .*", t)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
        p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t).groups())
        ok = max(total - bad, 1)
        us = [x / tck * 1e6 / ok for x in ticks]
        rows.setdefault((label, scen), []).append((rps, p99, *us, bad, errs.group(0) if errs else ""))
names = {"one": "one board", "many": "100 boards"}
builds = {"o": "Go original", "a": "A", "b": "B"}
print("| build | scenario | creates/s | p99 ms | gateway µs/create | tasks µs/create | PostgreSQL µs/create | NATS µs/create | non-2xx |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for scen in ("one", "many"):
    for label in ("o", "a", "b"):
        for r in rows.get((label, scen), []):
            print(f"| {builds[label]} | {names[scen]} | {r[0]:,.0f} | {r[1]:.1f} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.1f} | {r[6]} {r[7]} |")
print()
for scen in ("one", "many"):
    a, b, o = rows.get(("a", scen)), rows.get(("b", scen)), rows.get(("o", scen))
    if not a or not b:
        continue
    mean = lambda rs, i: sum(r[i] for r in rs) / len(rs)
    ratio = lambda i, a=a: mean(b, i) / mean(a, i) if mean(a, i) else float("nan")
    if o:
        print(f"B ÷ Go original, {names[scen]}: creates/s **{ratio(0, o):.2f}**, p99 {ratio(1, o):.2f}, "
              f"CPU per create: gateway {ratio(2, o):.2f}, tasks {ratio(3, o):.2f}, PostgreSQL {ratio(4, o):.2f}, NATS {ratio(5, o):.2f}")
    print(f"B ÷ A, {names[scen]} (means of {len(a)} runs): creates/s **{ratio(0):.2f}**, p99 {ratio(1):.2f}, "
          f"CPU per create: gateway {ratio(2):.2f}, tasks {ratio(3):.2f}, PostgreSQL **{ratio(4):.2f}**, NATS {ratio(5):.2f}")
import glob, json
fan = {}
for f in sorted(glob.glob(f"{out}/fan-*.json")):
    _, label, scen, _n = os.path.basename(f)[:-5].split("-")
    r = json.load(open(f))
    d = r["deliveries"]
    post = r.get("publish_latency") or {}
    fan.setdefault(scen, {}).setdefault(label, []).append(
        (r["latency"]["p50_ms"], r["latency"]["p99_ms"], d["missing"] + d["duplicates"] + d["out_of_order"],
         post.get("p50_ms"), post.get("p99_ms")))
if fan:
    print()
    # "POST answered": intended send time → the 201 (the commit); the rest of POST → frame is the
    # event's way from the commit to the sockets.
    print("| fan-out, one board | build | POST → frame p50 ms | p99 ms | POST answered p50 ms | p99 ms | missing + dup + out of order |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    f1 = lambda v: "—" if v is None else f"{v:.1f}"
    for scen, sides in fan.items():
        for label in ("a", "b"):
            for p50, p99, bad, a50, a99 in sides.get(label, []):
                print(f"| {scen} | {label.upper()} | {p50:.1f} | {p99:.1f} | {f1(a50)} | {f1(a99)} | {bad} |")
PY
{ echo '```'; cat "$out/machine.txt"; echo '```'; echo; cat "$out/summary.md"; } >"bench/results/write-$ts.md"
log "results: bench/results/write-$ts.md (raw output in $out/)"
