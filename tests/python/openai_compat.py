#!/usr/bin/env python3
"""Drives a running wick's /v1/embeddings with the official `openai` package.

Usage: openai_compat.py INFERENCE_URL
Expects an embedding model `minilm` (all-MiniLM-L6-v2, normalising) and the MLP `digits`.
Exits non-zero on the first failed check (plain asserts, so the message says which).
"""

import base64
import json
import sys
import urllib.request

import numpy as np
import openai

url = sys.argv[1]
client = openai.OpenAI(base_url=f"http://{url}/v1", api_key="unused", max_retries=0)
texts = ["hello world", "A second, somewhat longer sentence about the weather in Lisbon."]


def v2_embeddings(batch):
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(batch)],
                                   "data": batch}]}).encode()
    with urllib.request.urlopen(f"http://{url}/v2/models/minilm/infer", body) as response:
        answer = json.load(response)
    out = answer["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"]), answer["parameters"]


reference, parameters = v2_embeddings(texts)
assert reference.shape == (2, 384), reference.shape

ids = [m.id for m in client.models.list()]
assert ids == ["digits", "minilm"], ids

# Floats, and base64 (the package's default: it asks for base64 and decodes it itself).
for fmt in ("float", None):
    kwargs = {"encoding_format": fmt} if fmt else {}
    r = client.embeddings.create(model="minilm", input=texts, **kwargs)
    assert r.object == "list" and r.model == "minilm", r
    assert [d.index for d in r.data] == [0, 1]
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert got.shape == (2, 384), got.shape
    assert np.abs(got - reference).max() <= 1e-5, (fmt, np.abs(got - reference).max())
    assert r.usage.prompt_tokens == sum(parameters["tokens"]) == r.usage.total_tokens, r.usage

# The raw base64 is little-endian f32, as OpenAI's.
body = json.dumps({"model": "minilm", "input": "hello world", "encoding_format": "base64"})
with urllib.request.urlopen(f"http://{url}/v1/embeddings", body.encode()) as response:
    raw = json.load(response)["data"][0]["embedding"]
assert np.array_equal(np.frombuffer(base64.b64decode(raw), dtype="<f4"), reference[0])

# A single string and token ids ([CLS] hello world [SEP]) give the same vector.
one = client.embeddings.create(model="minilm", input="hello world", encoding_format="float")
assert np.abs(np.array(one.data[0].embedding) - reference[0]).max() <= 1e-5
tokens = client.embeddings.create(model="minilm", input=[[101, 7592, 2088, 102]],
                                  encoding_format="float")
assert np.abs(np.array(tokens.data[0].embedding) - reference[0]).max() <= 1e-5
assert tokens.usage.prompt_tokens == 4, tokens.usage

# dimensions: the first values, normalised again (the model normalises). The package decodes
# base64 itself when it chose it (no encoding_format); asked for explicitly, it is left as text.
for fmt in ("float", "base64", None):
    kwargs = {"encoding_format": fmt} if fmt else {}
    short = client.embeddings.create(model="minilm", input=texts, dimensions=64, **kwargs)
    rows = [d.embedding for d in short.data]
    if fmt == "base64":
        rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]
    got = np.array(rows, dtype=np.float32)
    assert got.shape == (2, 64), got.shape
    want = reference[:, :64] / np.linalg.norm(reference[:, :64], axis=1, keepdims=True)
    assert np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()

# Errors in OpenAI's shape, raised by the package as its own exceptions.
try:
    client.embeddings.create(model="nope", input="x")
    raise AssertionError("an unknown model answered")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found", (e.status_code, e.body)
    assert 'unknown model "nope"' in e.message, e.message
for kwargs, needle in (({"model": "minilm", "input": "x", "dimensions": 385}, "between 1 and 384"),
                       ({"model": "digits", "input": "x"}, "not a text embedding model"),
                       ({"model": "minilm", "input": []}, "no input")):
    try:
        client.embeddings.create(**kwargs)
        raise AssertionError(f"{kwargs} was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.type == "invalid_request_error", e.body
        assert needle in e.message, (needle, e.message)

print("openai compatibility: all checks passed")
