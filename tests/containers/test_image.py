"""The image, run as one container the way deploy/kubernetes runs it.

One container (`main`) runs for the whole module: read-only root file system, all capabilities
dropped, no new privileges, `--cpus 1`, the repository a host folder mounted read-only (a copy
of models/, so the test can publish into it). A second one (`unlimited`) runs without a CPU
limit, so the thread budget is seen to follow the limit rather than being a constant. The
checks run in order; the last one stops `main`.
"""

import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import time

import harness as h
from harness import check, log

POLL_MS = 500
DRAIN_MS = 1000


class Context:
    def __init__(self, image):
        self.image = image
        self.network = h.network_create(h.unique("single"))
        self.repo = tempfile.mkdtemp(prefix=f"wick-test-{h.RUN_ID}-")
        os.chmod(self.repo, 0o755)
        for model in ("simple", "digits"):
            shutil.copytree(os.path.join(h.ROOT, "models", model), os.path.join(self.repo, model))
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        self.main = h.unique("main")
        self.started = time.monotonic()
        self._run(self.main, "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                  "--cpus", "1", "-v", f"{self.repo}:/models:ro",
                  "-e", f"WICK_POLL_INTERVAL_MS={POLL_MS}", "-e", f"WICK_DRAIN_DELAY_MS={DRAIN_MS}",
                  "-e", "WICK_SHUTDOWN_GRACE_MS=20000")
        self.unlimited = h.unique("unlimited")
        self._run(self.unlimited, "--read-only")
        self.addr = (h.container_ip(self.main, self.network), 8080)
        h.wait_ready(self.addr)
        self.ready_after = time.monotonic() - self.started

    def _run(self, name, *options):
        h.docker("run", "-d", "--name", name, "--network", self.network, *h.labels(), *options, self.image)

    def close(self):
        shutil.rmtree(self.repo, ignore_errors=True)

    def publish(self, model, version, source):
        """The publishing contract: stage in a dot folder on the same file system, rename."""
        staging = os.path.join(self.repo, model, f".incoming-{version}")
        os.makedirs(staging)
        shutil.copyfile(source, os.path.join(staging, "model.safetensors"))
        os.chmod(staging, 0o755)
        os.rename(staging, os.path.join(self.repo, model, str(version)))
        return time.monotonic()


def startup_line(container):
    for line in h.json_logs(container):
        fields = h.log_fields(line)
        if "compute_threads" in fields:
            return fields
    return None


def test_runs_as_non_root(ctx):
    check(h.inspect(ctx.main, "{{.Config.User}}") == "10001:10001", "the image does not set USER 10001:10001")
    status = h.docker("exec", ctx.main, "cat", "/proc/1/status")
    uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    gid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
    check(set(uid) == {"10001"} and set(gid) == {"10001"}, f"wick (pid 1) runs as uid {uid}, gid {gid}")
    caps = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    check(int(caps, 16) == 0, f"wick has effective capabilities {caps}")
    log(f"pid 1: uid {uid[0]}, gid {gid[0]}, no capabilities")


def test_read_only_root_file_system(ctx):
    check(h.inspect(ctx.main, "{{.HostConfig.ReadonlyRootfs}}") == "true", "the root file system is not read-only")
    # Even root cannot write: the serving checks of this module ran on a read-only root.
    done = h.docker("exec", "-u", "0", ctx.main, "sh", "-c", "touch /etc/wick/probe 2>&1; echo $?", check_exit=False)
    check("Read-only file system" in done and not done.strip().endswith("\n0"), f"the root file system took a write: {done!r}")
    log(f"ready {ctx.ready_after:.2f} s after docker run, writes refused: {done.splitlines()[0]!r}")


def test_v2_inference_matches_pytorch(ctx):
    status, _, body = h.request(ctx.addr, "GET", "/v2/models/digits")
    check(status == 200 and body["inputs"][0]["shape"] == [-1, 64], f"digits metadata: {status} {body}")
    io = h.read_safetensors(h.fixture("simple_io.safetensors"))
    status, sha, rows = h.infer(ctx.addr, "simple", "input", h.rows_of(io["x"]))
    check(status == 200, f"simple: HTTP {status} {rows}")
    check(sha == h.sha256_of(h.demo_model("simple")), f"simple answered with weights {sha}")
    check(h.close_to(rows, h.rows_of(io["y"])), f"simple's outputs differ from PyTorch's: {rows}")
    digits = h.read_safetensors(h.fixture("digits_test.safetensors"))
    x, logits, pred = h.rows_of(digits["x"]), h.rows_of(digits["logits"]), digits["pred"][1]
    digits_sha = h.sha256_of(h.demo_model("digits"))
    # As tests/parity.rs: every sample alone within 1e-5 of PyTorch's logits, and in requests of
    # 60 rows (another gemm shape, a few ulps apart) classified exactly as PyTorch does.
    for i, row in enumerate(x):
        status, sha, rows = h.infer(ctx.addr, "digits", "input", [row])
        check(status == 200 and sha == digits_sha, f"digits sample {i}: HTTP {status}, weights {sha}: {rows}")
        check(h.close_to(rows, [logits[i]]), f"digits sample {i}: {rows[0]} vs PyTorch's {logits[i]}")
    for start in range(0, len(x), 60):
        status, sha, rows = h.infer(ctx.addr, "digits", "input", x[start:start + 60])
        check(status == 200 and sha == digits_sha, f"digits rows {start}..: HTTP {status}, weights {sha}")
        argmax = [max(range(10), key=row.__getitem__) for row in rows]
        check(argmax == pred[start:start + 60], f"digits rows {start}..: classes differ from PyTorch's")
    log(f"simple: 8 rows, digits: {len(x)} samples within 1e-5 of PyTorch, classes equal in batches of 60")


def test_cpu_limit_sets_the_thread_budget(ctx):
    limited = h.wait_until(lambda: startup_line(ctx.main), 10, what="the startup log line of main")
    check(limited["compute_threads"] == 1, f"--cpus 1, yet the startup log says {limited}")
    h.wait_ready((h.container_ip(ctx.unlimited, ctx.network), 8080))
    unlimited = h.wait_until(lambda: startup_line(ctx.unlimited), 10, what="the startup log line of unlimited")
    cpus = len(os.sched_getaffinity(0))
    check(unlimited["compute_threads"] == cpus, f"no CPU limit on {cpus} CPUs, yet the startup log says {unlimited}")
    h.docker("rm", "-f", "-v", ctx.unlimited)
    log(f"--cpus 1: compute_threads {limited['compute_threads']}, tokio_workers {limited['tokio_workers']}; "
        f"no limit: compute_threads {unlimited['compute_threads']}")


def test_new_version_is_served_within_the_poll_interval(ctx):
    v2 = h.read_safetensors(h.fixture("simple_v2_io.safetensors"))
    v2_sha = h.sha256_of(h.fixture("simple_v2.safetensors"))
    x = h.rows_of(v2["x"])
    published = ctx.publish("simple", 2, h.fixture("simple_v2.safetensors"))

    def served():
        status, sha, rows = h.infer(ctx.addr, "simple", "input", x)
        check(status == 200, f"HTTP {status} during the swap: {rows}")
        return (sha, rows) if sha == v2_sha else None

    limit = POLL_MS / 1000 + 1
    _, rows = h.wait_until(served, limit, interval=0.01, what=f"version 2 ({v2_sha[:12]}) to be served")
    took = time.monotonic() - published
    check(h.close_to(rows, h.rows_of(v2["y"])), f"version 2's outputs differ from PyTorch's: {rows}")
    log(f"version 2 served {took * 1000:.0f} ms after its rename (limit {limit * 1000:.0f} ms)")


def test_broken_version_is_refused_and_the_old_keeps_serving(ctx):
    v2_sha = h.sha256_of(h.fixture("simple_v2.safetensors"))
    x = h.rows_of(h.read_safetensors(h.fixture("simple_v2_io.safetensors"))["x"])
    ctx.publish("simple", 3, h.fixture("broken", "wrong_shape.safetensors"))

    def refused():
        status, sha, rows = h.infer(ctx.addr, "simple", "input", x)
        check(status == 200 and sha == v2_sha, f"while version 3 is refused: HTTP {status}, weights {sha}")
        return any(h.log_fields(line).get("message", "").startswith("version refused")
                   and str(h.log_fields(line).get("version")) == "3" for line in h.json_logs(ctx.main))

    h.wait_until(refused, POLL_MS / 1000 + 1, interval=0.05, what="the refusal of version 3 in the log")
    status, _, _ = h.request(ctx.addr, "GET", "/v2/models/simple/versions/3/ready")
    check(status != 200, "the broken version 3 reports ready")
    for _ in range(20):
        status, sha, _ = h.infer(ctx.addr, "simple", "input", x)
        check(status == 200 and sha == v2_sha, f"after refusing version 3: HTTP {status}, weights {sha}")
    log("version 3 (wrong shape) refused in the log, version 2 kept answering")


def test_healthcheck_turns_healthy(ctx):
    # The image's HEALTHCHECK runs first `interval` (10 s) after the start.
    def healthy():
        state = h.inspect(ctx.main, "{{.State.Health.Status}}")
        check(state in ("starting", "healthy"), f"the health check says {state}")
        return state == "healthy"

    h.wait_until(healthy, 40 - (time.monotonic() - ctx.started), interval=0.5, what="the health check")
    log(f"healthy {time.monotonic() - ctx.started:.1f} s after docker run")


class SlowRequest:
    """A request in flight across the SIGTERM: headers and half the body now, the rest later."""

    def __init__(self, addr, body):
        self.body = body
        self.sock = socket.create_connection(addr, timeout=30)
        head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: wick\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head + body[:len(body) // 2])

    def finish(self):
        """Sends the rest; (status, parsed JSON body)."""
        self.sock.sendall(self.body[len(self.body) // 2:])
        response = http.client.HTTPResponse(self.sock)
        try:
            response.begin()
            return response.status, json.loads(response.read())
        finally:
            self.sock.close()


class KeepAliveClients:
    """Clients on keep-alive connections; counts answers before and after `mark()`."""

    def __init__(self, addr, body, count=3):
        self.addr, self.body = addr, body
        self.before = self.after = 0
        self.bad = []
        self.marked = threading.Event()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _run(self):
        conn = http.client.HTTPConnection(*self.addr, timeout=10)
        while not self.done.is_set():
            try:
                conn.request("POST", "/v2/models/digits/infer", body=self.body)
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                return  # the server closed the connection at the end of the drain
            if response.status != 200:
                self.bad.append(f"HTTP {response.status}: {raw[:200]!r}")
            elif self.marked.is_set():
                self.after += 1
            else:
                self.before += 1

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=15)


def test_docker_stop_drains_in_flight_requests_and_exits_zero(ctx):
    digits = h.read_safetensors(h.fixture("digits_test.safetensors"))
    row, expected = h.rows_of(digits["x"])[:1], h.rows_of(digits["logits"])[:1]
    body = json.dumps(h.infer_body("input", row)).encode()
    in_flight = SlowRequest(ctx.addr, body)
    clients = KeepAliveClients(ctx.addr, body)
    time.sleep(0.3)
    stopped = {}

    def stop():
        began = time.monotonic()
        h.docker("stop", "-t", "30", ctx.main, timeout=60)
        stopped["after"] = time.monotonic() - began

    stopper = threading.Thread(target=stop)
    began = time.monotonic()
    stopper.start()
    h.wait_until(lambda: h.ready_status(ctx.addr, timeout=0.3) == 503, 1.0, interval=0.01,
                 what="readiness to turn 503 after docker stop")
    to_503 = time.monotonic() - began
    clients.marked.set()                 # SIGTERM arrived: what is answered now is drained
    # Past the drain delay the listener is closed; the half-sent request is still in flight.
    time.sleep(DRAIN_MS / 1000 + 0.5)
    status, answer = in_flight.finish()
    stopper.join(timeout=60)
    clients.stop()
    check(status == 200, f"the request in flight across SIGTERM got HTTP {status}: {answer}")
    output = answer["outputs"][0]["data"]
    check(h.close_to([output], expected), f"the in-flight request's outputs differ from PyTorch's: {output}")
    check(not clients.bad, f"requests failed during the drain: {clients.bad[:5]}")
    check(clients.after > 0, "no request was answered between readiness turning 503 and the listener closing")
    code = h.inspect(ctx.main, "{{.State.ExitCode}}")
    check(code == "0", f"wick exited {code} on docker stop")
    check(stopped.get("after", 99) < 20, f"docker stop took {stopped.get('after')} s (killed at the timeout?)")
    messages = [h.log_fields(line).get("message", "") for line in h.json_logs(ctx.main)]
    check("shutdown complete" in messages, "no 'shutdown complete' in the log")
    log(f"readiness 503 {to_503 * 1000:.0f} ms after `docker stop`, {clients.after} requests answered while "
        f"draining, the half-sent request answered 200, exit 0 after {stopped['after']:.2f} s")


TESTS = [
    test_runs_as_non_root,
    test_read_only_root_file_system,
    test_v2_inference_matches_pytorch,
    test_cpu_limit_sets_the_thread_budget,
    test_new_version_is_served_within_the_poll_interval,
    test_broken_version_is_refused_and_the_old_keeps_serving,
    test_healthcheck_turns_healthy,
    test_docker_stop_drains_in_flight_requests_and_exits_zero,
]
