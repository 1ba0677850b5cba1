#!/usr/bin/env bash
# Builds both images from this machine's binaries (scripts/images.sh) and runs them with podman the
# way the Helm chart will: non-root (65532), read-only root filesystem, every capability dropped,
# no new privileges, against the PostgreSQL and NATS the tests use. Checks /health, /ready, a
# create and its WebSocket event, that SIGTERM drains both within the chart's grace period, and
# --help. Then plays the dev render's two Deployments with `podman kube play` and checks a create
# and its WebSocket event through them, and that `podman kube down` leaves nothing behind.
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

if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v catatonit >/dev/null; then
  (apt_install buildah podman runc uidmap fuse-overlayfs catatonit) || {
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
log "health, ready (the gateway asks the task service's grpc.health.v1) and metrics answer; the containers run as 65532 with a read-only root"

# A create through the gateway, and its event over the WebSocket (a plain socket client).
python3 scripts/ws-roundtrip.py "$http" "$token" 4242 || fail "create + WebSocket event failed"

for name in tb-check-gateway tb-check-tasks; do
  start=$(date +%s.%N)
  pod stop -t "$POD_GRACE" "$name" >/dev/null
  took=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
  code=$(pod inspect -f '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] || fail "$name exited with $code on SIGTERM"
  python3 -c "import sys; sys.exit(0 if $took < $POD_GRACE else 1)" || fail "$name took ${took}s to stop"
  log "$name: SIGTERM → exit 0 in ${took}s (grace ${POD_GRACE}s)"
done
pod rm tb-check-gateway tb-check-tasks >/dev/null
for image in gateway tasks; do
  help=$(pod run --rm --network none "localhost/taskboard-$image:check" --help 2>&1) || true
  grep -q '^Usage: ' <<<"$help" || fail "taskboard-$image --help in the image prints no usage: $help"
done
log "--help answers in both images"

# The chart itself: `podman kube play` of the dev render's gateway and task service, as rendered
# (images, env, probes, securityContext, secrets as files), against the test PostgreSQL and NATS.
# What podman 4.3 cannot play is adapted, and only that: pods use the host network (it has no
# Services, so the addresses point at 127.0.0.1 and free ports; container ports, which it refuses
# there, are dropped and the probes given their numbers), and Secret/projected volumes
# (unsupported: only hostPath, configMap, emptyDir and PVC are) become hostPath directories holding
# the rendered Secrets' keys under the same file names. NATS and PostgreSQL are not played: their
# public images cannot be pulled here, and the test servers stand in for them.
kdb=tb_kube_check_$$
ensure_database "$PG_ADMIN_URL" "$kdb"
kube=$TB_CONTAINERS_ROOT/kube
mkdir -p "$kube"
k_http=$(free_port) k_gw_admin=$(free_port) k_grpc=$(free_port) k_tasks_admin=$(free_port)
helm=$(ensure_helm)
# The umbrella takes its subcharts from helm/taskboard/charts/: package them from this tree.
"$helm" dependency build helm/taskboard 2> >(grep -v 'found symbolic link' >&2) >/dev/null
"$helm" template tb helm/taskboard -n taskboard -f helm/environments/dev.yaml \
  --set gateway.image.repository=localhost/taskboard-gateway,gateway.image.tag=check \
  --set tasks.image.repository=localhost/taskboard-tasks,tasks.image.tag=check \
  --set gateway.image.pullPolicy=Never,tasks.image.pullPolicy=Never \
  --set gateway.service.port="$k_http",gateway.metricsPort="$k_gw_admin" \
  --set tasks.port="$k_grpc",tasks.metricsPort="$k_tasks_admin" \
  --set gateway.taskServiceAddr="127.0.0.1:$k_grpc" \
  --set gateway.natsUrl="$NATS_URL",tasks.natsUrl="$NATS_URL" \
  --set tasks.database.name="$kdb" \
  2> >(grep -v 'found symbolic link in path' >&2) >"$kube/dev.yaml"
python3 - "$kube" "$PG_ADMIN_URL" <<'PY' || fail "could not adapt the dev render for podman kube play"
import base64, os, pathlib, sys, urllib.parse, yaml
kube, pg = pathlib.Path(sys.argv[1]), urllib.parse.urlsplit(sys.argv[2])
docs = [d for d in yaml.safe_load_all((kube / "dev.yaml").read_text()) if d]
secrets = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "Secret"}
play = []
for d in docs:
    if d["kind"] != "Deployment":
        continue
    pod = d["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    for c in pod["containers"]:
        # On the host network podman refuses port mappings: the ports go, probes name numbers.
        ports = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            for how in c.get(probe, {}).values():
                if isinstance(how, dict) and how.get("port") in ports:
                    how["port"] = ports[how["port"]]
        for e in c["env"]:
            e["value"] = {"DB_HOST": pg.hostname, "DB_PORT": str(pg.port or 5432),
                          "DB_USER": pg.username or "postgres"}.get(e["name"], e["value"])
    for v in pod.get("volumes", []):
        sources = [{"secret": v.pop("secret")}] if "secret" in v else v.pop("projected", {}).get("sources", [])
        if not sources:
            continue
        host = kube / d["metadata"]["name"] / v["name"]
        host.mkdir(parents=True)
        for src in sources:
            s = src["secret"]
            for item in s["items"]:
                f = host / item["path"]
                f.write_bytes(base64.b64decode(secrets[s.get("name") or s["secretName"]][item["key"]]))
                os.chown(f, 65532, 65532)
                f.chmod(0o440)
        v["hostPath"] = {"path": str(host), "type": "Directory"}
    play.append(d)
assert {d["metadata"]["name"] for d in play} == {"tb-gateway", "tb-tasks"}, [d["metadata"]["name"] for d in play]
(kube / "play.yaml").write_text(yaml.safe_dump_all(play))
(kube / "jwt-secret").write_bytes(base64.b64decode(secrets["tb-gateway-jwt"]["jwt-secret"]))
PY
kube_down() { pod kube down "$kube/play.yaml" >/dev/null 2>&1 || true; }
kfail() { pod pod logs tb-tasks-pod-0 2>&1 | tail -20 >&2; pod pod logs tb-gateway-pod-0 2>&1 | tail -20 >&2; kube_down; die "$*"; }
log "podman kube play: the dev render's gateway and task service"
# Without systemd podman cannot schedule the probes as healthchecks (it says so per container):
# they are rendered and schema-checked, but not run by podman here.
out=$(pod kube play "$kube/play.yaml" 2>&1) || kfail "podman kube play failed: $out"
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$k_http/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$k_http/ready" >/dev/null || kfail "the played gateway never became ready"
k_token=$(JWT_SECRET=$(cat "$kube/jwt-secret") "$bin_dir/taskboard-token" --service --ttl-secs 600)
python3 scripts/ws-roundtrip.py "$k_http" "$k_token" 4343 || kfail "create + WebSocket event through the played chart failed"
out=$(pod kube down "$kube/play.yaml" 2>&1) || kfail "podman kube down failed: $out"
left=$(pod ps -aq | wc -l) pods=$(pod pod ps -q | wc -l)
if [ "$left" != 0 ] || [ "$pods" != 0 ]; then
  die "podman kube down left $left containers and $pods pods behind"
fi
log "the played chart served a create and its WebSocket event; kube down left nothing behind"

psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$kdb\"" >/dev/null 2>&1 || true
log "images: all checks passed"
