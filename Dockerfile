# obm-gate: multi-stage build; a small runtime image running as a non-root user.
#   docker build -t obm-gate .
#   docker run -p 8443:8443 -p 127.0.0.1:9090:9090 \
#     -v $PWD/certs:/srv/obm-gate/certs -v obm-data:/srv/obm-gate/data obm-gate
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin obm-gate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /srv/obm-gate --shell /usr/sbin/nologin obm
WORKDIR /srv/obm-gate
COPY --from=build /src/target/release/obm-gate /usr/local/bin/obm-gate
COPY config ./config
RUN mkdir -p certs/orgs certs/server data && chown -R obm:obm /srv/obm-gate
USER obm
# The admin listener must be reachable from outside the container to be scraped; publish it
# only on a private interface (see the run example above).
ENV OBM_GATE_ADMIN_ADDRESS=0.0.0.0:9090
EXPOSE 8443 9090
VOLUME ["/srv/obm-gate/certs", "/srv/obm-gate/data"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["obm-gate"]
CMD ["serve", "--config", "config/obm-gate.toml"]
