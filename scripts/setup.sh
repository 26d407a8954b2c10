#!/usr/bin/env bash
# Installs what the demo and the tests need, if it is missing: Orthanc with its
# DICOMweb plugin, Chromium and nginx (Debian packages) and the Python packages of the fixtures.
# Idempotent; safe to run on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "setup: need root (or sudo) to run: $*" >&2; exit 1; fi
}

plugin=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if ! command -v Orthanc >/dev/null || [ ! -e "$plugin" ]; then
    echo "setup: installing orthanc and orthanc-dicomweb" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
fi
# The package may start a system Orthanc on 8042; the tests and the demo run their own.

# nginx as the load balancer in front of two replicas (tests/integration/cache.rs
# runs its own, from config/nginx.example.conf).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "setup: installing nginx" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nginx >/dev/null
fi

# A real forward proxy for the egress tests (tests/integration/egress.rs).
if ! command -v tinyproxy >/dev/null && [ ! -x /usr/sbin/tinyproxy ] && [ ! -x /usr/bin/tinyproxy ]; then
    echo "setup: installing tinyproxy" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq tinyproxy >/dev/null
fi

if ! python3 -c 'import pydicom, numpy, fastapi, uvicorn' 2>/dev/null; then
    echo "setup: installing Python packages for the fixtures" >&2
    python3 -m pip install -q -r tests/fixtures/requirements.txt
fi

# The browser tests (a viewer page on another origin: tests/browser, tests/integration/
# contract.rs and inbound.rs): Debian's Chromium, and the page's HTTP clients from npm.
if ! command -v chromium >/dev/null; then
    echo "setup: installing chromium" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup: node and npm are needed for tests/browser (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    echo "setup: installing tests/browser's npm packages" >&2
    (cd tests/browser && npm ci --silent --no-audit --no-fund)
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi
