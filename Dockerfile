# weir: multi-stage build. The runtime image holds only the binary, runs as a non-root user,
# keeps its state under /data and reads /etc/weir/weir.toml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin weir

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin weir \
    && mkdir -p /data /etc/weir && chown weir:weir /data
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY deploy/docker/weir.toml /etc/weir/weir.toml
USER weir
WORKDIR /data
VOLUME ["/data"]
ENV WEIR_CONFIG=/etc/weir/weir.toml
# 8080: webhooks; 9090: admin API, /healthz, /readyz, /metrics.
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["serve"]
