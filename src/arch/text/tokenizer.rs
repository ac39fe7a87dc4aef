//! Server-side tokenisation for text models: a version's `tokenizer.json` (Hugging Face
//! `tokenizers` format) turned into token ids, with wick's own truncation and no padding.
//!
//! A `tokenizer.json` carries the padding and truncation its exporter used (all-MiniLM-L6-v2's
//! pads every text to 128 tokens and cuts there). wick replaces both: batches are padded by the
//! model to their longest row, not to a fixed length, and texts are cut at the model's own limit
//! (`max_seq_length`), with the cut reported to the client rather than hidden.
//!
//! Texts are bounded before the tokenizer sees them: a tokenizer's work and memory grow with
//! the text (a 60 MiB string once cost 30 s and 4-5 GB to tokenise only to be cut to 256 tokens
//! afterwards). Each text is first cut, on a character boundary, to [`BYTES_PER_TOKEN`] bytes
//! per token of `max_seq_length`: far more than any real token needs (English averages about
//! 4-5 bytes per token, CJK about 3-6), so only texts that would be cut to `max_seq_length`
//! anyway are cut sooner. With `truncate = false` an over-long text is refused instead (as TEI
//! does). See docs/security.md.
//!
//! Pairs (`text`, `text_pair`, as cross-encoders are fed) go through the tokenizer's pair
//! template (`[CLS] A [SEP] B [SEP]`, `<s> A </s></s> B </s>`) and are cut longest-first, as
//! transformers' `truncation=True` does; each text of a pair has its own byte budget.

use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Sequence};
use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Why a `tokenizer.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer.json is not a valid Hugging Face tokenizer: {0}")]
    Parse(String),
    #[error("tokenizer.json cannot truncate to {max_len} tokens: {message}")]
    Truncation { max_len: usize, message: String },
    #[error("{message}")]
    Encode { message: String },
    #[error("is longer than the limit of {limit} bytes (truncate = false)")]
    TooManyBytes { bytes: usize, limit: usize },
    #[error("has more than {max} tokens (truncate = false)")]
    TooManyTokens { max: usize },
    #[error("tokenizer.json knows {tokenizer} tokens but the model's vocab_size is {model}: its ids would index past the embeddings")]
    Vocab { tokenizer: usize, model: usize },
}

/// One text as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text had more tokens than the limit; the tail was dropped.
    pub truncated: bool,
}

/// The byte budget per token of `max_seq_length` a text is cut to before tokenisation.
pub const BYTES_PER_TOKEN: usize = 64;

/// A tokenizer with wick's truncation and padding settings applied.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    /// Cut over-long texts (`true`) or refuse them.
    truncate: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Parses `tokenizer.json`, truncating at `max_len` tokens (special tokens included) and
    /// never padding; refuses a tokenizer whose ids would not fit `vocab_size`. With
    /// `truncate = false`, texts longer than that are refused rather than cut.
    pub fn from_json(
        bytes: &[u8],
        max_len: usize,
        vocab_size: usize,
        truncate: bool,
    ) -> Result<TextTokenizer, TokenizerError> {
        let mut inner =
            Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Parse(e.to_string()))?;
        let known = inner.get_vocab_size(true);
        if known > vocab_size {
            return Err(TokenizerError::Vocab {
                tokenizer: known,
                model: vocab_size,
            });
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TokenizerError::Truncation {
                max_len,
                message: e.to_string(),
            })?;
        Ok(TextTokenizer {
            inner,
            max_len,
            truncate,
        })
    }

    /// Lowercases every text before the tokenizer's own normalizers, as sentence-transformers
    /// does for a model whose `sentence_bert_config.json` says `do_lower_case: true`.
    pub fn lowercase_first(mut self) -> Result<TextTokenizer, TokenizerError> {
        let mut steps = vec![NormalizerWrapper::from(Lowercase)];
        steps.extend(self.inner.get_normalizer().cloned());
        self.inner
            .with_normalizer(Some(NormalizerWrapper::from(Sequence::new(steps))))
            .map_err(|e| TokenizerError::Parse(e.to_string()))?;
        Ok(self)
    }

    /// The most bytes of a text the tokenizer ever sees.
    pub fn max_bytes(&self) -> usize {
        self.max_len.saturating_mul(BYTES_PER_TOKEN)
    }

    /// Tokenises one text with the special tokens of the tokenizer's template (`[CLS] … [SEP]`).
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        self.encode_input(text, None)
    }

    /// Tokenises a pair with the tokenizer's pair template, cutting the longer text first.
    pub fn encode_pair(&self, text: &str, pair: &str) -> Result<Encoded, TokenizerError> {
        self.encode_input(text, Some(pair))
    }

    /// The tokens of `text` (cut to the byte budget and `max_len` tokens, as for the model),
    /// with the template's special tokens when `special`.
    pub fn tokens(
        &self,
        text: &str,
        special: bool,
    ) -> Result<Vec<crate::model::Token>, TokenizerError> {
        let (text, _) = self.budget(text)?;
        let encoding = self
            .inner
            .encode(text, special)
            .map_err(|e| TokenizerError::Encode {
                message: e.to_string(),
            })?;
        let tokens = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_offsets())
            .zip(encoding.get_special_tokens_mask())
            .map(|(((id, token), (start, stop)), mask)| {
                let piece = (*mask == 0).then(|| text.get(*start..*stop)).flatten();
                crate::model::Token {
                    id: *id,
                    text: piece.unwrap_or(token).to_string(),
                    special: *mask != 0,
                    span: piece.map(|_| (*start, *stop)),
                }
            })
            .collect();
        Ok(tokens)
    }

    /// `text` cut to the byte budget, and whether it was cut; refused when `truncate = false`.
    fn budget<'t>(&self, text: &'t str) -> Result<(&'t str, bool), TokenizerError> {
        let (kept, cut) = cut_to(text, self.max_bytes());
        if cut && !self.truncate {
            return Err(TokenizerError::TooManyBytes {
                bytes: text.len(),
                limit: self.max_bytes(),
            });
        }
        Ok((kept, cut))
    }

    fn encode_input(&self, text: &str, pair: Option<&str>) -> Result<Encoded, TokenizerError> {
        let (first, mut cut) = self.budget(text)?;
        let input: EncodeInput = match pair {
            None => first.into(),
            Some(pair) => {
                let (second, second_cut) = self.budget(pair)?;
                cut |= second_cut;
                (first, second).into()
            }
        };
        let encoding = self
            .inner
            .encode_fast(input, true)
            .map_err(|e| TokenizerError::Encode {
                message: e.to_string(),
            })?;
        let overflowed = !encoding.get_overflowing().is_empty();
        if overflowed && !self.truncate {
            return Err(TokenizerError::TooManyTokens { max: self.max_len });
        }
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            truncated: cut || overflowed,
        })
    }
}

/// `text` cut to at most `max` bytes on a character boundary, and whether it was cut.
pub fn cut_to(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer_json() -> Vec<u8> {
        tokenizer_json_lowercasing(true)
    }

    fn tokenizer_json_lowercasing(lowercase: bool) -> Vec<u8> {
        let vocab: serde_json::Map<String, serde_json::Value> =
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "!"]
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
                .collect();
        serde_json::to_vec(&serde_json::json!({
            "version": "1.0",
            "truncation": {"max_length": 3, "strategy": "LongestFirst", "stride": 0, "direction": "Right"},
            "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
            "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": lowercase},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                   "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        }))
        .unwrap()
    }

    #[test]
    fn replaces_the_files_padding_and_truncation() {
        let tok = TextTokenizer::from_json(&tokenizer_json(), 5, 7, true).unwrap();
        let e = tok.encode("Hello world").unwrap();
        assert_eq!(e.ids, vec![2, 4, 5, 3]);
        assert!(!e.truncated);
        let e = tok.encode("hello world ! hello").unwrap();
        assert_eq!(e.ids, vec![2, 4, 5, 6, 3]);
        assert!(e.truncated);
        assert_eq!(tok.encode("").unwrap().ids, vec![2, 3]);
    }

    #[test]
    fn refuses_a_vocabulary_larger_than_the_model() {
        let err = TextTokenizer::from_json(&tokenizer_json(), 5, 6, true).unwrap_err();
        assert!(
            matches!(
                err,
                TokenizerError::Vocab {
                    tokenizer: 7,
                    model: 6
                }
            ),
            "{err}"
        );
        assert!(TextTokenizer::from_json(b"{}", 5, 7, true).is_err());
    }

    #[test]
    fn texts_are_cut_to_a_byte_budget_before_tokenisation() {
        let tok = TextTokenizer::from_json(&tokenizer_json(), 5, 7, true).unwrap();
        assert_eq!(tok.max_bytes(), 5 * BYTES_PER_TOKEN);
        // 60 MiB of text is cut to the budget first: the answer comes at once.
        let huge = "hello ".repeat(10 << 20);
        let started = std::time::Instant::now();
        let e = tok.encode(&huge).unwrap();
        assert_eq!(e.ids, vec![2, 4, 4, 4, 3]);
        assert!(e.truncated);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Cuts land on character boundaries.
        assert_eq!(cut_to("ééé", 3), ("é", true));
        assert_eq!(cut_to("ééé", 6), ("ééé", false));
        // Spaces alone are not tokens: a text can be cut by bytes without reaching the token
        // limit, and is still reported as cut.
        let spaces = format!("hello{}", " ".repeat(1000));
        assert!(tok.encode(&spaces).unwrap().truncated);
    }

    #[test]
    fn truncate_false_refuses_over_long_texts() {
        let tok = TextTokenizer::from_json(&tokenizer_json(), 5, 7, false).unwrap();
        assert!(!tok.encode("hello world !").unwrap().truncated);
        assert!(matches!(
            tok.encode("hello world ! hello"),
            Err(TokenizerError::TooManyTokens { max: 5 })
        ));
        assert!(matches!(
            tok.encode(&"x".repeat(10_000)),
            Err(TokenizerError::TooManyBytes { .. })
        ));
    }

    #[test]
    fn pairs_use_the_pair_template_and_lowercasing_comes_first() {
        let tok = TextTokenizer::from_json(&tokenizer_json(), 6, 7, true).unwrap();
        // The fixture's pair template is `A B` with type ids 0 and 1 (no special tokens).
        let e = tok.encode_pair("hello world", "!").unwrap();
        assert_eq!((e.ids, e.type_ids), (vec![4, 5, 6], vec![0, 0, 1]));
        // Longest first: the longer text loses its tail until the pair fits in 5.
        let tok = TextTokenizer::from_json(&tokenizer_json(), 5, 7, true).unwrap();
        let e = tok.encode_pair("hello world hello world", "! !").unwrap();
        assert_eq!(
            (e.ids, e.type_ids),
            (vec![4, 5, 4, 6, 6], vec![0, 0, 0, 1, 1])
        );
        assert!(e.truncated);
        let cased =
            TextTokenizer::from_json(&tokenizer_json_lowercasing(false), 6, 7, true).unwrap();
        assert_eq!(cased.encode("Hello").unwrap().ids, vec![2, 1, 3]);
        let lowered = cased.lowercase_first().unwrap();
        assert_eq!(lowered.encode("Hello").unwrap().ids, vec![2, 4, 3]);
    }
}
