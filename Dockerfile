# syntax=docker/dockerfile:1
# recyclegpt: the OpenAI-compatible server, CPU build.
#   docker build -t recyclegpt .
#   docker run -p 8000:8000 recyclegpt                 # serves the embedded default model
#   docker run recyclegpt --help                       # the CLI
#   docker run -p 8000:8000 -v /models/mine:/models/mine -e RECYCLEGPT_MODEL=/models/mine recyclegpt
# The CUDA build is docker/Dockerfile.cuda.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# Dependencies are compiled from cargo-chef's recipe (manifests and lock file only), so that
# editing the project's own code does not rebuild them.
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY src src
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY src src
RUN cargo build --release --locked --bin recyclegpt

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl serves the health check only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 recyclegpt
WORKDIR /app
COPY --from=builder /build/target/release/recyclegpt /usr/local/bin/recyclegpt
COPY models models
COPY config config
USER 10001
ENV RECYCLEGPT_LOG_FORMAT=json
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["recyclegpt"]
CMD ["serve", "--config", "config/default.toml", "--host", "0.0.0.0", "--port", "8000"]
