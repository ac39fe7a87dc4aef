#!/usr/bin/env python3
"""Drives a running wick's gRPC listener with NVIDIA's own client, tritonclient[grpc], and with
grpcio stubs of the same service for what the client cannot send (typed `contents`).

Usage: tritonclient_grpc.py GRPC_URL ADMIN_URL TOKEN FIXTURES_DIR HTTP_URL
The server serves `digits` (FP32 MLP) and `minilm` (text: BYTES and INT64 inputs).
Exits non-zero on the first failed check (plain asserts, so the message says which).
"""

import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from safetensors.numpy import load_file
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

url, admin_url, token, fixtures, http_url = sys.argv[1:6]
client = grpcclient.InferenceServerClient(url=url)
http = httpclient.InferenceServerClient(url=http_url)
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))


def code_of(call, *args, **kwargs):
    """The gRPC status code name `call` fails with (it must fail)."""
    try:
        call(*args, **kwargs)
    except InferenceServerException as e:
        return e.status(), e.message()
    except grpc.RpcError as e:
        return str(e.code()), e.details()
    raise AssertionError(f"{call.__name__}{args} succeeded")


# Health and metadata.
assert client.is_server_live()
assert client.is_server_ready()
assert client.is_model_ready("digits")
assert client.is_model_ready("digits", "1")
meta = client.get_server_metadata()
assert meta.name == "wick" and "binary_tensor_data" in meta.extensions, meta
model = client.get_model_metadata("digits")
assert model.name == "digits" and list(model.versions) == ["1"], model
assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input", "FP32", [-1, 64])]
assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("output", "FP32", [-1, 10])]

# Configuration: the same as HTTP's /config.
config = client.get_model_config("digits", as_json=True)["config"]
http_config = http.get_model_config("digits")
assert config["name"] == "digits" and config["max_batch_size"] == http_config["max_batch_size"]
assert config["input"][0]["data_type"] == "TYPE_FP32" and config["input"][0]["dims"] == ["64"]
assert config["output"][0]["dims"] == ["10"], config
queue = config["dynamic_batching"]["default_queue_policy"]
assert int(queue["max_queue_size"]) == http_config["dynamic_batching"]["default_queue_policy"]["max_queue_size"]
assert config["parameters"]["architecture"]["string_value"] == "mlp", config
assert "latest" in config["version_policy"], config

split = load_file(f"{fixtures}/digits_test.safetensors")
x, logits, pred = split["x"], split["logits"], split["pred"]

# FP32, raw_input_contents / raw_output_contents (what tritonclient sends and reads).
before = client.get_inference_statistics("digits").model_stats[0].inference_stats.success.count
for start in range(0, 120, 60):
    rows = x[start:start + 60]
    inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer("digits", [inp], outputs=[grpcclient.InferRequestedOutput("output")])
    got = result.as_numpy("output")
    assert got.shape == (60, 10), got.shape
    assert np.abs(got - logits[start:start + 60]).max() <= 2e-5
    assert (got.argmax(axis=1) == pred[start:start + 60]).all()

# Request id, version, and the weights' sha256 as a response parameter.
inp = grpcclient.InferInput("input", [2, 64], "FP32")
inp.set_data_from_numpy(x[:2])
result = client.infer("digits", [inp], request_id="abc-1", model_version="1")
response = result.get_response()
assert response.id == "abc-1" and response.model_version == "1", response
sha = response.parameters["weights_sha256"].string_param
assert len(sha) == 64, response.parameters
http_result = http.infer("digits", [httpclient.InferInput("input", [2, 64], "FP32").set_data_from_numpy(x[:2])])
assert http_result.get_response()["parameters"]["weights_sha256"] == sha
assert (result.as_numpy("output") == http_result.as_numpy("output")).all()

# FP32 as typed `contents` (grpcio stub): the same answer as raw bytes.
request = service_pb2.ModelInferRequest(model_name="digits")
tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
tensor.contents.fp32_contents.extend(x[:2].ravel().tolist())
answer, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "rid-7")])
typed = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, 10)
# The request id is echoed, and the sha256 travels as metadata too, as HTTP's headers.
metadata = dict(call.initial_metadata())
assert metadata["x-request-id"] == "rid-7", metadata
assert metadata["x-wick-weights-sha256"] == sha, metadata
assert (typed == result.as_numpy("output")).all()
# A typed list whose length disagrees with the shape.
request.inputs[0].contents.fp32_contents.append(1.0)
assert code_of(stub.ModelInfer, request)[0] == "StatusCode.INVALID_ARGUMENT"

# Statistics: the same counters as HTTP's /stats, counting what just ran.
stats = client.get_inference_statistics("digits").model_stats[0]
assert stats.name == "digits" and stats.version == "1"
# Two batches of 60, one of 2, the typed request, and the HTTP request: the same counters.
assert stats.inference_stats.success.count == before + 5, (before, stats)
assert stats.inference_stats.fail.count >= 1, stats  # the typed list of the wrong length
assert stats.inference_count >= 126 and stats.execution_count >= 5, stats
http_stats = http.get_inference_statistics("digits")["model_stats"][0]
assert http_stats["inference_stats"]["success"]["count"] == before + 5, http_stats
assert http_stats["inference_count"] == stats.inference_count, http_stats
all_stats = client.get_inference_statistics()
assert {s.name for s in all_stats.model_stats} == {"digits", "minilm"}, all_stats

# Text: BYTES (raw from tritonclient, typed from the stub) and INT64 token ids, equal to HTTP.
text_meta = client.get_model_metadata("minilm")
inputs = {t.name: t.datatype for t in text_meta.inputs}
assert inputs["text"] == "BYTES" and inputs["input_ids"] == "INT64", inputs
out_name = text_meta.outputs[0].name
texts = np.array([b"hello world", b"gRPC and HTTP agree"], dtype=np.object_)
inp = grpcclient.InferInput("text", [2], "BYTES")
inp.set_data_from_numpy(texts)
grpc_emb = client.infer("minilm", [inp]).as_numpy(out_name)
hinp = httpclient.InferInput("text", [2], "BYTES")
hinp.set_data_from_numpy(texts)
http_emb = http.infer("minilm", [hinp]).as_numpy(out_name)
assert grpc_emb.shape == (2, 384), grpc_emb.shape
assert np.abs(grpc_emb - http_emb).max() <= 1e-6
request = service_pb2.ModelInferRequest(model_name="minilm")
tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2])
tensor.contents.bytes_contents.extend(list(texts))
typed = np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], dtype="<f4").reshape(2, 384)
assert np.abs(typed - grpc_emb).max() <= 1e-6

ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
inp = grpcclient.InferInput("input_ids", [1, 4], "INT64")
inp.set_data_from_numpy(ids)
grpc_ids = client.infer("minilm", [inp]).as_numpy(out_name)
hinp = httpclient.InferInput("input_ids", [1, 4], "INT64")
hinp.set_data_from_numpy(ids)
assert np.abs(grpc_ids - http.infer("minilm", [hinp]).as_numpy(out_name)).max() <= 1e-6
request = service_pb2.ModelInferRequest(model_name="minilm")
tensor = request.inputs.add(name="input_ids", datatype="INT64", shape=[1, 4])
tensor.contents.int64_contents.extend(ids.ravel().tolist())
typed = np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], dtype="<f4").reshape(1, 384)
assert np.abs(typed - grpc_ids).max() <= 1e-6
# "hello world" as text and as its token ids: the same embedding.
assert np.abs(grpc_ids[0] - grpc_emb[0]).max() <= 1e-5

# Error codes, as Triton's: INVALID_ARGUMENT, NOT_FOUND; UNAVAILABLE below.
bad = grpcclient.InferInput("input", [2, 63], "FP32")
bad.set_data_from_numpy(np.zeros((2, 63), dtype=np.float32))
code, message = code_of(client.infer, "digits", [bad])
assert code == "StatusCode.INVALID_ARGUMENT" and "shape" in message, (code, message)
wrong = grpcclient.InferInput("nope", [1, 64], "FP32")
wrong.set_data_from_numpy(x[:1])
assert code_of(client.infer, "digits", [wrong])[0] == "StatusCode.INVALID_ARGUMENT"
ok = grpcclient.InferInput("input", [1, 64], "FP32")
ok.set_data_from_numpy(x[:1])
assert code_of(client.infer, "nope", [ok])[0] == "StatusCode.NOT_FOUND"
assert code_of(client.infer, "digits", [ok], model_version="9")[0] == "StatusCode.NOT_FOUND"
assert code_of(client.infer, "digits", [ok], model_version="01")[0] == "StatusCode.INVALID_ARGUMENT"
assert code_of(client.get_model_metadata, "nope")[0] == "StatusCode.NOT_FOUND"
assert code_of(client.get_model_config, "nope")[0] == "StatusCode.NOT_FOUND"
assert code_of(client.get_inference_statistics, "nope")[0] == "StatusCode.NOT_FOUND"
assert code_of(client.get_model_metadata, "../etc")[0] == "StatusCode.INVALID_ARGUMENT"
# The repository RPCs are not served on the inference listener.
assert code_of(client.get_model_repository_index)[0] == "StatusCode.UNIMPLEMENTED"

# The repository RPCs on the admin listener, with the bearer token in the metadata.
admin = grpcclient.InferenceServerClient(url=admin_url)
auth = {"authorization": f"Bearer {token}"}
assert code_of(admin.get_model_repository_index)[0] == "StatusCode.UNAUTHENTICATED"
bad_auth = {"authorization": "Bearer wrong"}
assert code_of(admin.get_model_repository_index, headers=bad_auth)[0] == "StatusCode.UNAUTHENTICATED"
assert code_of(admin.unload_model, "digits")[0] == "StatusCode.UNAUTHENTICATED"
assert client.is_model_ready("digits")  # nothing was unloaded
index = admin.get_model_repository_index(headers=auth, as_json=True)["models"]
assert {"name": "digits", "version": "1", "state": "READY"} in index, index
# Inference is not served on the admin listener.
assert code_of(admin.infer, "digits", [ok], headers=auth)[0] == "StatusCode.UNIMPLEMENTED"
assert code_of(admin.load_model, "nope", headers=auth)[0] == "StatusCode.NOT_FOUND"
admin.unload_model("digits", headers=auth)
assert not client.is_model_ready("digits")
code, message = code_of(client.infer, "digits", [ok])
assert code == "StatusCode.UNAVAILABLE", (code, message)
admin.load_model("digits", headers=auth)
assert client.is_model_ready("digits")
assert client.infer("digits", [ok]).as_numpy("output").shape == (1, 10)

print("all checks passed")
