#!/usr/bin/env bash
# Deploys Taskboard as its users run it: a Talos Kubernetes cluster in Docker, a local registry,
# both images built and pushed, the umbrella chart installed, every pod waited for, the URLs printed.
#
# Usage: scripts/deploy.sh [--env dev|prod] [--dry-run]
#   --env      values of helm/environments/ENV.yaml (default dev)
#   --dry-run  check which tools are here and render every manifest (helm template, validated);
#              touches no cluster, builds nothing
# Environment: CLUSTER (default taskboard), REGISTRY_PORT (5010), NAMESPACE (taskboard).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

env=dev
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --env) env=${2:?--env needs dev or prod}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
done
[ -f "helm/environments/$env.yaml" ] || die "no helm/environments/$env.yaml"
cluster=${CLUSTER:-taskboard}
registry_port=${REGISTRY_PORT:-5010}
namespace=${NAMESPACE:-taskboard}

# Each tool, and how to get it when it is missing.
declare -A hint=(
  [docker]="install Docker Engine 20.10+ (https://docs.docker.com/engine/install/)"
  [talosctl]="curl -sL https://talos.dev/install | sh"
  [kubectl]="https://kubernetes.io/docs/tasks/tools/ (or the kubectl beside Helm in .tools/)"
)
missing=()
for tool in docker talosctl kubectl; do
  if command -v "$tool" >/dev/null; then
    log "found $tool: $(command -v "$tool")"
  else
    missing+=("$tool")
    log "missing $tool: ${hint[$tool]}"
  fi
done
helm=$(ensure_helm)
log "helm: $helm ($("$helm" version --short))"

log "rendering the umbrella chart for $env"
"$helm" dependency build helm/taskboard 2> >(grep -v 'found symbolic link' >&2) >/dev/null
manifests=$(mktemp)
"$helm" template taskboard helm/taskboard -n "$namespace" -f "helm/environments/$env.yaml" \
  --set gateway.image.repository="localhost:$registry_port/taskboard-gateway" \
  --set tasks.image.repository="localhost:$registry_port/taskboard-tasks" \
  2> >(grep -v 'found symbolic link' >&2) >"$manifests"
python3 -c 'import kubernetes_validate' 2>/dev/null || pip install -q kubernetes-validate
kubernetes-validate --strict -k 1.31.0 --quiet "$manifests" ||
  die "the rendered manifests do not validate"
log "$(grep -c '^kind:' "$manifests") objects rendered and valid for Kubernetes 1.31 ($manifests)"

if [ "$dry" = 1 ]; then
  [ ${#missing[@]} -gt 0 ] && log "a real deploy would first need: ${missing[*]}"
  log "dry run: nothing deployed"
  exit 0
fi
[ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (see the hints above)"

log "Talos cluster '$cluster' in Docker"
if ! talosctl cluster show --name "$cluster" >/dev/null 2>&1; then
  talosctl cluster create --provisioner docker --name "$cluster" --workers 1 \
    --config-patch '[{"op":"add","path":"/machine/registries/mirrors","value":{"localhost:'"$registry_port"'":{"endpoints":["http://registry:5000"]}}}]'
fi
kubectl config use-context "admin@$cluster" >/dev/null

log "local registry on port $registry_port"
if ! docker inspect registry >/dev/null 2>&1; then
  docker run -d --restart=always --name registry -p "$registry_port:5000" registry:2 >/dev/null
fi
docker network connect "$cluster" registry 2>/dev/null || true

log "building and pushing both images"
rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
for target in gateway tasks; do
  docker build --target "$target" --build-arg REVISION="$rev" -t "localhost:$registry_port/taskboard-$target:0.1.0" .
  docker push "localhost:$registry_port/taskboard-$target:0.1.0"
done

log "installing the umbrella chart ($env) into namespace $namespace"
"$helm" upgrade --install taskboard helm/taskboard -n "$namespace" --create-namespace \
  -f "helm/environments/$env.yaml" \
  --set gateway.image.repository="localhost:$registry_port/taskboard-gateway" \
  --set tasks.image.repository="localhost:$registry_port/taskboard-tasks" \
  --wait --timeout 10m
kubectl -n "$namespace" wait --for=condition=Ready pod --all --timeout=300s
kubectl -n "$namespace" get pods

cat <<EOF

  Taskboard is deployed (release taskboard, namespace $namespace).
    Board page   kubectl -n $namespace port-forward svc/taskboard-gateway 8080  →  http://localhost:8080/
    Metrics      kubectl -n $namespace port-forward svc/taskboard-gateway 9090  →  http://localhost:9090/metrics
    Scale        kubectl -n $namespace scale deployment taskboard-gateway --replicas=4
    Upgrade      scripts/deploy.sh --env $env   (rebuilds, pushes, helm upgrade)
    Remove       scripts/destroy.sh
EOF
