"""The load balancer of the replica tests: a client-side spreader, in Python, on the host.

It does what a Kubernetes Service with readiness probes in front of a retrying client does:

- a prober asks every replica's /v2/health/ready every PROBE_INTERVAL seconds; only replicas that
  answered 200 receive requests (so a replica that turned 503 on SIGTERM gets no new requests
  while it drains);
- worker threads spread requests round-robin over the ready replicas, each on keep-alive
  connections;
- a request whose connection failed before any byte of a response arrived is retried on the
  next replica: a refused (or timed-out) connect, and a connection reset or closed after the
  request was written. Inference is free of side effects, so this is safe; it is what nginx's
  `proxy_next_upstream error timeout non_idempotent` and Envoy's `retry_on: reset,connect-failure`
  do. Retries are counted by kind, so a test can demand that some kinds never happen;
- anything else is a failed request: an HTTP status other than 200, a response from an unknown
  version or with wrong outputs, a read timeout, no ready replica, every replica refusing.

Everything is bounded: a run stops at its deadline or after `max_requests`, whichever is first.
"""

import http.client
import json
import socket
import threading
import time

from harness import close_to, infer_body, ready_status

PROBE_INTERVAL = 0.1
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 10.0


class Backend:
    def __init__(self, name, addr):
        self.name = name
        self.addr = addr
        self.ready = False


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = []          # descriptions, the first 20 kept
        self.failures = 0
        self.retries = {"refused": 0, "cut_fresh": 0, "cut_reused": 0}
        self.served_by = {}       # backend name -> requests answered
        self.responses = []       # (wall-clock time, backend name, sha256) when recording

    def fail(self, description):
        with self.lock:
            self.failures += 1
            if len(self.failed) < 20:
                self.failed.append(description)

    def summary(self):
        return (f"{self.ok} ok, {self.failures} failed, retries {self.retries}, "
                f"served by {dict(sorted(self.served_by.items()))}")


class Balancer:
    def __init__(self):
        self._lock = threading.Lock()
        self._backends = []
        self._stop = threading.Event()
        self._prober = threading.Thread(target=self._probe_loop, daemon=True)
        self._prober.start()

    def add(self, name, addr):
        backend = Backend(name, addr)
        backend.ready = ready_status(addr, timeout=0.5) == 200
        with self._lock:
            self._backends.append(backend)

    def remove(self, name):
        with self._lock:
            self._backends = [b for b in self._backends if b.name != name]

    def ready(self):
        with self._lock:
            return [b for b in self._backends if b.ready]

    def close(self):
        self._stop.set()
        self._prober.join(timeout=5)

    def _probe_loop(self):
        while not self._stop.is_set():
            with self._lock:
                backends = list(self._backends)
            for backend in backends:
                backend.ready = ready_status(backend.addr, timeout=0.3) == 200
            self._stop.wait(PROBE_INTERVAL)


class Load:
    """`clients` threads sending `rows` to `model` through `balancer` until stopped.

    `expected` maps a weights sha256 to the outputs that version must give; a response from any
    other version, or with other outputs, is a failure. With `record`, every answer's time,
    replica and sha256 is kept (for the version-convergence checks).
    """

    def __init__(self, balancer, model, input_name, rows, expected, clients=4, duration=20.0,
                 max_requests=200_000, record=False):
        self.balancer = balancer
        self.path = f"/v2/models/{model}/infer"
        self.body = json.dumps(infer_body(input_name, rows)).encode()
        self.expected = expected
        self.deadline = time.monotonic() + duration
        self.max_requests = max_requests
        self.record = record
        self.stats = Stats()
        self._stop = threading.Event()
        self._count = 0
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=READ_TIMEOUT + 5)
        return self.stats

    def wait_for_requests(self, count, limit=10.0):
        """Blocks until `count` more requests were answered (proof the load is flowing)."""
        target = self.stats.ok + count
        deadline = time.monotonic() + limit
        while self.stats.ok < target and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.stats.ok >= target

    def _running(self):
        return not self._stop.is_set() and time.monotonic() < self.deadline and self._count < self.max_requests

    def _client(self, index):
        conns = {}
        turn = index
        try:
            while self._running():
                self._count += 1
                backends = self.balancer.ready()
                if not backends:
                    self.stats.fail("no ready replica")
                    time.sleep(0.05)
                    continue
                self._one_request(backends, turn, conns)
                turn += 1
        finally:
            for conn in conns.values():
                conn.close()

    def _one_request(self, backends, turn, conns):
        for attempt in range(len(backends)):
            backend = backends[(turn + attempt) % len(backends)]
            conn = conns.get(backend.name)
            fresh = conn is None
            if fresh:
                conn = http.client.HTTPConnection(*backend.addr, timeout=CONNECT_TIMEOUT)
                try:
                    conn.connect()
                except OSError:
                    conn.close()
                    self._retry("refused")
                    continue
                conn.sock.settimeout(READ_TIMEOUT)
                conns[backend.name] = conn
            try:
                conn.request("POST", self.path, body=self.body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
            except socket.timeout:
                conns.pop(backend.name).close()
                self.stats.fail(f"{backend.name}: no response within {READ_TIMEOUT} s")
                return
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine, OSError):
                # Closed or reset before any byte of a response: retried on the next replica.
                conns.pop(backend.name).close()
                self._retry("cut_fresh" if fresh else "cut_reused")
                continue
            try:
                raw = response.read()
            except (OSError, http.client.HTTPException) as e:
                conns.pop(backend.name).close()
                self.stats.fail(f"{backend.name}: response cut while reading it: {e!r}")
                return
            if response.will_close:
                conns.pop(backend.name).close()
            self._check(backend, response.status, raw)
            return
        self.stats.fail(f"every ready replica failed: {[b.name for b in backends]}")

    def _retry(self, kind):
        with self.stats.lock:
            self.stats.retries[kind] += 1

    def _check(self, backend, status, raw):
        if status != 200:
            self.stats.fail(f"{backend.name}: HTTP {status}: {raw[:200]!r}")
            return
        body = json.loads(raw)
        sha = body["parameters"]["weights_sha256"]
        output = body["outputs"][0]
        width = output["shape"][1]
        rows = [output["data"][i:i + width] for i in range(0, len(output["data"]), width)]
        if sha not in self.expected:
            self.stats.fail(f"{backend.name}: answered by unknown weights {sha}")
            return
        if not close_to(rows, self.expected[sha]):
            self.stats.fail(f"{backend.name}: wrong outputs from {sha[:12]}: {rows}")
            return
        with self.stats.lock:
            self.stats.ok += 1
            self.stats.served_by[backend.name] = self.stats.served_by.get(backend.name, 0) + 1
            if self.record:
                self.stats.responses.append((time.time(), backend.name, sha))
