# model-proxy in a container: one static binary on an empty (scratch) image.
#
#   docker build -t model-proxy .        # from source, for the building machine's architecture
#   scripts/release.sh                   # the release: linux/amd64 + linux/arm64 from the
#                                        # binaries in dist/, target "release" below (buildah)
#   docker run -d --name model-proxy -p 8002:8002 \
#       -v "$PWD/config:/app/config:ro" \
#       -v "$PWD/certs:/app/certs:ro" \
#       -v model-proxy-state:/app/state \
#       model-proxy
#
# Layout (WORKDIR /app, so the defaults ./config, ./certs, ./state resolve there):
#   /app/config/servers.json, /app/config/models.json   (see config/*.example.json)
#   /app/certs/zhiva.crt, /app/certs/zhiva.key          (scripts/make-cert.sh certs)
#   /app/state                                          token store; must persist
# The process runs as uid:gid 10001:10001 and has no shell. Mounted files must be
# readable by it (the key too: e.g. chgrp 10001 zhiva.key && chmod 640 zhiva.key).
# A named volume for /app/state starts out owned by 10001; a bind-mounted host
# directory must be made writable for it (chown 10001:10001 DIR).
# Settings go in ZHIVA_* environment variables (model-proxy --help), e.g.
# -e ZHIVA_SHOW_STATUS_PAGE=true. With host networking (as the original proxy ran)
# use --network host instead of -p.
# On SIGTERM the proxy stops accepting and lets in-flight inferences finish within
# its grace period (~30 s), longer than Docker's default 10 s before SIGKILL: give
# `docker run --stop-timeout 45` (compose: stop_grace_period: 45s).

ARG RUST_VERSION=1.95

# ---- build: a static musl binary for the architecture this stage runs on ----
FROM rust:${RUST_VERSION}-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools file \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY scripts/build-static.sh ./scripts/build-static.sh
RUN target="$(uname -m)-unknown-linux-musl" \
 && scripts/build-static.sh --target "$target" \
 && mkdir -p /out/bin \
 && cp "target/$target/release/model-proxy" /out/bin/model-proxy
# The runtime tree: config and certs are mount points, state is writable by 10001.
RUN mkdir -p /out/app/config /out/app/certs /out/state \
 && chown 10001:10001 /out/state \
 && chmod 0700 /out/state

# ---- runtime: what every image is, whichever way its binary was built ----
# Nothing but the binary (it embeds the Mozilla CA roots); the stages below add it.
FROM scratch AS runtime
WORKDIR /app
USER 10001:10001
EXPOSE 8002
VOLUME ["/app/config", "/app/certs", "/app/state"]
# Probes the proxy over HTTPS, trusting its own certificate (certs/zhiva.crt).
# Running with ZHIVA_NO_TLS=true or another port? Override with --health-cmd.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/model-proxy", "healthcheck", "--url", "https://127.0.0.1:8002/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/model-proxy", "serve"]

# ---- release: the binaries scripts/release.sh just built and checksummed ----
# Built only with --target release, from the context scripts/release.sh lays out:
#   <arch>/model-proxy (amd64, arm64), app/{config,certs}/, app-10001/state/ (0700).
# app-10001 is copied as a parent because COPY gives a copied directory's own
# destination mode 0755, but keeps the mode of the directories inside it.
# Nothing here runs (scratch has no shell), so no emulator is needed for arm64.
FROM runtime AS release
ARG TARGETARCH
COPY app /app
COPY --chown=10001:10001 app-10001 /app
COPY ${TARGETARCH}/model-proxy /usr/local/bin/model-proxy

# ---- default: from source ----
FROM runtime
COPY --from=build /out/bin/model-proxy /usr/local/bin/model-proxy
COPY --from=build /out/app /app
COPY --from=build --chown=10001:10001 /out/state /app/state
