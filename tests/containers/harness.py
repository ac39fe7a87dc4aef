"""What the container tests share: the docker CLI, HTTP to a replica, the PyTorch fixtures.

Standard library only (the tests run before any venv exists). Every container, network and
volume a run creates carries the label RUN_LABEL=<run id>, so `cleanup()` removes exactly what
this run made, even after a failure, and parallel runs cannot collide.
"""

import http.client
import json
import os
import struct
import subprocess
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
RUN_LABEL = "org.wick.container-test"
RUN_ID = os.environ.get("WICK_CONTAINER_TEST_RUN") or uuid.uuid4().hex[:10]


class TestFailure(AssertionError):
    pass


def check(condition, message):
    """An assertion that survives `python -O`."""
    if not condition:
        raise TestFailure(message)


def log(message):
    print(f"    {message}", flush=True)


# --- docker --------------------------------------------------------------------------------------

def docker(*args, check_exit=True, timeout=120, input_bytes=None):
    """Runs `docker ARGS`, returns stdout as text; raises with stderr on failure."""
    done = subprocess.run(["docker", *args], capture_output=True, timeout=timeout, input=input_bytes)
    if check_exit and done.returncode != 0:
        raise TestFailure(f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr.decode().strip()}")
    return done.stdout.decode()


def compose_command():
    """docker-compose (v1, what CI's machines have) or the `docker compose` plugin."""
    import shutil
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    raise TestFailure("neither docker-compose nor `docker compose` is available")


def unique(name):
    return f"wick-test-{RUN_ID}-{name}"


def labels():
    return ["--label", f"{RUN_LABEL}={RUN_ID}"]


def inspect(container, template):
    return docker("inspect", "--format", template, container).strip()


def container_ip(container, network):
    ip = inspect(container, "{{ (index .NetworkSettings.Networks \"%s\").IPAddress }}" % network)
    check(ip, f"{container} has no address on {network}")
    return ip


def logs(container):
    done = subprocess.run(["docker", "logs", container], capture_output=True, timeout=30)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def json_logs(container):
    """wick's JSON log lines (WICK_LOG_FORMAT=json), parsed; other lines are skipped."""
    lines = []
    for line in logs(container).splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return lines


def log_fields(line):
    """A tracing-subscriber JSON line's message and fields, flattened (wick logs them flat)."""
    fields = {k: v for k, v in line.items() if k != "fields"}
    fields.update(line.get("fields", {}))
    fields.setdefault("message", "")
    return fields


def network_create(name):
    docker("network", "create", *labels(), name)
    return name


def cleanup():
    """Removes every container, network and volume labelled with this run's id."""
    selector = f"label={RUN_LABEL}={RUN_ID}"
    ids = docker("ps", "-aq", "--filter", selector, check_exit=False).split()
    if ids:
        docker("rm", "-f", "-v", *ids, check_exit=False, timeout=60)
    for kind in ("network", "volume"):
        names = docker(kind, "ls", "-q", "--filter", selector, check_exit=False).split()
        if names:
            docker(kind, "rm", *names, check_exit=False)


# --- HTTP ----------------------------------------------------------------------------------------

def request(addr, method, path, body=None, timeout=5.0):
    """One request on a fresh connection: (status, headers, parsed JSON or raw bytes)."""
    host, port = addr
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=payload)
        response = conn.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            parsed = raw
        return response.status, dict(response.getheaders()), parsed
    finally:
        conn.close()


def ready_status(addr, timeout=1.0):
    try:
        return request(addr, "GET", "/v2/health/ready", timeout=timeout)[0]
    except OSError:
        return None


def wait_until(predicate, limit, interval=0.05, what="condition"):
    """Polls `predicate` until it returns a truthy value (returned) or `limit` seconds pass."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TestFailure(f"timed out after {limit:.1f} s waiting for {what}")
        time.sleep(interval)


def wait_ready(addr, limit=60.0):
    """Seconds until /v2/health/ready answered 200."""
    started = time.monotonic()
    wait_until(lambda: ready_status(addr) == 200, limit, what=f"{addr} to be ready")
    return time.monotonic() - started


def infer_body(name, rows):
    width = len(rows[0])
    return {"inputs": [{"name": name, "shape": [len(rows), width], "datatype": "FP32",
                        "data": [v for row in rows for v in row]}]}


def infer(addr, model, name, rows, timeout=5.0):
    """(status, weights sha256, output rows) of one inference request."""
    status, headers, body = request(addr, "POST", f"/v2/models/{model}/infer", infer_body(name, rows), timeout)
    if status != 200:
        return status, None, body
    output = body["outputs"][0]
    width = output["shape"][1]
    data = output["data"]
    return status, body["parameters"]["weights_sha256"], [data[i:i + width] for i in range(0, len(data), width)]


def close_to(got, expected, tolerance=1e-5):
    """Rows equal within `tolerance` absolute, as tests/parity.rs checks them."""
    return len(got) == len(expected) and all(
        len(g) == len(e) and all(abs(a - b) <= tolerance for a, b in zip(g, e)) for g, e in zip(got, expected))


# --- fixtures ------------------------------------------------------------------------------------

def read_safetensors(path):
    """{name: (shape, flat list)} for the F32 and I64 tensors of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    data = raw[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        fmt = {"F32": "f", "I64": "q"}[info["dtype"]]
        count = (end - start) // struct.calcsize(fmt)
        tensors[name] = (info["shape"], list(struct.unpack(f"<{count}{fmt}", data[start:end])))
    return tensors


def rows_of(tensor):
    shape, flat = tensor
    width = shape[1] if len(shape) > 1 else 1
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def sha256_of(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fixture(*parts):
    return os.path.join(FIXTURES, *parts)


def demo_model(name):
    return os.path.join(ROOT, "models", name, "1", "model.safetensors")
