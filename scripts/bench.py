#!/usr/bin/env python3
"""The model-proxy benchmark (run it through scripts/bench.sh, which builds the proxy).

    bench.py run --bin PROXY --work DIR [--markdown FILE] [--reps 5] [--conc-reps 3]
                 [--small-rounds 4] [--small-per-round 5] [--quiet-load 1.5] [--wait-quiet SECS]
    bench.py poll --url URL [--control URL] [--interval 0.01]   (helper: /healthz poller, own process)
    bench.py count-model --port P                               (helper: the fast counting model)

`run` brings up Orthanc with DICOMweb (tests/fixtures/orthanc.py) holding
generated CT series (gen_study.py: 300 and 600 slices of 512x512, 20 of
128x128), two model APIs and the proxy on loopback over plain HTTP (--no-tls):

  * the counting model (`count-model` below): takes in any body at loopback
    speed and answers {"bytes": N, "chunks": k}; TCP_NODELAY, each answer
    written in one piece, so it does not bottle the measurement;
  * the model API of the tests (tests/fixtures/model_api.py: FastAPI on
    uvicorn), with a listen backlog of 5, a real server that drops connection
    bursts; its /sink route reads the whole body and answers its size (its
    pydicom routes take 0.14 s of CPU per small series, so at concurrency 16
    every latency would be the model's).

Each payload mode (zhiva JSON chunked, `payload: multipart`, `contentLength:
true`) is timed against its physical limit measured in the same run, in
interleaved repetitions (medians):

  * zhiva:      max(PACS retrieval, the counting model taking in the payload file)
  * multipart:  max(PACS retrieval, the counting model taking in the multipart body)
  * spooled:    max(PACS retrieval, writing the payload to a file) + the model taking it in

where "PACS retrieval" is curl reading the WADO-RS answer to /dev/null, "taking
in" is a POST of a ready file with Content-Length sent by sendfile (costing the
sender next to nothing) and "writing" is as many bytes as the payload written
into a new unlinked file in 256 KiB writes. Also: the proxy's peak RSS in every
mode at 300 and 600 slices; 8 concurrent 300-slice inferences (wall time
against 8 times one alone, errors, peak RSS, /healthz latency meanwhile);
small inferences at concurrency 16 through the proxy against the same clients
going direct (WADO-RS retrieval + POST of the same payload, keep-alive to the
model) to that model, in steady state (each window's first inferences
per client are not measured).

Every process it starts has its pid appended to DIR/pids (bench.sh's trap
kills them if this script dies); they are also stopped in a finally block.
Standard library only, plus numpy (tests/fixtures/requirements.txt) to build
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
ZHIVA = "1d9508dd-9089-40c3-abdd-15f47120d682"
MULTI = "2d9508dd-9089-40c3-abdd-15f47120d682"
SPOOL = "3d9508dd-9089-40c3-abdd-15f47120d682"
REAL = "4d9508dd-9089-40c3-abdd-15f47120d682"
MODES = {ZHIVA: "zhiva", MULTI: "multipart", SPOOL: "spooled"}
ACCEPT = 'multipart/related; type="application/dicom"'
# The proxy's multipart boundary: "model-proxy-" and 32 hex digits.
BOUNDARY_LEN = 44
MB = 1e6
MIB = 1024 * 1024

# Targets (issue 11).
T_RATIO = {"zhiva": 1.3, "multipart": 1.15, "spooled": 1.3}
T_PEAK_MIB = 32.0
T_CONC_RATIO = 0.75
T_CONC_PEAK_MIB = 64.0
T_SMALL_P99_RATIO = 1.2
T_SMALL_P50_MS = 1.0
T_HEALTHZ_P99_MS = 10.0
# Issue 15, "the second time in milliseconds": a cache hit of the 300-slice request.
T_CACHE_HIT_MS = 10.0
# "Flat": the 600-slice peak at most this much above the 300-slice one.
FLAT_MIB = 2.0
# Small inferences each client makes at the start of a window, not measured (steady state only).
SMALL_WARMUP = 2


# ---------------------------------------------------------------- small helpers

def log(msg):
    print(msg, flush=True)


def pct(values, p):
    """Nearest-rank percentile (p99 of 100 samples is the 99th)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, math.ceil(p / 100.0 * len(v)))
    return v[k - 1]


def med(values):
    return statistics.median(values) if values else float("nan")


def free_ports(n):
    """n distinct ports nothing listens on (all bound at once, so none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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


def loadavg():
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]


def machine_busy():
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    f = open("/proc/stat").readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq + steal) / CLK


def curl(args, out="/dev/null"):
    """Runs curl; returns (http_code, size_download, time_total seconds, stderr)."""
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

def dcm_files(d):
    return sorted(glob.glob(os.path.join(d, "**", "*.dcm"), recursive=True))


def write_payload(files, path):
    """The zhiva payload, exactly as models expect it: a JSON array of strings, each
    the JSON text (no spaces) of one file's byte array. Returns its size."""
    import numpy as np
    table = np.zeros((256, 4), np.uint8)  # ",123" padded with NULs (never in the output)
    for i in range(256):
        s = ("," + str(i)).encode()
        table[i, : len(s)] = list(s)
    with open(path, "wb") as out:
        out.write(b"[")
        for n, p in enumerate(files):
            data = open(p, "rb").read()
            enc = table[np.frombuffer(data, np.uint8)].ravel()
            text = enc[enc != 0].tobytes()[1:]
            out.write((b',"[' if n else b'"[') + text + b']"')
        out.write(b"]")
    return os.path.getsize(path)


def payload_size(files):
    """The size write_payload would produce, without writing it."""
    import numpy as np
    digits = np.array([len(str(i)) for i in range(256)], np.int64)
    total = 2 + max(0, len(files) - 1)  # [ ] and commas between items
    for p in files:
        data = np.fromfile(p, np.uint8)
        counts = np.bincount(data, minlength=256)
        total += int((counts * digits).sum()) + max(0, len(data) - 1) + 4  # commas, "[ ]"
    return total


def multipart_head(boundary):
    return b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"


def write_multipart(files, path, boundary=b"b" * BOUNDARY_LEN):
    """The body of a `payload: multipart` model, with a boundary as long as the proxy's."""
    with open(path, "wb") as out:
        for p in files:
            out.write(multipart_head(boundary) + open(p, "rb").read() + b"\r\n")
        out.write(b"--" + boundary + b"--\r\n")
    return os.path.getsize(path)


def multipart_size(files):
    per_part = len(multipart_head(b"b" * BOUNDARY_LEN)) + 2
    return sum(os.path.getsize(p) + per_part for p in files) + BOUNDARY_LEN + 6


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


class CountHandler(socketserver.BaseRequestHandler):
    """HTTP/1.1 keep-alive; reads each request body (Content-Length or chunked) into a
    reused 1 MiB buffer and answers {"bytes": N, "chunks": k} in one send."""

    def handle(self):
        s = self.request
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb", buffering=1 << 20)
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
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % len(body) + body)
        except (EOFError, ConnectionError, ValueError):
            return


def cmd_count_model(a):
    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 128
    with Server(("127.0.0.1", a.port), CountHandler) as srv:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        srv.serve_forever()


def post_file(port, path, content_type="application/json"):
    """POSTs a file with Content-Length by sendfile to the counting model; returns
    (seconds from connect to the whole answer, the answer's JSON)."""
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb") as f:
        s.sendall(f"POST /sink HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
        s.sendfile(f)
        answer = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            answer += got
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
    t = time.perf_counter() - t0
    return t, json.loads(answer.split(b"\r\n\r\n", 1)[1])


def spool_write(size, dir_):
    """Writes `size` bytes into a new unlinked file in dir_, in 256 KiB writes from one
    buffer, as the proxy's spool does; returns the seconds taken (not counting the
    close, which the proxy does after the relay). The bytes' values cost nothing here."""
    buf = memoryview(bytes(range(256)) * 1024)
    dst = os.path.join(dir_, "bench-spool.tmp")
    t0 = time.perf_counter()
    fd = os.open(dst, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    os.unlink(dst)
    left = size
    while left > 0:
        left -= os.write(fd, buf[:min(left, len(buf))])
    t = time.perf_counter() - t0
    os.close(fd)
    return t


# ---------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.procs = {}  # name -> Popen
        self.logs = []
        self.pid = {}

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
                    # Throw-away Orthanc/models: SIGKILL is fine; the proxy gets SIGTERM first.
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
        w = self.work
        self.orthanc_port, self.count_port, self.real_port, self.proxy_port, self.control_port = free_ports(5)
        log(f"== work dir {w}; ports: proxy {self.proxy_port}, Orthanc {self.orthanc_port}, "
            f"counting model {self.count_port}, FastAPI model {self.real_port}")
        gens = {}
        for name, slices, size, seed in (("big", 300, 512, 3001), ("huge", 600, 512, 3002), ("small", 20, 128, 3003)):
            gens[name] = subprocess.Popen(
                [sys.executable, os.path.join(FIXTURES, "gen_study.py"), "--out", os.path.join(w, "data", name),
                 "--studies", "1", "--series", "1", "--slices", str(slices), "--size", str(size), "--seed", str(seed)],
                stdout=subprocess.PIPE)
        orthanc = self.spawn("orthanc", [sys.executable, os.path.join(FIXTURES, "orthanc.py"), "run",
                                         "--dir", os.path.join(w, "orthanc"), "--http-port", str(self.orthanc_port)])
        count = self.spawn("count-model", [sys.executable, os.path.abspath(__file__), "count-model",
                                           "--port", str(self.count_port)])
        # An idle twin of the counting model: the reference /healthz is compared with.
        control = self.spawn("control", [sys.executable, os.path.abspath(__file__), "count-model",
                                         "--port", str(self.control_port)])
        real = self.spawn("fastapi-model", [sys.executable, os.path.join(FIXTURES, "model_api.py"),
                                            "--port", str(self.real_port), "--backlog", "5"])
        self.series = {}
        for name, g in gens.items():
            out, _ = g.communicate()
            if g.returncode != 0:
                raise SystemExit(f"bench: gen_study.py failed for {name}")
            st = json.loads(out)["studies"][0]
            files = dcm_files(os.path.join(w, "data", name))
            self.series[name] = {"study": st["study"], "series": st["series"][0]["series"], "files": files,
                                 "dicom_bytes": sum(os.path.getsize(p) for p in files)}
        subprocess.run([sys.executable, os.path.join(FIXTURES, "orthanc.py"), "upload", "--wait", "60",
                        "--url", f"http://127.0.0.1:{self.orthanc_port}", os.path.join(w, "data")],
                       check=True, stdout=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.real_port}/", "the FastAPI model", proc=real)
        wait_http(f"http://127.0.0.1:{self.count_port}/", "the counting model", proc=count)
        wait_http(f"http://127.0.0.1:{self.control_port}/", "the reference server", proc=control)
        self.pid.update({"orthanc": orthanc.pid, "model": count.pid})
        try:
            self.orthanc_version = json.loads(http_get(f"http://127.0.0.1:{self.orthanc_port}/system")[1])["Version"]
        except Exception:
            self.orthanc_version = "?"

        cfg = os.path.join(w, "config")
        os.makedirs(cfg)
        with open(os.path.join(cfg, "servers.json"), "w") as f:
            json.dump({SERVER_ID: {"uri": f"http://127.0.0.1:{self.orthanc_port}/dicom-web", "isDefault": True,
                                   "authType": ""}}, f, indent=2)
        count_uri = f"http://127.0.0.1:{self.count_port}/sink"
        model = lambda **kw: dict({"uri": count_uri, "task": "segmentation", "supports": ["/studies/series"]}, **kw)
        with open(os.path.join(cfg, "models.json"), "w") as f:
            json.dump({ZHIVA: model(), MULTI: model(payload="multipart"), SPOOL: model(contentLength=True),
                       REAL: model(uri=f"http://127.0.0.1:{self.real_port}/sink")}, f, indent=2)

        help_text = sh([self.a.bin, "--help"])
        self.workers = (re.search(r"--workers N .*\[(\d+)\]", help_text) or [None, "?"])[1]
        self.start_proxy()

        t0 = time.time()
        for name in ("big", "small"):
            s = self.series[name]
            s["payload"] = os.path.join(w, f"{name}.payload.json")
            s["payload_bytes"] = write_payload(s["files"], s["payload"])
        big = self.series["big"]
        big["multipart"] = os.path.join(w, "big.multipart")
        big["multipart_bytes"] = write_multipart(big["files"], big["multipart"])
        huge = self.series["huge"]
        huge["payload_bytes"] = payload_size(huge["files"])
        huge["multipart_bytes"] = multipart_size(huge["files"])
        with open(self.series["small"]["payload"], "rb") as f:
            self.small_payload = f.read()
        log(f"== series: 300 x 512² ({big['dicom_bytes'] / MB:.1f} MB DICOM, zhiva payload "
            f"{big['payload_bytes'] / MB:.1f} MB), 600 x 512² ({huge['dicom_bytes'] / MB:.1f} MB), "
            f"20 x 128² ({self.series['small']['dicom_bytes'] / 1e3:.0f} kB); payload files in {time.time() - t0:.1f} s")

    def serve_proxy(self, name, port, extra=()):
        """model-proxy on `port` with the bench's config and a state dir of its own, on
        its defaults (no ZHIVA_ variables) but `extra`; returns once /healthz answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZHIVA_")}
        p = self.spawn(name, [self.a.bin, "serve", "--no-tls", "--listen", f"127.0.0.1:{port}",
                              "--config", os.path.join(self.work, "config"),
                              "--state-dir", os.path.join(self.work, f"state-{name}"), *extra], env=env)
        wait_http(f"http://127.0.0.1:{port}/healthz", name, proc=p)
        return p

    def start_proxy(self):
        # The cache off: every phase but phase_cache measures a real inference.
        p = self.serve_proxy("proxy", self.proxy_port, ["--cache-size", "0"])
        self.pid["proxy"] = p.pid
        exe = os.path.realpath(f"/proc/{p.pid}/exe")
        if os.path.realpath(self.a.bin) != exe:
            raise SystemExit(f"bench: pid {p.pid} runs {exe}, not {self.a.bin}")
        time.sleep(0.3)
        self.idle_rss = proc_status(p.pid)["VmRSS"]
        log(f"== model-proxy pid {p.pid} ({exe}), {self.workers} workers; idle RSS {self.idle_rss:.1f} MiB")

    # -- URLs

    def direct_url(self, name):
        s = self.series[name]
        return f"http://127.0.0.1:{self.orthanc_port}/dicom-web/studies/{s['study']}/series/{s['series']}"

    def proxy_path(self, name, model):
        s = self.series[name]
        return f"/segmentations/{model}/studies/{s['study']}/series/{s['series']}"

    def proxy_url(self, name, model):
        return f"http://127.0.0.1:{self.proxy_port}{self.proxy_path(name, model)}"

    def want_bytes(self, name, model):
        s = self.series[name]
        return s["multipart_bytes"] if model == MULTI else s["payload_bytes"]

    # -- single measurements

    def pacs(self, name):
        code, size, t, err = curl(["-H", f"Accept: {ACCEPT}", self.direct_url(name)])
        if code != 200:
            raise SystemExit(f"bench: direct WADO-RS retrieval of {name} failed: HTTP {code} {err}")
        return t

    def ingest(self, path, want):
        t, answer = post_file(self.count_port, path)
        if answer.get("bytes") != want:
            raise SystemExit(f"bench: the counting model took {answer} from {path}, not {want} bytes")
        return t

    def through_proxy(self, name, model):
        """One inference through the proxy: time, peak RSS, CPU per process, chunks."""
        pid = self.pid["proxy"]
        out = os.path.join(self.work, "proxy-answer.json")
        reset_hwm(pid)
        r = {"rss_before": proc_status(pid)["VmRSS"]}
        cpu0 = {k: cpu_seconds(v) for k, v in self.pid.items()}
        code, _, t, err = curl([self.proxy_url(name, model)], out=out)
        r["cpu"] = {k: cpu_seconds(v) - cpu0[k] for k, v in self.pid.items()}
        r["hwm"] = proc_status(pid)["VmHWM"]
        body = json.load(open(out)) if code == 200 else open(out, errors="replace").read()[:300]
        want = self.want_bytes(name, model)
        if code != 200 or body.get("bytes") != want:
            raise SystemExit(f"bench: proxy request {MODES.get(model)} {name} -> HTTP {code} {err} {body!r}; "
                             f"the model should get {want} bytes")
        r["t"] = t
        r["chunks"] = body.get("chunks")
        return r

    # -- phases

    def phase_modes(self):
        a = self.a
        big = self.series["big"]
        log(f"\n== payload modes, 300 and 600 slices: {a.reps} interleaved repetitions, medians")
        state = os.path.join(self.work, "state-proxy")  # the proxy's, where it spools
        # Warm-up: Orthanc's files into the page cache, every worker thread once.
        self.pacs("big")
        self.pacs("huge")
        for m in MODES:
            self.through_proxy("big", m)
        for _ in range(int(self.workers) if str(self.workers).isdigit() else 16):
            self.through_proxy("small", ZHIVA)
        time.sleep(0.3)
        self.warm_rss = proc_status(self.pid["proxy"])["VmRSS"]
        L = {"pacs": [], "ingest_zhiva": [], "ingest_multipart": [], "spool_write": []}
        R = {(n, m): [] for n in ("big", "huge") for m in MODES.values()}
        for i in range(a.reps):
            busy0, ours0 = machine_busy(), self.ours()
            L["pacs"].append(self.pacs("big"))
            L["ingest_zhiva"].append(self.ingest(big["payload"], big["payload_bytes"]))
            R["big", "zhiva"].append(self.through_proxy("big", ZHIVA))
            L["ingest_multipart"].append(self.ingest(big["multipart"], big["multipart_bytes"]))
            R["big", "multipart"].append(self.through_proxy("big", MULTI))
            L["spool_write"].append(spool_write(big["payload_bytes"], state))
            R["big", "spooled"].append(self.through_proxy("big", SPOOL))
            for m, mode in MODES.items():
                R["huge", mode].append(self.through_proxy("huge", m))
            others = machine_busy() - busy0 - (self.ours() - ours0)
            log(f"   rep {i + 1} (other processes {max(0.0, others):.2f} CPU-s): PACS {L['pacs'][-1]:.3f} s, ingest zhiva {L['ingest_zhiva'][-1]:.3f} s / "
                f"multipart {L['ingest_multipart'][-1]:.3f} s, spool write {L['spool_write'][-1]:.3f} s; proxy " +
                ", ".join(f"{mode} {R['big', mode][-1]['t']:.3f} s ({R['big', mode][-1]['hwm']:.1f} MiB)"
                          for mode in MODES.values()) +
                "; 600 slices " + ", ".join(f"{R['huge', mode][-1]['t']:.3f} s ({R['huge', mode][-1]['hwm']:.1f} MiB)"
                                            for mode in MODES.values()))
        self.L, self.R = L, R

    def healthz_poll(self):
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "poll", "--interval", "0.01",
                              "--url", f"http://127.0.0.1:{self.proxy_port}/healthz",
                              "--control", f"http://127.0.0.1:{self.control_port}/healthz"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        return p

    @staticmethod
    def healthz_stop(p):
        out, _ = p.communicate("stop\n", timeout=30)
        return json.loads(out)

    def phase_concurrent(self):
        a = self.a
        log(f"\n== 8 concurrent 300-slice inferences (zhiva payload, counting model), {a.conc_reps} repetitions; "
            f"/healthz polled every 10 ms from another process")
        pid = self.pid["proxy"]
        url = self.proxy_url("big", ZHIVA)
        want = self.series["big"]["payload_bytes"]
        walls, errors, peaks, hz, hz_ctl, hz_err = [], 0, [], [], [], 0
        for i in range(a.conc_reps):
            reset_hwm(pid)
            poller = self.healthz_poll()
            time.sleep(0.3)
            outs = [os.path.join(self.work, f"conc-{k}.json") for k in range(8)]
            t0 = time.perf_counter()
            procs = [subprocess.Popen(["curl", "-sS", "-o", o, "-w", "%{http_code}", url],
                                      stdout=subprocess.PIPE, text=True) for o in outs]
            codes = [p.communicate()[0] for p in procs]
            wall = time.perf_counter() - t0
            time.sleep(0.1)
            res = self.healthz_stop(poller)
            bad = 0
            for c, o in zip(codes, outs):
                try:
                    ok = c == "200" and json.load(open(o)).get("bytes") == want
                except Exception:
                    ok = False
                bad += not ok
            walls.append(wall)
            errors += bad
            peaks.append(proc_status(pid)["VmHWM"])
            hz += res["ms"]
            hz_ctl += res["control_ms"]
            hz_err += res["errors"]
            log(f"   rep {i + 1}: {wall:.2f} s, {bad} errors, peak RSS {peaks[-1]:.1f} MiB, /healthz "
                f"{len(res['ms'])} polls p50 {pct(res['ms'], 50):.2f} ms p99 {pct(res['ms'], 99):.2f} ms "
                f"max {max(res['ms'] or [float('nan')]):.2f} ms")
        self.conc = {"walls": walls, "errors": errors, "total": 8 * a.conc_reps, "peaks": peaks, "hz": hz,
                     "hz_ctl": hz_ctl, "hz_errors": hz_err}

    def phase_small(self):
        a = self.a
        n = a.small_rounds * a.small_per_round * 16
        log(f"\n== small series (20 x 128²) at concurrency 16 against the FastAPI model's /sink (listen backlog 5): "
            f"{a.small_rounds} windows each way, interleaved; in each, every client makes {SMALL_WARMUP} "
            f"unmeasured inferences, then {a.small_per_round} measured ({n} measured each way)")
        s = self.series["small"]
        want = s["payload_bytes"]
        direct_path = self.direct_url("small").split(str(self.orthanc_port), 1)[1]
        proxy_path = self.proxy_path("small", REAL)
        # The direct clients' keep-alive connections to the model, kept across windows.
        model_conns = [None] * 16

        def check(status, body):
            return status == 200 and json.loads(body).get("bytes") == want

        def post_model(k):
            """POST the payload on client k's kept-alive connection (reconnecting once if
            the model closed it meanwhile, as HTTP client libraries do)."""
            for attempt in (0, 1):
                if model_conns[k] is None:
                    model_conns[k] = http.client.HTTPConnection("127.0.0.1", self.real_port, timeout=120)
                try:
                    model_conns[k].request("POST", "/sink", body=self.small_payload,
                                           headers={"Content-Type": "application/json"})
                    r = model_conns[k].getresponse()
                    return r.status, r.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    model_conns[k] = None
                    if attempt:
                        raise

        def direct_once(k, _conn):
            c = http.client.HTTPConnection("127.0.0.1", self.orthanc_port, timeout=120)
            c.request("GET", direct_path, headers={"Accept": ACCEPT})
            r = c.getresponse()
            r.read()
            c.close()
            if r.status != 200:
                raise RuntimeError(f"PACS {r.status}")
            return check(*post_model(k)), None

        def proxy_once(_k, conn):
            for attempt in (0, 1):
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=120)
                try:
                    conn.request("GET", proxy_path)
                    r = conn.getresponse()
                    return check(r.status, r.read()), conn
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    conn = None
                    if attempt:
                        raise

        def window(once):
            out, errs = [], []
            barrier = threading.Barrier(16)

            def client(k):
                conn = None
                barrier.wait()
                for i in range(SMALL_WARMUP + a.small_per_round):
                    t0 = time.perf_counter()
                    try:
                        ok, conn = once(k, conn)
                    except Exception:
                        ok, conn = False, None
                    if i >= SMALL_WARMUP:
                        (out if ok else errs).append((time.perf_counter() - t0) * 1000)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return out, errs

        res = {"direct": [[], 0], "proxy": [[], 0]}
        reset_hwm(self.pid["proxy"])
        for i in range(a.small_rounds):
            order = (("direct", direct_once), ("proxy", proxy_once))
            for name, once in order if i % 2 else order[::-1]:
                out, errs = window(once)
                res[name][0] += out
                res[name][1] += len(errs)
        self.small = res
        self.small_hwm = proc_status(self.pid["proxy"])["VmHWM"]
        for name, (lat, errs) in res.items():
            log(f"   {name:6s} p50 {pct(lat, 50):7.1f} ms  p99 {pct(lat, 99):7.1f} ms  max {max(lat or [0]):7.1f} ms"
                f"  errors {errs}")

    # -- the inference cache: a repeated big-series request, hit vs miss

    def phase_cache(self):
        """A second proxy with the cache on: the 300-slice series asked for again and
        again, alternately forcing a new inference (Cache-Control: no-cache, a miss) and
        not (a hit); medians, and the hit's body checked byte for byte against the miss's."""
        reps = max(3, self.a.reps)
        port = free_ports(1)[0]
        p = self.serve_proxy("proxy-cache", port)
        url = f"http://127.0.0.1:{port}{self.proxy_path('big', ZHIVA)}"
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
        hit, miss = med(self.cache["hit"]), med(self.cache["miss"])
        return (f"Repeated request (zhiva), 300 x 512²: cache hit, medians of {len(self.cache['hit'])} hits / "
                f"{len(self.cache['miss'])} misses", f"{hit * 1000:.1f} ms",
                f"{miss:.3f} s: a miss (Cache-Control: no-cache)", f"{miss / hit:.0f}x faster",
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
            "machine": f"{os.cpu_count()} x {cpu}, {mem} RAM",
            "kernel": f"{platform.system()} {platform.release()}",
            "commit": commit,
        }

    def report(self):
        a = self.a
        h = self.header()
        L, R, C, S = self.L, self.R, self.conc, self.small
        big, huge = self.series["big"], self.series["huge"]
        pacs = med(L["pacs"])
        limits = {
            "zhiva": max((pacs, "PACS retrieval"), (med(L["ingest_zhiva"]), "the model taking in the payload")),
            "multipart": max((pacs, "PACS retrieval"),
                             (med(L["ingest_multipart"]), "the model taking in the multipart body")),
            "spooled": (max(pacs, med(L["spool_write"])) + med(L["ingest_zhiva"]),
                        "spool write + the model taking it in"),
        }
        what = {"zhiva": f"zhiva payload ({big['payload_bytes'] / MB:.0f} MB, chunked)",
                "multipart": f"`payload: multipart` ({big['multipart_bytes'] / MB:.0f} MB)",
                "spooled": f"`contentLength: true` ({big['payload_bytes'] / MB:.0f} MB, spooled)"}
        yes = lambda ok: "yes" if ok else "**NO**"
        rows = []
        for mode in MODES.values():
            t = med([r["t"] for r in R["big", mode]])
            limit, why = limits[mode]
            rows.append((f"{what[mode]}, 300 x 512², median of {a.reps}", f"{t:.3f} s", f"{limit:.3f} s: {why}",
                         f"{t / limit:.2f}x", f"<= {T_RATIO[mode]}x", yes(t / limit <= T_RATIO[mode])))
        for mode in MODES.values():
            p300 = max(r["hwm"] for r in R["big", mode])
            p600 = max(r["hwm"] for r in R["huge", mode])
            flat = p600 <= p300 + FLAT_MIB
            rows.append((f"Peak RSS, {mode}: 300 / 600 slices, max of {a.reps}", f"{p300:.1f} / {p600:.1f} MiB",
                         f"{self.warm_rss:.1f} MiB idle", f"{p600 - p300:+.1f} MiB",
                         f"<= {T_PEAK_MIB:.0f} MiB, flat", yes(max(p300, p600) <= T_PEAK_MIB and flat)))
        single = med([r["t"] for r in R["big", "zhiva"]])
        wall = med(C["walls"])
        rows.append((f"8 concurrent 300-slice inferences (zhiva), median of {a.conc_reps}", f"{wall:.2f} s",
                     f"{8 * single:.2f} s: 8 x one alone", f"{wall / (8 * single):.2f}x", f"<= {T_CONC_RATIO}x",
                     yes(wall / (8 * single) <= T_CONC_RATIO)))
        rows.append(("8 concurrent: errors / peak RSS", f"{C['errors']} / {max(C['peaks']):.1f} MiB",
                     f"{C['total']} requests", "-", f"0 / <= {T_CONC_PEAK_MIB:.0f} MiB",
                     yes(C["errors"] == 0 and max(C["peaks"]) <= T_CONC_PEAK_MIB)))
        (dl, de), (pl, pe) = S["direct"], S["proxy"]
        n_small = len(pl) + pe
        rows.append((f"Small (20 x 128²) at concurrency 16, FastAPI model (backlog 5): p99 of {n_small}",
                     f"{pct(pl, 99):.1f} ms", f"{pct(dl, 99):.1f} ms direct", f"{pct(pl, 99) / pct(dl, 99):.2f}x",
                     f"<= {T_SMALL_P99_RATIO}x, 0 errors",
                     yes(pct(pl, 99) <= T_SMALL_P99_RATIO * pct(dl, 99) and pe == 0 and de == 0)))
        rows.append(("Small at concurrency 16: p50", f"{pct(pl, 50):.1f} ms", f"{pct(dl, 50):.1f} ms direct",
                     f"{pct(pl, 50) - pct(dl, 50):+.1f} ms", f"<= direct + {T_SMALL_P50_MS:.0f} ms",
                     yes(pct(pl, 50) <= pct(dl, 50) + T_SMALL_P50_MS)))
        hz = C["hz"]
        rows.append((f"/healthz p99 while 8 big inferences run ({len(hz)} polls)", f"{pct(hz, 99):.2f} ms",
                     f"{pct(C['hz_ctl'], 99):.2f} ms: an idle Python server polled alongside", "-",
                     f"<= {T_HEALTHZ_P99_MS:.0f} ms", yes(pct(hz, 99) <= T_HEALTHZ_P99_MS and C["hz_errors"] == 0)))

        rows.append(self.cache_row())

        cpu = lambda key, mode: {k: med([r["cpu"][k] for r in R[key, mode]]) for k in ("proxy", "orthanc", "model")}
        context = []
        for mode in MODES.values():
            c = cpu("big", mode)
            t = med([r["t"] for r in R["big", mode]])
            context.append((f"CPU per 300-slice request, {mode}: proxy / Orthanc / counting model",
                            f"{c['proxy']:.2f} / {c['orthanc']:.2f} / {c['model']:.2f} s",
                            f"wall {t:.3f} s on {os.cpu_count()} cores"))
        z = R["big", "zhiva"][-1]
        context.append(("Chunks to the model, zhiva, 300 slices", f"{z['chunks']}",
                        f"avg {big['payload_bytes'] / z['chunks'] / 1024:.0f} KiB"))
        for name, key in (("PACS retrieval (curl)", "pacs"), ("Counting model taking in the zhiva payload", "ingest_zhiva"),
                          ("... the multipart body", "ingest_multipart"), ("Spool write of the zhiva payload", "spool_write")):
            v = L[key]
            context.append((f"Limit: {name}, median (min-max)", f"{med(v):.3f} s", f"{min(v):.3f}-{max(v):.3f} s"))
        for mode in MODES.values():
            context.append((f"600 slices, {mode}: time, median", f"{med([r['t'] for r in R['huge', mode]]):.3f} s",
                            f"{huge['dicom_bytes'] / MB:.0f} MB DICOM"))
        context.append(("Small at concurrency 16: errors direct / proxy", f"{de} / {pe}",
                        f"max {max(dl or [0]):.0f} / {max(pl or [0]):.0f} ms; proxy peak RSS {self.small_hwm:.1f} MiB"))
        context.append(("/healthz during the 8 concurrent: p50 / max", f"{pct(hz, 50):.2f} / {max(hz or [0]):.2f} ms",
                        f"{C['hz_errors']} errors"))
        context.append(("Idle RSS: fresh / workers warmed", f"{self.idle_rss:.1f} / {self.warm_rss:.1f} MiB", ""))
        failed = [r[0] for r in rows if r[5] == "**NO**"]

        md = [f"### Benchmark {h['date']}, commit {h['commit']}", "",
              f"Machine: {h['machine']}; {h['kernel']}; load average {self.load_before[0]:.2f} before the "
              f"measurements, {self.load_after[0]:.2f} (1 min) / {self.load_after[1]:.2f} (5 min) at their end; "
              f"other processes used {self.others[0]:.0f} CPU-s of the {self.others[1]:.0f} s they took "
              f"({self.others[0] / self.others[1] / (os.cpu_count() or 1):.0%} of the machine). "
              f"Loopback: model-proxy over plain HTTP (`--no-tls`), {self.workers} workers; Orthanc "
              f"{self.orthanc_version} + DICOMweb (tests/fixtures/orthanc.py); the counting model of "
              f"`scripts/bench.py`; the model API tests/fixtures/model_api.py `POST /sink` (FastAPI, uvicorn, listen backlog 5; "
              f"Python {platform.python_version()}). "
              f"Produced by `scripts/bench.sh`.", "",
              "| Target | Measured | Limit / baseline | Ratio | Target | Met? |", "|---|---|---|---|---|---|"]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        md += ["", "| Context (no target) | Measured | Note |", "|---|---|---|"]
        md += ["| " + " | ".join(r) + " |" for r in context]
        md += ["", ("**Targets not met:** " + "; ".join(failed) + ".") if failed else "All targets met.", ""]
        md_text = "\n".join(md) + "\n"

        log("\n================ summary ================")
        log(f"date {h['date']}; machine {h['machine']}; {h['kernel']}; commit {h['commit']}; load average "
            f"before {self.load_before}, after {self.load_after}; other processes {self.others[0]:.1f} CPU-s "
            f"in {self.others[1]:.0f} s")
        for r in rows:
            log(f"  {r[0]:<72} {r[1]:>18}  vs {r[2]}  ({r[3]})  target {r[4]}: {r[5].strip('*')}")
        log("  context:")
        for r in context:
            log(f"  {r[0]:<72} {r[1]:>18}  {r[2]}")
        log("\nTARGETS NOT MET:\n" + "\n".join(f"  - {f}" for f in failed) if failed else "\nall targets met")
        log("\n---------------- Markdown ----------------")
        log(md_text)
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write(md_text)
            log(f"(Markdown written to {a.markdown})")
        return 0

    def wait_quiet(self):
        """Waits (up to --wait-quiet seconds) for the 1-minute load average to fall under --quiet-load."""
        a = self.a
        deadline = time.time() + a.wait_quiet
        while loadavg()[0] >= a.quiet_load and time.time() < deadline:
            log(f"   load average {loadavg()[0]:.2f} >= {a.quiet_load}: waiting")
            time.sleep(15)
        if loadavg()[0] >= a.quiet_load:
            log(f"bench: warning: load average {loadavg()[0]:.2f}; other work will skew the numbers")

    def ours(self):
        """CPU seconds of this benchmark's processes: the ones it started, itself and
        its finished children (curl, pollers)."""
        total = 0.0
        for p in self.procs.values():
            try:
                total += cpu_seconds(p.pid)
            except OSError:
                pass
        t = os.times()
        return total + t.user + t.system + t.children_user + t.children_system

    def run(self):
        t0 = time.time()
        self.setup()
        self.wait_quiet()
        self.load_before = loadavg()
        busy0, ours0, wall0 = machine_busy(), self.ours(), time.time()
        self.phase_modes()
        self.phase_concurrent()
        self.phase_small()
        self.phase_cache()
        self.load_after = loadavg()
        wall = time.time() - wall0
        self.others = (max(0.0, machine_busy() - busy0 - (self.ours() - ours0)), wall)
        if self.procs["proxy"].poll() is not None:
            raise SystemExit("bench: the proxy died during the run")
        log(f"\n== took {time.time() - t0:.0f} s")
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
    r.add_argument("--reps", type=int, default=7, help="interleaved repetitions of the payload modes (medians)")
    r.add_argument("--conc-reps", type=int, default=3, help="repetitions of the 8 concurrent inferences")
    r.add_argument("--small-rounds", type=int, default=4, help="windows of small inferences, each way")
    r.add_argument("--small-per-round", type=int, default=5,
                   help="measured small inferences per client per window")
    r.add_argument("--quiet-load", type=float, default=1.5, help="a load average under this counts as quiet")
    r.add_argument("--wait-quiet", type=float, default=0, metavar="SECS",
                   help="wait up to SECS for a quiet machine before measuring")
    q = sub.add_parser("poll")
    q.add_argument("--url", required=True)
    q.add_argument("--interval", type=float, default=0.01)
    q.add_argument("--control", help="a reference URL polled right after each poll of --url")
    n = sub.add_parser("count-model")
    n.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    return {"run": cmd_run, "poll": cmd_poll, "count-model": cmd_count_model}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
