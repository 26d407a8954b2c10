#!/usr/bin/env bash
# The performance benchmark of issue 11, in one run: Orthanc with DICOMweb
# (tests/fixtures/orthanc.py) holding generated CT series (300 and 600 slices of
# 512x512, 20 slices of 128x128), a fast counting model API and the tests' model
# API (tests/fixtures/model_api.py, listen backlog 5), and model-proxy over plain
# HTTP (--no-tls) on loopback. Times each payload mode (zhiva, multipart,
# contentLength) against its physical limit measured in the same run (medians
# of interleaved repetitions), the proxy's peak RSS at 300 and 600 slices, 8
# concurrent big inferences (and /healthz meanwhile), and small inferences at
# concurrency 16 against going direct, and a cache hit of the 300-slice request
# against a miss (through a second proxy with the cache on); prints a Markdown block for the README's
# Performance section (date, machine, load, commit). About three minutes on 2 cores.
#
#   scripts/bench.sh [--markdown FILE] [--reps 5] [--conc-reps 3] [--wait-quiet SECS] ...
#
# (scripts/bench.py run --help lists every option.) --wait-quiet SECS waits up
# to SECS for the load average to fall under 1.5 before measuring: the machine
# is shared, and others' builds skew every figure.
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
