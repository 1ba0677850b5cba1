# syntax=docker/dockerfile:1
# Both Taskboard images from one multi-stage build:
#   docker build --target gateway -t taskboard-gateway .
#   docker build --target tasks   -t taskboard-tasks .
# (podman build / buildah bud take the same flags). The builder keeps cargo's registry and target
# directory in cache mounts, so a rebuild after a source change recompiles only the workspace.
# Runtime: distroless cc (glibc, libgcc, CA certificates, no shell), user 65532, nothing written
# to the root filesystem (run it read-only), SIGTERM drains.
# Where no registry can be reached, scripts/images.sh makes the same images from local binaries.

ARG RUST_VERSION=1.95
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
# The commit for taskboard_build_info (.git is not sent to the build).
ARG REVISION=unknown
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    GIT_SHA="${REVISION}" cargo build --release --locked -p taskboard-gateway -p taskboard-tasks \
 && mkdir -p /out \
 && cp target/release/taskboard-gateway target/release/taskboard-tasks /out/

FROM ${RUNTIME} AS gateway
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="taskboard-gateway" \
      org.opencontainers.image.description="Taskboard gateway: REST over gRPC, WebSocket fan-out of task events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=builder /out/taskboard-gateway /usr/local/bin/taskboard-gateway
USER 65532:65532
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/taskboard-gateway"]

FROM ${RUNTIME} AS tasks
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="taskboard-tasks" \
      org.opencontainers.image.description="Taskboard task service: gRPC over PostgreSQL with a transactional outbox relayed to NATS" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=builder /out/taskboard-tasks /usr/local/bin/taskboard-tasks
USER 65532:65532
EXPOSE 50051 9091
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/taskboard-tasks"]
