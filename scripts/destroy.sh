#!/usr/bin/env bash
# Tears down what scripts/deploy.sh made: the release, the Talos cluster, the local registry.
#
# Usage: scripts/destroy.sh [--keep-registry] [--keep-cluster]
# Environment: CLUSTER (default taskboard), NAMESPACE (taskboard).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

keep_registry=0
keep_cluster=0
for a in "$@"; do
  case "$a" in
    --keep-registry) keep_registry=1 ;;
    --keep-cluster) keep_cluster=1 ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $a (try --help)" ;;
  esac
done
cluster=${CLUSTER:-taskboard}
namespace=${NAMESPACE:-taskboard}

if [ "$keep_cluster" = 1 ]; then
  helm=$(ensure_helm)
  "$helm" uninstall taskboard -n "$namespace" || log "no release taskboard in $namespace"
else
  command -v talosctl >/dev/null || die "talosctl not found: curl -sL https://talos.dev/install | sh"
  talosctl cluster destroy --name "$cluster" || log "no Talos cluster $cluster"
fi
if [ "$keep_registry" = 0 ] && command -v docker >/dev/null; then
  if docker rm -f registry >/dev/null 2>&1; then log "local registry removed"; else log "no local registry"; fi
fi
log "destroyed"
