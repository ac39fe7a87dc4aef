"""Key/shape manifests of every torchvision preset in wick's catalogue, built on the `meta`
device (no weights allocated), with each preset's constructor arguments and eval transforms."""

import json
import os

import torch
import torchvision
from torchvision.models import convnext, efficientnet, get_model_weights, mobilenetv3

from .common import OUT, dumps

PRESETS = {
    "resnet": ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"],
    "mobilenet_v3": ["mobilenet_v3_small", "mobilenet_v3_large"],
    "efficientnet": ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4"],
    "convnext": ["convnext_tiny", "convnext_small", "convnext_base"],
    "vit": ["vit_b_16", "vit_b_32", "vit_l_16"],
}

# (width_mult, depth_mult) of torchvision's efficientnet_bN builders and the resolution of the
# EfficientNet paper; torchvision's own weights were evaluated at the crop in `transforms`.
EFFICIENTNET = {
    "efficientnet_b0": (1.0, 1.0, 224), "efficientnet_b1": (1.0, 1.1, 240), "efficientnet_b2": (1.1, 1.2, 260),
    "efficientnet_b3": (1.2, 1.4, 300), "efficientnet_b4": (1.4, 1.8, 380),
}

# ConvNeXt builders pass these; `out_channels` is absent (None in torchvision) for the last stage.
CONVNEXT_DEPTH = {"convnext_tiny": 0.1, "convnext_small": 0.4, "convnext_base": 0.5}


def build(preset, num_classes):
    with torch.device("meta"):
        return torchvision.models.get_model(preset, num_classes=num_classes)


def constructor(family, preset, model):
    """The wick config fields a preset stands for (torchvision's constructor argument names) and
    the facts a port needs that are not config fields."""
    if family == "resnet":
        block = type(model.layer1[0]).__name__
        return {"block": {"BasicBlock": "basic", "Bottleneck": "bottleneck"}[block],
                "layers": [len(getattr(model, f"layer{i}")) for i in range(1, 5)],
                "groups": model.groups, "width_per_group": model.base_width}, {"batchnorm_eps": 1e-5}
    if family == "mobilenet_v3":
        setting, last_channel = mobilenetv3._mobilenet_v3_conf(preset, width_mult=1.0)
        return {"width_mult": 1.0, "reduced_tail": False, "dilated": False}, {
            "batchnorm_eps": 1e-3,
            "last_channel": last_channel,
            "inverted_residual_setting": [
                {"input_channels": c.input_channels, "kernel": c.kernel, "expanded_channels": c.expanded_channels,
                 "out_channels": c.out_channels, "use_se": c.use_se, "use_hs": c.use_hs, "stride": c.stride,
                 "dilation": c.dilation} for c in setting],
        }
    if family == "efficientnet":
        width, depth, paper = EFFICIENTNET[preset]
        setting, last_channel = efficientnet._efficientnet_conf(preset, width_mult=width, depth_mult=depth)
        return {"width_mult": width, "depth_mult": depth}, {
            "batchnorm_eps": 1e-5,
            "paper_input_size": paper,
            "last_channel": last_channel,
            "mbconv_setting": [
                {"expand_ratio": c.expand_ratio, "kernel": c.kernel, "stride": c.stride,
                 "input_channels": c.input_channels, "out_channels": c.out_channels, "num_layers": c.num_layers}
                for c in setting],
        }
    if family == "convnext":
        stages = [s for s in model.features if isinstance(s[0], convnext.CNBlock)]
        setting = []
        for i, stage in enumerate(stages):
            entry = {"input_channels": stage[0].block[0].in_channels}
            if i + 1 < len(stages):
                entry["out_channels"] = stages[i + 1][0].block[0].in_channels
            entry["num_layers"] = len(stage)
            setting.append(entry)
        return {"block_setting": setting}, {"layernorm_eps": 1e-6, "stochastic_depth_prob": CONVNEXT_DEPTH[preset],
                                            "layer_scale_init": 1e-6}
    if family == "vit":
        return {"image_size": model.image_size, "patch_size": model.patch_size,
                "num_layers": len(model.encoder.layers), "num_heads": model.encoder.layers[0].num_heads,
                "hidden_dim": model.hidden_dim, "mlp_dim": model.mlp_dim}, {"layernorm_eps": 1e-6}
    raise ValueError(family)


def transforms(preset):
    """Every torchvision weights entry's eval transform: resize (shorter side), centre crop,
    interpolation, normalisation."""
    enum = get_model_weights(preset)
    out = {}
    for w in enum:
        t = w.transforms()
        out[w.name] = {"resize_size": list(t.resize_size), "crop_size": list(t.crop_size),
                       "interpolation": t.interpolation.value, "antialias": t.antialias,
                       "mean": list(t.mean), "std": list(t.std),
                       "min_size": list(w.meta.get("min_size", (1, 1))), "num_params": w.meta["num_params"]}
    return enum.DEFAULT.name, out


def entries(model):
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in model.state_dict().items()]


def dump(manifest):
    """JSON with one compact tensor entry per line: readable diffs at a third of indent=1's size."""
    tensors = manifest.pop("tensors")
    head = dumps(manifest)
    lines = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in tensors)
    return head[:-2] + ',\n "tensors": [\n  ' + lines + "\n ]\n}\n"


def write_manifests():
    folder = os.path.join(OUT, "manifests")
    os.makedirs(folder, exist_ok=True)
    total = 0
    for family, presets in PRESETS.items():
        for preset in presets:
            model = build(preset, 1000)
            small = build(preset, 10)
            full, ten = entries(model), entries(small)
            assert [e["name"] for e in full] == [e["name"] for e in ten], preset
            head_10 = {b["name"]: b["shape"] for a, b in zip(full, ten) if a["shape"] != b["shape"]}
            assert 1 <= len(head_10) <= 2, (preset, head_10)
            ctor, facts = constructor(family, preset, model)
            default, weights = transforms(preset)
            input_size = weights[default]["crop_size"][0]
            if family == "vit":
                assert input_size == ctor["image_size"], preset
            manifest = {
                "preset": preset,
                "architecture": family,
                "constructor": ctor,
                "facts": facts,
                "input_size": input_size,
                "transforms": {"default": default, "weights": weights},
                "num_params": {"1000": sum(v.numel() for v in model.state_dict().values() if v.is_floating_point()),
                               "10": sum(v.numel() for v in small.state_dict().values() if v.is_floating_point())},
                "num_classes_10": head_10,
                "tensors": full,
            }
            path = os.path.join(folder, f"{preset}.json")
            with open(path, "w", encoding="utf-8") as f:
                f.write(dump(manifest))
            total += os.path.getsize(path)
            print(f"manifest {preset}: {len(full)} tensors, head at 10 classes {head_10}")
    print(f"manifests: {total} bytes")
