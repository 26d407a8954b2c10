#!/usr/bin/env bash
# Checks a release made by scripts/release.sh; CI runs it on a fresh build.
#
#   scripts/release-check.sh [DIST]            # default dist
#   scripts/release-check.sh --static DIR      # only the file checks (release.sh runs
#                                              # these before moving DIR to dist/)
#
# File checks:
#   - every .sha256 verifies with `sha256sum -c` from inside DIST, and every file
#     but the SBOMs has one;
#   - both binaries: static, stripped, with cargo-auditable's dependency list;
#   - every SBOM is valid CycloneDX and names exactly the crates its binary links;
#   - the image archive holds linux/amd64 and linux/arm64, docker-format configs
#     with the HEALTHCHECK, USER 10001:10001, and the two binaries of DIST.
# Then, unless --static:
#   - `cargo audit bin` on both binaries against ADVISORY_DB (default
#     ../shared/advisory-db; skipped with a message when it is not there);
#   - the aarch64 binary under qemu-aarch64-static: --version, check-config on
#     config/*.example.json, and one series inference through scripts/demo.sh
#     (Orthanc with a generated study, the pydicom model API) that the model must
#     have received whole;
#   - the amd64 image opened from the archive with buildah, in a network namespace
#     of its own (so port 8002 is free whatever the machine runs): its ENTRYPOINT
#     with config and certs mounted serves as uid 10001, /healthz answers 200, and
#     its own HEALTHCHECK command, read from the image, fails before the proxy
#     is up and passes after; SIGTERM stops it cleanly.
# Installs what it needs when missing (Debian: qemu-user-static, buildah, file,
# curl, iproute2, openssl; PyPI: cyclonedx-python-lib; crates.io: cargo-audit).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { echo "release-check: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }
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

# The image test; this script runs it in a network namespace of its own
# (`unshare --net`), where 127.0.0.1:8002, the image's port, is surely free.
image_inner() {
    local archive=$1 work=$2 ctr code uids
    pid='' brun=''
    # A failed check must not leave the proxy running in its namespace.
    trap '[ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null; [ -z "$brun" ] || wait "$brun" 2>/dev/null' EXIT
    ip link set lo up
    local b=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
    ctr=$("${b[@]}" from --quiet --arch amd64 "oci-archive:$archive") || die "buildah from oci-archive:$archive"
    "${b[@]}" inspect "$ctr" > "$work/image.json"
    # buildah run mounts a fresh anonymous volume on each VOLUME path of the image,
    # and in buildah 1.28 that sometimes lands on top of a -v bind to the same path
    # (seen: 1 run in 20 found no /app/config). Declaring none in this working
    # container (the image is unchanged) leaves /app/state as the image has it,
    # which is what a new Docker named volume starts from.
    local vols=()
    mapfile -t vols < <(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["Docker"]["config"].get("Volumes") or {}))' "$work/image.json")
    for v in "${vols[@]}"; do "${b[@]}" config --volume "$v-" "$ctr"; done
    # The image's own commands, NUL-separated: ENTRYPOINT + CMD, and HEALTHCHECK (CMD form).
    local entry=() hc=()
    mapfile -d '' entry < <(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["Docker"]["config"]; sys.stdout.write("\0".join((c.get("Entrypoint") or []) + (c.get("Cmd") or [])))' "$work/image.json")
    mapfile -d '' hc < <(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["Docker"]["config"]["Healthcheck"]["Test"]; assert t[0] == "CMD", t; sys.stdout.write("\0".join(t[1:]))' "$work/image.json")
    if [ ${#entry[@]} -eq 0 ] || [ ${#hc[@]} -eq 0 ]; then
        die "the image has no ENTRYPOINT or no HEALTHCHECK in CMD form"
    fi
    echo "ENTRYPOINT: ${entry[*]}"
    echo "HEALTHCHECK: ${hc[*]}"
    # As `docker run -v` would mount them; the health check runs in the same container.
    local run=("${b[@]}" run --isolation chroot --network host
        -v "$work/config:/app/config:ro" -v "$work/certs:/app/certs:ro" "$ctr" --)
    if "${run[@]}" "${hc[@]}" >/dev/null 2>&1; then
        die "the HEALTHCHECK passed with no proxy running: it checks nothing"
    fi
    echo "HEALTHCHECK with no proxy running: fails, as it should"
    "${run[@]}" "${entry[@]}" > "$work/image.log" 2>&1 &
    brun=$!
    for _ in $(seq 1 150); do
        pid=$(ss -Hltnp 'sport = :8002' | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2) || true
        [ -n "$pid" ] && break
        kill -0 "$brun" 2>/dev/null || { cat "$work/image.log" >&2; die "the container exited before listening on 8002"; }
        sleep 0.2
    done
    [ -n "$pid" ] || { cat "$work/image.log" >&2; die "nothing listens on 8002 after 30 s"; }
    uids=$(awk '/^Uid:|^Gid:/ { printf "%s %s %s %s %s ", $1, $2, $3, $4, $5 }' "/proc/$pid/status")
    echo "the process listening on 8002: pid $pid, $(cat "/proc/$pid/comm"): $uids"
    [ "$(cat "/proc/$pid/comm")" = model-proxy ] || die "what listens on 8002 is not model-proxy"
    [ "$uids" = "Uid: 10001 10001 10001 10001 Gid: 10001 10001 10001 10001 " ] ||
        die "the proxy in the image does not run as 10001:10001 ($uids)"
    code=$(curl -sS --cacert "$work/certs/trusted.crt" -o "$work/healthz" -w '%{http_code}' https://localhost:8002/healthz) || true
    echo "GET https://localhost:8002/healthz: $code $(head -c 200 "$work/healthz" 2>/dev/null)"
    [ "$code" = 200 ] || die "/healthz answered ${code:-nothing}"
    "${run[@]}" "${hc[@]}" || die "the image's HEALTHCHECK command failed with the proxy up"
    echo "HEALTHCHECK: passed"
    # What the proxy made in the image's /app/state is its own: the directory is writable by 10001.
    local mnt made
    mnt=$("${b[@]}" mount "$ctr")
    made=$(find "$mnt/app/state" -mindepth 1 -maxdepth 1 -printf '%f %u:%g %m\n')
    "${b[@]}" umount "$ctr" >/dev/null
    echo "/app/state holds: ${made:-nothing}"
    if [ -z "$made" ] || grep -qv ' 10001:10001 ' <<<"$made"; then
        die "the proxy made nothing in /app/state, or something not owned by 10001"
    fi
    kill -TERM "$pid"
    code=0
    wait "$brun" || code=$?
    pid='' brun=''
    [ "$code" = 0 ] || { tail -n 5 "$work/image.log" >&2; die "the container exited $code on SIGTERM"; }
    echo "SIGTERM: stopped, exit 0; its log:"
    sed 's/^/  /' "$work/image.log"
    "${b[@]}" rm "$ctr" >/dev/null
    exit 0
}

if [ "${1:-}" = --image-inner ]; then
    shift
    image_inner "$@"
fi

static=0
if [ "${1:-}" = --static ]; then static=1; shift; fi
dist=$(cd "${1:-dist}" 2>/dev/null && pwd) || die "no release directory ${1:-dist} (make it with scripts/release.sh)"

need python3 python3
need file file
need sha256sum coreutils
command -v cargo >/dev/null || die "cargo is missing (cargo tree resolves the crates the SBOMs must name)"
if ! python3 -c 'import cyclonedx.validation.json, jsonschema' 2>/dev/null; then
    say "installing cyclonedx-python-lib from PyPI (validates the SBOMs against the CycloneDX schema)"
    python3 -m pip install -q 'cyclonedx-python-lib[json-validation]==11.12.0' ||
        die "could not install cyclonedx-python-lib[json-validation] from PyPI"
fi

version=$(cargo metadata --no-deps --format-version 1 --locked --offline |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "model-proxy"))')
x86=model-proxy-$version-x86_64-linux-musl
arm=model-proxy-$version-aarch64-linux-musl
oci=model-proxy-$version.oci.tar
for f in "$x86" "$arm" "$oci" "$x86.cdx.json" "$arm.cdx.json"; do
    [ -f "$dist/$f" ] || die "$dist/$f is missing"
done

echo "== checksums"
for f in "$x86" "$arm" "$oci"; do
    [ -f "$dist/$f.sha256" ] || die "$dist/$f has no $f.sha256"
done
(cd "$dist" && sha256sum -c --strict ./*.sha256) || die "a checksum does not match"

echo "== binaries"
for f in "$x86" "$arm"; do
    desc=$(file -b "$dist/$f")
    echo "$f: $(stat -c %s "$dist/$f") bytes; $desc"
    case $desc in *"statically linked"* | *"static-pie linked"*) ;; *) die "$f is not static" ;; esac
    case $desc in *"not stripped"*) die "$f is not stripped" ;; esac
done
case $(file -b "$dist/$x86") in *x86-64*) ;; *) die "$x86 is not an x86-64 binary" ;; esac
case $(file -b "$dist/$arm") in *aarch64*) ;; *) die "$arm is not an aarch64 binary" ;; esac

echo "== SBOMs"
for f in "$x86" "$arm"; do
    python3 scripts/release_check.py sbom "$dist/$f" "$dist/$f.cdx.json" --source "$root" ||
        die "the SBOM of $f"
done

echo "== image archive"
python3 scripts/release_check.py oci "$dist/$oci" --binary "amd64=$dist/$x86" --binary "arm64=$dist/$arm" ||
    die "the image archive $oci"

if [ "$static" = 1 ]; then
    say "file checks passed"
    exit 0
fi

work=$(mktemp -d /tmp/model-proxy-release-check.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

echo "== cargo audit bin"
db=${ADVISORY_DB:-$root/../shared/advisory-db}
if [ -d "$db" ]; then
    if ! cargo audit --version >/dev/null 2>&1; then
        say "installing cargo-audit (cargo install --locked; several minutes)"
        cargo install cargo-audit --locked --quiet || die "could not install cargo-audit from crates.io"
    fi
    for f in "$x86" "$arm"; do
        # Exit status 1 means vulnerabilities, which the report lists; anything
        # else (no JSON) fails in release_check.py.
        cargo audit --no-fetch --stale --db "$db" --json bin "$dist/$f" > "$work/audit.json" || true
        python3 scripts/release_check.py audit "$work/audit.json" "$dist/$f" || die "cargo audit bin $f"
    done
else
    echo "no advisory database at $db; cargo audit bin skipped"
fi

echo "== aarch64 under qemu-user"
need qemu-aarch64-static qemu-user-static
need curl curl
need openssl openssl
# A one-line wrapper, so that anything taking a binary's path (demo.sh) runs it under qemu.
wrapper=$work/model-proxy-aarch64
printf '#!/bin/sh\nexec qemu-aarch64-static %q "$@"\n' "$dist/$arm" > "$wrapper"
chmod +x "$wrapper"
got=$("$wrapper" --version) || die "$arm --version under qemu"
[ "$got" = "model-proxy $version" ] || die "$arm --version says '$got', not 'model-proxy $version'"
echo "--version: $got"
mkdir -p "$work/examples"
cp config/servers.example.json "$work/examples/servers.json"
cp config/models.example.json "$work/examples/models.json"
"$wrapper" check-config --config "$work/examples" || die "$arm check-config on config/*.example.json"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MODEL_PROXY_BIN=$wrapper PROXY_PORT=$(free_port) ORTHANC_PORT=$(free_port) MODEL_PORT=$(free_port) \
    scripts/demo.sh || die "a series inference through $arm under qemu (scripts/demo.sh)"

echo "== amd64 image from $oci (buildah)"
need buildah buildah
need unshare util-linux
need ss iproute2
mkdir -p "$work/config" "$work/certs"
cp config/servers.example.json "$work/config/servers.json"
cp config/models.example.json "$work/config/models.json"
scripts/make-cert.sh "$work/certs" >/dev/null
# As the README tells: the key readable by the image's group 10001.
chgrp 10001 "$work/certs/zhiva.key"
chmod 640 "$work/certs/zhiva.key"
unshare --net -- "$0" --image-inner "$dist/$oci" "$work" || die "the amd64 image"
say "all checks passed"
