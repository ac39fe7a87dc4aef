#!/usr/bin/env python3
"""One overload case against wick's gRPC listener serving the slow `simple` model (tests/it/
grpc.rs sets the stage: compute held, queue filled). Prints the status code it got.

Usage: grpc_overload.py timeout|full|big GRPC_URL
"""

import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

mode, url = sys.argv[1:3]
client = grpcclient.InferenceServerClient(url=url)
rows = 2000 if mode == "big" else 1
inp = grpcclient.InferInput("input", [rows, 10], "FP32")
inp.set_data_from_numpy(np.full((rows, 10), 0.5, dtype=np.float32))
kwargs = {"timeout": 200_000} if mode == "timeout" else {}  # Triton's queue timeout, in µs
started = time.monotonic()
try:
    client.infer("simple", [inp], **kwargs)
    raise AssertionError(f"{mode}: the request succeeded")
except InferenceServerException as e:
    took = time.monotonic() - started
    expected = {"timeout": "DEADLINE_EXCEEDED", "full": "RESOURCE_EXHAUSTED", "big": "OUT_OF_RANGE"}
    assert e.status() == f"StatusCode.{expected[mode]}", (e.status(), e.message())
    if mode == "timeout":
        assert took >= 0.19, took
    else:
        assert took < 1.0, took  # refused at once, never queued
    print(expected[mode], e.message())
