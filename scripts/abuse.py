#!/usr/bin/env python3
"""Hostile clients against the front door, and /healthz latency while they act.

    abuse.py [--bin target/release/model-proxy] [--seconds 10] [--markdown FILE]

Starts the proxy on loopback over plain HTTP (--no-tls, default caps and
timeouts, the example config), then runs one scenario after another. During
each, a separate process (bench.py poll) asks GET /healthz every 10 ms on a
fresh connection from 127.0.0.1, while the attackers use 127.0.0.2 and up
(several client addresses, so the per-client cap does not shield the poller
by itself). Reports per scenario: /healthz p50 / p99 / max and failures, the
same for a trivial Python server polled alongside (the machine's own
latency, for reference), the longest /healthz inside the proxy by its access
log, and the proxy's peak RSS and thread count. The goal (issue 9): /healthz
never beyond 50 ms, no failure, memory and threads bounded.

Scenarios: idle (baseline); unsent bodies (GET with Content-Length and no body,
POSTs whose body stalls); 2,000 idle connections; 500 slowloris connections;
8 pipelining clients that never read (3.8 MB of GETs each); smuggling shapes in
a loop; oversized heads (64 MB header, 10,000 header fields) in a loop.
Standard library only. Raises its own open-file limit to the hard limit.
"""

import argparse
import json
import re
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILT_LIKE = "/segmentations/1d9508dd-9089-40c3-abdd-15f47120d682/studies/1.2.3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Attack:
    """Attack threads and sockets; stop() ends them all."""

    def __init__(self, port):
        self.port = port
        self.stop_event = threading.Event()
        self.threads = []
        self.socks = []
        self.n = 0

    def sock(self, timeout=5):
        """A connection from 127.0.0.2..127.0.0.61."""
        self.n += 1
        s = socket.socket()
        s.settimeout(timeout)
        s.bind((f"127.0.0.{2 + self.n % 60}", 0))
        s.connect(("127.0.0.1", self.port))
        return s

    def loop(self, fn):
        def run():
            while not self.stop_event.is_set():
                try:
                    fn()
                except OSError:
                    time.sleep(0.01)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=10)
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def unsent_bodies(a):
    for i in range(50):
        s = a.sock()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        a.socks.append(s)
    for i in range(50):
        s = a.sock()
        s.sendall(f"POST {FILT_LIKE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  "Content-Length: 1000\r\n\r\n{\"series".encode())
        a.socks.append(s)


def idle_flood(a):
    for i in range(2000):
        try:
            a.socks.append(a.sock())
        except OSError:
            pass


def slowloris(a):
    for i in range(500):
        try:
            s = a.sock()
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            a.socks.append(s)
        except OSError:
            pass

    def trickle():
        for s in list(a.socks):
            try:
                s.send(b"X")
            except OSError:
                a.socks.remove(s)
                try:
                    a.socks.append(a.sock())
                except OSError:
                    pass
        time.sleep(1)
    a.loop(trickle)


def pipelining(a):
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 110_000  # 3.8 MB

    def greedy():
        s = a.sock(timeout=30)
        a.socks.append(s)
        try:
            s.sendall(many)
        except OSError:
            pass
        a.stop_event.wait()
    for _ in range(8):
        a.loop(greedy)


def smuggling(a):
    shapes = [
        f"POST {FILT_LIKE} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        f"POST {FILT_LIKE} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n",
        f"POST {FILT_LIKE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n",
    ]
    smuggled = b"GET /readyz?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

    def once():
        for shape in shapes:
            with a.sock() as s:
                s.sendall(shape.encode() + smuggled)
                s.recv(65536)
    for _ in range(4):
        a.loop(once)


def oversized(a):
    mb = b"a" * (1 << 20)

    def huge():
        with a.sock() as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ")
            for _ in range(64):
                s.sendall(mb)

    def many():
        with a.sock() as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
                b"X-%d: y\r\n" % i for i in range(10_000)) + b"\r\n")
            s.recv(65536)
    for _ in range(2):
        a.loop(huge)
        a.loop(many)


SCENARIOS = [
    ("baseline", "no attack", None),
    ("unsent bodies", "50 GET /healthz with Content-Length: 100000 and no body, 50 POSTs whose 1000-byte body stalls", unsent_bodies),
    ("idle flood", "2,000 connections that send nothing", idle_flood),
    ("slowloris", "500 connections trickling a header byte per second, replaced when closed", slowloris),
    ("pipelining", "8 clients each pipelining 3.8 MB of GET /healthz and never reading", pipelining),
    ("smuggling", "4 threads looping CL+TE, duplicate CL, xchunked, GET with a body, each + a smuggled request", smuggling),
    ("oversized", "2 threads sending 64 MB headers, 2 sending 10,000 header fields, in loops", oversized),
]


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def sample(pid, stop, peaks):
    while not stop.is_set():
        st = proc_status(pid)
        if st:
            peaks["rss"] = max(peaks["rss"], int(st["VmRSS"].split()[0]) / 1024)
            peaks["threads"] = max(peaks["threads"], int(st["Threads"]))
        stop.wait(0.1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "model-proxy"))
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--markdown")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="abuse-")
    conf = os.path.join(work, "config")
    os.makedirs(conf)
    shutil.copy(os.path.join(ROOT, "config", "servers.example.json"), os.path.join(conf, "servers.json"))
    shutil.copy(os.path.join(ROOT, "config", "models.example.json"), os.path.join(conf, "models.json"))
    port, control = free_port(), free_port()
    log_path = os.path.join(work, "proxy.log")
    log = open(log_path, "w")
    proxy = subprocess.Popen([a.bin, "serve", "--no-tls", "--listen", f"127.0.0.1:{port}",
                              "--config", conf, "--state-dir", os.path.join(work, "state")],
                             stdout=log, stderr=log, env={**os.environ, "ZHIVA_LOG": "info"})
    sink = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "null-sink",
                             "--port", str(control)])
    rows = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        for name, what, attack in SCENARIOS:
            att = Attack(port)
            if attack:
                attack(att)
            time.sleep(1)
            stop = threading.Event()
            peaks = {"rss": 0.0, "threads": 0}
            sampler = threading.Thread(target=sample, args=(proxy.pid, stop, peaks), daemon=True)
            sampler.start()
            log_from = os.path.getsize(log_path)
            poll = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "poll",
                                     "--interval", "0.01", "--url", f"http://127.0.0.1:{port}/healthz",
                                     "--control", f"http://127.0.0.1:{control}/healthz"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            time.sleep(a.seconds)
            out, _ = poll.communicate("stop\n", timeout=60)
            stop.set()
            sampler.join()
            att.stop()
            res = json.loads(out)
            ms, cms = res["ms"], res["control_ms"]
            with open(log_path, errors="replace") as f:
                f.seek(log_from)
                inside = [int(m) for m in re.findall(r"GET /healthz 200 (\d+)ms", f.read())]
            row = {"scenario": name, "attack": what, "polls": len(ms) + res["errors"],
                   "errors": res["errors"], "p50": pct(ms, 50), "p99": pct(ms, 99),
                   "max": max(ms) if ms else float("nan"),
                   "control_p99": pct(cms, 99), "control_max": max(cms) if cms else float("nan"),
                   "inside_max": max(inside) if inside else float("nan"),
                   "rss": peaks["rss"], "threads": peaks["threads"]}
            rows.append(row)
            print(f"{name:14s} polls {row['polls']:5d} errors {row['errors']:3d}  p50 {row['p50']:6.2f} ms  "
                  f"p99 {row['p99']:6.2f} ms  max {row['max']:7.2f} ms  (control p99 {row['control_p99']:6.2f} "
                  f"max {row['control_max']:7.2f}; inside max {row['inside_max']} ms)  RSS {row['rss']:6.1f} MiB  "
                  f"threads {row['threads']}", flush=True)
            time.sleep(1)
    finally:
        sink.terminate()
        proxy.terminate()
        try:
            proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("| scenario | attack | /healthz polls | failed | p50 | p99 | max | reference p99 / max "
                    "| inside the proxy, max | proxy peak RSS | peak threads |\n")
            f.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r['scenario']} | {r['attack']} | {r['polls']} | {r['errors']} | {r['p50']:.2f} ms | "
                        f"{r['p99']:.2f} ms | {r['max']:.2f} ms | {r['control_p99']:.2f} / {r['control_max']:.2f} ms "
                        f"| {r['inside_max']} ms | {r['rss']:.1f} MiB | {r['threads']} |\n")
    worst = max((r["max"] for r in rows), default=0)
    failed = sum(r["errors"] for r in rows)
    print(f"worst /healthz {worst:.2f} ms, {failed} failed polls; proxy log in {work}/proxy.log")
    return 0 if worst <= 50 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
