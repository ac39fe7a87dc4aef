#!/usr/bin/env python3
"""PyTorch eager side of the README's resnet18 / MiniLM comparison (examples/arch_bench.rs runs wick).

    RAYON_NUM_THREADS=2 python scripts/bench_arch_torch.py resnet18 1 8
    python scripts/bench_arch_torch.py minilm 1 8      # needs scripts/fetch_minilm.sh first

Same shapes as the Rust side: resnet18 at 224x224 (torchvision, eval, random weights), MiniLM
(transformers BertModel with the real weights) on rows of 128 token ids followed by mean pooling and
L2 normalisation. torch.set_num_threads(2) unless --threads says otherwise; 3 warm-up runs, then the
median of 15 runs (7 for batches above 1), under torch.inference_mode().
"""

import argparse
import os
import statistics
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_seconds(fn, runs):
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ids(rows, length):
    out = torch.empty(rows, length, dtype=torch.int64)
    for r in range(rows):
        for j in range(length):
            out[r, j] = 101 if j == 0 else 102 if j == length - 1 else 1000 + (r * 7919 + j * 104729) % 28000
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["resnet18", "minilm"])
    parser.add_argument("batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "resnet18":
        import torchvision

        model = torchvision.models.resnet18().eval()
        for b in args.batches:
            x = torch.randn(b, 3, 224, 224)
            with torch.inference_mode():
                t = median_seconds(lambda: model(x), 7 if b > 1 else 15)
            print(f"torch resnet18 224x224 batch {b}: {t * 1e3:.1f} ms, {b / t:.1f} images/s (threads {torch.get_num_threads()})")
    else:
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=512, hidden_act="gelu")
        model = BertModel(config, add_pooling_layer=False).eval()
        state = load_file(os.path.join(ROOT, "models", "minilm", "1", "model.safetensors"))
        state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        model.load_state_dict(state, strict=True)

        def run(input_ids):
            mask = torch.ones_like(input_ids)
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

        for b in args.batches:
            x = ids(b, 128)
            with torch.inference_mode():
                t = median_seconds(lambda: run(x), 7 if b > 1 else 15)
            print(f"torch minilm seq 128 batch {b}: {t * 1e3:.1f} ms, {b / t:.1f} sequences/s (threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
