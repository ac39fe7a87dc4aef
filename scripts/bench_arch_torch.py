#!/usr/bin/env python3
"""PyTorch eager side of the README's architecture comparison (examples/arch_bench.rs runs wick).

    python scripts/bench_arch_torch.py resnet18 1 8
    python scripts/bench_arch_torch.py minilm 1 8               # real weights if scripts/fetch_minilm.sh ran
    python scripts/bench_arch_torch.py vision 1 8               # every torchvision family below
    python scripts/bench_arch_torch.py text 1 8 --tokens 8 128  # roberta, distilbert, mpnet, minilm
    python scripts/bench_arch_torch.py all 1 8                  # both
    python scripts/bench_arch_torch.py resnet50,vit_b_16 8 --runs 5

Models (random weights at full size unless noted; eval mode, torch.inference_mode()):
  vision  resnet18, resnet50, resnext50_32x4d, wide_resnet50_2, mobilenet_v3_small,
          mobilenet_v3_large, efficientnet_b0, convnext_tiny, vit_b_16 — torchvision, FP32
          [batch, 3, 224, 224] in, logits out
  text    roberta (bert-base sizes: 12 layers, hidden 768, 12 heads, 3072, vocab 50265),
          distilbert (6 layers, dim 768, 12 heads, 3072, vocab 30522), mpnet (12 layers, hidden 768,
          vocab 30527, 32 relative-position buckets), minilm (all-MiniLM-L6-v2's BertModel: 6
          layers, hidden 384, 12 heads, 1536; the real weights from models/minilm/1 when present) —
          rows of `--tokens` token ids, all attended, then mean pooling and L2 normalisation
          (sentence-transformers' pipeline)

torch.set_num_threads(--threads, default 2); per case 3 warm-up runs, then up to --runs timed runs
(default 15 at batch 1, 7 above) or until --max-seconds (default 30) have passed, at least 3.
Output: one JSON line per case on stdout as it finishes ({"engine": "torch", "model", "batch",
"tokens", "median_ms", "min_ms", "max_ms", "runs", "items_per_s", "threads", "cpu", "torch"}),
then a table of the same numbers with the CPU model (lines starting with `|` or `#`).
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VISION = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v3_small", "mobilenet_v3_large",
          "efficientnet_b0", "convnext_tiny", "vit_b_16"]
TEXT = ["roberta", "distilbert", "mpnet", "minilm"]
GROUPS = {"vision": VISION, "text": TEXT, "all": VISION + TEXT}


def cpu_model():
    """/proc/cpuinfo's model name with family/model numbers, core count and AVX-512 support
    (virtual machines often report only "AMD EPYC")."""
    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, "
            f"{os.cpu_count()} cpus, {'avx512f' if 'avx512f' in flags else 'avx2' if 'avx2' in flags else 'no avx2'})")


def timed(fn, runs, max_seconds):
    """3 warm-up calls, then up to `runs` timed calls (at least 3) within max_seconds; ms."""
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def ids(rows, length):
    out = torch.empty(rows, length, dtype=torch.int64)
    for r in range(rows):
        for j in range(length):
            out[r, j] = 101 if j == 0 else 102 if j == length - 1 else 1000 + (r * 7919 + j * 104729) % 28000
    return out


def vision_model(name):
    import torchvision

    return torchvision.models.get_model(name).eval()


def text_model(name):
    """The encoder and a note on its weights."""
    import transformers as tf

    if name == "roberta":
        cfg = tf.RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                               layer_norm_eps=1e-5, pad_token_id=1)
        return tf.RobertaModel(cfg, add_pooling_layer=False).eval(), "random"
    if name == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                                  max_position_embeddings=512)
        return tf.DistilBertModel(cfg).eval(), "random"
    if name == "mpnet":
        cfg = tf.MPNetConfig(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=514, relative_attention_num_buckets=32)
        return tf.MPNetModel(cfg, add_pooling_layer=False).eval(), "random"
    if name == "minilm":
        cfg = tf.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=512, hidden_act="gelu")
        model = tf.BertModel(cfg, add_pooling_layer=False).eval()
        path = os.path.join(ROOT, "models", "minilm", "1", "model.safetensors")
        if not os.path.isfile(path):
            return model, "random"
        from safetensors.torch import load_file

        state = load_file(path)
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        model.load_state_dict(state, strict=True)
        return model, "all-MiniLM-L6-v2"
    raise ValueError(name)


def embed(model, input_ids):
    """Encoder, then sentence-transformers' mean pooling over the mask and L2 normalisation."""
    mask = torch.ones_like(input_ids)
    hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def report(result, rows):
    print(json.dumps(result), flush=True)
    rows.append(result)


def bench(name, args, common, rows):
    """Every batch size (and sequence length) of one model, built once."""
    if name in VISION:
        model, weights = vision_model(name), "random"
        shapes = [(None, "224x224", lambda b: torch.randn(b, 3, 224, 224), model)]
    else:
        model, weights = text_model(name)
        shapes = [(n, f"{n} tokens", lambda b, n=n: ids(b, n), lambda x: embed(model, x)) for n in args.tokens]
    for b in args.batches:
        runs = args.runs or (15 if b == 1 else 7)
        for tokens, shape, make, run in shapes:
            x = make(b)
            with torch.inference_mode():
                times = timed(lambda: run(x), runs, args.max_seconds)
            median = statistics.median(times)
            report({"engine": "torch", "model": name, "batch": b, "tokens": tokens, "input": shape,
                    "weights": weights, "median_ms": round(median, 3), "min_ms": round(min(times), 3),
                    "max_ms": round(max(times), 3), "runs": len(times), "items_per_s": round(b * 1e3 / median, 2),
                    **common}, rows)


def table(rows, common):
    print(f"# PyTorch {common['torch']} eager, {common['threads']} threads, CPU: {common['cpu']}")
    print("| model | input | batch | median ms | min-max ms | items/s | runs |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['batch']} | {r['median_ms']:.2f} | "
              f"{r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['items_per_s']:.1f} | {r['runs']} |")


def main():
    parser = argparse.ArgumentParser(description="PyTorch eager reference timings")
    parser.add_argument("model", help=f"a model, a comma-separated list, or a group: {', '.join(GROUPS)}; "
                                      f"models: {', '.join(VISION + TEXT)}")
    parser.add_argument("batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--tokens", nargs="+", type=int, default=[8, 128], help="text sequence lengths")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=0, help="timed runs per case (default 15 at batch 1, 7 above)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop timing a case after this (>= 3 runs)")
    args = parser.parse_args()
    names = GROUPS.get(args.model) or args.model.split(",")
    unknown = [n for n in names if n not in VISION + TEXT]
    if unknown:
        parser.error(f"unknown model(s) {unknown}")
    torch.set_num_threads(args.threads)
    common = {"threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__}
    rows = []
    for name in names:
        bench(name, args, common, rows)
    table(rows, common)


if __name__ == "__main__":
    main()
