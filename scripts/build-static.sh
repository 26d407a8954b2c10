#!/usr/bin/env bash
# Builds one static, stripped model-proxy binary for x86_64 Linux (musl):
#
#   scripts/build-static.sh
#     -> target/x86_64-unknown-linux-musl/release/model-proxy
#
# Installs what the build needs when it is missing: the rustup target
# x86_64-unknown-linux-musl and Debian's musl-tools (musl-gcc, for ring's C and
# assembly), via sudo when not root. Then checks the result: statically linked
# (no ELF interpreter), stripped, at most 12 MB (MAX_BYTES), and `--version` runs.
# Any failed check exits non-zero.
#
# Environment: CARGO (default cargo), MAX_BYTES (default 12 MiB),
# CARGO_BUILD_FLAGS (default --locked; set it empty to let cargo update Cargo.lock).
set -euo pipefail

target=x86_64-unknown-linux-musl
max_bytes=${MAX_BYTES:-$((12 * 1024 * 1024))}
cargo=${CARGO:-cargo}
flags=${CARGO_BUILD_FLAGS---locked}

cd "$(dirname "$0")/.."
say() { echo "build-static: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $* (no sudo found)"
    fi
}

# The Rust target.
if command -v rustup >/dev/null; then
    if ! rustup target list --installed | grep -qx "$target"; then
        say "adding rustup target $target"
        rustup target add "$target"
    fi
else
    say "rustup not found; assuming the toolchain already has $target"
fi

# A C compiler for musl (ring compiles C and assembly).
if ! command -v musl-gcc >/dev/null; then
    command -v apt-get >/dev/null || die "musl-gcc is missing and apt-get is not available: install musl-tools"
    say "installing musl-tools"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools
fi
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
export AR_x86_64_unknown_linux_musl=${AR_x86_64_unknown_linux_musl:-ar}
# musl targets link statically by default; say so anyway, for this target only.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS=${CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS:--C target-feature=+crt-static}

say "cargo build --release --target $target $flags"
# shellcheck disable=SC2086  # flags is a word list
"$cargo" build --release --target "$target" $flags

bin=target/$target/release/model-proxy
[ -x "$bin" ] || die "$bin was not built"

# Stripped: the release profile strips; strip again if a profile override did not.
if command -v file >/dev/null && file -b "$bin" | grep -q 'not stripped'; then
    say "stripping $bin"
    strip "$bin"
fi

# Statically linked: no ELF interpreter, no needed shared libraries.
if command -v file >/dev/null; then
    desc=$(file -b "$bin")
    say "file: $desc"
    case "$desc" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) die "$bin is not statically linked" ;;
    esac
    case "$desc" in *"not stripped"*) die "$bin is not stripped" ;; esac
fi
if command -v readelf >/dev/null; then
    if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
        die "$bin has an ELF interpreter (dynamically linked)"
    fi
    if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
        die "$bin needs shared libraries: $(readelf -dW "$bin" | grep '(NEEDED)' | tr -s ' ')"
    fi
elif command -v ldd >/dev/null; then
    out=$(ldd "$bin" 2>&1 || true)
    case "$out" in
        *"not a dynamic executable"* | *"statically linked"*) ;;
        *) die "ldd says $bin is dynamic: $out" ;;
    esac
fi

# Size.
bytes=$(stat -c %s "$bin")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
if [ "$bytes" -gt "$max_bytes" ]; then
    die "$bin is $bytes bytes ($mib MiB), over the limit of $max_bytes bytes"
fi

# It runs.
version=$("$bin" --version) || die "$bin --version failed"

echo "built $bin: $bytes bytes ($mib MiB), static, stripped; $version"
