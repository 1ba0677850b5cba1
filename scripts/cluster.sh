#!/usr/bin/env bash
# The multi-node harness: every "node" in a network namespace of its own, on one bridge
# (10.77.0.0/24, inside namespaces this script creates and deletes on exit): 3 NATS nodes joined by
# routes, a PostgreSQL primary with a synchronous streaming standby, 2 task services, N gateways
# and a load node. Needs root (ip netns, nftables; installed from Debian when missing).
#
# Usage: scripts/cluster.sh faults [--gateways N] [--seconds S] [--rate R] [--only F]
#        scripts/cluster.sh scale  [--seconds S] [--rate R] [--boards B] [--subscribers K]
#   faults: under load (the fan-out suite on every gateway, each creating through the next one so
#     events cross NATS), one fault per run, S s (30) at R creates/s (100) in all:
#       nats-kill   kill -9 the NATS node gateway 1 is connected to (restarted 10 s later)
#       partition   drop everything between gateway 1 and its NATS node for 10 s (nftables)
#       pg-failover kill -9 the PostgreSQL primary, promote the standby
#       tasks-kill  kill -9 one of the two task services (restarted 10 s later)
#     and reports for each: creates acknowledged, events delivered, missing, duplicated, out of
#     order (over every subscriber), and the recovery time. --only runs one fault.
#   scale: 1, 2 and 4 gateways over B boards (1000) with K subscribers (2000) spread so each
#     gateway holds 1/N of the boards, per-board subscriptions (NATS_SUBSCRIBE=board) and the
#     wildcard side by side: messages nats-server sent each gateway (/connz) against its share, and
#     gateway CPU per delivered frame.
# Results: bench/results/cluster-<mode>-<timestamp>.md; raw output in bench/runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

mode=${1:-}
case "$mode" in
  faults|scale) shift ;;
  -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64 ;;
esac
gateways=2 secs=30 rate=100 only="" boards=1000 subscribers=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --gateways) gateways=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --boards) boards=$2; shift 2 ;;
    --subscribers) subscribers=$2; shift 2 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "cluster.sh needs root (network namespaces)"
command -v nft >/dev/null || apt_install nftables
ensure_nats_binary
pgbin=$(pg_bin_dir) || { apt_install postgresql; pgbin=$(pg_bin_dir); }
id postgres >/dev/null 2>&1 || useradd --system postgres

NET=10.77.0
PFX=tbc
state=$TB_STATE_DIR/cluster
mkdir -p "$state"
chmod 755 "$TB_STATE_DIR"
pids=()
nodes=()
declare -A pid_of

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for n in "${nodes[@]}"; do ip netns pids "$PFX-$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for n in "${nodes[@]}" hub; do ip netns del "$PFX-$n" 2>/dev/null || true; done
  stop_private_services
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of a run that was killed: only this script's own namespaces.
for n in $(ip netns list | awk '{print $1}' | grep "^$PFX-" || true); do
  ip netns pids "$n" | xargs -r kill -9 2>/dev/null || true
  ip netns del "$n"
done
ip netns add "$PFX-hub"
ip netns exec "$PFX-hub" ip link add br0 type bridge
ip netns exec "$PFX-hub" ip link set br0 up

on() { local n=$1; shift; ip netns exec "$PFX-$n" "$@"; }

node() { # name last-octet: a namespace with one address on the bridge
  local n=$1 ip=$NET.$2
  ip netns add "$PFX-$n"
  ip link add "$PFX$n" type veth peer name "p$PFX$n"
  ip link set "$PFX$n" netns "$PFX-$n"
  ip link set "p$PFX$n" netns "$PFX-hub"
  on hub ip link set "p$PFX$n" master br0
  on hub ip link set "p$PFX$n" up
  on "$n" ip addr add "$ip/24" dev "$PFX$n"
  on "$n" ip link set "$PFX$n" up
  on "$n" ip link set lo up
  nodes+=("$n")
}

wait_tcp() { # node ip port what
  local _
  for _ in $(seq 1 300); do
    on "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$4 did not listen on $2:$3"
}

start() { # name node log command… : runs it in node's namespace, remembers its pid (ip netns
  # exec becomes the command, so that is the command's own pid)
  local name=$1 n=$2 logf=$3
  shift 3
  # Not through `on`: a function in the background is a subshell, and $! would be its pid.
  ip netns exec "$PFX-$n" "$@" >"$logf" 2>&1 &
  pid_of[$name]=$!
  pids+=($!)
}

# --- NATS: 3 nodes, routes between all ---
nats_routes="nats://$NET.11:6222,nats://$NET.12:6222,nats://$NET.13:6222"
nats_urls="nats://$NET.11:4222,nats://$NET.12:4222,nats://$NET.13:4222"
start_nats() { # i
  local i=$1
  start "nats$i" "nats$i" "$state/nats$i.log" nats-server -a "$NET.1$i" -p 4222 -m 8222 \
    --name "nats$i" --cluster_name taskboard --cluster "nats://$NET.1$i:6222" --routes "$nats_routes"
  wait_tcp "nats$i" "$NET.1$i" 4222 "NATS node $i"
}
for i in 1 2 3; do node "nats$i" "1$i"; done
for i in 1 2 3; do start_nats "$i"; done

# --- PostgreSQL: primary .21, synchronous standby .22 ---
node pg1 21
node pg2 22
pgdir=$state/pg
mkdir -p "$pgdir/sock1" "$pgdir/sock2"
chown -R postgres "$pgdir"
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$pgbin/initdb" -D "$pgdir/primary" -U postgres --auth=trust -N >"$state/initdb.log" 2>&1 || die "initdb failed ($state/initdb.log)"
cat >>"$pgdir/primary/postgresql.conf" <<CONF
listen_addresses = '$NET.21'
wal_level = replica
max_wal_senders = 5
synchronous_commit = on
synchronous_standby_names = 'standby'
max_connections = 300
CONF
echo "host all,replication all $NET.0/24 trust" >>"$pgdir/primary/pg_hba.conf"
start pg1 pg1 "$state/pg1.log" runuser -u postgres -- "$pgbin/postgres" -D "$pgdir/primary" -k "$pgdir/sock1"
wait_tcp pg1 "$NET.21" 5432 "the PostgreSQL primary"
on pg2 runuser -u postgres -- "$pgbin/pg_basebackup" -h "$NET.21" -U postgres -D "$pgdir/standby" -R \
  >"$state/basebackup.log" 2>&1 || die "pg_basebackup failed ($state/basebackup.log)"
cat >>"$pgdir/standby/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=$NET.21 port=5432 user=postgres application_name=standby'
listen_addresses = '$NET.22'
synchronous_standby_names = ''
CONF
start pg2 pg2 "$state/pg2.log" runuser -u postgres -- "$pgbin/postgres" -D "$pgdir/standby" -k "$pgdir/sock2"
wait_tcp pg2 "$NET.22" 5432 "the PostgreSQL standby"
on pg1 runuser -u postgres -- "$pgbin/psql" -h "$NET.21" -qc "CREATE DATABASE taskboard" >/dev/null
database_url="postgres://postgres@$NET.21:5432,$NET.22:5432/taskboard?target_session_attrs=read-write"

# --- the services ---
log "building (release)"
cargo build --release --quiet -p taskboard-tasks -p taskboard-gateway -p taskboard-loadtest
bin=$PWD/target/release
dev_auth "$state/auth"
export RATE_ADDRESS_PER_SEC=0 RATE_USER_WRITES_PER_SEC=0 RATE_USER_CONNECTS_PER_SEC=0 RUST_LOG=warn
start_tasks() { # i
  local i=$1
  start "tasks$i" "tasks$i" "$state/tasks$i.log" env DATABASE_URL="$database_url" NATS_URL="$nats_urls" \
    BIND_ADDR="$NET.3$i" PORT=50051 METRICS_PORT=9091 "$bin/taskboard-tasks"
  wait_tcp "tasks$i" "$NET.3$i" 50051 "task service $i"
}
for i in 1 2; do node "tasks$i" "3$i"; start_tasks "$i"; done
gw_ip() { echo "$NET.$((40 + $1))"; }
start_gateway() { # i [VAR=value…]
  local i=$1
  shift
  start "gw$i" "gw$i" "$state/gw$i.log" env "$@" NATS_URL="$nats_urls" BIND_ADDR="$(gw_ip "$i")" \
    HTTP_PORT=8080 METRICS_PORT=9090 TASK_SERVICE_ADDR="$NET.31:50051,$NET.32:50051" "$bin/taskboard-gateway"
  for _ in $(seq 1 300); do
    on "gw$i" curl -fsS "http://$(gw_ip "$i"):8080/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "gateway $i never became ready ($state/gw$i.log)"
}
node load 100
svc=$("$bin/taskboard-token" --service --ttl-secs 86400)
ts=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/runs/cluster-$mode-$ts
mkdir -p "$out"

# nats-server's view of one client address: "node out_msgs" of its gateway connection.
nats_conn_of() { # ip
  local i
  for i in 1 2 3; do
    kill -0 "${pid_of[nats$i]}" 2>/dev/null || continue
    on "nats$i" curl -fsS "http://$NET.1$i:8222/connz?limit=1024" >"$state/connz$i.json" 2>/dev/null || continue
    python3 - "$1" "$i" "$state/connz$i.json" <<'PY' && return 0
import json, sys
ip, node, f = sys.argv[1:4]
for c in json.load(open(f))["connections"] or []:
    if c["ip"] == ip and c.get("name") == "taskboard-gateway":
        print(node, c["out_msgs"])
        sys.exit(0)
sys.exit(1)
PY
  done
  return 1
}

# The fan-out suite on gateways 1..N at once: gateway i's subscribers watch boards of its own
# range and create through gateway i+1 (so the events cross NATS). Waits for all; JSONs in $1.
load() { # dir n subscribers boards rate seconds
  local dir=$1 n=$2 subs=$3 bs=$4 r=$5 s=$6 i next base lp=()
  mkdir -p "$dir"
  base=$(( $(date +%s) % 100000 * 10000 ))
  for i in $(seq 1 "$n"); do
    next=$(( i % n + 1 ))
    on load "$bin/taskboard-loadtest" fanout --url "http://$(gw_ip "$i"):8080" \
      --publish-url "http://$(gw_ip "$next"):8080" --token "$svc" --source-ips 0 \
      --subscribers $((subs / n)) --boards $((bs / n)) --rate "$(python3 -c "print($r / $n)")" \
      --duration "$s" --publishers 8 --board-base $((base + i * 1000)) --drain 30 \
      --server-pid "${pid_of[gw$i]}" --json "$dir/gw$i.json" >"$dir/gw$i.log" 2>&1 &
    lp+=($!)
  done
  local rc=0
  for p in "${lp[@]}"; do wait "$p" || rc=1; done
  return $rc
}

until_create_works() { # → seconds from now until a create through gateway 1 is acknowledged
  local t0 now
  t0=$(date +%s.%N)
  for _ in $(seq 1 600); do
    if on load curl -fsS -o /dev/null -H "Authorization: Bearer $svc" -H 'Content-Type: application/json' \
      -d '{"board_id":1,"title":"probe","created_by":1}' "http://$(gw_ip 1):8080/api/tasks" 2>/dev/null; then
      now=$(date +%s.%N)
      python3 -c "print(f'{$now - $t0:.1f}')"
      return
    fi
    sleep 0.1
  done
  echo "> 60"
}

until_ready() { # gateway → seconds until its /ready is 200 again (NATS connected)
  local t0 now
  t0=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    if on "gw$1" curl -fsS -o /dev/null "http://$(gw_ip "$1"):8080/ready" 2>/dev/null; then
      now=$(date +%s.%N)
      python3 -c "print(f'{$now - $t0:.1f}')"
      return
    fi
    sleep 0.1
  done
  echo "> 120"
}

# shellcheck source=scripts/cluster-modes.sh
. scripts/cluster-modes.sh
"run_$mode"
