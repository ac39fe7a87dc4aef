#!/usr/bin/env python3
"""Golden fixtures of wick's architecture catalogue (issue 12), made by PyTorch with fixed seeds.

Run once; the outputs are committed and tests never run Python. Environment:
scripts/requirements-arch.txt (install with --no-deps as explained there), CPU only.

    python scripts/make_catalogue_fixtures.py              # everything
    python scripts/make_catalogue_fixtures.py manifests text   # some groups: manifests vision text sequential

Every case is verified here before it is written off: the saved checkpoint is reloaded into a
freshly built upstream model with strict=True and must reproduce the references (bit for bit for
torchvision / nn.Module cases, within 1e-6 for transformers / sentence-transformers, whose reload
may pick another attention kernel). The code lives in scripts/catalogue/.

Layout of tests/fixtures/catalogue/
===================================

index.json
    every case: name, architecture, kind, files.

manifests/<preset>.json  (no weights; torchvision models built on the `meta` device)
    for resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, wide_resnet50_2/101_2,
    mobilenet_v3_small/large, efficientnet_b0..b4, convnext_tiny/small/base, vit_b_16/b_32/l_16:
      preset, architecture (wick's family name)
      constructor   the wick config fields the preset stands for, named as torchvision's
                    constructor arguments (ResNet block/layers/groups/width_per_group, MobileNetV3
                    width_mult/reduced_tail/dilated, EfficientNet width_mult/depth_mult, ConvNeXt
                    block_setting (no out_channels on the last stage = torchvision's None), ViT
                    image_size/patch_size/num_layers/num_heads/hidden_dim/mlp_dim)
      facts         what a port needs beyond the config: norm eps, MobileNetV3's and EfficientNet's
                    block tables, last_channel, ConvNeXt stochastic_depth_prob / layer_scale init,
                    EfficientNet's paper resolution
      input_size    the DEFAULT weights' crop size (ViT: image_size; EfficientNet: torchvision's
                    eval crop, 224/240/288/300/380, where the paper used 224/240/260/300/380)
      transforms    per torchvision weights entry: resize_size, crop_size, interpolation,
                    antialias, mean, std, min_size, num_params; `default` names DEFAULT
      num_params    floating parameters+buffers at 1000 and 10 classes
      tensors       the state dict at num_classes=1000, in order: {name, shape, dtype}
      num_classes_10  the only entries that differ at num_classes=10 (the head), name -> shape;
                    the key list and order are otherwise identical (checked here)

Numeric cases: tests/fixtures/catalogue/<case>/case.json, always with
      architecture  wick's family name
      config        the model's wick config table (JSON that maps 1:1 to TOML: no nulls)
      description
      weights       file, dtype and how to load it
      tolerance     what the math allows (below)

  Vision, `sequential` and `two_tower` cases (model.safetensors or stored.safetensors, io.safetensors):
      io.samples    sample "a" (batch 1) and "b" (batch 3; a second spatial size wherever the
                    architecture allows one), each input and output as io.safetensors key
                    `<sample>.<name>` (e.g. `a.input`, `b.logits`; sequential uses its configured
                    input/output names; two_tower has a.image, a.features, a.logits, a.embedding)
      tolerance     max_rel_err: max|out - ref| / max|ref| per output tensor, set to ten times the
                    F32-vs-F64 difference measured on the same weights (f32_vs_f64_observed),
                    rounded up, at least 1e-5 (none needed more than 1e-4)
      resolved      torchvision families: the preset's constructor arguments with the overrides
      Weights: random with fixed seeds; BatchNorm weight/bias randomised and running statistics
      calibrated by train-mode passes (BatchNorm layers only); LayerNorm/GroupNorm affine
      parameters, zero-initialised biases, heads, ConvNeXt layer_scale and ViT class token /
      position embedding randomised. F16 files: the references are computed in F32 from the
      F16-rounded values, so load F16 as F32. ResNets cannot be small in torchvision (stage widths
      are fixed at 64..2048): their case.json lists `generated` tensors (the counter generator of
      scripts/make_arch_fixtures.py, mirrored by tests/it/arch_resnet.rs) and stored.safetensors holds
      the BatchNorm tensors; the full state dict is their union.

  Text embedding cases (a sentence-transformers model folder: config.json, model.safetensors,
  tokenizer.json, tokenizer_config.json, modules.json, 1_Pooling/config.json,
  sentence_bert_config.json, config_sentence_transformers.json, 2_Normalize/ when normalising in the
  6.x layout):
      config        config.json's fields for the family + task "embedding", pooling, normalize,
                    max_seq_length
      upstream      class, the sentence-transformers file layout ("sentence-transformers 6.2":
                    pooling_mode string, max length in tokenizer_config.json's model_max_length; or
                    "legacy": the 2.x files most Hub models carry, pooling_mode_* booleans,
                    sentence_bert_config.json max_seq_length, no 2_Normalize folder, a
                    tokenizer_config model_max_length that differs) and the defaults those files imply
      texts         per text: text, ids (what sentence-transformers fed the model, truncated at
                    max_seq_length), tokens_untruncated, truncated, embedding (SentenceTransformer.encode,
                    batch_size 1, after reloading the folder)
      ids_case      an int64 request: input_ids padded with pad_token_id, attention_mask, embedding
      tolerance     cosine_min 0.99999 (issue 12), with the measured 1 - cosine of F32 vs F64 and of
                    batched vs single encoding

  Text classification cases (save_pretrained of *ForSequenceClassification: config.json with
  id2label, model.safetensors with `bert.` / `roberta.` / `distilbert.` / `mpnet.` prefixes and the
  head, tokenizer.json, tokenizer_config.json):
      config        config.json's fields + num_labels, id2label, task "classification", max_seq_length
      items         per input: text, text_pair (pairs only), ids, token_type_ids (BERT only),
                    tokens_untruncated, truncated (longest_first), logits, probabilities (softmax),
                    label (id2label of the argmax)
      ids_case      an int64 request: a pair and a single padded together (+ token_type_ids for BERT)
      tolerance     logits_max_abs 1e-4 (issue 12), with the measured F32-vs-F64 difference
"""

import argparse
import os
import sys

import torch

from catalogue import common, manifests, sequential, text, vision

GROUPS = {"manifests": manifests.write_manifests, "vision": vision.write_cases, "text": text.write_cases,
          "sequential": sequential.write_cases}


def kind_of(case):
    arch = case["architecture"]
    if arch in ("sequential", "two_tower"):
        return arch
    if "task" in case.get("config", {}):
        return "text-" + case["config"]["task"]
    return "vision"


def write_index():
    import json

    entries = []
    for name in sorted(os.listdir(common.OUT)):
        path = os.path.join(common.OUT, name, "case.json")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        folder = os.path.join(common.OUT, name)
        files = sorted(os.path.relpath(os.path.join(r, x), folder) for r, _, fs in os.walk(folder) for x in fs)
        entries.append({"case": name, "architecture": case["architecture"], "kind": kind_of(case), "files": files,
                        "bytes": common.dir_size(folder)})
    common.write_json(os.path.join(common.OUT, "index.json"), {"cases": entries})
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="*", help=f"any of {', '.join(GROUPS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {sorted(unknown)}; choose from {list(GROUPS)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    os.makedirs(common.OUT, exist_ok=True)
    for group in args.groups or list(GROUPS):
        GROUPS[group]()
    entries = write_index()
    total = common.dir_size(common.OUT)
    print(f"{len(entries)} cases, {total} bytes in {os.path.relpath(common.OUT, common.ROOT)} "
          f"(manifests {common.dir_size(os.path.join(common.OUT, 'manifests'))})")


if __name__ == "__main__":
    sys.exit(main())
