#!/usr/bin/env bash
# Builds the two images (taskboard-gateway, taskboard-tasks) from binaries already built on this
# machine, with buildah and no base image: FROM scratch, the binary, exactly the shared libraries it
# links (from ldd), a passwd/group entry for the non-root user 65532, OCI labels, STOPSIGNAL.
# This is how images are made where no registry can be reached; the Dockerfile at the root is the
# normal multi-stage build for `docker build` / `podman build` with network access.
#
# Usage: scripts/images.sh [BIN_DIR] [TAG]   (defaults: cargo's target dir /release, tag "local")
# TB_CONTAINERS_ROOT=DIR keeps the images in a storage of their own under DIR (vfs driver), as the
# image checks do; without it they go to the machine's default container storage.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin_dir=${1:-$target_dir/release}
tag=${2:-local}
command -v buildah >/dev/null || apt_install buildah
storage=()
if [ -n "${TB_CONTAINERS_ROOT:-}" ]; then
  storage=(--root "$TB_CONTAINERS_ROOT/root" --runroot "$TB_CONTAINERS_ROOT/run" --storage-driver vfs)
fi
buildah() { command buildah "${storage[@]}" "$@"; }


revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

image() { # name binary port… (first port: the service; the others: admin)
  local name=$1 binary=$2
  shift 2
  [ -x "$bin_dir/$binary" ] || die "$bin_dir/$binary not found: build it first (cargo build --release)"
  local root ctr
  root=$(mktemp -d)
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$bin_dir/$binary" "$root/usr/local/bin/$binary"
  # The loader and every library the binary links, at the paths it looks for them.
  ldd "$bin_dir/$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  ctr=$(buildah from scratch)
  buildah copy --quiet "$ctr" "$root" / >/dev/null
  local ports=()
  for p in "$@"; do ports+=(--port "$p"); done
  buildah config --user 65532:65532 --workingdir / --stop-signal SIGTERM \
    --entrypoint "[\"/usr/local/bin/$binary\"]" --cmd '[]' "${ports[@]}" \
    --label org.opencontainers.image.title="$name" \
    --label org.opencontainers.image.description="Taskboard $name" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.created="$created" \
    --label org.opencontainers.image.licenses=MIT \
    --label org.opencontainers.image.source=https://example.invalid/taskboard \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$name:$tag" >/dev/null
  rm -rf "$root"
  log "built $name:$tag ($(buildah inspect --format '{{.FromImageID}}' "$name:$tag" | cut -c1-12))"
}

image taskboard-gateway taskboard-gateway 8080 9090
image taskboard-tasks taskboard-tasks 50051 9091
