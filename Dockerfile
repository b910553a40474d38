# stream-export: a static release binary on an empty (scratch) image.
#
#   docker build -t stream-export .
#   docker run --rm -p 50051:50051 stream-export serve --emulator      # try it without Stream
#   docker run --rm -p 50051:50051 -e STREAM_API_KEY=... -e STREAM_API_SECRET=... stream-export
#
# The runtime stage has no shell, no libc and no CA bundle: the binary is statically linked
# (glibc, +crt-static) and carries its TLS roots (webpki-roots). `.ci/container-check.sh` builds
# this runtime stage with buildah from a locally built binary and health-checks it over gRPC.
#
# Tokio starts one worker thread per CPU that `std::thread::available_parallelism()` reports,
# which honours the container's CPU quota (cgroup v1 and v2), rounded down, at least 1. Set
# TOKIO_WORKER_THREADS to override (see deploy/README.md).

FROM rust:1.95 AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target x86_64-unknown-linux-gnu --bin stream-export \
    && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target x86_64-unknown-linux-gnu --bin stream-export \
    && mkdir -p /out/state \
    && cp target/x86_64-unknown-linux-gnu/release/stream-export /out/stream-export

FROM scratch AS runtime
LABEL org.opencontainers.image.title="stream-export" \
      org.opencontainers.image.description="gRPC service for Stream Chat exports" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/stream-export /stream-export
# The state directory (task registry, idempotency records; unused in fleet mode), owned by the
# service's user. Mount a persistent volume here to keep it across containers.
COPY --from=build --chown=65532:65532 /out/state /var/lib/stream-export
ENV STREAM_EXPORT_STATE_DIR=/var/lib/stream-export
VOLUME ["/var/lib/stream-export"]
# A numeric non-root user (no /etc/passwd in scratch): Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 50051
# The service drains in-flight calls and ends watch streams (resumable) on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/stream-export"]
CMD ["serve"]
