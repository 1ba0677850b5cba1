#!/usr/bin/env bash
# Builds both images from this machine's binaries (scripts/images.sh) and runs them with podman the
# way the Helm chart will: non-root (65532), read-only root filesystem, every capability dropped,
# no new privileges, against the PostgreSQL and NATS the tests use. Checks /health, /ready, a
# create and its WebSocket event, and that SIGTERM drains both within the chart's grace period.
# Steps that cannot run on a machine (no buildah/podman) say so and are skipped.
#
# Usage: scripts/check-images.sh [BIN_DIR]   (default: cargo's target dir /debug)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

# The grace period the chart gives a pod (terminationGracePeriodSeconds) and the services' own.
POD_GRACE=30
SERVICE_GRACE=20

target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin_dir=${1:-$target_dir/debug}

if ! command -v buildah >/dev/null || ! command -v podman >/dev/null; then
  (apt_install buildah podman runc uidmap fuse-overlayfs) || {
    log "SKIPPED: buildah/podman unavailable on this machine; images not checked"
    exit 0
  }
fi

# The servers the tests use when scripts/test.sh calls this; else find or start them.
if [ -n "${TASKBOARD_TEST_PG:-}" ] && [ -n "${TASKBOARD_TEST_NATS:-}" ]; then
  PG_ADMIN_URL=$TASKBOARD_TEST_PG NATS_URL=$TASKBOARD_TEST_NATS
else
  ensure_postgres
  ensure_nats
fi
TB_CONTAINERS_ROOT=$(mktemp -d)
export TB_CONTAINERS_ROOT
# Root lacks CAP_SYS_RESOURCE here and cgroups are v1: runc, cgroupfs and modest ulimits.
CONTAINERS_CONF=$TB_CONTAINERS_ROOT/containers.conf
export CONTAINERS_CONF
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
pod() { podman --root "$TB_CONTAINERS_ROOT/root" --runroot "$TB_CONTAINERS_ROOT/run" --storage-driver vfs "$@"; }
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  trap - INT TERM EXIT
  pod rm -f -t 0 tb-check-gateway tb-check-tasks >/dev/null 2>&1 || true
  rm -rf "$TB_CONTAINERS_ROOT"
  stop_private_services
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash scripts/images.sh "$bin_dir" check

# Can this machine start a container at all? (Not inside `ip netns exec`, whose fresh /sys has no
# cgroup mounts for runc.) Only an OCI runtime failure skips; anything else is a finding.
if ! probe=$(pod run --rm --network host localhost/taskboard-gateway:check --version 2>&1); then
  if grep -q "OCI runtime" <<<"$probe"; then
    log "SKIPPED running the images: this machine cannot start containers ($(grep -m1 'OCI runtime' <<<"$probe"))"
    log "images were built; running them was not checked here"
    exit 0
  fi
  die "the gateway image does not run: $probe"
fi
grep -q "^taskboard-gateway " <<<"$probe" || die "unexpected --version output from the image: $probe"

db=tb_image_check_$$
ensure_database "$PG_ADMIN_URL" "$db"
db_url=$(database_url "$PG_ADMIN_URL" "$db")
grpc=$(free_port) tasks_admin=$(free_port) http=$(free_port) gw_admin=$(free_port)
prefix=imgcheck$$
# As deployed: authentication on (a development secret and service token; a service-role token
# for the checks below, minted with the host's build of taskboard-token).
jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
service_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
token=$(JWT_SECRET=$jwt_secret "$bin_dir/taskboard-token" --service --ttl-secs 600)
run_opts=(-d --network host --read-only --user 65532:65532 --cap-drop ALL
  --security-opt no-new-privileges --stop-timeout "$POD_GRACE")

log "running taskboard-tasks:check (non-root, read-only root filesystem, no capabilities)"
pod run "${run_opts[@]}" --name tb-check-tasks -e RUST_LOG=info -e DATABASE_URL="$db_url" \
  -e NATS_URL="$NATS_URL" -e NATS_SUBJECT_PREFIX="$prefix" -e PORT="$grpc" \
  -e METRICS_PORT="$tasks_admin" -e BIND_ADDR=127.0.0.1 -e SHUTDOWN_GRACE_SECS="$SERVICE_GRACE" \
  -e SERVICE_TOKEN="$service_token" localhost/taskboard-tasks:check >/dev/null
log "running taskboard-gateway:check"
pod run "${run_opts[@]}" --name tb-check-gateway -e RUST_LOG=info -e HTTP_PORT="$http" \
  -e TASK_SERVICE_ADDR="127.0.0.1:$grpc" -e NATS_URL="$NATS_URL" -e NATS_SUBJECT_PREFIX="$prefix" \
  -e METRICS_PORT="$gw_admin" -e BIND_ADDR=127.0.0.1 -e SHUTDOWN_GRACE_SECS="$SERVICE_GRACE" \
  -e JWT_SECRET="$jwt_secret" -e SERVICE_TOKEN="$service_token" \
  localhost/taskboard-gateway:check >/dev/null

fail() { pod logs tb-check-tasks 2>&1 | tail -20 >&2; pod logs tb-check-gateway 2>&1 | tail -20 >&2; die "$*"; }
for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$http/ready" >/dev/null 2>&1 && break; sleep 0.1; done
[ "$(curl -fsS "http://127.0.0.1:$http/health")" = OK ] || fail "/health did not answer OK"
curl -fsS "http://127.0.0.1:$http/ready" >/dev/null || fail "/ready never answered 200"
curl -fsS "http://127.0.0.1:$tasks_admin/metrics" | grep -q taskboard_build_info || fail "tasks /metrics"
for name in tb-check-gateway tb-check-tasks; do
  [ "$(pod inspect -f '{{.Config.User}}' "$name")" = 65532:65532 ] || fail "$name: not the non-root user"
  [ "$(pod inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$name")" = true ] || fail "$name: root filesystem writable"
done
log "health, ready and metrics answer; the containers run as 65532 with a read-only root"

# A create through the gateway, and its event over the WebSocket (a plain socket client).
python3 - "$http" "$token" <<'PY' || fail "create + WebSocket event failed"
import base64, json, os, socket, struct, sys, urllib.request
port, token = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /ws?board_id=4242 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"Authorization: Bearer {token}\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks", method="POST",
    data=json.dumps({"board_id": 4242, "title": "from a container"}).encode(),
    headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
task = json.load(urllib.request.urlopen(req, timeout=10))
def exact(n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        assert chunk, "connection closed"
        b += chunk
    return b
while True:
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126: n = struct.unpack(">H", exact(2))[0]
    elif n == 127: n = struct.unpack(">Q", exact(8))[0]
    payload = exact(n)
    if b0 & 0x0F == 1:
        event = json.loads(payload)
        break
assert event["type"] == "created" and event["task"] == task and event["seq"] == 1, event
print("    event", event["type"], "seq", event["seq"], "task", task["id"])
PY

for name in tb-check-gateway tb-check-tasks; do
  start=$(date +%s.%N)
  pod stop -t "$POD_GRACE" "$name" >/dev/null
  took=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
  code=$(pod inspect -f '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] || fail "$name exited with $code on SIGTERM"
  python3 -c "import sys; sys.exit(0 if $took < $POD_GRACE else 1)" || fail "$name took ${took}s to stop"
  log "$name: SIGTERM → exit 0 in ${took}s (grace ${POD_GRACE}s)"
done
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
log "images: all checks passed"
