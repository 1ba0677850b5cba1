#!/usr/bin/env bash
# The whole test suite on a fresh machine: starts PostgreSQL and NATS when they are not reachable
# (installing Debian's packages when missing), then formatting, lints and every test (debug
# profile). Usage: scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh
trap stop_private_services EXIT
# A signal ends the run through the EXIT trap, so private servers never outlive it.
trap 'exit 130' INT TERM

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup)"
ensure_postgres
ensure_nats
ensure_nats_binary # the resilience tests start and kill a private nats-server
# Optional: a subshell, so a failed install (no network) skips the lint instead of ending the run.
command -v shellcheck >/dev/null || (apt_install shellcheck) || log "shellcheck unavailable; skipping the shell lint"
# promtool checks the metrics exposition in the Rust tests (Debian's prometheus package has it).
command -v promtool >/dev/null || apt_install prometheus
export TASKBOARD_REQUIRE_PROMTOOL=1
command -v node >/dev/null || apt_install nodejs npm

export TASKBOARD_TEST_PG=$PG_ADMIN_URL
export TASKBOARD_TEST_NATS=$NATS_URL
export NATS_SERVER_BIN
NATS_SERVER_BIN=$(command -v nats-server)

# Test databases of earlier runs (each test makes its own tb_t_* database).
old=$(psql "$PG_ADMIN_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'tb\_t\_%'" || true)
if [ -n "$old" ]; then
  log "dropping $(echo "$old" | wc -l) test databases of earlier runs"
  for d in $old; do psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$d\"" >/dev/null 2>&1 || true; done
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "layout: file sizes, no modules importing each other (scripts/check-layout.py)"
python3 scripts/check-layout.py
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
if command -v shellcheck >/dev/null; then
  log "shellcheck"
  shellcheck -x scripts/*.sh .ci/run
fi

# nextest runs every test in a process of its own: the tests that count metrics (a recorder is
# global to a process) or kill servers rely on that. Installed when missing (a few minutes, once).
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# The OpenID provider the identity-provider tests start (npm's oauth2-mock-server, pinned).
log "npm ci gateway/tests/idp (the tests' OpenID provider)"
(cd gateway/tests/idp && npm ci --prefer-offline --no-audit --no-fund --silent)
log "Rust tests"
cargo nextest run --workspace --no-fail-fast "$@"

# Where cargo puts the binaries (CARGO_TARGET_DIR and .cargo/config honoured), for the checks below.
TASKBOARD_BIN_DIR=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
export TASKBOARD_BIN_DIR

log "dashboards and alert rules (schema, PromQL, promtool, a real Prometheus)"
python3 -c 'import promql_parser' 2>/dev/null || pip install -q promql-parser
cargo build --quiet --bins
python3 dashboards/check.py

log "OpenAPI: schemathesis against the running services (no 5xx, every answer as documented)"
bash scripts/check-openapi.sh "$TASKBOARD_BIN_DIR" 40

log "Helm charts (lint, template, Kubernetes 1.31 schemas, consistency, no dead values, checkov)"
bash scripts/check-helm.sh
log "scripts/deploy.sh --dry-run"
bash scripts/deploy.sh --dry-run

log "container images (buildah + podman: non-root, read-only, serve, drain; podman kube play of the dev render)"
bash scripts/check-images.sh "$TASKBOARD_BIN_DIR"

log "browser tests (headless Chromium)"
[ -x /usr/bin/chromium ] || apt_install chromium
(cd gateway/tests/browser && npm ci --prefer-offline --no-audit --no-fund --silent && npm test)
log "browser test screenshots: gateway/tests/browser/artifacts/"
