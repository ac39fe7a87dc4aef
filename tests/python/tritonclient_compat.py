#!/usr/bin/env python3
"""Drives a running wick with NVIDIA's own client library, tritonclient[http] (sync and asyncio).

Usage: tritonclient_compat.py INFERENCE_URL ADMIN_URL TOKEN FIXTURES_DIR
Exits non-zero on the first failed check (plain asserts, so the message says which).
"""

import asyncio
import sys

import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException
from safetensors.numpy import load_file

url, admin_url, token, fixtures = sys.argv[1:5]
client = httpclient.InferenceServerClient(url=url)

# Health and metadata.
assert client.is_server_live()
assert client.is_server_ready()
assert client.is_model_ready("digits")
assert client.is_model_ready("digits", "1")
assert not client.is_model_ready("digits", "9")
meta = client.get_server_metadata()
assert meta["name"] == "wick" and "binary_tensor_data" in meta["extensions"], meta
model = client.get_model_metadata("digits")
assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}], model
assert model["versions"] == ["1"], model

split = load_file(f"{fixtures}/digits_test.safetensors")
x, pred = split["x"], split["pred"]
logits = split["logits"]


def infer_digits(rows, binary_in, binary_out, datatype="FP32", **kwargs):
    inp = httpclient.InferInput("input", list(rows.shape), datatype)
    inp.set_data_from_numpy(rows, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("output", binary_data=binary_out)
    return client.infer("digits", [inp], outputs=[out], **kwargs)


# Every combination of binary and JSON, inputs and outputs: PyTorch's exact predictions.
for binary_in in (True, False):
    for binary_out in (True, False):
        for start in range(0, len(x), 60):
            rows = x[start:start + 60]
            result = infer_digits(rows, binary_in, binary_out)
            got = result.as_numpy("output")
            assert got.shape == (len(rows), 10), got.shape
            # Batches of 60 sum in another order than PyTorch's batch of 360: a few ulps.
            diff = np.abs(got - logits[start:start + 60]).max()
            assert diff <= 2e-5, (binary_in, binary_out, start, diff)
            assert (got.argmax(axis=1) == pred[start:start + 60]).all()

# The default request: no outputs named, so the client asks for binary outputs.
inp = httpclient.InferInput("input", [2, 64], "FP32")
inp.set_data_from_numpy(x[:2])
result = client.infer("digits", [inp], request_id="abc-1", model_version="1")
response = result.get_response()
assert response["id"] == "abc-1" and response["model_version"] == "1", response
assert len(response["parameters"]["weights_sha256"]) == 64
assert (result.as_numpy("output").argmax(axis=1) == pred[:2]).all()

# Half precision and integers go in losslessly (binary only: JSON has no FP16/BF16).
for datatype, rows in (("FP16", x[:4].astype(np.float16)), ("INT32", x[:4].astype(np.int32)),
                       ("UINT8", x[:4].astype(np.uint8))):
    result = infer_digits(rows, True, True, datatype)
    assert (result.as_numpy("output").argmax(axis=1) == pred[:4]).all(), datatype
import ml_dtypes  # noqa: E402  (a tritonclient dependency; its BF16 type)

bf16 = httpclient.InferInput("input", [4, 64], "BF16")
bf16.set_data_from_numpy(x[:4].astype(ml_dtypes.bfloat16), binary_data=True)
result = client.infer("digits", [bf16])
assert (result.as_numpy("output").argmax(axis=1) == pred[:4]).all()

# Compressed requests and responses, both algorithms.
for algorithm in ("gzip", "deflate"):
    result = infer_digits(x[:8], True, True, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    assert (result.as_numpy("output").argmax(axis=1) == pred[:8]).all(), algorithm

# Errors come back as InferenceServerException with the server's message and status.
try:
    infer_digits(x[:1, :32].copy(), False, False)
    raise AssertionError("a wrong shape was accepted")
except InferenceServerException as e:
    assert "does not match the model's [-1, 64]" in e.message(), e.message()
    assert e.status() == "400", e.status()
try:
    client.get_model_metadata("nope")
    raise AssertionError("an unknown model was found")
except InferenceServerException as e:
    assert e.status() == "404", e.status()

# The asyncio client.
async def aio():
    async with aioclient.InferenceServerClient(url=url) as aclient:
        assert await aclient.is_server_ready()
        inp = aioclient.InferInput("input", [3, 64], "FP32")
        inp.set_data_from_numpy(x[:3])
        results = await asyncio.gather(*[aclient.infer("digits", [inp]) for _ in range(16)])
        for r in results:
            assert (r.as_numpy("output").argmax(axis=1) == pred[:3]).all()

asyncio.run(aio())

# Triton's model configuration and statistics extensions.
assert {"model_configuration", "statistics"} <= set(meta["extensions"]), meta
config = client.get_model_config("digits")
assert config["name"] == "digits" and config["max_batch_size"] > 0, config
assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}], config
assert config["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [10]}], config
assert config["version_policy"] == {"latest": {"num_versions": 1}}, config
assert "max_queue_size" in config["dynamic_batching"]["default_queue_policy"], config
assert client.get_model_config("digits", "1")["name"] == "digits"
try:
    client.get_model_config("digits", "9")
    raise AssertionError("the config of a missing version was found")
except InferenceServerException as e:
    assert e.status() == "404", e.status()


def digits_stats():
    (entry,) = client.get_inference_statistics("digits", "1")["model_stats"]
    assert entry["name"] == "digits" and entry["version"] == "1", entry
    return entry


before = digits_stats()
infer_digits(x[:3], True, True)
try:
    infer_digits(x[:1, :32].copy(), False, False)
    raise AssertionError("a wrong shape was accepted")
except InferenceServerException:
    pass
after = digits_stats()
inference, before_inference = after["inference_stats"], before["inference_stats"]
# One good request of 3 rows on an idle model: one forward pass; one refused request.
assert after["inference_count"] - before["inference_count"] == 3, (before, after)
assert after["execution_count"] - before["execution_count"] == 1, (before, after)
for key, added in (("success", 1), ("fail", 1), ("queue", 1), ("compute_input", 1),
                   ("compute_infer", 1), ("compute_output", 1)):
    got = inference[key]["count"] - before_inference[key]["count"]
    assert got == added, (key, got, before, after)
    assert inference[key]["ns"] >= before_inference[key]["ns"], key
assert inference["success"]["ns"] > before_inference["success"]["ns"]
assert after["last_inference"] > 0
assert any(b["batch_size"] == 3 and b["compute_infer"]["count"] >= 1 for b in after["batch_stats"])
everything = client.get_inference_statistics()["model_stats"]
assert {m["name"] for m in everything} == {"digits", "simple"}, everything
assert client.get_inference_statistics("simple")["model_stats"][0]["version"] == "1"

# The repository extension, on the admin listener with its bearer token.
admin = httpclient.InferenceServerClient(url=admin_url)
auth = {"Authorization": f"Bearer {token}"}
index = admin.get_model_repository_index(headers=auth)
assert {"name": "digits", "version": "1", "state": "READY"} in index, index
try:
    admin.get_model_repository_index()
    raise AssertionError("the repository API answered without a token")
except InferenceServerException as e:
    assert e.status() == "401", e.status()
admin.unload_model("digits", headers=auth)
assert not client.is_model_ready("digits")
admin.load_model("digits", headers=auth)
assert client.is_model_ready("digits")

print("tritonclient compatibility: all checks passed")
