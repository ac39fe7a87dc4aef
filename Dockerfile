# syntax=docker/dockerfile:1
#
# wick as a container: a multi-stage build whose dependency layer is cached separately from the
# sources, and a slim non-root runtime. The baked-in /etc/wick/config.toml is the repository's
# config.toml; WICK_* variables override its [server] section (see README "Deploying").
#
#   docker build -t wick:0.1.0 .
#   docker run -p 8080:8080 --read-only -v "$PWD/models:/models:ro" wick:0.1.0

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# x86-64-v3 (AVX2, FMA, F16C) runs on every x86 server of the last decade; `native` could SIGILL
# on an older node of the cluster.
ARG TARGET_CPU=x86-64-v3
# Symbols stripped (a smaller image); panic messages keep their file and line.
ENV RUSTFLAGS="-C target-cpu=${TARGET_CPU}" CARGO_TERM_COLOR=never CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
# Dependencies first: this layer is rebuilt only when Cargo.toml, Cargo.lock or the gRPC
# protocol (build.rs compiles proto/ with protox, a build dependency) change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src examples \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > examples/noop_server.rs \
    && cargo build --release --locked --bin wick \
    && rm -rf src examples
COPY src ./src
COPY examples ./examples
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin wick

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 wick \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin wick
COPY --from=build /src/target/release/wick /usr/local/bin/wick
COPY config.toml /etc/wick/config.toml
# The demo models, so the image serves something out of the box; mount your own repository
# over /models (read-only is best: wick never writes to it).
COPY models /models
ENV WICK_LISTEN=0.0.0.0:8080 \
    WICK_REPOSITORY=/models \
    WICK_LOG_FORMAT=json \
    RUST_LIB_BACKTRACE=0
USER 10001:10001
EXPOSE 8080 8081
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["wick", "health"]
ENTRYPOINT ["wick"]
CMD ["serve", "--config", "/etc/wick/config.toml"]
