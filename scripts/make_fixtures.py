#!/usr/bin/env python3
"""Demo checkpoints and golden fixtures for wick, made by PyTorch with fixed seeds.

Run once; the outputs are committed (see scripts/requirements-fixtures.txt for the pinned
environment and how to install torch without a GPU):

    python scripts/make_fixtures.py

Writes
  models/simple/1/model.safetensors      SimpleModel: nn.Linear(10, 1) stored as linear.*
  models/digits/1/model.safetensors      an MLP 64-128-64-10 trained on scikit-learn's 8x8 digits,
                                         saved as a flattened training checkpoint
                                         {'model': ..., 'optimizer': ...} (epoch in metadata)
  tests/fixtures/simple_io.safetensors   inputs and PyTorch outputs of `simple`
  tests/fixtures/digits_test.safetensors the digits test split (raw pixels 0..16), labels,
                                         PyTorch logits and predictions
  tests/fixtures/simple_v2.safetensors   a second SimpleModel (different weights) + its outputs
  tests/fixtures/broken/*.safetensors    checkpoints with known problems for the strict loader
"""

import hashlib
import json
import os
import pickle
import struct

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file, save
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)


def path(*parts):
    p = os.path.join(ROOT, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


class SimpleModel(nn.Module):
    """The model of PyTorch's "saving and loading models" tutorial."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 1)

    def forward(self, x):
        return self.linear(x)


class Digits(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def flatten(prefix, value, out, meta):
    """Flattens a torch.save-style nested dict: tensors become keys, scalars metadata."""
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().clone().contiguous()
    elif isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out, meta)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            flatten(f"{prefix}.{i}", v, out, meta)
    else:
        meta[prefix] = json.dumps(value)


def make_simple():
    torch.manual_seed(0)
    model = SimpleModel().eval()
    save_file(model.state_dict(), path("models", "simple", "1", "model.safetensors"))
    x = torch.randn(8, 10)
    with torch.no_grad():
        y = model(x)
    save_file({"x": x, "y": y}, path("tests", "fixtures", "simple_io.safetensors"))

    torch.manual_seed(1)
    v2 = SimpleModel().eval()
    with torch.no_grad():
        y2 = v2(x)
    sd = {k: v.contiguous() for k, v in v2.state_dict().items()}
    save_file(sd, path("tests", "fixtures", "simple_v2.safetensors"))
    save_file({"x": x, "y": y2}, path("tests", "fixtures", "simple_v2_io.safetensors"))
    return model


def make_digits():
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)

    torch.manual_seed(0)
    model = Digits()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt = torch.from_numpy(x_train) / 16.0
    yt = torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(0)
    epochs = 60
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=generator)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
    model.eval()
    # Fold the input scaling (pixels 0..16 -> 0..1) into fc1 so the served model takes raw
    # pixels. Dividing by 16 is exact in floating point.
    with torch.no_grad():
        model.fc1.weight.div_(16.0)

    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epochs}
    tensors, meta = {}, {}
    flatten("", checkpoint, tensors, meta)
    # One metadata key keeps the file byte-stable (safetensors writes metadata from a hash map).
    save_file(tensors, path("models", "digits", "1", "model.safetensors"),
              metadata={"training": json.dumps(meta, sort_keys=True)})

    xs = torch.from_numpy(x_test)
    with torch.no_grad():
        logits = model(xs)
    pred = logits.argmax(dim=1)
    accuracy = (pred.numpy() == y_test).mean()
    assert accuracy >= 0.95, accuracy
    save_file({"x": xs, "label": torch.from_numpy(y_test), "logits": logits, "pred": pred},
              path("tests", "fixtures", "digits_test.safetensors"))
    print(f"digits: {len(y_test)} test samples, accuracy {accuracy:.4f}, {len(tensors)} tensors in the checkpoint")
    return model


def raw_safetensors(entries, data, trailing=b""):
    """Writes a safetensors file by hand (for files PyTorch tooling refuses to write)."""
    header = "{" + ",".join(f'"{k}":{json.dumps(v)}' for k, v in entries) + "}"
    header += " " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header.encode() + data + trailing


def make_broken(simple):
    sd = {k: v.contiguous() for k, v in simple.state_dict().items()}
    out = lambda name: path("tests", "fixtures", "broken", name)

    save_file({"linear.weight": sd["linear.weight"]}, out("missing_bias.safetensors"))
    save_file({**sd, "linear.scale": torch.ones(1)}, out("unexpected_key.safetensors"))
    save_file({"linear.weight": torch.randn(1, 11), "linear.bias": sd["linear.bias"]}, out("wrong_shape.safetensors"))
    save_file({"linear.weight": sd["linear.weight"], "linear.bias": torch.tensor([3], dtype=torch.int64)},
              out("int_bias.safetensors"))
    # Three different problems at once: a missing key, an unexpected key, a wrong shape.
    save_file({"linear.weight": torch.randn(2, 10), "extra.weight": torch.zeros(3)}, out("three_problems.safetensors"))
    save_file({"linear.weight": sd["linear.weight"].half(), "linear.bias": sd["linear.bias"].half()},
              out("f16.safetensors"))

    good = save(sd)
    with open(out("truncated.safetensors"), "wb") as f:
        f.write(good[:-3])
    with open(out("trailing_bytes.safetensors"), "wb") as f:
        f.write(good + b"PK\x05\x06" + b"\0" * 18)
    with open(out("empty.safetensors"), "wb") as f:
        pass
    # The crate accepts same-offset duplicates (docs/security.md F2); wick must not.
    w = sd["linear.weight"].numpy().tobytes()
    b = sd["linear.bias"].numpy().tobytes()
    with open(out("duplicate_key.safetensors"), "wb") as f:
        f.write(raw_safetensors([
            ("linear.weight", {"dtype": "F32", "shape": [1, 10], "data_offsets": [0, 40]}),
            ("linear.bias", {"dtype": "F32", "shape": [1], "data_offsets": [40, 44]}),
            ("linear.bias", {"dtype": "I32", "shape": [1], "data_offsets": [40, 44]}),
        ], w + b))
    # A torch.save pickle (zip) with a .safetensors name, and a bare pickle.
    torch.save(simple.state_dict(), out("pickle_zip.safetensors"))
    with open(out("pickle_raw.safetensors"), "wb") as f:
        pickle.dump({"linear.weight": [0.0] * 10}, f, protocol=2)


def main():
    simple = make_simple()
    make_digits()
    make_broken(simple)
    for dirpath, _, files in sorted(os.walk(ROOT)):
        if "/target" in dirpath or "/.git" in dirpath:
            continue
        for name in sorted(files):
            if name.endswith(".safetensors") and ("models" in dirpath or "fixtures" in dirpath):
                p = os.path.join(dirpath, name)
                digest = hashlib.sha256(open(p, "rb").read()).hexdigest()[:16]
                print(f"{os.path.relpath(p, ROOT)}  {os.path.getsize(p)} bytes  sha256 {digest}")


if __name__ == "__main__":
    main()
