#!/usr/bin/env python3
"""The file checks of scripts/release-check.sh (the ones that run nothing).

    release_check.py sbom BINARY SBOM.cdx.json --source DIR
        The SBOM is valid CycloneDX (against the official JSON schema, via
        cyclonedx-python-lib), describes BINARY (its SHA-256), and names exactly
        the crates BINARY links: those cargo-auditable recorded in the binary, and
        those `cargo tree` resolves from DIR for the binary's target (normal
        dependencies, no proc macros); each with name, version and purl.

    release_check.py audit REPORT.json BINARY
        A `cargo audit --json bin BINARY` report read the dependency list
        cargo-auditable embedded in BINARY (all of it), and lists no vulnerability.

    release_check.py oci ARCHIVE --binary amd64=PATH --binary arm64=PATH
        The archive is one OCI image layout whose index holds exactly linux/amd64
        and linux/arm64, each with a docker-format config that keeps the
        HEALTHCHECK, runs as 10001:10001, and whose layers hold PATH (same
        SHA-256) as /usr/local/bin/model-proxy and /app/state as 10001, 0700.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sbom import elf_sections  # noqa: E402

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
USER = "10001:10001"
BIN_PATH = "usr/local/bin/model-proxy"

failures = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)
    return ok


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def cmd_sbom(args):
    with open(args.binary, "rb") as f:
        data = f.read()
    with open(args.sbom) as f:
        text = f.read()
    bom = json.loads(text)
    print(f"{args.sbom}:")

    try:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
    except ImportError:
        sys.exit("release_check: error: cyclonedx-python-lib is missing "
                 "(pip install 'cyclonedx-python-lib[json-validation]')")
    version = bom.get("specVersion", "?")
    schema = getattr(SchemaVersion, "V" + version.replace(".", "_"), None)
    if check(schema is not None and version >= "1.4", f"specVersion {version} is CycloneDX 1.4 or later"):
        error = JsonStrictValidator(schema).validate_str(text)
        check(error is None, f"valid against the CycloneDX {version} JSON schema"
              + (f": {error}" if error else ""))

    root = bom.get("metadata", {}).get("component", {})
    hashes = {h["alg"]: h["content"] for h in root.get("hashes", [])}
    check(hashes.get("SHA-256") == sha256(data), "metadata.component's SHA-256 is the binary's")

    comps = bom.get("components", [])
    named = [(c.get("name"), c.get("version")) for c in comps]
    check(all(n and v for n, v in named), "every component has a name and a version")
    check(all(c.get("purl") == f"pkg:cargo/{c.get('name')}@{c.get('version')}" for c in comps),
          "every component's purl is pkg:cargo/<name>@<version>")
    check(len(set(named)) == len(named), "no component twice")
    listed = set(named)

    sections, target = elf_sections(data)
    tree = json.loads(zlib.decompress(sections[".dep-v0"]))
    embedded = {(p["name"], p["version"]) for p in tree["packages"]
                if p.get("kind", "runtime") == "runtime" and not p.get("root")}
    check(listed == embedded, f"components = the {len(embedded)} crates cargo-auditable "
          "recorded in the binary" + diff(listed, embedded))

    out = subprocess.run(
        ["cargo", "tree", "--locked", "--offline", "--target", target, "-e", "normal,no-proc-macro",
         "--prefix", "none", "--format", "{p}"],
        cwd=args.source, check=True, capture_output=True, text=True).stdout
    resolved = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith("v"):
            resolved.add((words[0], words[1][1:]))
    resolved.discard((root.get("name"), root.get("version")))
    check(listed == resolved, f"components = the {len(resolved)} crates `cargo tree --target "
          f"{target}` resolves (normal, no proc macros)" + diff(listed, resolved))


def cmd_audit(args):
    """A `cargo audit --json bin` report: it read the list cargo-auditable embedded
    (not the partial guess it makes from panic messages otherwise), and found nothing."""
    with open(args.binary, "rb") as f:
        sections, _ = elf_sections(f.read())
    recorded = len(json.loads(zlib.decompress(sections[".dep-v0"]))["packages"])
    try:
        with open(args.report) as f:
            report = json.load(f)
    except ValueError:
        sys.exit(f"release_check: error: {args.report} is not a cargo audit JSON report "
                 "(cargo audit failed before scanning; its message is above)")
    name = os.path.basename(args.binary)
    print(f"{name}:")
    n = report["lockfile"]["dependency-count"]
    check(n == recorded, f"cargo audit read {n} crates, the {recorded} cargo-auditable recorded "
          "(model-proxy, what it links, and its build-time crates)")
    vulns = report["vulnerabilities"]["list"]
    check(not vulns, f"{len(vulns)} known vulnerabilities")
    for v in vulns:
        a = v["advisory"]
        print(f"       {a['id']} {v['package']['name']} {v['package']['version']}: {a['title']}")
    for kind, items in report.get("warnings", {}).items():
        for w in items:
            a = w.get("advisory") or {}
            print(f"       warning ({kind}): {w['package']['name']} {w['package']['version']} "
                  f"{a.get('id', '')} {a.get('title', '')}")


def diff(a, b):
    extra, missing = sorted(a - b), sorted(b - a)
    if not extra and not missing:
        return ""
    return f" (only in the SBOM: {extra}; missing from it: {missing})"


class Layout:
    """An OCI image layout inside a tar archive."""

    def __init__(self, path):
        self.tar = tarfile.open(path)
        self.names = {m.name.lstrip("./"): m for m in self.tar.getmembers()}

    def read(self, name):
        return self.tar.extractfile(self.names[name]).read()

    def blob(self, digest):
        algo, hexd = digest.split(":", 1)
        data = self.read(f"blobs/{algo}/{hexd}")
        if sha256(data) != hexd:
            raise SystemExit(f"release_check: error: blob {digest} does not match its digest")
        return data


def cmd_oci(args):
    want = dict(b.split("=", 1) for b in args.binary)
    print(f"{args.archive}:")
    lay = Layout(args.archive)
    check(json.loads(lay.read("oci-layout")).get("imageLayoutVersion") == "1.0.0",
          "an OCI image layout (oci-layout 1.0.0)")
    index = json.loads(lay.read("index.json"))
    tops = index.get("manifests", [])
    if not check(len(tops) == 1, "index.json names one image (the multi-arch list)"):
        return
    top = tops[0]
    ref = top.get("annotations", {}).get("org.opencontainers.image.ref.name")
    print(f"       name: {ref}")
    check(top["mediaType"] in (DOCKER_LIST, OCI_INDEX), f"it is a manifest list ({top['mediaType']})")
    lst = json.loads(lay.blob(top["digest"]))
    platforms = {}
    for m in lst.get("manifests", []):
        p = m.get("platform", {})
        platforms[f"{p.get('os')}/{p.get('architecture')}"] = m
    check(sorted(platforms) == ["linux/amd64", "linux/arm64"],
          f"platforms: {', '.join(sorted(platforms))}")
    for plat, m in sorted(platforms.items()):
        arch = plat.split("/")[1]
        check(m["mediaType"] == DOCKER_MANIFEST, f"{plat}: docker v2 schema 2 manifest")
        man = json.loads(lay.blob(m["digest"]))
        check(man["config"]["mediaType"] == DOCKER_CONFIG, f"{plat}: docker-format image config")
        cfg = json.loads(lay.blob(man["config"]["digest"]))
        check(cfg.get("architecture") == arch and cfg.get("os") == "linux",
              f"{plat}: config says {cfg.get('os')}/{cfg.get('architecture')}")
        c = cfg.get("config", {})
        test = (c.get("Healthcheck") or {}).get("Test") or []
        check(test[:2] == ["CMD", "/" + BIN_PATH] and "healthcheck" in test,
              f"{plat}: HEALTHCHECK kept: {json.dumps(test)}")
        check(c.get("User") == USER, f"{plat}: USER {c.get('User')}")
        check(c.get("Entrypoint") == ["/" + BIN_PATH, "serve"],
              f"{plat}: ENTRYPOINT {json.dumps(c.get('Entrypoint'))}")
        files = {}
        for layer in man["layers"]:
            with tarfile.open(fileobj=io.BytesIO(lay.blob(layer["digest"]))) as lt:
                for e in lt.getmembers():
                    files[e.name.lstrip("./")] = (e, lt.extractfile(e).read() if e.isfile() else None)
        binary = files.get(BIN_PATH)
        if arch in want:
            with open(want[arch], "rb") as f:
                expect = sha256(f.read())
            check(binary is not None and sha256(binary[1]) == expect,
                  f"{plat}: /{BIN_PATH} is {os.path.basename(want[arch])} (sha256 {expect[:16]}...)")
        state = files.get("app/state", (None,))[0]
        check(state is not None and state.isdir() and (state.uid, state.gid) == (10001, 10001)
              and state.mode & 0o777 == 0o700, f"{plat}: /app/state is a directory, 10001:10001, 0700")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sbom")
    s.add_argument("binary")
    s.add_argument("sbom")
    s.add_argument("--source", default=".")
    a = sub.add_parser("audit")
    a.add_argument("report")
    a.add_argument("binary")
    o = sub.add_parser("oci")
    o.add_argument("archive")
    o.add_argument("--binary", action="append", default=[], metavar="ARCH=PATH")
    args = ap.parse_args()
    {"sbom": cmd_sbom, "audit": cmd_audit, "oci": cmd_oci}[args.cmd](args)
    if failures:
        sys.exit(f"release_check: {len(failures)} check(s) failed")


if __name__ == "__main__":
    main()
