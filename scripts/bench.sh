#!/usr/bin/env bash
# The performance benchmark from the README's test environment, in one run:
# Orthanc with DICOMweb (tests/fixtures/orthanc.py) holding generated CT series
# (300 and 600 slices of 512x512, 20 slices of 128x128), the sink model API
# (tests/fixtures/model_api.py, POST /sink) and model-proxy over plain HTTP
# (--no-tls) on loopback. Reports direct WADO-RS retrieval vs the proxy's
# end-to-end time, the proxy's peak RSS, small-request overhead (p50/p99),
# 32 concurrent inferences (throughput, errors, /healthz p99), the 300-slice
# request repeated through a proxy with the cache on (hit vs miss), against the
# targets, and prints a Markdown block for the README's Performance section
# (date, machine, kernel, commit). Takes about two minutes on 2 cores.
#
#   scripts/bench.sh [--markdown FILE] [--reps 3] [--iterations 50] [--clients 32] [--per-client 10]
#
# MODEL_PROXY_BIN=/path/to/model-proxy skips the build and benchmarks that binary
# (the commit reported is that of the git checkout holding it).
# Needs: curl, python3 with tests/fixtures/requirements.txt (scripts/setup.sh
# installs what is missing), write access to /proc/<pid>/clear_refs (same user).
# The measurements and the report are in scripts/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/setup.sh
if [ -n "${MODEL_PROXY_BIN:-}" ]; then
    bin=$(realpath "$MODEL_PROXY_BIN")
    echo "== using MODEL_PROXY_BIN=$bin (not building)"
else
    echo "== building model-proxy (release)"
    cargo build --release --quiet
    bin=$root/target/release/model-proxy
fi
command -v curl >/dev/null || { echo "bench: curl is needed" >&2; exit 1; }

work=$(mktemp -d /tmp/model-proxy-bench.XXXXXX)
cleanup() {
    # bench.py stops what it started; this catches anything left if it was killed.
    if [ -f "$work/pids" ]; then
        while read -r p; do kill -9 "$p" 2>/dev/null || true; done < "$work/pids"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 scripts/bench.py run --bin "$bin" --work "$work" "$@"
