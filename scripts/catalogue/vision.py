"""Small numeric cases of the torchvision families: each config is a preset plus overrides named
as torchvision's constructor arguments, resolved here exactly as wick resolves it (preset's
arguments, then the overrides) and built with torchvision's own classes."""

import math
import os

import numpy as np
import torch
from safetensors.torch import load_file
from torchvision.models import convnext, efficientnet, mobilenetv3, resnet, vision_transformer

from make_arch_fixtures import generated  # the counter generator tests/it/arch_resnet.rs mirrors

from . import manifests
from .common import (TOL_CEILING, calibrate_batchnorm, case_dir, claim_tolerance, dir_size, f64_error,
                     finish_vision_case, randomise_biases, randomise_linears, randomise_norms, round_to_f16,
                     save_tensors, write_io, write_json)

RESERVED = ("preset", "num_classes")


def resolve(family, config):
    """The preset's constructor arguments with the config's overrides applied."""
    preset = config["preset"]
    ctor, _ = manifests.constructor(family, preset, manifests.build(preset, 1000))
    unknown = set(config) - set(RESERVED) - set(ctor)
    assert not unknown, (preset, unknown)
    return {**ctor, **{k: v for k, v in config.items() if k not in RESERVED}}


def build(family, config):
    args = resolve(family, config)
    n = config["num_classes"]
    preset = config["preset"]
    if family == "resnet":
        block = {"basic": resnet.BasicBlock, "bottleneck": resnet.Bottleneck}[args["block"]]
        return resnet.ResNet(block, args["layers"], num_classes=n, groups=args["groups"],
                             width_per_group=args["width_per_group"])
    if family == "mobilenet_v3":
        setting, last = mobilenetv3._mobilenet_v3_conf(preset, width_mult=args["width_mult"],
                                                       reduced_tail=args["reduced_tail"], dilated=args["dilated"])
        return mobilenetv3.MobileNetV3(setting, last, num_classes=n)
    if family == "efficientnet":
        setting, last = efficientnet._efficientnet_conf(preset, width_mult=args["width_mult"],
                                                        depth_mult=args["depth_mult"])
        return efficientnet.EfficientNet(setting, 0.2, last_channel=last, num_classes=n)
    if family == "convnext":
        setting = [convnext.CNBlockConfig(s["input_channels"], s.get("out_channels"), s["num_layers"])
                   for s in args["block_setting"]]
        return convnext.ConvNeXt(setting, stochastic_depth_prob=0.0, num_classes=n)
    if family == "vit":
        return vision_transformer.VisionTransformer(
            image_size=args["image_size"], patch_size=args["patch_size"], num_layers=args["num_layers"],
            num_heads=args["num_heads"], hidden_dim=args["hidden_dim"], mlp_dim=args["mlp_dim"], num_classes=n)
    raise ValueError(family)


def forward(model, inputs):
    return {"logits": model(inputs["input"])}


def images(gen, sizes):
    """Sample a: batch 1; sample b: batch 3 (at a second spatial size where the family allows)."""
    out = {}
    for name, (n, h, w) in zip("ab", sizes):
        x = torch.randn(n, 3, h, w, generator=gen) * 1.1 + 0.1
        out[name] = {"input": x}
    return out


def calibrate(model, gen, sizes):
    """BatchNorm statistics from batches of 16 at both sample sizes (at 1x1 spatial size late in a
    network, smaller batches leave some channels with a tiny variance that blows up other inputs)."""
    def batch(i):
        h, w = sizes[i % len(sizes)][1:]
        return (torch.randn(16, 3, h, w, generator=gen) * 1.1 + 0.1,)
    calibrate_batchnorm(model, batch, passes=6)


def run_samples(model, inputs):
    with torch.no_grad():
        return {k: (v, forward(model, v)) for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------------
# ResNet: torchvision fixes the stage widths at 64..512 (x4 for bottlenecks), so even one block
# per stage is 3-10 M parameters. As in tests/fixtures/arch, convolution and fc weights come from
# the counter generator and only BatchNorm tensors are stored.

RESNET_CASES = {
    "resnext_tiny": ({"preset": "resnext50_32x4d", "num_classes": 10, "layers": [1, 1, 1, 1], "groups": 4,
                      "width_per_group": 8},
                     "ResNeXt-style bottleneck: 4 groups of 8 channels per 64 planes in every 3x3 convolution"),
    "resnet_basic_tiny": ({"preset": "resnet34", "num_classes": 10, "layers": [2, 1, 1, 1]},
                          "BasicBlock ResNet with two blocks in the first stage (identity shortcut) and one "
                          "elsewhere (projection shortcut)"),
}


def load_generated(model):
    """Replaces every convolution and fc tensor by the counter generator's values (exponent from
    the fan-in, as tests/fixtures/arch does); returns their manifest and the BatchNorm key names."""
    state = model.state_dict()
    new_state, generated_list, stored_names = {}, [], []
    for key, tensor in state.items():
        if not key.startswith("fc.") and tensor.dim() <= 1:
            stored_names.append(key)
            new_state[key] = tensor.clone()
        else:
            fan_in = int(np.prod(tensor.shape[1:])) if tensor.dim() > 1 else state["fc.weight"].shape[1]
            exponent = int(round(math.log2(math.sqrt(fan_in))))
            generated_list.append({"name": key, "shape": list(tensor.shape), "exponent": exponent})
            new_state[key] = generated(key, list(tensor.shape), exponent)
    model.load_state_dict(new_state, strict=True)
    return generated_list, stored_names


def check_generated_reload(name, config, folder, generated_list, samples):
    """stored.safetensors plus the regenerated tensors load strictly and reproduce the references."""
    full = {k: (v.float() if v.dtype == torch.float16 else v)
            for k, v in load_file(os.path.join(folder, "stored.safetensors")).items()}
    for g in generated_list:
        full[g["name"]] = generated(g["name"], g["shape"], g["exponent"])
    fresh = build("resnet", config)
    fresh.load_state_dict(full, strict=True)
    fresh.eval()
    with torch.no_grad():
        for s, (inputs, outputs) in samples.items():
            assert torch.equal(fresh(inputs["input"]), outputs["logits"]), (name, s)


def resnet_case(name, seed):
    config, description = RESNET_CASES[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build("resnet", config)
    generated_list, stored_names = load_generated(model)
    randomise_norms(model, gen)
    sizes = [(1, 32, 32), (3, 27, 21)]
    calibrate(model, gen, sizes)
    with torch.no_grad():  # stored as F16, so the reference uses the rounded values
        for key, tensor in model.state_dict().items():
            if key in stored_names and tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    samples = run_samples(model, images(gen, sizes))

    folder = case_dir(name)
    stored = {k: (v.half() if v.is_floating_point() else v).detach().clone()
              for k, v in model.state_dict().items() if k in stored_names}
    save_tensors(os.path.join(folder, "stored.safetensors"), stored)
    layout = write_io(os.path.join(folder, "io.safetensors"), samples, ["input"], ["logits"])
    observed = f64_error(model, forward, list(samples.values()))
    tol = claim_tolerance(observed)

    check_generated_reload(name, config, folder, generated_list, samples)

    write_json(os.path.join(folder, "case.json"), {
        "architecture": "resnet",
        "config": config,
        "resolved": resolve("resnet", config),
        "description": description + ". Convolution and fc weights are generated, BatchNorm tensors stored.",
        "weights": {
            "file": "stored.safetensors",
            "dtype": "float16",
            "note": ("stored.safetensors holds the BatchNorm tensors as F16 (weight/bias randomised, running "
                     "stats calibrated; the references use these rounded values in F32) and "
                     "num_batches_tracked (int64); every tensor in `generated` comes from the "
                     "counter generator of scripts/make_arch_fixtures.py (FNV-1a-64 of the key, splitmix64, "
                     "(h - 32768) / 32768 * 2^-exponent), which tests/arch_resnet.rs mirrors. The full "
                     "state dict in torchvision's order is stored ∪ generated."),
            "generated": generated_list,
        },
        "tolerance": {"max_rel_err": tol, "measure": "max|out - ref| / max|ref| per output tensor",
                      "f32_vs_f64_observed": float(f"{observed:.3g}")},
        "io": {"file": "io.safetensors", "keys": "<sample>.<tensor>", "samples": layout},
    })
    if tol > TOL_CEILING:
        print(f"WARNING {name}: tolerance {tol} exceeds {TOL_CEILING}")
    print(f"{name}: resnet, tolerance {tol:g} (f32 vs f64 {observed:.2g}), max |logit| "
          f"{max(float(o['logits'].abs().max()) for _, o in samples.values()):.3g}, {dir_size(folder)} bytes")


# ---------------------------------------------------------------------------------------------
# Families small enough to store (F16 for size)

STORED_CASES = {
    "mobilenet_v3_small_tiny": ("mobilenet_v3", {"preset": "mobilenet_v3_small", "num_classes": 10, "width_mult": 0.15},
                                [(1, 32, 32), (3, 28, 20)],
                                "mobilenet_v3_small at width_mult 0.15 (channels rounded to multiples of 8, at "
                                "least 8): squeeze-excitation, hardswish/hardsigmoid, BatchNorm eps 1e-3"),
    "mobilenet_v3_large_tiny": ("mobilenet_v3", {"preset": "mobilenet_v3_large", "num_classes": 10, "width_mult": 0.1},
                                [(1, 32, 32), (3, 20, 28)],
                                "mobilenet_v3_large at width_mult 0.1 (channels rounded to multiples of 8, at "
                                "least 8; more blocks get an identity shortcut than at full width)"),
    "efficientnet_tiny": ("efficientnet", {"preset": "efficientnet_b0", "num_classes": 10, "width_mult": 0.1,
                                           "depth_mult": 0.5},
                          [(1, 32, 32), (3, 28, 20)],
                          "efficientnet_b0 at width_mult 0.1, depth_mult 0.5: MBConv with SiLU and "
                          "squeeze-excitation, residual where a stage repeats (stochastic depth is off in eval)"),
    "convnext_tiny_tiny": ("convnext", {"preset": "convnext_tiny", "num_classes": 10, "block_setting": [
                               {"input_channels": 8, "out_channels": 16, "num_layers": 2},
                               {"input_channels": 16, "out_channels": 24, "num_layers": 1},
                               {"input_channels": 24, "num_layers": 2}]},
                           [(1, 32, 32), (3, 20, 28)],
                           "ConvNeXt with three stages (the last has no out_channels, as torchvision's None): "
                           "7x7 depthwise, LayerNorm over channels, layer_scale randomised away from 1e-6"),
    "vit_tiny": ("vit", {"preset": "vit_b_16", "num_classes": 10, "image_size": 32, "patch_size": 8, "num_layers": 2,
                         "num_heads": 4, "hidden_dim": 48, "mlp_dim": 96},
                 [(1, 32, 32), (3, 32, 32)],
                 "VisionTransformer 32x32 images, 8x8 patches (16 + class token), 2 layers, 4 heads of 12; "
                 "the input size is fixed by image_size"),
    # Last, so the seeds (200 + position) of the cases above stay as they were.
    "mobilenet_v3_dilated_tiny": ("mobilenet_v3", {"preset": "mobilenet_v3_large", "num_classes": 10, "width_mult": 0.25,
                                                   "reduced_tail": True, "dilated": True},
                                  [(1, 32, 32), (3, 20, 28)],
                                  "mobilenet_v3_large at width_mult 0.25 with reduced_tail (last stage at half width) "
                                  "and dilated (dilation 2 instead of stride 2 in the last stage)"),
}


def randomise_special(model, gen):
    """Parameters torchvision initialises to constants: ConvNeXt's layer_scale (1e-6), ViT's
    class token (zeros) and position embedding (std 0.02)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.7 + 0.3)
            elif name == "class_token":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif name.endswith("pos_embedding"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def stored_case(name, seed):
    family, config, sizes, description = STORED_CASES[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build(family, config).eval()
    randomise_norms(model, gen)
    randomise_biases(model, gen)
    randomise_linears(model, gen)
    randomise_special(model, gen)
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        calibrate(model, gen, sizes)
    round_to_f16(model)
    samples = run_samples(model, images(gen, sizes))
    finish_vision_case(name, architecture=family, config=config, description=description, model=model,
                       build=lambda: build(family, config), forward=forward, samples=samples,
                       input_names=["input"], output_names=["logits"], f16=True,
                       extra={"resolved": resolve(family, config)})


def write_cases():
    for i, name in enumerate(RESNET_CASES):
        resnet_case(name, 100 + i)
    for i, name in enumerate(STORED_CASES):
        stored_case(name, 200 + i)
