#!/usr/bin/env python3
"""The model-proxy benchmark (run it through scripts/bench.sh, which builds the proxy).

    bench.py run --bin PROXY --work DIR [--markdown FILE] [--reps 3] [--iterations 50]
                 [--clients 32] [--per-client 10]
    bench.py poll --url URL [--interval 0.01]     (helper: /healthz poller, own process)
    bench.py null-sink --port P                   (helper: HTTP sink that costs ~nothing)

`run` brings up the README's test environment (Orthanc with DICOMweb from
tests/fixtures/orthanc.py, generated CT series from gen_study.py, the sink model
API of model_api.py) plus the proxy on loopback over plain HTTP (--no-tls), and
measures:

  * direct WADO-RS retrieval (curl) of a 300 x 512x512 series (~157 MB) against
    the proxy's end-to-end time for the same series through to the sink;
  * the proxy's peak RSS (VmHWM, reset with clear_refs before each request)
    for that series and for a 600-slice one;
  * for a 20 x 128x128 series: proxy latency against direct retrieval + direct
    post of the same zhiva payload to the sink, p50/p99;
  * 32 concurrent small inferences: throughput, errors, /healthz latency;
  * the 300-slice request repeated through a proxy with the cache on: hit vs miss.

For interpretation it also measures posting the 300-slice payload straight to
the sink, the proxy's end-to-end time into a near-free sink (null-sink), and
the CPU time each process spends per large request.

Every process it starts has its pid appended to DIR/pids (bench.sh's trap
kills them if this script dies); they are also stopped in a finally block.
Standard library only, plus numpy (in tests/fixtures/requirements.txt) to build
payload files quickly.
"""

import argparse
import datetime
import glob
import http.client
import json
import math
import os
import platform
import re
import select
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SERVER_ID = "b1407f18-575d-487c-bc0c-640c6da651bc"
SINK_MODEL = "1d9508dd-9089-40c3-abdd-15f47120d682"
NULL_MODEL = "5b0c1a52-2f0e-4b8e-9d7a-0c6f3f1e9a11"
ACCEPT = 'multipart/related; type="application/dicom"'
MB = 1e6

# Targets from the issue.
T_E2E_RATIO = 1.5
T_PEAK_MB = 64.0
T_OVERHEAD_MS = 5.0
T_HEALTHZ_P99_MS = 20.0
# "The second time in milliseconds": a cache hit of the 300-slice request.
T_CACHE_HIT_MS = 10.0
# "Not growing with series size": the 2x series may peak at most this much higher.
GROWTH_ABS_MB = 2.0
GROWTH_REL = 0.10


# ---------------------------------------------------------------- small helpers

def log(msg):
    print(msg, flush=True)


def pct(values, p):
    """Nearest-rank percentile (p99 of 50 samples is the maximum)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, math.ceil(p / 100.0 * len(v)))
    return v[k - 1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, what, timeout=60, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited with status {proc.returncode} before answering {url}")
        try:
            if http_get(url, timeout=2)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} did not answer {url} within {timeout} s")


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024.0  # MiB
    return out


def reset_hwm(pid):
    """Resets VmHWM to the current RSS (Linux: 5 > clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def curl(args, out="/dev/null"):
    """Runs curl; returns (http_code, size_download, time_total seconds)."""
    cmd = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download} %{time_total}"] + args
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return 0, 0, float("nan"), r.stderr.strip()
    code, size, total = r.stdout.split()
    return int(code), int(size), float(total), ""


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return ""


# ---------------------------------------------------------------- payload files

DIGITS = [len(str(i)) for i in range(256)]


def dcm_files(d):
    return sorted(glob.glob(os.path.join(d, "**", "*.dcm"), recursive=True))


def write_payload(files, path):
    """The zhiva payload, exactly as models expect it: a JSON array of strings, each
    the JSON text (no spaces) of one file's byte array. Returns its size."""
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        table = np.zeros((256, 4), np.uint8)  # ",123" padded with NULs (never in the output)
        for i in range(256):
            s = ("," + str(i)).encode()
            table[i, : len(s)] = list(s)
    with open(path, "wb") as out:
        out.write(b"[")
        for n, p in enumerate(files):
            data = open(p, "rb").read()
            if np is not None:
                enc = table[np.frombuffer(data, np.uint8)].ravel()
                text = enc[enc != 0].tobytes()[1:]
            else:
                text = json.dumps(list(data), separators=(",", ":"))[1:-1].encode()
            out.write((b',"[' if n else b'"[') + text + b']"')
        out.write(b"]")
    return os.path.getsize(path)


def payload_size(files):
    """The size write_payload would produce, without writing it."""
    import numpy as np
    digits = np.array(DIGITS, np.int64)
    total = 2 + max(0, len(files) - 1)  # [ ] and commas between items
    for p in files:
        data = np.fromfile(p, np.uint8)
        counts = np.bincount(data, minlength=256)
        total += int((counts * digits).sum()) + max(0, len(data) - 1) + 4  # commas, "[ ]"
    return total


# ---------------------------------------------------------------- helper modes

def cmd_poll(a):
    """Polls --url every --interval s with a fresh connection each time (and, right
    after each poll, --control, a trivial server on the same machine, for reference)
    until a line (or EOF) arrives on stdin; then prints
    {"ms": [...], "errors": n, "control_ms": [...], "control_errors": n}."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    res = {"ms": [], "errors": 0, "control_ms": [], "control_errors": 0}

    def once(url, key):
        host, port, path = re.match(r"http://([^:/]+):(\d+)(/.*)", url).groups()
        t0 = time.perf_counter()
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                res[key + "ms"].append((time.perf_counter() - t0) * 1000)
                return
        except Exception:
            pass
        res[key + "errors"] += 1

    while not stop.is_set():
        t0 = time.perf_counter()
        once(a.url, "")
        if a.control:
            once(a.control, "control_")
        left = a.interval - (time.perf_counter() - t0)
        if left > 0:
            stop.wait(left)
    print(json.dumps(res), flush=True)
    return 0


class NullSinkHandler(socketserver.BaseRequestHandler):
    """HTTP/1.1 keep-alive; reads each request body (Content-Length or chunked) into a
    reused buffer and answers {"bytes": N, "chunks": k}."""

    def handle(self):
        f = self.request.makefile("rb", buffering=1 << 20)
        buf = bytearray(1 << 20)
        mv = memoryview(buf)

        def skip(n):
            while n > 0:
                got = f.readinto(mv[: min(n, len(buf))])
                if not got:
                    raise EOFError
                n -= got

        try:
            while True:
                line = f.readline()
                if not line:
                    return
                headers = {}
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = chunks = 0
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    while True:
                        size = int(f.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while f.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        skip(size + 2)
                        n += size
                        chunks += 1
                else:
                    n = int(headers.get("content-length", "0"))
                    skip(n)
                body = json.dumps({"bytes": n, "chunks": chunks}).encode()
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )
        except (EOFError, ConnectionError, ValueError):
            return


def cmd_null_sink(a):
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", a.port), NullSinkHandler) as srv:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        srv.serve_forever()


# ---------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.procs = {}  # name -> Popen
        self.logs = []

    # -- processes

    def spawn(self, name, cmd, **kw):
        logf = open(os.path.join(self.work, f"{name}.log"), "wb")
        self.logs.append(logf)
        kw.setdefault("stdout", logf)
        kw.setdefault("stderr", logf)
        p = subprocess.Popen(cmd, **kw)
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        self.procs[name] = p
        return p

    def stop_all(self):
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                try:
                    # Throw-away Orthanc/sinks: SIGKILL is fine; the proxy gets SIGTERM first.
                    p.send_signal(signal.SIGTERM if name == "proxy" else signal.SIGKILL)
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                except Exception:
                    pass
        for f in self.logs:
            f.close()

    # -- environment

    def setup(self):
        a = self.a
        w = self.work
        self.orthanc_port, self.sink_port, self.null_port, self.proxy_port = (free_port() for _ in range(4))
        log(f"== work dir {w}; ports: proxy {self.proxy_port}, Orthanc {self.orthanc_port}, "
            f"sink {self.sink_port}, null-sink {self.null_port}")

        # Generate the three series in parallel with Orthanc's and the sinks' start-up.
        gens = {}
        for name, slices, size, seed in (("big", 300, 512, 3001), ("huge", 600, 512, 3002), ("small", 20, 128, 3003)):
            gens[name] = subprocess.Popen(
                [sys.executable, os.path.join(FIXTURES, "gen_study.py"), "--out", os.path.join(w, "data", name),
                 "--studies", "1", "--series", "1", "--slices", str(slices), "--size", str(size), "--seed", str(seed)],
                stdout=subprocess.PIPE)
        orthanc = self.spawn("orthanc", [sys.executable, os.path.join(FIXTURES, "orthanc.py"), "run",
                                         "--dir", os.path.join(w, "orthanc"), "--http-port", str(self.orthanc_port)])
        sink = self.spawn("sink", [sys.executable, os.path.join(FIXTURES, "model_api.py"), "--port", str(self.sink_port)])
        null = self.spawn("null-sink", [sys.executable, os.path.abspath(__file__), "null-sink", "--port", str(self.null_port)])
        t0 = time.time()
        self.series = {}
        for name, g in gens.items():
            out, _ = g.communicate()
            if g.returncode != 0:
                raise SystemExit(f"bench: gen_study.py failed for {name}")
            m = json.loads(out)
            st = m["studies"][0]
            self.series[name] = {"study": st["study"], "series": st["series"][0]["series"],
                                 "files": dcm_files(os.path.join(w, "data", name))}
            self.series[name]["dicom_bytes"] = sum(os.path.getsize(p) for p in self.series[name]["files"])
        log(f"== generated 300x512^2, 600x512^2 and 20x128^2 CT series in {time.time() - t0:.1f} s")
        t0 = time.time()
        subprocess.run([sys.executable, os.path.join(FIXTURES, "orthanc.py"), "upload", "--wait", "60",
                        "--url", f"http://127.0.0.1:{self.orthanc_port}", os.path.join(w, "data")],
                       check=True, stdout=subprocess.DEVNULL)
        log(f"== uploaded to Orthanc in {time.time() - t0:.1f} s")
        wait_http(f"http://127.0.0.1:{self.sink_port}/", "the sink model API", proc=sink)
        wait_http(f"http://127.0.0.1:{self.null_port}/x", "the null sink", proc=null)
        self.pid = {"orthanc": orthanc.pid, "sink": sink.pid, "null": null.pid}
        try:
            self.orthanc_version = json.loads(http_get(f"http://127.0.0.1:{self.orthanc_port}/system")[1])["Version"]
        except Exception:
            self.orthanc_version = "?"
        try:
            self.dicomweb_version = json.loads(
                http_get(f"http://127.0.0.1:{self.orthanc_port}/plugins/dicom-web")[1]).get("Version", "?")
        except Exception:
            self.dicomweb_version = "?"

        cfg = os.path.join(w, "config")
        os.makedirs(cfg)
        with open(os.path.join(cfg, "servers.json"), "w") as f:
            json.dump({SERVER_ID: {"uri": f"http://127.0.0.1:{self.orthanc_port}/dicom-web", "isDefault": True,
                                   "statusUri": f"http://127.0.0.1:{self.orthanc_port}/dicom-web/studies",
                                   "authType": ""}}, f, indent=2)
        levels = ["/studies", "/studies/series", "/studies/series/instances"]
        with open(os.path.join(cfg, "models.json"), "w") as f:
            json.dump({
                SINK_MODEL: {"uri": f"http://127.0.0.1:{self.sink_port}/sink", "task": "segmentation",
                             "supports": levels, "statusUri": f"http://127.0.0.1:{self.sink_port}/"},
                NULL_MODEL: {"uri": f"http://127.0.0.1:{self.null_port}/sink", "task": "segmentation",
                             "supports": levels},
            }, f, indent=2)

        help_text = sh([a.bin, "--help"])
        self.workers = (re.search(r"--workers N .*\[(\d+)\]", help_text) or [None, "?"])[1]
        self.queue = (re.search(r"--queue N .*\[(\d+)\]", help_text) or [None, "?"])[1]
        self.start_proxy()

        # Payload files for the direct posts; sizes for checking the sink's {"bytes": N}.
        t0 = time.time()
        for name in ("big", "small"):
            s = self.series[name]
            s["payload"] = os.path.join(w, f"{name}.payload.json")
            s["payload_bytes"] = write_payload(s["files"], s["payload"])
        self.series["huge"]["payload_bytes"] = payload_size(self.series["huge"]["files"])
        log(f"== wrote the zhiva payload files ({self.series['big']['payload_bytes'] / MB:.0f} MB and "
            f"{self.series['small']['payload_bytes'] / MB:.2f} MB) in {time.time() - t0:.1f} s")

    def start_proxy(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZHIVA_")}  # defaults only
        # The cache off: every phase below measures a real inference (phase_cache measures the cache).
        p = self.spawn("proxy", [self.a.bin, "serve", "--no-tls", "--listen", f"127.0.0.1:{self.proxy_port}",
                                 "--config", os.path.join(self.work, "config"),
                                 "--state-dir", os.path.join(self.work, "state"), "--cache-size", "0"], env=env)
        wait_http(f"http://127.0.0.1:{self.proxy_port}/healthz", "model-proxy", proc=p)
        self.pid["proxy"] = p.pid
        exe = os.path.realpath(f"/proc/{p.pid}/exe")
        if os.path.realpath(self.a.bin) != exe:
            raise SystemExit(f"bench: pid {p.pid} runs {exe}, not {self.a.bin}")
        time.sleep(0.3)
        self.idle_rss = proc_status(p.pid)["VmRSS"]
        log(f"== model-proxy pid {p.pid} ({exe}) on http://127.0.0.1:{self.proxy_port} (--no-tls), "
            f"default {self.workers} workers / queue {self.queue}; idle RSS {self.idle_rss:.1f} MiB")

    # -- URLs

    def direct_url(self, name):
        s = self.series[name]
        return f"http://127.0.0.1:{self.orthanc_port}/dicom-web/studies/{s['study']}/series/{s['series']}"

    def proxy_url(self, name, model=SINK_MODEL):
        s = self.series[name]
        return f"http://127.0.0.1:{self.proxy_port}/segmentations/{model}/studies/{s['study']}/series/{s['series']}"

    # -- single measurements

    def direct_retrieval(self, name):
        code, size, t, err = curl(["-H", f"Accept: {ACCEPT}", self.direct_url(name)])
        if code != 200:
            raise SystemExit(f"bench: direct WADO-RS retrieval of {name} failed: HTTP {code} {err}")
        return t, size

    def direct_post(self, name, chunked=False):
        s = self.series[name]
        out = os.path.join(self.work, "post.json")
        args = ["-X", "POST", "-H", "Content-Type: application/json"]
        if chunked:
            args += ["-T", s["payload"], "-H", "Transfer-Encoding: chunked"]
        else:
            args += ["--data-binary", "@" + s["payload"]]
        code, _, t, err = curl(args + [f"http://127.0.0.1:{self.sink_port}/sink"], out=out)
        got = json.load(open(out)).get("bytes") if code == 200 else None
        if got != s["payload_bytes"]:
            raise SystemExit(f"bench: direct post of {name}: HTTP {code}, sink got {got} bytes {err}")
        return t

    def through_proxy(self, name, model=SINK_MODEL, measure=False):
        """One inference through the proxy; with measure, also peak RSS and CPU per process."""
        pid = self.pid["proxy"]
        out = os.path.join(self.work, "proxy-answer.json")
        r = {}
        if measure:
            reset_hwm(pid)
            r["rss_before"] = proc_status(pid)["VmRSS"]
            cpu0 = {k: cpu_seconds(v) for k, v in self.pid.items()}
        code, _, t, err = curl([self.proxy_url(name, model)], out=out)
        if measure:
            r["cpu"] = {k: cpu_seconds(v) - cpu0[k] for k, v in self.pid.items()}
            r["hwm"] = proc_status(pid)["VmHWM"]
        body = json.load(open(out)) if code == 200 else open(out, errors="replace").read()[:300]
        want = self.series[name]["payload_bytes"]
        if code != 200 or body.get("bytes") != want:
            raise SystemExit(f"bench: proxy request for {name} -> HTTP {code} {err} {body!r}; sink should get {want} bytes")
        r["t"] = t
        r["chunks"] = body.get("chunks")
        return r

    # -- phases

    def phase_large(self):
        a = self.a
        log(f"\n== large series: 300 x 512x512 ({self.series['big']['dicom_bytes'] / MB:.0f} MB DICOM, "
            f"{self.series['big']['payload_bytes'] / MB:.0f} MB payload) and 600 x 512x512 "
            f"({self.series['huge']['dicom_bytes'] / MB:.0f} MB, {self.series['huge']['payload_bytes'] / MB:.0f} MB); "
            f"{a.reps} repetitions, medians")
        self.direct_retrieval("big")  # warm Orthanc's storage in the page cache
        self.through_proxy("big")
        # Touch every worker thread first: each one's stack and malloc arena add ~0.5 MB
        # the first time it runs, which would otherwise look like growth between requests.
        for _ in range(3 * int(self.workers if str(self.workers).isdigit() else 16)):
            self.through_proxy("small")
        time.sleep(0.3)
        self.warm_rss = proc_status(self.pid["proxy"])["VmRSS"]
        log(f"   RSS after {3 * int(self.workers if str(self.workers).isdigit() else 16)} warm-up requests: {self.warm_rss:.1f} MiB")
        self.direct_retrieval("huge")
        res = {"direct": [], "post_cl": [], "post_chunked": [], "proxy": [], "null": []}
        huge = {"direct": [], "proxy": []}
        # 300 and 600 slices interleaved, so drift affects both alike.
        for i in range(a.reps):
            res["direct"].append(self.direct_retrieval("big")[0])
            res["post_cl"].append(self.direct_post("big"))
            res["post_chunked"].append(self.direct_post("big", chunked=True))
            res["proxy"].append(self.through_proxy("big", measure=True))
            res["null"].append(self.through_proxy("big", NULL_MODEL, measure=True))
            huge["direct"].append(self.direct_retrieval("huge")[0])
            huge["proxy"].append(self.through_proxy("huge", measure=True))
            r, n, hg = res["proxy"][-1], res["null"][-1], huge["proxy"][-1]
            log(f"   rep {i + 1}: 300 slices: direct {res['direct'][-1]:.3f} s, proxy->sink {r['t']:.3f} s "
                f"(peak RSS {r['hwm']:.1f} MiB, {r['hwm'] - r['rss_before']:+.1f} over its start), "
                f"proxy->null-sink {n['t']:.3f} s, curl->sink {res['post_cl'][-1]:.3f} s "
                f"(chunked {res['post_chunked'][-1]:.3f} s)")
            log(f"          600 slices: direct {huge['direct'][-1]:.3f} s, proxy->sink {hg['t']:.3f} s "
                f"(peak RSS {hg['hwm']:.1f} MiB, {hg['hwm'] - hg['rss_before']:+.1f} over its start)")
        self.large = res
        self.huge = huge

    def phase_small(self):
        n = self.a.iterations
        log(f"\n== small series: 20 x 128x128 ({self.series['small']['dicom_bytes'] / 1e3:.0f} kB DICOM, "
            f"{self.series['small']['payload_bytes'] / 1e3:.0f} kB payload); {n} iterations after 5 warm-ups")
        for _ in range(5):
            self.direct_retrieval("small")
            self.direct_post("small")
            self.through_proxy("small")
        ret, post, prox = [], [], []
        for _ in range(n):
            ret.append(self.direct_retrieval("small")[0] * 1000)
            post.append(self.direct_post("small") * 1000)
            prox.append(self.through_proxy("small")["t"] * 1000)
        self.small = {"ret": ret, "post": post, "proxy": prox,
                      "sum": [r + p for r, p in zip(ret, post)],
                      "diff": [x - (r + p) for x, r, p in zip(prox, ret, post)]}
        for k in ("ret", "post", "sum", "proxy", "diff"):
            v = self.small[k]
            log(f"   {k:6s} p50 {pct(v, 50):7.2f} ms  p99 {pct(v, 99):7.2f} ms  mean {statistics.mean(v):7.2f} ms")

    def healthz_poll(self, seconds=None):
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "poll", "--interval", "0.01",
                              "--url", f"http://127.0.0.1:{self.proxy_port}/healthz",
                              "--control", f"http://127.0.0.1:{self.null_port}/healthz"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        if seconds is None:
            return p
        time.sleep(seconds)
        return self.healthz_stop(p)

    @staticmethod
    def healthz_stop(p):
        out, _ = p.communicate("stop\n", timeout=30)
        return json.loads(out)

    def phase_concurrent(self):
        a = self.a
        total = a.clients * a.per_client
        log(f"\n== {a.clients} concurrent clients x {a.per_client} small inferences ({total}), "
            f"/healthz polled every 10 ms from another process")
        self.hz_idle = self.healthz_poll(3.0)
        url = self.proxy_url("small")
        host, port, path = re.match(r"http://([^:/]+):(\d+)(/.*)", url).groups()
        want = self.series["small"]["payload_bytes"]
        lat, errors, statuses = [], [], {}
        lock = threading.Lock()
        barrier = threading.Barrier(a.clients + 1)

        def client():
            barrier.wait()
            for _ in range(a.per_client):
                t0 = time.perf_counter()
                try:
                    c = http.client.HTTPConnection(host, int(port), timeout=120)
                    c.request("GET", path)
                    r = c.getresponse()
                    body = r.read()
                    c.close()
                    ok = r.status == 200 and json.loads(body).get("bytes") == want
                    status = r.status
                except Exception as e:
                    ok, status = False, type(e).__name__
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    (lat if ok else errors).append(dt)

        pid = self.pid["proxy"]
        reset_hwm(pid)
        poller = self.healthz_poll()
        time.sleep(0.3)
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        hz = self.healthz_stop(poller)
        self.conc = {"wall": wall, "total": total, "ok": len(lat), "errors": len(errors), "statuses": statuses,
                     "lat": lat, "hz": hz, "hwm": proc_status(pid)["VmHWM"]}
        log(f"   {len(lat)} ok, {len(errors)} errors {statuses} in {wall:.2f} s = {total / wall:.1f} req/s; "
            f"request latency p50 {pct(lat, 50):.0f} ms p99 {pct(lat, 99):.0f} ms; "
            f"peak RSS {self.conc['hwm']:.1f} MiB")
        log(f"   /healthz under load: {len(hz['ms'])} polls, {hz['errors']} errors, p50 {pct(hz['ms'], 50):.2f} ms, "
            f"p99 {pct(hz['ms'], 99):.2f} ms, max {max(hz['ms'] or [float('nan')]):.2f} ms "
            f"(idle: p50 {pct(self.hz_idle['ms'], 50):.2f} ms, p99 {pct(self.hz_idle['ms'], 99):.2f} ms)")
        log(f"   reference (bench.py null-sink, a trivial Python HTTP server, polled right after each /healthz): "
            f"under load p50 {pct(hz['control_ms'], 50):.2f} ms, p99 {pct(hz['control_ms'], 99):.2f} ms; "
            f"idle p99 {pct(self.hz_idle['control_ms'], 99):.2f} ms")

    # -- the inference cache: a repeated big-series request, hit vs miss

    def phase_cache(self):
        """A second proxy with the cache on: the 300-slice series asked for again and
        again, alternately forcing a new inference (Cache-Control: no-cache, a miss) and
        not (a hit); medians, and the hit's body checked byte for byte against the miss's."""
        reps = max(3, self.a.reps)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZHIVA_")}
        p = self.spawn("proxy-cache", [self.a.bin, "serve", "--no-tls", "--listen", f"127.0.0.1:{port}",
                                       "--config", os.path.join(self.work, "config"),
                                       "--state-dir", os.path.join(self.work, "state-cache")], env=env)
        wait_http(f"http://127.0.0.1:{port}/healthz", "model-proxy with the cache", proc=p)
        url = self.proxy_url("big").replace(f":{self.proxy_port}/", f":{port}/")
        log(f"\n== cache: the 300-slice series through a proxy with the cache on, {reps} misses (no-cache) and hits")
        miss_out, hit_out = (os.path.join(self.work, f"cache-{k}.json") for k in ("miss", "hit"))
        miss, hit = [], []
        for i in range(reps):
            code, _, t, err = curl(["-H", "Cache-Control: no-cache", url], out=miss_out)
            if code != 200:
                raise SystemExit(f"bench: cache miss -> HTTP {code} {err}")
            miss.append(t)
            for _ in range(3):
                code, _, t, err = curl([url], out=hit_out)
                if code != 200 or open(hit_out, "rb").read() != open(miss_out, "rb").read():
                    raise SystemExit(f"bench: cache hit -> HTTP {code} {err}, or not the miss's body")
                hit.append(t)
            log(f"   rep {i + 1}: miss {miss[-1]:.3f} s, hits {', '.join(f'{h * 1000:.1f}' for h in hit[-3:])} ms")
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        self.cache = {"miss": miss, "hit": hit}

    def cache_row(self):
        hit = statistics.median(self.cache["hit"])
        miss = statistics.median(self.cache["miss"])
        return (f"Repeated request, 300 x 512² series: cache hit vs miss, medians of {len(self.cache['hit'])} / {len(self.cache['miss'])}",
                f"{hit * 1000:.1f} ms", f"{miss:.2f} s miss (Cache-Control: no-cache)", f"{miss / hit:.0f}x faster",
                f"hit <= {T_CACHE_HIT_MS:.0f} ms, byte-identical", "yes" if hit * 1000 <= T_CACHE_HIT_MS else "**NO**")

    # -- report

    def header(self):
        cpu = "?"
        try:
            cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        except Exception:
            pass
        mem = "?"
        try:
            kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
            mem = f"{kb / 1024 / 1024:.1f} GiB"
        except Exception:
            pass
        bindir = os.path.dirname(os.path.realpath(self.a.bin))
        repo = sh(["git", "-C", bindir, "rev-parse", "--show-toplevel"]) or ROOT
        commit = sh(["git", "-C", repo, "rev-parse", "--short", "HEAD"]) or "?"
        if sh(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"]):
            commit += " (+ uncommitted changes)"
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} x {cpu} (nproc {sh(['nproc']) or '?'}), {mem} RAM",
            "kernel": f"{platform.system()} {platform.release()}",
            "commit": commit,
        }

    def healthz_in_proxy_ms(self):
        """The proxy's own time for /healthz, from its access log (whole ms)."""
        try:
            text = open(os.path.join(self.work, "proxy.log"), errors="replace").read()
        except OSError:
            return []
        return [int(m) for m in re.findall(r"GET /healthz 200 (\d+)ms", text)]

    def report(self):
        a = self.a
        h = self.header()
        L, H, S, C = self.large, self.huge, self.small, self.conc
        med = statistics.median
        direct = med(L["direct"])
        e2e = med([r["t"] for r in L["proxy"]])
        null_e2e = med([r["t"] for r in L["null"]])
        post_cl, post_ch = med(L["post_cl"]), med(L["post_chunked"])
        peak_big = max(r["hwm"] for r in L["proxy"])
        peak_huge = max(r["hwm"] for r in H["proxy"])
        huge_direct = med(H["direct"])
        huge_e2e = med([r["t"] for r in H["proxy"]])
        big = self.series["big"]
        huge = self.series["huge"]
        cpu = {k: med([r["cpu"][k] for r in L["proxy"]]) for k in ("proxy", "orthanc", "sink")}
        cpu_null = {k: med([r["cpu"][k] for r in L["null"]]) for k in ("proxy", "orthanc", "null")}
        chunks = L["null"][-1]["chunks"] or 0
        avg_chunk = big["payload_bytes"] / chunks if chunks else float("nan")
        p50 = lambda v: pct(v, 50)
        p99 = lambda v: pct(v, 99)
        over50 = p50(S["proxy"]) - p50(S["sum"])
        over99 = p99(S["proxy"]) - p99(S["sum"])
        seq_rate = 1000.0 / p50(S["proxy"])
        thr = C["total"] / C["wall"]
        hz, hz_idle = C["hz"]["ms"], self.hz_idle["ms"]
        hz_errors = C["hz"]["errors"]
        growth = peak_huge - peak_big
        inc_big = max(r["hwm"] - r["rss_before"] for r in L["proxy"])
        inc_huge = max(r["hwm"] - r["rss_before"] for r in H["proxy"])
        hz_ctl, hz_ctl_idle = C["hz"]["control_ms"], self.hz_idle["control_ms"]
        in_proxy = self.healthz_in_proxy_ms()
        growth_ok = growth <= max(GROWTH_ABS_MB, GROWTH_REL * peak_big)

        yes = lambda ok: "yes" if ok else "**NO**"
        rows = [
            (f"End-to-end, 300 x 512² CT ({big['dicom_bytes'] / MB:.0f} MB DICOM -> {big['payload_bytes'] / MB:.0f} MB payload), median of {a.reps}",
             f"{e2e:.2f} s", f"{direct:.2f} s direct WADO-RS (curl)", f"{e2e / direct:.2f}x", f"<= {T_E2E_RATIO}x", yes(e2e / direct <= T_E2E_RATIO)),
            ("Peak RSS (VmHWM) during that request, max of reps",
             f"{peak_big:.1f} MiB", f"{self.warm_rss:.1f} MiB idle (workers warm)", f"{peak_big / self.warm_rss:.2f}x", f"<= {T_PEAK_MB:.0f} MB", yes(peak_big <= T_PEAK_MB)),
            (f"Peak RSS, 600 x 512² ({huge['dicom_bytes'] / MB:.0f} MB DICOM -> {huge['payload_bytes'] / MB:.0f} MB payload), max of reps",
             f"{peak_huge:.1f} MiB", f"{peak_big:.1f} MiB (300 slices)", f"{peak_huge / peak_big:.2f}x",
             f"<= {T_PEAK_MB:.0f} MB, not growing", yes(peak_huge <= T_PEAK_MB and growth_ok)),
            (f"Small series (20 x 128²) latency p50, {a.iterations} runs",
             f"{p50(S['proxy']):.1f} ms", f"{p50(S['sum']):.1f} ms retrieval + post", f"{p50(S['proxy']) / p50(S['sum']):.2f}x",
             f"overhead <= {T_OVERHEAD_MS:.0f} ms (is {over50:+.1f} ms)", yes(over50 <= T_OVERHEAD_MS)),
            ("Small series latency p99",
             f"{p99(S['proxy']):.1f} ms", f"{p99(S['sum']):.1f} ms retrieval + post", f"{p99(S['proxy']) / p99(S['sum']):.2f}x",
             f"(overhead {over99:+.1f} ms)", "-"),
            (f"{a.clients} concurrent small inferences: throughput ({C['total']} requests)",
             f"{thr:.1f} req/s", f"{seq_rate:.1f} req/s one at a time (1/p50)", f"{thr / seq_rate:.2f}x", "-", "-"),
            (f"{a.clients} concurrent: errors (non-200 or wrong body)",
             f"{C['errors']} / {C['total']}", "-", "-", "0", yes(C["errors"] == 0)),
            (f"/healthz p99 during that load ({len(hz)} polls, every 10 ms)",
             f"{p99(hz):.2f} ms", f"{p99(hz_idle):.2f} ms idle", f"{p99(hz) / p99(hz_idle):.1f}x",
             f"<= {T_HEALTHZ_P99_MS:.0f} ms", yes(p99(hz) <= T_HEALTHZ_P99_MS and hz_errors == 0)),
        ]
        rows.append(self.cache_row())
        context = [
            ("Direct post of the 300-slice payload file to the sink (curl, Content-Length)", f"{post_cl:.2f} s",
             f"{big['payload_bytes'] / MB / post_cl:.0f} MB/s"),
            ("Same, chunked (curl's chunks)", f"{post_ch:.2f} s", f"{big['payload_bytes'] / MB / post_ch:.0f} MB/s"),
            ("Proxy end-to-end into a near-free sink (bench.py null-sink), 300 slices", f"{null_e2e:.2f} s",
             f"{null_e2e / direct:.2f}x direct; {big['dicom_bytes'] / MB / null_e2e:.0f} MB/s DICOM in"),
            ("Request body chunks the proxy sends (300 slices)", f"{chunks}", f"avg {avg_chunk / 1024:.1f} KiB"),
            ("CPU per 300-slice request into the sink: proxy / Orthanc / sink", 
             f"{cpu['proxy']:.2f} / {cpu['orthanc']:.2f} / {cpu['sink']:.2f} s", f"wall {e2e:.2f} s, {os.cpu_count()} cores"),
            ("CPU per 300-slice request into the null sink: proxy / Orthanc / null sink",
             f"{cpu_null['proxy']:.2f} / {cpu_null['orthanc']:.2f} / {cpu_null['null']:.2f} s",
             f"wall {null_e2e:.2f} s: the proxy's request thread is busy {cpu_null['proxy'] / null_e2e:.0%} of it"),
            ("600 slices: end-to-end vs direct, medians", f"{huge_e2e:.2f} s", f"{huge_direct:.2f} s direct ({huge_e2e / huge_direct:.2f}x)"),
            ("Small: p50 of per-run difference proxy - (retrieval + post)", f"{p50(S['diff']):+.1f} ms",
             f"p99 {p99(S['diff']):+.1f} ms; retrieval p50 {p50(S['ret']):.1f} ms, post p50 {p50(S['post']):.1f} ms"),
            (f"{a.clients} concurrent: request latency p50 / p99", f"{p50(C['lat']) if C['lat'] else float('nan'):.0f} / {p99(C['lat']) if C['lat'] else float('nan'):.0f} ms",
             f"peak RSS {C['hwm']:.1f} MiB; /healthz p50 {p50(hz):.2f} ms, max {max(hz or [float('nan')]):.2f} ms, {hz_errors} errors"),
            ("Peak RSS above the RSS at the request's start: 300 / 600 slices", f"{inc_big:+.1f} / {inc_huge:+.1f} MiB", "max of reps"),
            ("Idle RSS: fresh / workers warmed / after the run", f"{self.idle_rss:.1f} / {self.warm_rss:.1f} / {self.final_rss:.1f} MiB",
             f"{self.workers} worker threads each keep a stack and malloc arena once used"),
            ("/healthz reference: trivial Python HTTP server polled alongside, p99 under load / idle",
             f"{p99(hz_ctl):.2f} / {p99(hz_ctl_idle):.2f} ms", f"p50 {p50(hz_ctl):.2f} ms under load; shows the loaded machine's own latency"),
            ("/healthz time inside the proxy (its access log), max over all polls", f"{max(in_proxy or [-1])} ms",
             f"{len(in_proxy)} polls logged"),
        ]
        failed = [r[0] for r in rows if r[5] == "**NO**"]

        md = []
        md.append(f"### Benchmark {h['date']}, commit {h['commit']}")
        md.append("")
        md.append(f"Machine: {h['machine']}; {h['kernel']}; load average before the run {self.load_before}, "
                  f"at its end {self.load_after[0]} (1 min) / {self.load_after[1]} (5 min). Everything on loopback: model-proxy over plain HTTP "
                  f"(`--no-tls`), default {self.workers} workers / queue {self.queue}; Orthanc {self.orthanc_version} "
                  f"+ DICOMweb {self.dicomweb_version} (tests/fixtures/orthanc.py); sink = tests/fixtures/model_api.py "
                  f"`POST /sink` (uvicorn, Python {platform.python_version()}). Produced by `scripts/bench.sh`.")
        md.append("")
        md.append("| Metric | Measured | Baseline | Ratio | Target | Met? |")
        md.append("|---|---|---|---|---|---|")
        for r in rows:
            md.append("| " + " | ".join(r) + " |")
        md.append("")
        md.append("| Context (no target) | Measured | Note |")
        md.append("|---|---|---|")
        for r in context:
            md.append("| " + " | ".join(r) + " |")
        md.append("")
        if failed:
            md.append("**Targets not met:** " + "; ".join(failed) + ".")
        else:
            md.append("All targets met.")
        md.append("")
        md.append(f"Notes: peak RSS is VmHWM of the proxy process, reset (`5 > /proc/PID/clear_refs`) before each request; "
                  f"p99 of {a.iterations} samples is their maximum; \"not growing\" means the 600-slice peak is at most "
                  f"{GROWTH_ABS_MB:.0f} MB or {GROWTH_REL:.0%} above the 300-slice one; /healthz is polled with a new "
                  f"connection each time from a separate process.")
        md_text = "\n".join(md) + "\n"

        log("\n================ summary ================")
        log(f"date {h['date']}; machine {h['machine']}; {h['kernel']}; commit {h['commit']}; "
            f"load average before {self.load_before}, after {self.load_after[0]} / {self.load_after[1]} (1/5 min)")
        log(f"proxy: {self.a.bin} serve --no-tls (plain HTTP on loopback), {self.workers} workers, queue {self.queue}")
        w = max(len(r[0]) for r in rows + context)
        for r in rows:
            log(f"  {r[0]:<{w}}  {r[1]:>12}  vs {r[2]}  ({r[3]})  target {r[4]}: {r[5].strip('*')}")
        log("  context:")
        for r in context:
            log(f"  {r[0]:<{w}}  {r[1]:>12}  {r[2]}")
        if failed:
            log("\nTARGETS NOT MET:")
            for f in failed:
                log(f"  - {f}")
        else:
            log("\nall targets met")
        log("\n---------------- Markdown ----------------")
        log(md_text)
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write(md_text)
            log(f"(Markdown written to {a.markdown})")
        return 0

    def run(self):
        t0 = time.time()
        self.load_before = open("/proc/loadavg").read().split()[0]
        if float(self.load_before) > 0.5:
            log(f"bench: warning: load average {self.load_before} before starting; other work will skew the numbers")
        self.setup()
        self.phase_large()
        self.phase_small()
        self.phase_concurrent()
        self.phase_cache()
        time.sleep(0.5)
        self.final_rss = proc_status(self.pid["proxy"])["VmRSS"]
        self.load_after = open("/proc/loadavg").read().split()[:2]
        if self.procs["proxy"].poll() is not None:
            raise SystemExit("bench: the proxy died during the run")
        log(f"\n== measurements took {time.time() - t0:.0f} s")
        return self.report()


def cmd_run(a):
    if not os.access(a.bin, os.X_OK):
        raise SystemExit(f"bench: {a.bin} is not an executable")
    os.makedirs(a.work, exist_ok=True)
    b = Bench(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return b.run()
    finally:
        b.stop_all()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True, help="the model-proxy binary")
    r.add_argument("--work", required=True, help="scratch directory (removed by bench.sh)")
    r.add_argument("--markdown", metavar="FILE", help="also write the Markdown block to FILE")
    r.add_argument("--reps", type=int, default=3, help="repetitions of each large measurement (median)")
    r.add_argument("--iterations", type=int, default=50, help="small-series latency iterations")
    r.add_argument("--clients", type=int, default=32, help="concurrent clients")
    r.add_argument("--per-client", type=int, default=10, help="inferences per concurrent client")
    q = sub.add_parser("poll")
    q.add_argument("--url", required=True)
    q.add_argument("--interval", type=float, default=0.01)
    q.add_argument("--control", help="a reference URL polled right after each poll of --url")
    n = sub.add_parser("null-sink")
    n.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    return {"run": cmd_run, "poll": cmd_poll, "null-sink": cmd_null_sink}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
