#!/usr/bin/env python3
"""Validates deploy/ against the Kubernetes API schemas (PyPI kubernetes-validate, strict mode).

Core resources (Deployment, Service, HPA, ...) are validated as they are. KServe's
ServingRuntime and InferenceService are custom resources whose schemas are not part of
Kubernetes: their pod-level parts (containers, volumes, security contexts, probes) are
validated as a Pod through the core schemas, and their own fields are checked against the
shape KServe's v1alpha1/v1beta1 API documents. Every container image must be the one the README's
build command makes, wick:<version of Cargo.toml> (or $WICK_IMAGE, for manifests edited to name a
registry), so the name is never a placeholder to discover. deploy/compose.yaml is not a
Kubernetes manifest (the container tests run it). Exits non-zero on the first problem.

    python scripts/validate_deploy.py [KUBERNETES_VERSION]
"""

import glob
import os
import re
import sys

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = sys.argv[1] if len(sys.argv) > 1 else "1.33.0"


def fail(path, message):
    print(f"FAIL {os.path.relpath(path, ROOT)}: {message}")
    sys.exit(1)


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        match = re.search(r'^version = "([^"]+)"', f.read(), re.MULTILINE)
    if not match:
        fail(os.path.join(ROOT, "Cargo.toml"), "no package version")
    return match.group(1)


def check_images(path, node, expected):
    """Every `image:` under node names the image the README builds."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str) and value != expected:
                fail(path, f"image {value!r}, expected {expected!r} (docker build -t {expected} .; or set WICK_IMAGE)")
            check_images(path, value, expected)
    elif isinstance(node, list):
        for item in node:
            check_images(path, item, expected)


def validate_core(path, resource):
    try:
        kubernetes_validate.validate(resource, VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        fail(path, f"{resource.get('kind')}: {e.message} at {list(e.path)}")
    except kubernetes_validate.SchemaNotFoundError as e:
        fail(path, str(e))


def expect_keys(path, obj, where, allowed, required=()):
    if not isinstance(obj, dict):
        fail(path, f"{where} must be a mapping")
    for key in obj:
        if key not in allowed:
            fail(path, f"{where}: unknown field {key!r} (allowed: {sorted(allowed)})")
    for key in required:
        if key not in obj:
            fail(path, f"{where}: missing required field {key!r}")


def as_pod(name, spec):
    pod_spec = {k: v for k, v in spec.items() if k in ("containers", "volumes", "nodeSelector", "tolerations",
                                                       "affinity", "imagePullSecrets")}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def validate_serving_runtime(path, resource):
    if resource.get("apiVersion") != "serving.kserve.io/v1alpha1":
        fail(path, "ServingRuntime must be serving.kserve.io/v1alpha1")
    spec = resource.get("spec", {})
    expect_keys(path, spec, "spec", {
        "supportedModelFormats", "protocolVersions", "multiModel", "containers", "volumes", "disabled",
        "grpcEndpoint", "httpDataEndpoint", "replicas", "storageHelper", "builtInAdapter", "nodeSelector",
        "tolerations", "affinity", "imagePullSecrets", "annotations", "labels", "workerSpec", "hostIPC",
    }, required=("supportedModelFormats", "containers"))
    for fmt in spec["supportedModelFormats"]:
        expect_keys(path, fmt, "supportedModelFormats[]", {"name", "version", "autoSelect", "priority"}, ("name",))
    for proto in spec.get("protocolVersions", []):
        if proto not in ("v1", "v2", "grpc-v1", "grpc-v2"):
            fail(path, f"unknown protocol version {proto!r}")
    validate_core(path, as_pod(resource["metadata"]["name"], spec))


def validate_inference_service(path, resource, runtimes):
    if resource.get("apiVersion") != "serving.kserve.io/v1beta1":
        fail(path, "InferenceService must be serving.kserve.io/v1beta1")
    spec = resource.get("spec", {})
    expect_keys(path, spec, "spec", {"predictor", "transformer", "explainer"}, ("predictor",))
    predictor = spec["predictor"]
    component = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency", "timeout",
                 "canaryTrafficPercent", "logger", "batcher", "serviceAccountName", "model", "containers",
                 "volumes", "nodeSelector", "tolerations", "affinity", "deploymentStrategy", "labels",
                 "annotations"}
    expect_keys(path, predictor, "spec.predictor", component, ("model",))
    if predictor.get("scaleMetric") not in (None, "cpu", "memory", "concurrency", "rps"):
        fail(path, f"unknown scaleMetric {predictor['scaleMetric']!r}")
    model = predictor["model"]
    expect_keys(path, model, "spec.predictor.model", {
        "modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "env", "resources", "args",
        "image", "ports", "volumeMounts", "readinessProbe", "livenessProbe", "securityContext",
    }, ("modelFormat",))
    runtime = model.get("runtime")
    if runtime is not None and runtime not in runtimes:
        fail(path, f"runtime {runtime!r} is not defined in deploy/ (have {sorted(runtimes)})")
    formats = runtimes.get(runtime, set())
    if model["modelFormat"].get("name") not in formats:
        fail(path, f"model format {model['modelFormat'].get('name')!r} is not supported by runtime {runtime!r}")
    # The model container is a core Container with KServe's defaults filled in.
    container = {k: v for k, v in model.items() if k not in ("modelFormat", "runtime", "protocolVersion",
                                                              "storageUri", "storage")}
    container["name"] = "kserve-container"
    container.setdefault("image", "placeholder")
    validate_core(path, as_pod(resource["metadata"]["name"], {"containers": [container]}))


def main():
    files = sorted(path for sub in ("kubernetes", "kserve")
                   for path in glob.glob(os.path.join(ROOT, "deploy", sub, "**", "*.yaml"), recursive=True))
    if not files:
        fail(ROOT, "no manifests in deploy/")
    resources = [(path, r) for path in files for r in yaml.safe_load_all(open(path)) if r]
    runtimes = {r["metadata"]["name"]: {f["name"] for f in r["spec"].get("supportedModelFormats", [])}
                for _, r in resources if r.get("kind") == "ServingRuntime"}
    image = os.environ.get("WICK_IMAGE") or f"wick:{cargo_version()}"
    for path, resource in resources:
        check_images(path, resource, image)
        kind = resource.get("kind")
        if kind == "ServingRuntime":
            validate_serving_runtime(path, resource)
        elif kind == "InferenceService":
            validate_inference_service(path, resource, runtimes)
        else:
            validate_core(path, resource)
        print(f"ok   {os.path.relpath(path, ROOT)}: {kind} {resource['metadata']['name']} (Kubernetes {VERSION})")


if __name__ == "__main__":
    main()
