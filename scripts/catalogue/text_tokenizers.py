"""Tokenizers of the text cases, built deterministically from a few sentences (tokenizers'
trainers break frequency ties in hash order, so their vocabularies change run to run):

- WordPiece (BERT / DistilBERT with [CLS] [SEP]; MPNet with <s> </s> and RoBERTa-style pairs);
- byte-level BPE (RoBERTa), merges learnt here with ties broken by the pair's text;
- Unigram with a Metaspace pre-tokenizer (XLM-RoBERTa's sentencepiece model as tokenizer.json;
  NFKC stands in for XLM-R's Precompiled normaliser, which needs a sentencepiece charsmap blob).

Each builder returns the `tokenizers.Tokenizer` and the keyword arguments of the transformers
wrapper (special tokens, model_input_names) the family's own tokenizer class would have."""

import math
from collections import Counter

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model server loads state dicts strictly and answers over HTTP.",
    "Batches are padded to the longest sequence in the batch.",
    "Tokenizers split text into word pieces; unknown words become pieces too.",
    "Café, naïve, résumé: accents are kept by this tokenizer.",
    "Numbers like 3.14159 and 2026 appear in text as well.",
    "Is the server quick? The answer is in the logits.",
    "Short.",
]

BERT_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]
NO_TYPE_INPUTS = ["input_ids", "attention_mask"]


def wordpiece(style):
    """style "bert": [PAD] [UNK] [CLS] [SEP] [MASK], pairs `[CLS] A [SEP] B [SEP]` with type ids 0/1.
    style "mpnet": <s> <pad> </s> <unk> ... <mask>, pairs `<s> A </s> </s> B </s>` (type ids 0)."""
    normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True,
                                            strip_accents=None)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = set()
    for text in CORPUS:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    body = chars + ["##" + c for c in chars] + sorted(w for w in words if len(w) > 1)
    if style == "bert":
        specials, tail = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], []
        unk, cls, sep = "[UNK]", "[CLS]", "[SEP]"
    else:
        specials, tail = ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"]
        unk, cls, sep = "<unk>", "<s>", "</s>"
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + body + tail))}
    tok = Tokenizer(WordPiece(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
        tok.add_special_tokens(specials)
        kwargs = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]", model_input_names=BERT_INPUTS)
    else:
        tok.post_processor = processors.RobertaProcessing((sep, vocab[sep]), (cls, vocab[cls]))
        tok.add_special_tokens(specials + tail)
        kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                      sep_token="</s>", mask_token="<mask>", model_input_names=NO_TYPE_INPUTS)
    return tok, kwargs


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
ROBERTA_KWARGS = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                      sep_token="</s>", mask_token="<mask>", model_input_names=NO_TYPE_INPUTS)


def byte_bpe(merges_wanted=120):
    """RoBERTa's byte-level BPE: <s> <pad> </s> <unk>, the 256 byte symbols, learnt merges, <mask>."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    counts = Counter(w for text in CORPUS for w, _ in pre.pre_tokenize_str(text))
    splits = {w: list(w) for w in counts}
    merges = []
    for _ in range(merges_wanted):
        pairs = Counter()
        for w, c in counts.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        for w, s in splits.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    symbols = ROBERTA_SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + [a + b for a, b in merges] + ["<mask>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(symbols))}
    tok = Tokenizer(BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    tok.add_special_tokens(ROBERTA_SPECIALS + ["<mask>"])
    return tok, dict(ROBERTA_KWARGS)


def unigram():
    """XLM-R style: NFKC + collapse runs of spaces, Metaspace (▁, prepended always), a Unigram
    model over <s> <pad> </s> <unk>, single characters, frequent 2-3 character pieces and whole
    words (log-frequency scores), <mask> last; unknown characters map to <unk>."""
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    words = Counter()
    for text in CORPUS:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = Counter()
    grams = Counter()
    for w, c in words.items():
        for ch in w:
            chars[ch] += c
        for n in (2, 3):
            for i in range(len(w) - n + 1):
                grams[w[i:i + n]] += c
    total = sum(words.values())
    pieces = {}
    for ch, c in chars.items():
        pieces[ch] = math.log(c / (total * 50))
    for g, c in grams.items():
        if c >= 3:
            pieces[g] = math.log(c / (total * 8))
    for w, c in words.items():
        if len(w) > 1:
            pieces[w] = math.log(c / total)
    ordered = sorted(pieces.items(), key=lambda kv: (-round(kv[1], 6), kv[0]))
    vocab = [(s, 0.0) for s in ROBERTA_SPECIALS] + [(p, round(s, 6)) for p, s in ordered] + [("<mask>", 0.0)]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens(ROBERTA_SPECIALS + ["<mask>"])
    return tok, dict(ROBERTA_KWARGS)
