# syntax=docker/dockerfile:1
#
# Multi-stage build: compile in the Rust image, run in a small Debian image as a non-root user.
#   docker build -t pipeline-control .
#   docker run --rm -p 50051:50051 -e DATABASE_URL=postgres://... pipeline-control

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Build the dependencies first, in a layer of their own, so source edits do not rebuild them.
# (Stubs stand in for every target the manifest names.)
COPY Cargo.toml Cargo.lock ./
COPY crates/sagemaker-emulator/Cargo.toml crates/sagemaker-emulator/
RUN mkdir -p src benches tests/it tests/hooks crates/sagemaker-emulator/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > build.rs \
    && echo 'fn main() {}' > benches/load.rs \
    && touch tests/it/main.rs tests/hooks/main.rs \
    && echo '' > crates/sagemaker-emulator/src/lib.rs \
    && echo 'fn main() {}' > crates/sagemaker-emulator/src/main.rs \
    && cargo build --release --locked --bin pipeline-control \
    && rm -rf src benches tests build.rs crates/sagemaker-emulator/src \
              target/release/.fingerprint/pipeline-control-* \
              target/release/.fingerprint/sagemaker-emulator-* \
              target/release/deps/pipeline_control-* target/release/deps/libpipeline_control-* \
              target/release/deps/sagemaker_emulator-* target/release/deps/libsagemaker_emulator-* \
              target/release/pipeline-control
COPY build.rs ./
COPY proto proto
COPY migrations migrations
COPY crates crates
COPY src src
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin pipeline-control && strip target/release/pipeline-control

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/pipeline-control \
               --create-home --shell /usr/sbin/nologin pipeline-control
COPY --from=build /src/target/release/pipeline-control /usr/local/bin/pipeline-control
# The Kubernetes manifests (deploy/kubernetes) run the pods as this user and group, with a
# read-only root filesystem: the service writes nothing but its SQLite file.
USER 10001:10001
# The embedded SQLite default lands here; set DATABASE_URL to use Postgres. With a read-only
# root filesystem, mount a writable volume here for SQLite (the demo overlay mounts an
# emptyDir).
WORKDIR /var/lib/pipeline-control
# Metrics on a port of their own (no TLS, no authentication): publish it only to the scraper.
# Health (grpc.health.v1 alone, plaintext) on a port of its own too, for probes that carry no
# client certificate (the kubelet's gRPC probes).
ENV PIPELINE_CONTROL_LISTEN=0.0.0.0:50051 \
    PIPELINE_CONTROL_METRICS_LISTEN=0.0.0.0:9464 \
    PIPELINE_CONTROL_HEALTH_LISTEN=0.0.0.0:8081 \
    PIPELINE_CONTROL_LOG_FORMAT=json
# gRPC, metrics, health.
EXPOSE 50051 9464 8081
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pipeline-control"]
CMD ["serve"]
