"""Text cases: tiny Hugging Face encoders with random weights.

Embedding cases are sentence-transformers models (the transformers model + Pooling + optional
Normalize) saved into the case folder, with references from SentenceTransformer.encode after
reloading that folder. Classification cases are *ForSequenceClassification models saved with
save_pretrained, with references from transformers (logits, softmax, argmax label)."""

import math
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file

from . import text_tokenizers as tt
from .common import case_dir, dir_size, write_json

COSINE_MIN = 0.99999
LOGITS_MAX_ABS = 1e-4

# What a client sends: mixed lengths, accents and CJK, an empty string, surrounding spaces, and
# one text longer than every case's max_seq_length.
LONG = " ".join(["batches are padded to the longest sequence"] * 9)
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model server loads state dicts strictly and answers over HTTP.",
    "hello",
    "",
    "Naïve café résumé — über 日本語 text.",
    "   leading and trailing whitespace   ",
    "Tokenizers split text into word pieces; unknown words become pieces too!",
    "Is the server quick? 3.14159 and 2026.",
    LONG,
]

# Classification inputs: single texts and (text, text_pair) as a cross-encoder gets them; the last
# two pairs exceed max_seq_length and are cut longest-first.
PAIRS = [
    ("The quick brown fox jumps over the lazy dog.", None),
    ("Naïve café résumé — über 日本語 text.", None),
    ("hello", None),
    ("A model server loads state dicts strictly.", "The server answers over HTTP."),
    ("Is the fox quick?", "The quick brown fox jumps over the lazy dog."),
    (LONG, "short pair"),
    (" ".join(["tokenizers split text"] * 8), " ".join(["into word pieces"] * 6)),
]

ID2LABEL = {"0": "contradiction", "1": "entailment", "2": "neutral"}


def randomise(model, gen):
    """HF's init (std 0.02) makes attention nearly uniform and LayerNorm the identity: randomise
    everything at scales where a wrong head split, mask, position offset or norm parameter shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                if name.endswith("weight"):
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "embeddings" in name or "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]) * 1.5)


# ---------------------------------------------------------------------------------------------
# Families: transformers config class, model classes and the config.json fields wick reads.

def family(kind):
    import transformers as tf

    common = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings"]
    if kind == "bert":
        return (tf.BertConfig, tf.BertModel, tf.BertForSequenceClassification, "bert",
                common + ["type_vocab_size", "layer_norm_eps", "hidden_act", "pad_token_id"])
    if kind == "roberta":
        return (tf.RobertaConfig, tf.RobertaModel, tf.RobertaForSequenceClassification, "roberta",
                common + ["type_vocab_size", "layer_norm_eps", "hidden_act", "pad_token_id"])
    if kind == "xlm-roberta":
        return (tf.XLMRobertaConfig, tf.XLMRobertaModel, tf.XLMRobertaForSequenceClassification, "roberta",
                common + ["type_vocab_size", "layer_norm_eps", "hidden_act", "pad_token_id"])
    if kind == "distilbert":
        return (tf.DistilBertConfig, tf.DistilBertModel, tf.DistilBertForSequenceClassification, "distilbert",
                ["vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_position_embeddings", "activation",
                 "pad_token_id"])
    if kind == "mpnet":
        return (tf.MPNetConfig, tf.MPNetModel, tf.MPNetForSequenceClassification, "mpnet",
                common + ["layer_norm_eps", "hidden_act", "pad_token_id", "relative_attention_num_buckets"])
    raise ValueError(kind)


def make_config(kind, vocab_size, sizes, classification):
    config_cls = family(kind)[0]
    extra = {"num_labels": 3, "id2label": {int(k): v for k, v in ID2LABEL.items()},
             "label2id": {v: int(k) for k, v in ID2LABEL.items()}} if classification else {}
    if kind == "distilbert":
        return config_cls(vocab_size=vocab_size, dim=sizes["hidden"], n_layers=2, n_heads=sizes["heads"],
                          hidden_dim=sizes["intermediate"], max_position_embeddings=sizes["positions"],
                          activation="gelu", pad_token_id=0, sinusoidal_pos_embds=False, **extra)
    fields = dict(vocab_size=vocab_size, hidden_size=sizes["hidden"], num_hidden_layers=2,
                  num_attention_heads=sizes["heads"], intermediate_size=sizes["intermediate"],
                  max_position_embeddings=sizes["positions"], hidden_act="gelu", **extra)
    if kind == "bert":
        fields.update(type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0)
    elif kind in ("roberta", "xlm-roberta"):
        fields.update(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    elif kind == "mpnet":
        fields.update(layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      relative_attention_num_buckets=32)
    return config_cls(**fields)


def wick_config(kind, config, head):
    fields = family(kind)[4]
    out = {k: getattr(config, k) for k in fields}
    if head.get("task") == "classification":
        out["num_labels"] = config.num_labels
        out["id2label"] = {str(k): v for k, v in sorted(config.id2label.items())}
    out.update(head)
    return out


def hf_tokenizer(kind, tok, kwargs, max_len):
    """The transformers wrapper saved beside the model; only BERT feeds token_type_ids to the model
    (DistilBERT shares BERT's WordPiece template but its tokenizer does not return them)."""
    from transformers import PreTrainedTokenizerFast

    kwargs = dict(kwargs)
    if kind != "bert":
        kwargs["model_input_names"] = tt.NO_TYPE_INPUTS
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_len, **kwargs)


def strict_reload(model_cls, config, folder, prefix_check):
    """The written model.safetensors loads into a fresh upstream model with strict=True; returns it."""
    state = load_file(os.path.join(folder, "model.safetensors"))
    assert all(k.startswith(prefix_check) for k in state if not k.startswith("classifier") and
               not k.startswith("pre_classifier")), sorted(state)[:5]
    fresh = model_cls(config).eval()
    fresh.load_state_dict(state, strict=True)
    return fresh, state


# ---------------------------------------------------------------------------------------------
# sentence-transformers embedding cases

POOL_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}


def rewrite_legacy(folder, dim, pooling, normalize, max_seq, positions):
    """The files as sentence-transformers 2.x wrote them (all-MiniLM-L6-v2 and most Hub models carry
    these): module types under sentence_transformers.models, pooling as booleans,
    max_seq_length in sentence_bert_config.json, no 2_Normalize folder, and a tokenizer_config
    model_max_length (the position limit) that differs from max_seq_length."""
    import json

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pool = {"word_embedding_dimension": dim}
    for mode in ["cls", "mean", "max"]:
        pool[POOL_FLAGS[mode]] = mode == pooling
    pool["pooling_mode_mean_sqrt_len_tokens"] = False
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pool,
        "sentence_bert_config.json": {"max_seq_length": max_seq, "do_lower_case": False},
        "config_sentence_transformers.json": {"__version__": {"sentence_transformers": "2.0.0",
                                                              "transformers": "4.6.1", "pytorch": "1.8.1"}},
    }
    shutil.rmtree(os.path.join(folder, "2_Normalize"), ignore_errors=True)
    for name, value in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2)
            f.write("\n")
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        tcfg = json.load(f)
    tcfg["model_max_length"] = positions
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, sort_keys=True)
        f.write("\n")


def pool_manual(hidden, mask, pooling, normalize):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        out = hidden[:, 0]
    else:
        out = hidden.masked_fill(m == 0, -1e9).max(1).values
    return torch.nn.functional.normalize(out, p=2, dim=-1) if normalize else out


def weights_note(f16):
    if f16:
        return {"file": "model.safetensors", "dtype": "float16",
                "note": "saved by save_pretrained from the model in F16 (config.json says dtype float16); the "
                        "references evaluate those rounded values in F32"}
    return {"file": "model.safetensors", "dtype": "float32"}


def cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))


def pad_rows(rows, pad_id):
    """Rows of token ids padded with pad_id to the longest, and their attention mask."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def save_sentence_transformer(folder, kind, model, config, tokenizer, spec):
    """save_pretrained (in F16 if asked) + the tokenizer, wrapped as Transformer + Pooling
    (+ Normalize) and saved by sentence-transformers; legacy cases get the 2.x files instead."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    dtype = torch.float16 if spec["f16"] else torch.float32
    max_seq = spec["max_seq_length"]
    dim = config.dim if kind == "distilbert" else config.hidden_size
    shutil.rmtree(folder)
    with tempfile.TemporaryDirectory() as base:
        model.to(dtype).save_pretrained(base)
        tokenizer.save_pretrained(base)
        modules = [Transformer(base, max_seq_length=max_seq, model_kwargs={"dtype": dtype}),
                   Pooling(dim, pooling_mode=spec["pooling"])]
        if spec["normalize"]:
            modules.append(Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(folder)
    os.remove(os.path.join(folder, "README.md"))  # a generated model card, not read by anything
    if spec["st_format"] == "legacy":
        rewrite_legacy(folder, dim, spec["pooling"], spec["normalize"], max_seq, config.max_position_embeddings)


def reload_sentence_transformer(folder, spec):
    """The folder as sentence-transformers reads it; an F16 checkpoint is evaluated in F32 (its
    rounded values), as wick evaluates it. Checks the defaults it took from the files."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(folder, device="cpu", model_kwargs={"dtype": torch.float32}).eval()
    assert all(p.dtype == torch.float32 for p in st.parameters())
    assert st.max_seq_length == spec["max_seq_length"], st.max_seq_length
    assert (type(st[-1]).__name__ == "Normalize") == spec["normalize"], st
    assert st[1].pooling_mode == spec["pooling"], st[1].pooling_mode
    return st


def reference_texts(st, fresh, double, spec):
    """Per text: the ids sentence-transformers fed the model and its embedding (batch size 1),
    cross-checked against a fresh strict reload pooled here and against F64."""
    pooling, normalize = spec["pooling"], spec["normalize"]
    texts, worst_f64, worst_batch = [], 1.0, 1.0
    embeddings = st.encode(TEXTS, batch_size=1, convert_to_tensor=True)
    batched = st.encode(TEXTS, batch_size=len(TEXTS), convert_to_tensor=True)
    for text, emb, emb_batched in zip(TEXTS, embeddings, batched):
        features = st.preprocess([text])
        ids, mask = features["input_ids"], features["attention_mask"]
        full = st.tokenizer(text, truncation=False)["input_ids"]
        with torch.no_grad():
            ref64 = pool_manual(double(input_ids=ids, attention_mask=mask).last_hidden_state, mask.double(),
                                pooling, normalize)[0]
            mine = pool_manual(fresh(input_ids=ids, attention_mask=mask).last_hidden_state, mask, pooling,
                               normalize)[0]
        assert torch.allclose(mine, emb, atol=1e-6, rtol=0), (text, float((mine - emb).abs().max()))
        worst_f64 = min(worst_f64, cosine(emb, ref64))
        worst_batch = min(worst_batch, cosine(emb, emb_batched))
        texts.append({"text": text, "ids": ids[0].tolist(), "tokens_untruncated": len(full),
                      "truncated": len(full) > ids.shape[1], "embedding": [float(x) for x in emb]})
    assert any(t["truncated"] for t in texts), "no text reaches max_seq_length"
    assert worst_f64 > 1 - 1e-7 and worst_batch > COSINE_MIN, (worst_f64, worst_batch)
    return texts, embeddings, worst_f64, worst_batch


def embedding_case(name, spec):
    kind = spec["kind"]
    _, base_cls, _, architecture, _ = family(kind)
    tok, tok_kwargs = spec["tokenizer"]()
    config = make_config(kind, tok.get_vocab_size(), spec["sizes"], classification=False)
    torch.manual_seed(spec["seed"])
    model = base_cls(config).eval()
    randomise(model, torch.Generator().manual_seed(spec["seed"]))
    folder = case_dir(name)
    save_sentence_transformer(folder, kind, model, config, hf_tokenizer(kind, tok, tok_kwargs, spec["max_seq_length"]),
                              spec)
    st = reload_sentence_transformer(folder, spec)
    fresh, state = strict_reload(base_cls, config, folder, "")
    double = base_cls(config).double().eval()
    double.load_state_dict(state, strict=True)
    texts, embeddings, worst_f64, worst_batch = reference_texts(st, fresh, double, spec)

    # An int64 request: two rows padded with pad_token_id to one length, with an attention mask.
    ids, mask = pad_rows([texts[6]["ids"], texts[0]["ids"]], config.pad_token_id)
    with torch.no_grad():
        out = st.forward({"input_ids": ids, "attention_mask": mask})["sentence_embedding"]
    for row, ref in zip(out, (embeddings[6], embeddings[0])):
        assert cosine(row, ref) > COSINE_MIN

    head = {"task": "embedding", "pooling": spec["pooling"], "normalize": spec["normalize"],
            "max_seq_length": spec["max_seq_length"]}
    files = sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)
    write_json(os.path.join(folder, "case.json"), {
        "architecture": architecture,
        "config": wick_config(kind, config, head),
        "description": spec["description"],
        "weights": weights_note(spec["f16"]),
        "upstream": {"class": type(st[0].model).__name__, "keys": "as save_pretrained writes them, no prefix",
                     "sentence_transformers_files": spec["st_format"],
                     "defaults_from_files": {k: head[k] for k in ("pooling", "normalize", "max_seq_length")},
                     "files": files},
        "inputs_note": ("the model receives input_ids and attention_mask only; token_type_ids are absent "
                        "(zeros)" if kind != "bert" else "token_type_ids are zeros for single texts"),
        "tolerance": {"cosine_min": COSINE_MIN,
                      "f32_vs_f64_max_one_minus_cosine": float(f"{max(1 - worst_f64, 0.0):.3g}"),
                      "batched_vs_single_max_one_minus_cosine": float(f"{max(1 - worst_batch, 0.0):.3g}")},
        "texts": texts,
        "ids_case": {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "embedding": out.tolist()},
    })
    print(f"{name}: {architecture} ({type(st[0].model).__name__}), {spec['pooling']}"
          f"{' + normalize' if spec['normalize'] else ''}, vocab {config.vocab_size}, "
          f"lengths {[len(t['ids']) for t in texts]}, {dir_size(folder)} bytes")


# ---------------------------------------------------------------------------------------------
# *ForSequenceClassification cases

def diverse_classifier(cls_model, config, tok, kind, seed):
    """The first of seed, seed + 1, ... whose argmax labels over PAIRS are not all equal (so a wrong
    id2label mapping shows)."""
    for attempt in range(seed, seed + 20):
        torch.manual_seed(attempt)
        gen = torch.Generator().manual_seed(attempt)
        model = cls_model(config).eval()
        randomise(model, gen)
        labels = set()
        for text, pair in PAIRS:
            enc = tok.encode(text, pair)
            ids = torch.tensor([enc.ids[:32]])
            with torch.no_grad():
                labels.add(int(model(input_ids=ids).logits.argmax()))
        if len(labels) > 1:
            return model
    raise AssertionError("no seed gives two labels")


def load_classifier(folder, cls_model, config, prefix):
    """The saved folder through AutoModelForSequenceClassification (no missing or unexpected keys),
    a strict reload into a fresh model, and an F64 copy."""
    from transformers import AutoModelForSequenceClassification

    loaded, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True,
                                                                      dtype=torch.float32)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    fresh, state = strict_reload(cls_model, config, folder, prefix)
    double = cls_model(config).double().eval()
    double.load_state_dict(state, strict=True)
    return loaded.eval(), fresh, double


def reference_items(hf_tok, loaded, fresh, double, config, max_seq):
    """Per input (single or pair): ids (+ token types), logits, softmax and label."""
    items, worst = [], 0.0
    for text, pair in PAIRS:
        enc = hf_tok(text, pair, truncation=True, max_length=max_seq, return_tensors="pt")
        full = hf_tok(text, pair, truncation=False)["input_ids"]
        with torch.no_grad():
            logits = loaded(**enc).logits[0]
            assert torch.allclose(fresh(**enc).logits[0], logits, atol=1e-6, rtol=0)
            ref64 = double(**enc).logits[0]
        worst = max(worst, float((logits.double() - ref64).abs().max()))
        item = {"text": text, **({"text_pair": pair} if pair is not None else {}), "ids": enc["input_ids"][0].tolist()}
        if "token_type_ids" in enc:
            item["token_type_ids"] = enc["token_type_ids"][0].tolist()
        item.update({"tokens_untruncated": len(full), "truncated": len(full) > enc["input_ids"].shape[1],
                     "logits": [float(x) for x in logits],
                     "probabilities": [float(x) for x in torch.softmax(logits, dim=-1)],
                     "label": config.id2label[int(logits.argmax())]})
        items.append(item)
    assert worst < LOGITS_MAX_ABS / 10, worst
    assert len({i["label"] for i in items}) > 1, [i["label"] for i in items]
    assert sum(i["truncated"] for i in items) >= 2
    return items, worst


def padded_pair_case(kind, hf_tok, loaded, config, items):
    """An int64 request: the pair of items[4] and the single of items[2] padded to one length."""
    rows = [items[4], items[2]]
    ids, mask = pad_rows([r["ids"] for r in rows], config.pad_token_id)
    case = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if kind == "bert":
        types = torch.zeros_like(ids)
        types[0, :len(rows[0]["token_type_ids"])] = torch.tensor(rows[0]["token_type_ids"])
        kwargs["token_type_ids"] = types
        case["token_type_ids"] = types.tolist()
    with torch.no_grad():
        logits = loaded(**kwargs).logits
    for row, item in zip(logits, rows):
        assert float((row - torch.tensor(item["logits"])).abs().max()) < 1e-5
    case["logits"] = logits.tolist()
    return case


def classification_case(name, spec):
    import json

    from transformers import AutoTokenizer

    kind, max_seq = spec["kind"], spec["max_seq_length"]
    _, _, cls_model, architecture, _ = family(kind)
    tok, tok_kwargs = spec["tokenizer"]()
    config = make_config(kind, tok.get_vocab_size(), spec["sizes"], classification=True)
    model = diverse_classifier(cls_model, config, tok, kind, spec["seed"])
    folder = case_dir(name)
    shutil.rmtree(folder)
    model.to(torch.float16 if spec["f16"] else torch.float32).save_pretrained(folder)
    hf_tokenizer(kind, tok, tok_kwargs, max_seq).save_pretrained(folder)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["id2label"] == ID2LABEL
    prefix = {"xlm-roberta": "roberta"}.get(kind, kind) + "."
    loaded, fresh, double = load_classifier(folder, cls_model, config, prefix)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    assert hf_tok.model_max_length == max_seq
    items, worst = reference_items(hf_tok, loaded, fresh, double, config, max_seq)
    ids_case = padded_pair_case(kind, hf_tok, loaded, config, items)

    write_json(os.path.join(folder, "case.json"), {
        "architecture": architecture,
        "config": wick_config(kind, config, {"task": "classification", "max_seq_length": max_seq}),
        "description": spec["description"],
        "weights": weights_note(spec["f16"]),
        "upstream": {"class": type(loaded).__name__, "keys": f"`{prefix}*` encoder keys plus the head, as "
                     "save_pretrained writes them", "files": sorted(os.listdir(folder))},
        "inputs_note": ("pairs carry token_type_ids 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`" if kind == "bert"
                        else "the model receives input_ids and attention_mask only (no token_type_ids)"),
        "tolerance": {"logits_max_abs": LOGITS_MAX_ABS, "f32_vs_f64_logits_max_abs": float(f"{worst:.3g}")},
        "truncation": "longest_first at max_seq_length, special tokens included",
        "items": items,
        "ids_case": ids_case,
    })
    print(f"{name}: {architecture} ({type(loaded).__name__}), labels {[i['label'] for i in items]}, "
          f"lengths {[len(i['ids']) for i in items]}, {dir_size(folder)} bytes")


# ---------------------------------------------------------------------------------------------

def bert_wp():
    return tt.wordpiece("bert")


def mpnet_wp():
    return tt.wordpiece("mpnet")


SMALL = {"hidden": 32, "heads": 4, "intermediate": 64, "positions": 64}
SMALL_HD16 = {"hidden": 32, "heads": 2, "intermediate": 64, "positions": 66}
SMALL_HD12 = {"hidden": 36, "heads": 3, "intermediate": 72, "positions": 66}

EMBEDDING_CASES = {
    "roberta_mean": dict(kind="roberta", sizes=SMALL_HD16, tokenizer=tt.byte_bpe, pooling="mean", normalize=True,
                         max_seq_length=40, f16=False, st_format="sentence-transformers 6.2", seed=301,
                         description="RobertaModel, byte-level BPE, mean pooling + Normalize; positions start at "
                                     "pad_token_id + 1 = 2"),
    "xlm_roberta_cls": dict(kind="xlm-roberta", sizes=SMALL_HD16, tokenizer=tt.unigram, pooling="cls",
                            normalize=True, max_seq_length=40, f16=True, st_format="legacy", seed=302,
                            description="XLMRobertaModel (served as `roberta`), Unigram/Metaspace tokenizer.json, "
                                        "CLS pooling + Normalize (BGE-M3 style), sentence-transformers 2.x files"),
    "distilbert_mean": dict(kind="distilbert", sizes=SMALL, tokenizer=bert_wp, pooling="mean", normalize=False,
                            max_seq_length=40, f16=False, st_format="sentence-transformers 6.2", seed=303,
                            description="DistilBertModel, WordPiece, mean pooling without normalisation"),
    "mpnet_mean": dict(kind="mpnet", sizes=SMALL_HD12, tokenizer=mpnet_wp, pooling="mean", normalize=True,
                       max_seq_length=40, f16=True, st_format="legacy", seed=304,
                       description="MPNetModel (relative position bias, 32 buckets; positions start at 2) as "
                                   "all-mpnet-base-v2 is built: mean pooling + Normalize, sentence-transformers "
                                   "2.x files"),
    "bert_cls": dict(kind="bert", sizes=SMALL, tokenizer=bert_wp, pooling="cls", normalize=False, max_seq_length=40,
                     f16=True, st_format="legacy", seed=305,
                     description="BertModel, CLS pooling, no normalisation, sentence-transformers 2.x files"),
    "bert_max": dict(kind="bert", sizes=SMALL_HD12, tokenizer=bert_wp, pooling="max", normalize=True,
                     max_seq_length=40, f16=False, st_format="sentence-transformers 6.2", seed=306,
                     description="BertModel, max pooling over attended tokens + Normalize"),
}

CLASSIFICATION_CASES = {
    "bert_classifier": dict(kind="bert", sizes=SMALL, tokenizer=bert_wp, max_seq_length=32, f16=True, seed=401,
                            description="BertForSequenceClassification: pooler (dense + tanh on [CLS]) then "
                                        "classifier; pairs as a cross-encoder sends them"),
    "roberta_classifier": dict(kind="roberta", sizes=SMALL_HD16, tokenizer=tt.byte_bpe, max_seq_length=32,
                               f16=True, seed=402, description="RobertaForSequenceClassification: classifier.dense + tanh + "
                                                     "classifier.out_proj on <s>; no pooler"),
    "distilbert_classifier": dict(kind="distilbert", sizes=SMALL, tokenizer=bert_wp, max_seq_length=32, f16=True, seed=403,
                                  description="DistilBertForSequenceClassification: pre_classifier + ReLU + "
                                              "classifier on [CLS]; pairs `[CLS] A [SEP] B [SEP]` without "
                                              "token types"),
    "mpnet_classifier": dict(kind="mpnet", sizes=SMALL_HD12, tokenizer=mpnet_wp, max_seq_length=32, f16=True, seed=404,
                             description="MPNetForSequenceClassification: classifier.dense + tanh + "
                                         "classifier.out_proj on <s>; no pooler"),
}


def write_cases():
    for name, spec in EMBEDDING_CASES.items():
        embedding_case(name, spec)
    for name, spec in CLASSIFICATION_CASES.items():
        classification_case(name, spec)
