//! Server-side tokenisation for text models: a version's `tokenizer.json` (Hugging Face
//! `tokenizers` format) turned into token ids, with wick's own truncation and no padding.
//!
//! A `tokenizer.json` carries the padding and truncation its exporter used (all-MiniLM-L6-v2's
//! pads every text to 128 tokens and cuts there). wick replaces both: batches are padded by the
//! model to their longest row, not to a fixed length, and texts are cut at the model's own limit
//! (`max_seq_length`), with the cut reported to the client rather than hidden.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Why a `tokenizer.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer.json is not a valid Hugging Face tokenizer: {0}")]
    Parse(String),
    #[error("tokenizer.json cannot truncate to {max_len} tokens: {message}")]
    Truncation { max_len: usize, message: String },
    #[error("{message}")]
    Encode { message: String },
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

/// A tokenizer with wick's truncation and padding settings applied.
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Parses `tokenizer.json`, truncating at `max_len` tokens (special tokens included) and
    /// never padding; refuses a tokenizer whose ids would not fit `vocab_size`.
    pub fn from_json(
        bytes: &[u8],
        max_len: usize,
        vocab_size: usize,
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
        Ok(TextTokenizer { inner })
    }

    /// Tokenises one text with the special tokens of the tokenizer's template (`[CLS] … [SEP]`).
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| TokenizerError::Encode {
                message: e.to_string(),
            })?;
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer_json() -> Vec<u8> {
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
                           "strip_accents": null, "lowercase": true},
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
        let tok = TextTokenizer::from_json(&tokenizer_json(), 5, 7).unwrap();
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
        let err = TextTokenizer::from_json(&tokenizer_json(), 5, 6).unwrap_err();
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
        assert!(TextTokenizer::from_json(b"{}", 5, 7).is_err());
    }
}
