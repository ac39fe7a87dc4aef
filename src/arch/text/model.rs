//! A text model ready to serve: requests in (texts, text pairs or token ids), batched forward
//! passes through the shared encoder, the head's outputs back.
//!
//! Inputs, all optional, exactly one of `text` / `input_ids` per request:
//! - `text` BYTES `[N]` (and, for classification, `text_pair` BYTES `[N]`): UTF-8 strings
//!   tokenised here with the version's `tokenizer.json`, cut at `max_seq_length` tokens (and to
//!   a byte budget before that, see [`super::tokenizer`]); the response's
//!   `parameters.truncated` says which rows were cut; with `truncate = false` over-long texts are
//!   refused instead;
//! - `input_ids` INT64 `[N, L]` with optional `attention_mask` (default all ones) and, for
//!   families with token types, `token_type_ids` (default zeros) of the same shape, for
//!   clients that tokenise themselves.
//!
//! `parameters.tokens` gives each row's token count. The rows of every request in a batch are
//! regrouped by length ([`super::groups`]), so each group is padded to its own longest row.

use super::encoder::{Encoder, EncoderSpec};
use super::groups::{collect_rows, pad_group, plan_groups};
use super::head::Head;
use super::tokenizer::{TextTokenizer, TokenizerError};
use crate::model::{
    common_rows, ElemKind, ForwardLimits, HostData, HostTensor, InputError, Ints, Model, Notes,
    Prepared, Signature,
};

/// Where each input sits in the signature.
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    pub text: usize,
    pub text_pair: Option<usize>,
    pub ids: usize,
    pub mask: usize,
    pub types: Option<usize>,
}

impl Slots {
    pub fn of(signature: &Signature) -> Slots {
        let find = |name: &str| signature.inputs.iter().position(|s| s.name == name);
        Slots {
            text: find("text").unwrap_or(0),
            text_pair: find("text_pair"),
            ids: find("input_ids").unwrap_or(0),
            mask: find("attention_mask").unwrap_or(0),
            types: find("token_type_ids"),
        }
    }
}

/// A prepared request holds `[rows, len]` ids, mask and token types, rows padded to the
/// request's longest, as three INT64 tensors in this order.
pub(super) const IDS: usize = 0;
pub(super) const MASK: usize = 1;
pub(super) const TYPES: usize = 2;

/// The ids of a prepared token tensor (`prepare` stores every one as [`HostData::Ids`]).
pub(super) fn id_values(t: &HostTensor) -> &[u32] {
    t.data.ids().unwrap_or_default()
}

pub struct TextModel {
    pub(super) encoder: Encoder,
    pub(super) head: Head,
    pub(super) tokenizer: Option<TextTokenizer>,
    /// Feed the tokenizer's token type ids (BERT) or zeros (the others).
    pub(super) token_types: bool,
    pub(super) spec: EncoderSpec,
    pub(super) slots: Slots,
    pub(super) signature: Signature,
    pub(super) parameters: Notes,
}

/// The rows of a text request after tokenisation.
struct Tokenized {
    ids: Vec<Vec<u32>>,
    types: Vec<Vec<u32>>,
    truncated: Vec<bool>,
}

fn strings<'a>(t: &'a HostTensor, input: &str) -> Result<&'a [Vec<u8>], InputError> {
    match &t.data {
        HostData::Bytes(strings) => Ok(strings),
        _ => Err(InputError::Kind {
            input: input.to_string(),
            expected: ElemKind::Bytes,
        }),
    }
}

fn utf8<'a>(bytes: &'a [u8], input: &str, index: usize) -> Result<&'a str, InputError> {
    std::str::from_utf8(bytes).map_err(|_| InputError::NotUtf8 {
        input: input.to_string(),
        index,
    })
}

impl TextModel {
    fn tokenize(
        &self,
        texts: &HostTensor,
        pairs: Option<&HostTensor>,
    ) -> Result<Tokenized, InputError> {
        let tokenizer = self.tokenizer.as_ref().ok_or(InputError::MissingAsset {
            file: super::family::TOKENIZER_FILE,
            instead: "input_ids",
        })?;
        let texts = strings(texts, "text")?;
        let pairs = pairs.map(|p| strings(p, "text_pair")).transpose()?;
        let (mut ids, mut types, mut truncated) = (Vec::new(), Vec::new(), Vec::new());
        for (i, bytes) in texts.iter().enumerate() {
            let text = utf8(bytes, "text", i)?;
            let encoded = match pairs {
                None => tokenizer.encode(text),
                Some(pairs) => tokenizer.encode_pair(text, utf8(&pairs[i], "text_pair", i)?),
            }
            .map_err(|e| refused(e, i))?;
            let n = encoded.ids.len();
            ids.push(encoded.ids);
            types.push(if self.token_types {
                encoded.type_ids
            } else {
                vec![0; n]
            });
            truncated.push(encoded.truncated);
        }
        Ok(Tokenized {
            ids,
            types,
            truncated,
        })
    }

    /// Checks client-tokenised input against the model's sizes.
    fn check_ids(&self, inputs: &[Option<HostTensor>]) -> Result<(), InputError> {
        let Some(ids) = &inputs[self.slots.ids] else {
            return Err(InputError::Combination("send \"text\" or \"input_ids\""));
        };
        let len = ids.shape[1];
        if len == 0 {
            return Err(InputError::EmptyDimension {
                input: "input_ids".to_string(),
                shape: ids.shape.clone(),
            });
        }
        if len > self.spec.max_len() {
            return Err(InputError::TooLong {
                input: "input_ids".to_string(),
                len,
                max: self.spec.max_len(),
                limit: "max_position_embeddings",
            });
        }
        let mut limits = vec![
            (
                "input_ids",
                Some(self.slots.ids),
                self.spec.vocab_size as i64,
                "vocab_size",
            ),
            ("attention_mask", Some(self.slots.mask), 2, "0 or 1"),
        ];
        limits.push((
            "token_type_ids",
            self.slots.types,
            self.spec.type_vocab_size as i64,
            "type_vocab_size",
        ));
        for (name, slot, bound, what) in limits {
            let Some(Some(t)) = slot.map(|s| &inputs[s]) else {
                continue;
            };
            if t.shape != ids.shape {
                return Err(InputError::ShapeMismatch {
                    input: name.to_string(),
                    shape: t.shape.clone(),
                    other: "input_ids".to_string(),
                    other_shape: ids.shape.clone(),
                });
            }
            // Decoders check ids against the same bounds; a tensor built another way (the
            // OpenAI route's token lists) is checked here.
            if let Some((index, value)) = t
                .data
                .ints()
                .into_iter()
                .flat_map(|v| v.iter())
                .enumerate()
                .find(|(_, v)| !(0..bound).contains(v))
            {
                return Err(InputError::OutOfRange {
                    input: name.to_string(),
                    index,
                    value,
                    bound,
                    what,
                });
            }
        }
        if let Some(mask) = &inputs[self.slots.mask] {
            // Read in place, whichever width the mask is stored in.
            let unattended = match mask.data.ints() {
                Some(Ints::I64(m)) => m.chunks(len).position(|r| r.iter().all(|v| *v == 0)),
                Some(Ints::Ids(m)) => m.chunks(len).position(|r| r.iter().all(|v| *v == 0)),
                None => None,
            };
            if let Some(row) = unattended {
                return Err(InputError::NothingAttended { row });
            }
        }
        Ok(())
    }

    /// `[ids, mask, types]` of a request that sent token ids.
    fn client_tokens(
        &self,
        inputs: &mut [Option<HostTensor>],
    ) -> Result<Vec<Option<HostTensor>>, InputError> {
        if self.slots.text_pair.is_some_and(|s| inputs[s].is_some()) {
            return Err(InputError::Combination(
                "\"text_pair\" goes with \"text\"; send it as \"text\" and \"text_pair\"",
            ));
        }
        self.check_ids(inputs)?;
        let ids = inputs[self.slots.ids].take().map(as_ids);
        let shape = ids.as_ref().map(|t| t.shape.clone()).unwrap_or_default();
        let filled = |value: u32| HostTensor {
            shape: shape.clone(),
            data: HostData::Ids(vec![value; shape.iter().product()]),
        };
        let mask = inputs[self.slots.mask]
            .take()
            .map_or_else(|| filled(1), as_ids);
        let types = self
            .slots
            .types
            .and_then(|s| inputs[s].take())
            .map_or_else(|| filled(0), as_ids);
        Ok(vec![ids, Some(mask), Some(types)])
    }
}

/// A checked INT64 tensor in the 4-byte form the encoder reads.
fn as_ids(t: HostTensor) -> HostTensor {
    HostTensor {
        shape: t.shape,
        data: t.data.into_ids(),
    }
}

/// A tokenizer's refusal of text `index` as the client's mistake.
fn refused(e: TokenizerError, index: usize) -> InputError {
    let input = "text".to_string();
    match e {
        TokenizerError::TooManyBytes { bytes, limit } => InputError::TextTooLong {
            input,
            index,
            bytes,
            limit,
        },
        TokenizerError::TooManyTokens { max } => InputError::TooManyTokens { input, index, max },
        e => InputError::Tokenize {
            input,
            index,
            reason: e.to_string(),
        },
    }
}

/// Pads variable-length rows to one `[rows, len]` tensor with mask 0 on the padding.
fn pad_rows(ids: &[Vec<u32>], types: &[Vec<u32>]) -> Vec<Option<HostTensor>> {
    let rows = ids.len();
    let len = ids.iter().map(Vec::len).max().unwrap_or(0);
    let (mut i, mut m, mut t) = (
        vec![0u32; rows * len],
        vec![0u32; rows * len],
        vec![0u32; rows * len],
    );
    for (r, (row_ids, row_types)) in ids.iter().zip(types).enumerate() {
        for (k, (id, ty)) in row_ids.iter().zip(row_types).enumerate() {
            i[r * len + k] = *id;
            m[r * len + k] = 1;
            t[r * len + k] = *ty;
        }
    }
    let tensor = |values| {
        Some(HostTensor {
            shape: vec![rows, len],
            data: HostData::Ids(values),
        })
    };
    vec![tensor(i), tensor(m), tensor(t)]
}

impl Model for TextModel {
    fn prepare(&self, mut inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        let rows = common_rows(&self.signature, &inputs)?;
        let mut notes = Notes::new();
        let client_ids = inputs[self.slots.mask].is_some()
            || self.slots.types.is_some_and(|s| inputs[s].is_some());
        let tensors = match (&inputs[self.slots.text], &inputs[self.slots.ids]) {
            (Some(_), Some(_)) => {
                return Err(InputError::Combination(
                    "send either \"text\" or \"input_ids\", not both",
                ))
            }
            (Some(_), None) if client_ids => {
                return Err(InputError::Combination(
                    "\"attention_mask\" and \"token_type_ids\" go with \"input_ids\"; \"text\" is tokenised by the server",
                ))
            }
            (Some(text), None) => {
                let pairs = self.slots.text_pair.and_then(|s| inputs[s].as_ref());
                let tokens = self.tokenize(text, pairs)?;
                notes.insert("truncated".into(), serde_json::json!(tokens.truncated));
                pad_rows(&tokens.ids, &tokens.types)
            }
            (None, _) => self.client_tokens(&mut inputs)?,
        };
        let counts: Vec<i64> = tensors[MASK]
            .as_ref()
            .map(|m| {
                let len = m.shape[1].max(1);
                id_values(m)
                    .chunks(len)
                    .map(|r| r.iter().map(|v| i64::from(*v)).sum())
                    .collect()
            })
            .unwrap_or_default();
        notes.insert("tokens".into(), serde_json::json!(counts));
        Ok(Prepared {
            rows,
            tensors,
            notes,
        })
    }

    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        self.forward_with(batch, &ForwardLimits::default())
    }

    /// Each forward pass of the encoder (a group of rows of similar length) stays within the
    /// batching config's `max_batch_tokens` padded tokens.
    fn forward_with(
        &self,
        batch: &[&Prepared],
        limits: &ForwardLimits,
    ) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        let rows = collect_rows(batch)?;
        let width = self.head.width(self.spec.hidden_size);
        let mut values: Vec<Vec<f32>> = batch.iter().map(|p| vec![0f32; p.rows * width]).collect();
        for group in plan_groups(&rows, self.spec.num_heads, limits.max_batch_tokens) {
            let tokens = pad_group(&rows, &group, self.spec.pad_token_id);
            let hidden = self.encoder.forward(&tokens)?;
            let out = self.head.apply(&hidden, &tokens)?;
            for (k, &index) in group.iter().enumerate() {
                let row = &rows[index];
                values[row.request][row.row * width..(row.row + 1) * width]
                    .copy_from_slice(&out[k * width..(k + 1) * width]);
            }
        }
        Ok(batch
            .iter()
            .zip(values)
            .map(|(p, values)| self.head.outputs(p.rows, values))
            .collect())
    }

    /// Padded tokens: rows × the request's longest row.
    fn cost(&self, prepared: &Prepared) -> usize {
        match prepared.tensors.get(IDS) {
            Some(Some(ids)) => ids.shape.iter().product(),
            _ => prepared.rows,
        }
    }

    fn parameters(&self) -> Notes {
        self.parameters.clone()
    }

    fn tokens(
        &self,
        text: &str,
        special: bool,
    ) -> Option<Result<Vec<crate::model::Token>, InputError>> {
        let tokenizer = self.tokenizer.as_ref()?;
        Some(tokenizer.tokens(text, special).map_err(|e| refused(e, 0)))
    }
}
