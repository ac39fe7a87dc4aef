#!/usr/bin/env python3
"""gRPC beside HTTP: the same model, the same kind of client (NVIDIA's tritonclient, grpc and
http flavours), interleaved runs in one window, medians printed as a Markdown table.

Usage: bench_grpc.py HTTP_URL GRPC_URL MODEL INPUT ROWSxCOLS [ROUNDS] [SECONDS] [CLIENTS...]
Each client is a thread with its own connection, sending one request after another (closed
loop). The figures include the Python client's own cost, the same for both protocols.
"""

import statistics
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

http_url, grpc_url, model, input_name, dims = sys.argv[1:6]
rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 3
seconds = float(sys.argv[7]) if len(sys.argv) > 7 else 4.0
client_counts = [int(c) for c in sys.argv[8:]] or [1, 32]
shape = [int(d) for d in dims.split("x")]
data = np.random.default_rng(0).random(shape, dtype=np.float32)


def worker(protocol, deadline, latencies, errors):
    if protocol == "grpc":
        client, mod = grpcclient.InferenceServerClient(url=grpc_url), grpcclient
    else:
        client, mod = httpclient.InferenceServerClient(url=http_url), httpclient
    inp = mod.InferInput(input_name, shape, "FP32")
    inp.set_data_from_numpy(data)  # raw_input_contents (gRPC), binary tensor extension (HTTP)
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            client.infer(model, [inp])
        except Exception:  # noqa: BLE001 (counted, reported)
            errors.append(1)
            continue
        latencies.append(time.perf_counter() - started)


def run(protocol, clients):
    latencies, errors = [], []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=worker, args=(protocol, deadline, latencies, errors))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6  # noqa: E731
    return len(latencies) / seconds, pick(0.5), pick(0.99), len(errors)


results = {}
for _ in range(rounds):
    for clients in client_counts:
        for protocol in ("http", "grpc"):
            results.setdefault((clients, protocol), []).append(run(protocol, clients))

print(f"| protocol | clients | requests/s | p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|")
for (clients, protocol), runs in sorted(results.items()):
    med = lambda i: statistics.median(r[i] for r in runs)  # noqa: E731
    name = "gRPC (tritonclient.grpc)" if protocol == "grpc" else "HTTP (tritonclient.http, binary)"
    print(f"| {name} | {clients} | {med(0):,.0f} | {med(1):,.0f} | {med(2):,.0f} | "
          f"{sum(r[3] for r in runs)} |")
