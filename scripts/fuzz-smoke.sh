#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target in tests/fuzz and runs each one
# briefly from its seed corpus. Exits non-zero if any target crashes, hangs or fails
# to build; crash inputs are left in tests/fuzz/artifacts/<target>/.
#
#   scripts/fuzz-smoke.sh                 # every target, 20 s each
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh routing config
#
# Needs a nightly toolchain (installed with rustup if missing) and cargo-fuzz
# (installed with `cargo install cargo-fuzz` if missing). Reproduce a crash with
#   cargo +nightly fuzz run --fuzz-dir tests/fuzz <target> tests/fuzz/artifacts/<target>/<file>
# and shrink it with `cargo +nightly fuzz tmin --fuzz-dir tests/fuzz <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
fuzz_dir=tests/fuzz
all_targets=(routing multipart config jwt payload encode access head)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz-smoke: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

echo "fuzz-smoke: building ${targets[*]}" >&2
if [ "$#" -gt 0 ]; then
    for t in "${targets[@]}"; do cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" "$t"; done
else
    cargo +nightly fuzz build --fuzz-dir "$fuzz_dir"
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$fuzz_dir/corpus/$t"
    echo "fuzz-smoke: running $t for ${seconds}s" >&2
    log=$(mktemp)
    # New corpus entries land in tests/fuzz/corpus/<target>/ (git-ignored except seed-*).
    if cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1 || true)
        cov=$(grep -E 'DONE +cov:' "$log" | grep -oE 'cov: [0-9]+ ft: [0-9]+' | tail -n 1 || true)
        echo "fuzz-smoke: $t ok: ${execs:-?} executions, ${cov:-coverage unknown}" >&2
    else
        echo "fuzz-smoke: $t FAILED; last output:" >&2
        tail -n 40 "$log" >&2
        failed+=("$t")
    fi
    rm -f "$log"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: failing targets: ${failed[*]} (inputs in $fuzz_dir/artifacts/)" >&2
    exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} targets ran ${seconds}s without a crash" >&2
