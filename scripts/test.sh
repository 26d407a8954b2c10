#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test (unit and
# integration, the latter against real Orthanc servers and a pydicom model API).
# MODEL_PROXY_BIN=path runs the integration tests against another build of the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --all-targets "$@"
