#!/usr/bin/env python3
"""Memory benchmark (not a test): the daemon's resident memory while a backlog of large events
builds up behind a receiver that is down, and while it drains once the receiver is up.

Run: `cargo build --release && python3 benches/backlog_memory.py` (env: BENCH_EVENTS=6000,
BENCH_BINARY=target/release/hookline, BENCH_PORT=47870 and the next port for the receiver).
Three webhooks on every event type; events carry 20-200 KiB of padding; the daemon runs with
`storage.cache_capacity_mb = 64` and the shipped delivery bounds, on 127.0.0.1, in a temp dir.
Prints peak and final RSS and the time the drain took. Standard library only.
"""

import http.server
import json
import os
import random
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

EVENTS = int(os.environ.get("BENCH_EVENTS", "6000"))
BINARY = os.environ.get("BENCH_BINARY", "target/release/hookline")
PORT = int(os.environ.get("BENCH_PORT", "47870"))
KEY = "bench-api-key-0123456789abcdef"
BASE = f"http://127.0.0.1:{PORT}"


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    req = urllib.request.Request(BASE + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def gauge(name):
    text = urllib.request.urlopen(BASE + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.split(" ")[0] in (name, name + "{}"):
            return float(line.split()[-1])
    return 0.0


class Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} not found: run `cargo build --release` first")
    work = tempfile.mkdtemp(prefix="hookline-backlog-")
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(
            f'[server]\nlisten = "127.0.0.1:{PORT}"\n[storage]\npath = "{work}/data"\ncache_capacity_mb = 64\n'
            f'[auth]\napi_keys = ["{KEY}"]\n'
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nretry_schedule_seconds = [1]\n"
        )
    log = open(os.path.join(work, "daemon.log"), "w")
    daemon = subprocess.Popen([BINARY, "serve", "--config", config], stdout=log, stderr=log)

    def rss_mb():
        with open(f"/proc/{daemon.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
        return 0

    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(BASE + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        receiver = f"http://127.0.0.1:{PORT + 1}"
        for i in range(3):
            channel = {"channel": "webhook", "configs": {"url": f"{receiver}/{i}"}}
            call("POST", "/v1/organizations/webhooks", {"webhook_name": f"w{i}", "event_types": ["*"], "channels": [channel]})
        rng = random.Random(7)
        peak, sent = 0, 0
        started = time.time()
        for n in range(EVENTS):
            pad = "x" * rng.randint(20_000, 200_000)
            sent += len(pad)
            call("POST", "/v1/events", {"event_type": "object.created", "payload": {"n": n, "pad": pad}})
            if n % 250 == 0:
                peak = max(peak, rss_mb())
        peak = max(peak, rss_mb())
        print(f"published {EVENTS} events ({sent / 2**20:.0f} MiB of payload) in {time.time() - started:.0f} s "
              f"to 3 webhooks whose receiver is down: RSS {rss_mb()} MB (peak {peak} MB), "
              f"{gauge('hookline_delivery_queue_depth'):.0f} deliveries pending")
        server = Server(("127.0.0.1", PORT + 1), Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started = time.time()
        drain_peak = 0
        while gauge("hookline_delivery_queue_depth") > 0 and time.time() - started < 900:
            drain_peak = max(drain_peak, rss_mb())
            time.sleep(0.5)
        drained = time.time() - started
        print(f"receiver up: drained in {drained:.0f} s, RSS peak {drain_peak} MB, {rss_mb()} MB after")
        server.shutdown()
    finally:
        daemon.terminate()
        daemon.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
