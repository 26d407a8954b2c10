#!/usr/bin/env python3
"""A CycloneDX 1.5 SBOM of one model-proxy binary, read from the binary itself.

    scripts/sbom.py BINARY [--source DIR] > BINARY.cdx.json

cargo-auditable (scripts/build-static.sh --auditable) embeds the resolved
dependency tree of the build in the ELF section .dep-v0 (zlib-compressed JSON).
This script lists every crate in it that is compiled into the binary: build
scripts' dependencies and proc macros (marked "build") run only at compile time
and are left out. Reading the binary, rather than Cargo.lock, means the SBOM
describes exactly what was linked for that target, and that it can be made again
from a deployed copy.

--source DIR (the crate's directory, with Cargo.lock) adds each crate's SHA-256
from Cargo.lock (the checksum of the .crate file from crates.io) and its
license from `cargo metadata --offline`.

Output is deterministic for one binary: the serial number derives from the
binary's SHA-256, and the timestamp is SOURCE_DATE_EPOCH when set.
"""

import argparse
import datetime
import hashlib
import json
import os
import struct
import subprocess
import sys
import tomllib
import uuid
import zlib


def die(msg):
    print(f"sbom: error: {msg}", file=sys.stderr)
    sys.exit(1)


TARGETS = {62: "x86_64-unknown-linux-musl", 183: "aarch64-unknown-linux-musl"}  # ELF e_machine


def elf_sections(data):
    """{name: bytes} for the sections of a 64-bit little-endian ELF file, and its target."""
    if data[:4] != b"\x7fELF":
        die("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        die("only 64-bit little-endian ELF files are supported (x86_64, aarch64)")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    sections = {}
    for name_off, _type, _flags, _addr, offset, size, *_ in headers:
        start = strtab + name_off
        name = data[start:data.index(b"\0", start)].decode()
        sections[name] = data[offset:offset + size]
    machine = struct.unpack_from("<H", data, 0x12)[0]
    if machine not in TARGETS:
        die(f"unexpected ELF machine {machine} (x86_64 or aarch64 expected)")
    return sections, TARGETS[machine]


def purl(pkg):
    # The package-url spec's cargo type: pkg:cargo/<name>@<version>.
    return f"pkg:cargo/{pkg['name']}@{pkg['version']}"


def lock_checksums(source_dir):
    path = os.path.join(source_dir, "Cargo.lock")
    try:
        with open(path, "rb") as f:
            lock = tomllib.load(f)
    except OSError as e:
        die(f"cannot read {path}: {e}")
    sums = {}
    for p in lock.get("package", []):
        if "checksum" in p and p.get("source", "").startswith("registry+"):
            sums[(p["name"], p["version"])] = p["checksum"]
    return sums


def licenses(source_dir, target):
    # --filter-platform: offline, cargo has only the packages this target's build fetched.
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--offline", "--locked",
             "--filter-platform", target],
            cwd=source_dir, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        die(f"cargo metadata failed in {source_dir}: {getattr(e, 'stderr', e)}")
    return {(p["name"], p["version"]): p.get("license") for p in json.loads(out)["packages"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--source", help="crate directory: adds Cargo.lock checksums and licenses")
    args = ap.parse_args()

    try:
        with open(args.binary, "rb") as f:
            data = f.read()
    except OSError as e:
        die(f"cannot read {args.binary}: {e}")
    sections, target = elf_sections(data)
    if ".dep-v0" not in sections:
        die(f"{args.binary} has no .dep-v0 section: build it with cargo-auditable "
            "(scripts/build-static.sh --auditable)")
    try:
        tree = json.loads(zlib.decompress(sections[".dep-v0"]))
    except (zlib.error, ValueError) as e:
        die(f"the .dep-v0 section of {args.binary} is not zlib-compressed JSON: {e}")
    packages = tree["packages"]

    roots = [p for p in packages if p.get("root")]
    if len(roots) != 1:
        die(f"expected one root package in .dep-v0, found {len(roots)}")
    root = roots[0]
    linked = [p for p in packages if p.get("kind", "runtime") == "runtime" and not p.get("root")]

    sums = lock_checksums(args.source) if args.source else {}
    lic = licenses(args.source, target) if args.source else {}

    digest = hashlib.sha256(data).hexdigest()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch \
        else datetime.datetime.now(datetime.timezone.utc)
    tools = [{"type": "application", "name": "cargo-auditable",
              "description": "recorded the dependency tree in the binary (.dep-v0)"},
             {"type": "application", "name": "scripts/sbom.py (model-proxy)"}]
    comment = sections.get(".comment", b"").split(b"\0")
    for line in comment:
        if line.startswith(b"rustc version "):
            tools.append({"type": "application", "name": "rustc",
                          "version": line[len(b"rustc version "):].decode()})

    def component(p):
        c = {"type": "library", "bom-ref": purl(p), "name": p["name"], "version": p["version"],
             "scope": "required", "purl": purl(p)}
        if (p["name"], p["version"]) in sums:
            c["hashes"] = [{"alg": "SHA-256", "content": sums[(p["name"], p["version"])]}]
        if lic.get((p["name"], p["version"])):
            c["licenses"] = [{"expression": lic[(p["name"], p["version"])]}]
        if p.get("source", "crates.io") != "crates.io":
            c["properties"] = [{"name": "cargo:source", "value": p["source"]}]
        return c

    root_ref = purl(root)
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": uuid.uuid5(uuid.NAMESPACE_URL, f"model-proxy-sbom:sha256:{digest}").urn,
        "version": 1,
        "metadata": {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": tools},
            "component": {
                "type": "application", "bom-ref": root_ref, "name": root["name"],
                "version": root["version"], "purl": root_ref,
                "hashes": [{"alg": "SHA-256", "content": digest}],
                "properties": [{"name": "file", "value": os.path.basename(args.binary)}],
            },
        },
        "components": [component(p) for p in sorted(linked, key=lambda p: (p["name"], p["version"]))],
        "dependencies": [],
    }
    if lic.get((root["name"], root["version"])):
        bom["metadata"]["component"]["licenses"] = [{"expression": lic[(root["name"], root["version"])]}]
    for p in [root] + linked:
        deps = sorted({purl(packages[i]) for i in p.get("dependencies", [])
                       if packages[i].get("kind", "runtime") == "runtime"})
        bom["dependencies"].append({"ref": purl(p), "dependsOn": deps})
    json.dump(bom, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
