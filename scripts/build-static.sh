#!/usr/bin/env bash
# Builds one static, stripped model-proxy binary for Linux (musl):
#
#   scripts/build-static.sh                                  # x86_64
#   scripts/build-static.sh --target aarch64-unknown-linux-musl
#   scripts/build-static.sh --auditable [--target ...]       # what scripts/release.sh runs
#     -> target/<target>/release/model-proxy
#
# Targets: x86_64-unknown-linux-musl (default) and aarch64-unknown-linux-musl.
# --auditable builds with cargo-auditable, which embeds the dependency list in the
# binary (section .dep-v0) so `cargo audit bin` and scripts/sbom.py can read it
# from a deployed copy; cargo-auditable is installed with `cargo install --locked`
# when missing.
#
# Installs what the build needs when it is missing: the rustup target and a C
# compiler for ring's C and assembly (Debian's musl-tools for the machine's own
# architecture; Debian's cross gcc, e.g. gcc-aarch64-linux-gnu, for the other),
# via sudo when not root. Then checks the result: statically linked (no ELF
# interpreter), stripped, at most 12 MB (MAX_BYTES), and `--version` runs (under
# qemu-user-static for the other architecture, when it is installed). Any failed
# check exits non-zero.
#
# Environment: CARGO (default cargo), MAX_BYTES (default 12 MiB),
# CARGO_BUILD_FLAGS (default --locked; set it empty to let cargo update Cargo.lock).
set -euo pipefail

target=x86_64-unknown-linux-musl
auditable=0
while [ $# -gt 0 ]; do
    case $1 in
        --target) [ $# -ge 2 ] || { echo "build-static: --target needs a value" >&2; exit 2; }
                  target=$2; shift 2 ;;
        --target=*) target=${1#--target=}; shift ;;
        --auditable) auditable=1; shift ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-static: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

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

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available: install the Debian package(s) ${*:2} or their equivalent"
    say "installing ${*:2} (for $1)"
    if [ "$apt_updated" = 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${@:2}" >/dev/null
}

case $target in
    x86_64-unknown-linux-musl) arch=x86_64 ;;
    aarch64-unknown-linux-musl) arch=aarch64 ;;
    *) die "unsupported target $target (x86_64-unknown-linux-musl or aarch64-unknown-linux-musl)" ;;
esac
host_arch=$(uname -m)
# Cargo's per-target environment variable names: upper case, '-' -> '_'.
tvar=$(echo "$target" | tr 'a-z-' 'A-Z_')
cvar=$(echo "$target" | tr '-' '_')

# The Rust target (its std ships musl's libc.a and C runtime objects: no musl
# needs installing for linking).
if command -v rustup >/dev/null; then
    if ! rustup target list --installed | grep -qx "$target"; then
        say "adding rustup target $target"
        rustup target add "$target"
    fi
else
    say "rustup not found; assuming the toolchain already has $target"
fi

# A C compiler for the target (ring compiles C and assembly).
if [ "$arch" = "$host_arch" ]; then
    command -v musl-gcc >/dev/null || apt_install musl-gcc musl-tools
    cc=musl-gcc
    ar="ar"
    strip_cmd="strip"
    run=()
else
    # Debian's cross gcc: a signed package from the same archive as the rest of the
    # system, no toolchain download of its own; it is glibc-targeted, which is fine
    # because ring's C needs no libc headers beyond the compiler's own and rustc
    # links the musl CRT and libc.a that the Rust target ships.
    prefix=$arch-linux-gnu
    command -v "$prefix-gcc" >/dev/null || apt_install "$prefix-gcc" "gcc-${arch//_/-}-linux-gnu"
    cc=$prefix-gcc
    ar=$prefix-ar
    strip_cmd=$prefix-strip
    export "CARGO_TARGET_${tvar}_LINKER=${cc}"
    run=()
    if command -v "qemu-$arch-static" >/dev/null; then
        run=("qemu-$arch-static")
    fi
fi
export "CC_${cvar}=${cc}"
export "AR_${cvar}=${ar}"
# musl targets link statically by default; say so anyway, for this target only.
rf_var=CARGO_TARGET_${tvar}_RUSTFLAGS
export "$rf_var=${!rf_var:--C target-feature=+crt-static}"

build=(build)
if [ "$auditable" = 1 ]; then
    if ! "$cargo" auditable --version >/dev/null 2>&1; then
        say "installing cargo-auditable (cargo install --locked; a few minutes)"
        "$cargo" install cargo-auditable --locked --quiet ||
            die "could not install cargo-auditable from crates.io"
    fi
    build=(auditable build)
fi

say "cargo ${build[*]} --release --target $target $flags"
# shellcheck disable=SC2086  # flags is a word list
"$cargo" "${build[@]}" --release --target "$target" $flags

bin=target/$target/release/model-proxy
[ -x "$bin" ] || die "$bin was not built"

# Stripped: the release profile strips; strip again if a profile override did not.
if command -v file >/dev/null && file -b "$bin" | grep -q 'not stripped'; then
    say "stripping $bin"
    "$strip_cmd" "$bin"
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
    if [ "$auditable" = 1 ] && ! readelf -SW "$bin" | grep -q '\.dep-v0'; then
        die "$bin has no .dep-v0 section: cargo-auditable did not embed the dependency list"
    fi
elif [ "$arch" = "$host_arch" ] && command -v ldd >/dev/null; then
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
if [ "$arch" = "$host_arch" ] || [ ${#run[@]} -gt 0 ]; then
    version=$("${run[@]}" "$bin" --version) || die "$bin --version failed${run:+ (under ${run[*]})}"
else
    version="not run: no qemu-$arch-static (Debian qemu-user-static) to run the $arch binary here"
fi

echo "built $bin: $bytes bytes ($mib MiB), static, stripped; $version"
