"""Helpers shared by the catalogue fixture writers: paths, byte-stable writers, parameter
randomisation, BatchNorm calibration, the F32-vs-F64 tolerance estimate and the case layout."""

import copy
import hashlib
import json
import math
import os

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "catalogue")

# The smallest and largest tolerance a case may claim (issue 12: 1e-5 where the math allows,
# 1e-4 at most).
TOL_FLOOR = 1e-5
TOL_CEILING = 1e-4


def case_dir(name):
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    return path


def dumps(value, indent=0, lead=0, width=120):
    """Insertion-ordered UTF-8 JSON, indented by one space per level, where every list or object
    whose line (with its key, `lead` characters) fits in `width` characters, and every list of
    numbers, stays on one line."""
    compact = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    flat_numbers = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
    if not isinstance(value, (list, dict)) or flat_numbers or len(compact) + lead <= width:
        return compact
    pad = " " * (indent + 1)
    if isinstance(value, list):
        items = [pad + dumps(v, indent + 1, indent + 1, width) for v in value]
    else:
        items = []
        for k, v in value.items():
            key = pad + json.dumps(k, ensure_ascii=False) + ": "
            items.append(key + dumps(v, indent + 1, len(key), width))
    opening, closing = ("[", "]") if isinstance(value, list) else ("{", "}")
    return opening + "\n" + ",\n".join(items) + "\n" + " " * indent + closing


def write_json(path, value):
    """dumps() with a trailing newline (byte-stable)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(value))
        f.write("\n")


def save_tensors(path, tensors, metadata=None):
    """safetensors with at most one metadata key: two or more are written in hash-map order and
    the bytes change from run to run."""
    assert metadata is None or len(metadata) <= 1, metadata
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata=metadata)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rel_err(out, ref):
    """max |out - ref| / max |ref|: the error measure every tolerance in case.json uses."""
    out, ref = out.double(), ref.double()
    scale = float(ref.abs().max())
    return float((out - ref).abs().max()) / max(scale, 1e-30)


def claim_tolerance(observed):
    """The tolerance a case records: ten times the F32 rounding error measured against an F64
    run of the same weights, rounded up to one significant digit, at least TOL_FLOOR. A value
    above TOL_CEILING means the math does not allow issue 12's bound; the caller reports it."""
    want = max(TOL_FLOOR, 10.0 * observed)
    exponent = math.floor(math.log10(want))
    mantissa = math.ceil(want / 10.0 ** exponent - 1e-9)
    return float(f"{mantissa}e{exponent}")


def f64_error(model, forward, samples):
    """Largest rel_err over all samples and outputs between the F32 model and an F64 copy.

    forward(model, inputs) -> {output name: tensor}; floating inputs are promoted to F64."""
    double = copy.deepcopy(model).double().eval()
    worst = 0.0
    with torch.no_grad():
        for inputs, outputs in samples:
            promoted = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
            for name, ref in forward(double, promoted).items():
                worst = max(worst, rel_err(outputs[name], ref))
    return worst


def randomise_norms(model, gen):
    """BatchNorm / LayerNorm / GroupNorm affine parameters away from (1, 0): a fresh norm is nearly
    the identity and would hide a loader that swaps weight and bias or running mean and var."""
    norm_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, norm_types):
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)


def randomise_biases(model, gen, scale=0.1):
    """Conv / Linear biases that initialise to zero in torchvision (so a dropped bias would pass)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * scale)


def randomise_linears(model, gen, gain=1.0):
    """Linear weights N(0, gain^2 / fan_in): torchvision initialises some heads to zero or 0.01."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * gain / math.sqrt(fan_in))


def calibrate_batchnorm(model, make_batch, passes=4):
    """Running statistics as cumulative averages over train-mode passes of random inputs, with
    only the BatchNorm layers in train mode (dropout and stochastic depth stay off)."""
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    with torch.no_grad():
        for i in range(passes):
            model(*make_batch(i))
    model.eval()


def round_to_f16(model):
    """Round every floating parameter and buffer to F16 in place (kept as F32), so references
    computed from the model are those of the F16 checkpoint."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.float16).to(tensor.dtype))


def state_for_storage(model, f16, prefix=""):
    """The state dict as written: F16 for floating tensors when f16, integer buffers unchanged."""
    out = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().clone()
        if f16 and t.is_floating_point():
            t = t.to(torch.float16)
        out[prefix + name] = t.contiguous()
    return out


def write_io(path, samples, input_names, output_names):
    """io.safetensors: `<sample>.<tensor>` for each sample's inputs and expected outputs."""
    tensors = {}
    layout = []
    for sample_name, (inputs, outputs) in samples.items():
        entry = {"name": sample_name, "inputs": {}, "outputs": {}}
        for n in input_names:
            tensors[f"{sample_name}.{n}"] = inputs[n]
            entry["inputs"][n] = {"shape": list(inputs[n].shape), "dtype": str(inputs[n].dtype).replace("torch.", "")}
        for n in output_names:
            tensors[f"{sample_name}.{n}"] = outputs[n]
            entry["outputs"][n] = {"shape": list(outputs[n].shape), "dtype": str(outputs[n].dtype).replace("torch.", "")}
        layout.append(entry)
    save_tensors(path, tensors)
    return layout


def check_reload(build, state_path, forward, samples, prefix=""):
    """Reload the written checkpoint into a freshly built upstream model with strict=True and
    require bit-identical outputs."""
    state = load_file(state_path)
    state = {k[len(prefix):]: (v.float() if v.dtype == torch.float16 else v) for k, v in state.items()}
    fresh = build()
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    with torch.no_grad():
        for sample_name, (inputs, outputs) in samples.items():
            got = forward(fresh, inputs)
            for name, ref in outputs.items():
                if not torch.equal(got[name], ref):
                    raise AssertionError(f"{state_path}: reload differs on {sample_name}.{name}: rel {rel_err(got[name], ref):.3g}")


def finish_vision_case(name, *, architecture, config, description, model, build, forward, samples,
                       input_names, output_names, f16, prefix="", extra=None):
    """Writes model.safetensors, io.safetensors and case.json of one numeric case and checks that
    the checkpoint reloads strictly into `build()` with identical outputs."""
    folder = case_dir(name)
    model_path = os.path.join(folder, "model.safetensors")
    save_tensors(model_path, state_for_storage(model, f16, prefix))
    layout = write_io(os.path.join(folder, "io.safetensors"), samples, input_names, output_names)
    observed = f64_error(model, forward, list(samples.values()))
    tol = claim_tolerance(observed)
    check_reload(build, model_path, forward, samples, prefix)
    case = {
        "architecture": architecture,
        "config": config,
        "description": description,
        "weights": {"file": "model.safetensors", "dtype": "float16" if f16 else "float32",
                    "note": ("floating tensors stored as F16; the references were computed in F32 from the "
                             "F16-rounded values, so load them as F32" if f16 else "the state dict as PyTorch has it")},
        "tolerance": {"max_rel_err": tol, "measure": "max|out - ref| / max|ref| per output tensor",
                      "f32_vs_f64_observed": float(f"{observed:.3g}")},
        "io": {"file": "io.safetensors", "keys": "<sample>.<tensor>", "samples": layout},
    }
    if extra:
        case.update(extra)
    write_json(os.path.join(folder, "case.json"), case)
    if tol > TOL_CEILING:
        print(f"WARNING {name}: tolerance {tol} exceeds {TOL_CEILING}")
    peak = max(float(t.abs().max()) for _, o in samples.values() for t in o.values() if t.is_floating_point())
    print(f"{name}: {architecture}, tolerance {tol:g} (f32 vs f64 {observed:.2g}), max |output| {peak:.3g}, "
          f"{dir_size(folder)} bytes")
    return case


def dir_size(folder):
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total
