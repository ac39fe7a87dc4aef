#!/usr/bin/env python3
"""A checkpoint of random weights with exactly the keys and shapes of a torchvision manifest
(tests/fixtures/catalogue/manifests/*.json), for benchmarks that need a full-size model and no
download: speed does not depend on the values. BatchNorm variances are 1, so activations stay
finite.

Usage: random_checkpoint.py MANIFEST OUT.safetensors
"""

import json
import sys

import numpy as np
from safetensors.numpy import save_file

manifest, out = sys.argv[1:3]
rng = np.random.default_rng(0)
tensors = {}
for t in json.load(open(manifest))["tensors"]:
    shape = t["shape"]
    if t["dtype"] != "float32":
        tensors[t["name"]] = np.zeros(shape, dtype=np.int64)
    elif t["name"].endswith("running_var"):
        tensors[t["name"]] = np.ones(shape, dtype=np.float32)
    else:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = 1.0 / np.sqrt(fan_in)
        tensors[t["name"]] = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
save_file(tensors, out)
