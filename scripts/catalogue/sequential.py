"""`sequential` cases (an nn.Sequential declared in config, layer types and arguments as PyTorch
names them) and the `custom_two_tower` example of a hand-written module with two inputs and two
outputs."""

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .common import calibrate_batchnorm, finish_vision_case, randomise_biases, randomise_norms

# The three stacks together use every layer type issue 12 lists: Linear, Conv1d, Conv2d (stride,
# padding, dilation, groups, bias=false), BatchNorm1d (on [N, C, L] and [N, C]), BatchNorm2d,
# LayerNorm (one and two normalised dims), GroupNorm, Embedding (INT64 input), Dropout, Identity,
# ReLU, LeakyReLU, GELU (exact and tanh), SiLU, Tanh, Sigmoid, Softmax, LogSoftmax (dim -1),
# MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Unflatten.
SEQUENTIAL_CASES = {
    "sequential_mnist": {
        "description": "issue 12's MNIST CNN with 8 instead of 32 channels (a 1568x10 Linear keeps it small)",
        "config": {"input": {"name": "input", "shape": [1, 28, 28]}, "layers": [
            {"type": "Conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": 3, "padding": 1},
            {"type": "BatchNorm2d", "num_features": 8},
            {"type": "ReLU"},
            {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Flatten"},
            {"type": "Dropout", "p": 0.25},
            {"type": "Linear", "in_features": 1568, "out_features": 10},
        ]},
    },
    "sequential_vision": {
        "description": "a convolutional stack saved as `features.` inside a parent module, with a named output",
        "config": {"input": {"name": "image", "shape": [3, 20, 20]}, "prefix": "features.", "layers": [
            {"type": "Conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1,
             "bias": False},
            {"type": "BatchNorm2d", "num_features": 8},
            {"type": "LeakyReLU", "negative_slope": 0.1},
            {"type": "Conv2d", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "padding": 2, "dilation": 2,
             "groups": 4},
            {"type": "GroupNorm", "num_groups": 2, "num_channels": 8},
            {"type": "SiLU"},
            {"type": "AvgPool2d", "kernel_size": 2},
            {"type": "Conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": [1, 3], "padding": [0, 1]},
            {"type": "GELU", "approximate": "tanh"},
            {"type": "MaxPool2d", "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "AdaptiveAvgPool2d", "output_size": [2, 2]},
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 64, "out_features": 24},
            {"type": "LayerNorm", "normalized_shape": 24},
            {"type": "Tanh"},
            {"type": "Identity"},
            {"type": "Dropout", "p": 0.1},
            {"type": "Linear", "in_features": 24, "out_features": 5},
            {"type": "Softmax", "dim": 1},
        ], "output": {"name": "probabilities"}},
    },
    "sequential_tokens": {
        "description": "token ids (INT64, because the first layer is an Embedding) through Conv1d, BatchNorm1d on "
                       "3-D and 2-D input, Unflatten, a two-dimensional LayerNorm and LogSoftmax on the last dim",
        "config": {"input": {"name": "tokens", "shape": [12]}, "layers": [
            {"type": "Embedding", "num_embeddings": 50, "embedding_dim": 16},
            {"type": "Conv1d", "in_channels": 12, "out_channels": 8, "kernel_size": 3, "padding": 1},
            {"type": "BatchNorm1d", "num_features": 8},
            {"type": "ReLU"},
            {"type": "Conv1d", "in_channels": 8, "out_channels": 8, "kernel_size": 3, "stride": 2, "groups": 2,
             "bias": False},
            {"type": "GELU"},
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 56, "out_features": 32},
            {"type": "BatchNorm1d", "num_features": 32},
            {"type": "Sigmoid"},
            {"type": "Unflatten", "dim": 1, "unflattened_size": [4, 8]},
            {"type": "LayerNorm", "normalized_shape": [4, 8]},
            {"type": "Linear", "in_features": 8, "out_features": 6},
            {"type": "LogSoftmax", "dim": -1},
        ]},
    },
}


def build_sequential(config):
    """nn.Sequential from the config: each entry is `getattr(torch.nn, type)(**arguments)` with
    lists turned into tuples, which is the whole mapping wick has to reproduce."""
    layers = []
    for entry in config["layers"]:
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "type"}
        layers.append(getattr(nn, entry["type"])(**args))
    seq = nn.Sequential(*layers)
    if config.get("prefix"):
        return Parent(config["prefix"], seq)
    return seq


class Parent(nn.Module):
    """A module holding the stack as its child `prefix` (so keys read `features.0.weight`)."""

    def __init__(self, prefix, seq):
        super().__init__()
        self.child = prefix.rstrip(".")
        assert prefix == self.child + "." and "." not in self.child
        self.add_module(self.child, seq)

    def forward(self, x):
        return getattr(self, self.child)(x)


def sequential_case(name, seed):
    spec = SEQUENTIAL_CASES[name]
    config = spec["config"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_sequential(config).eval()
    randomise_norms(model, gen)
    randomise_biases(model, gen)
    in_name = config["input"]["name"]
    out_name = config.get("output", {}).get("name", "output")
    shape = config["input"]["shape"]
    tokens = config["layers"][0]["type"] == "Embedding"

    def make(n):
        if tokens:
            return torch.randint(0, config["layers"][0]["num_embeddings"], (n, *shape), generator=gen)
        return torch.randn(n, *shape, generator=gen) * 1.1 + 0.1

    calibrate_batchnorm(model, lambda i: (make(16),), passes=4)

    def forward(m, inputs):
        return {out_name: m(inputs[in_name])}

    samples = {}
    with torch.no_grad():
        for sample, n in (("a", 1), ("b", 3)):
            inputs = {in_name: make(n)}
            samples[sample] = (inputs, forward(model, inputs))
    # The stored keys are the parent's (`features.0.weight`) when there is a prefix.
    finish_vision_case(name, architecture="sequential", config=config, description=spec["description"],
                       model=model, build=lambda: build_sequential(config), forward=forward, samples=samples,
                       input_names=[in_name], output_names=[out_name], f16=False)


# ---------------------------------------------------------------------------------------------
# custom_two_tower: the README's worked example of porting your own module.


class TwoTower(nn.Module):
    """An image tower and a feature-vector tower, fused; outputs class logits and a unit-length
    embedding. Any image size works (adaptive pooling)."""

    def __init__(self, num_features=6, num_classes=4, embed_dim=8):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(num_features, 16), nn.LayerNorm(16), nn.GELU())
        self.fuse = nn.Linear(32, 32)
        self.classifier = nn.Linear(32, num_classes)
        self.embed = nn.Linear(32, embed_dim)

    def forward(self, image, features):
        h = torch.cat([self.image(image), self.features(features)], dim=1)
        h = torch.relu(self.fuse(h))
        return self.classifier(h), F.normalize(self.embed(h), dim=1)


def two_tower_case(seed):
    config = {"num_features": 6, "num_classes": 4, "embed_dim": 8}
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TwoTower(**config).eval()
    randomise_norms(model, gen)
    randomise_biases(model, gen)
    calibrate_batchnorm(model, lambda i: (torch.randn(16, 3, 24, 24, generator=gen),
                                          torch.randn(16, 6, generator=gen)), passes=4)

    def forward(m, inputs):
        logits, embedding = m(inputs["image"], inputs["features"])
        return {"logits": logits, "embedding": embedding}

    samples = {}
    with torch.no_grad():
        for sample, (n, h, w) in (("a", (1, 24, 24)), ("b", (3, 17, 30))):
            inputs = {"image": torch.randn(n, 3, h, w, generator=gen),
                      "features": torch.randn(n, 6, generator=gen) * 2.0}
            samples[sample] = (inputs, forward(model, inputs))
    finish_vision_case(
        "custom_two_tower", architecture="two_tower", config=config,
        description="a hand-written nn.Module with two inputs (image FP32 [N,3,H,W], features FP32 [N,6]) and "
                    "two outputs (logits [N,4], embedding [N,8], L2-normalised); `source` is its PyTorch code",
        model=model, build=lambda: TwoTower(**config), forward=forward, samples=samples,
        input_names=["image", "features"], output_names=["logits", "embedding"], f16=False,
        extra={"source": inspect.getsource(TwoTower)})


def write_cases():
    for i, name in enumerate(SEQUENTIAL_CASES):
        sequential_case(name, 500 + i)
    two_tower_case(600)
