#!/usr/bin/env bash
# Makes the release in dist/, on a fresh Debian machine (root or sudo, Rust by rustup):
#
#   scripts/release.sh
#     dist/model-proxy-<version>-x86_64-linux-musl           static, stripped, cargo-auditable
#     dist/model-proxy-<version>-aarch64-linux-musl          the same for 64-bit ARM
#     dist/<binary>.sha256                                   sha256sum -c, from inside dist/
#     dist/<binary>.cdx.json                                 CycloneDX SBOM of that binary
#     dist/model-proxy-<version>.oci.tar (+ .sha256)         linux/amd64 + linux/arm64 image
#
# <version> is Cargo.toml's. Installs what it needs when it is missing (rustup
# targets, Debian's musl-tools, gcc-aarch64-linux-gnu, buildah, file, python3;
# cargo-auditable from crates.io; cyclonedx-python-lib from PyPI for the SBOM
# check). Everything is made in a temporary directory under target/, checked with
# `scripts/release-check.sh --static`, and moved to dist/ only when every step
# passed: a failed run leaves the previous dist/ (or none) as it was.
#
# The image is the Dockerfile's "release" stage built by buildah (no daemon, no
# registry: scratch pulls nothing) in a private, temporary container storage.
# Timestamps (image, layers, SBOMs) are the last commit's, so that a rebuild of
# the same commit gives the same binaries, SBOMs and image layers (seen here; the
# image configs differ, as buildah records its build container's id in them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { echo "release: $*" >&2; }
die() { say "error: $*"; exit 1; }
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (no sudo found)"; fi
}
apt_updated=0
need() { # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null && return
    command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available: install $2"
    say "installing $2 (for $1)"
    if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null ||
        die "could not install the Debian package $2 (for $1)"
}

command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup (https://rustup.rs)"
need python3 python3
need file file
need sha256sum coreutils
need buildah buildah

version=$(cargo metadata --no-deps --format-version 1 --locked --offline 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "model-proxy"))') ||
    die "could not read the version from Cargo.toml (cargo metadata failed)"
# Reproducible timestamps: the last commit's time; now, outside git. Given to
# buildah and sbom.py only: in cargo's environment it would make the cc crate
# rebuild ring (and all above it) whenever it changes.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    say "warning: the work tree has uncommitted changes; the image's revision label says -dirty"
    revision=$revision-dirty
fi
say "model-proxy $version ($revision)"

mkdir -p target
work=$(mktemp -d "$root/target/release.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
out=$work/dist
mkdir "$out"

declare -A image_arch=([x86_64]=amd64 [aarch64]=arm64)
ctx=$work/context
mkdir -p "$ctx/app/config" "$ctx/app/certs" "$ctx/app-10001/state"
chmod 0700 "$ctx/app-10001/state"

for arch in x86_64 aarch64; do
    target=$arch-unknown-linux-musl
    name=model-proxy-$version-$arch-linux-musl
    say "== $name"
    scripts/build-static.sh --auditable --target "$target" || die "the $arch build failed"
    cp "target/$target/release/model-proxy" "$out/$name"
    SOURCE_DATE_EPOCH=$epoch python3 scripts/sbom.py "$out/$name" --source . > "$out/$name.cdx.json" ||
        die "could not make the SBOM of $name"
    (cd "$out" && sha256sum "$name" > "$name.sha256")
    mkdir -p "$ctx/${image_arch[$arch]}"
    cp "$out/$name" "$ctx/${image_arch[$arch]}/model-proxy"
done

say "== model-proxy-$version.oci.tar (buildah)"
# A private storage: nothing is left in the machine's own, and two runs do not meet.
buildah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
list=localhost/model-proxy:$version
"${buildah[@]}" bud --isolation chroot --format docker --target release \
    --platform linux/amd64,linux/arm64 --manifest "$list" --timestamp "$epoch" \
    --label "org.opencontainers.image.title=model-proxy" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    -f Dockerfile "$ctx" >"$work/buildah.log" 2>&1 ||
    { tail -n 30 "$work/buildah.log" >&2; die "buildah bud failed (log above)"; }
# --format v2s2 keeps the docker manifests and configs (an OCI config has no
# HEALTHCHECK) inside the OCI layout.
"${buildah[@]}" manifest push --all --format v2s2 --quiet "$list" \
    "oci-archive:$out/model-proxy-$version.oci.tar:model-proxy:$version" >>"$work/buildah.log" 2>&1 ||
    { tail -n 30 "$work/buildah.log" >&2; die "buildah manifest push failed (log above)"; }
(cd "$out" && sha256sum "model-proxy-$version.oci.tar" > "model-proxy-$version.oci.tar.sha256")

say "== checking $out"
scripts/release-check.sh --static "$out" || die "the checks of the new release failed; dist/ is left as it was"

# Into place: the old dist/ goes aside first, so dist/ is never half old, half new.
if [ -e dist ]; then
    mv dist "$work/dist.old"
fi
mv "$out" dist
say "done:"
(cd dist && ls -l) >&2
