//! `bert`: sentence embeddings from Hugging Face `BertModel` checkpoints (all-MiniLM-L6-v2 and
//! friends): the encoder of [`super::encoder`], mean pooling over the attention mask, L2
//! normalisation — sentence-transformers' pipeline.
//!
//! Inputs, all optional, exactly one of `text` / `input_ids` per request:
//! - `text` BYTES `[N]`: UTF-8 strings tokenised here with the version's `tokenizer.json`, cut at
//!   `max_seq_length` tokens (and to a byte budget before that, see [`super::tokenizer`]); the
//!   response's `parameters.truncated` says which rows were cut; with `truncate = false`
//!   over-long texts are refused instead;
//! - `input_ids` INT64 `[N, L]` with optional `attention_mask` (default all ones) and
//!   `token_type_ids` (default zeros) of the same shape, for clients that tokenise themselves.
//!
//! Output `embedding` FP32 `[N, hidden_size]`; `parameters.tokens` gives each row's token count.
//!
//! Batching: the rows of every request in a batch are regrouped by length, so each group is
//! padded to its own longest row and padding never more than [`PAD_SLACK`] of the real tokens
//! (TEI measured padded CPU batches slower per sequence than singles; grouping by length keeps
//! batching at least as fast as one-by-one, see the README's benchmark). Attention memory of a
//! group is capped by [`ATTENTION_BUDGET`].

use candle_nn::VarBuilder;
use serde::Deserialize;

use super::encoder::{BertEncoder, EncoderDims, HiddenAct, TokenBatch};
use super::tokenizer::{TextTokenizer, TokenizerError, BYTES_PER_TOKEN};
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};
use crate::model::{
    common_rows, Assets, ElemKind, HostData, HostTensor, InputError, IoSpec, Model, Notes,
    Prepared, Signature,
};
use crate::state_dict::Glob;

/// The tokenizer file every `bert` version carries beside its weights.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A group's padded token count may exceed its real token count by at most this factor.
const PAD_SLACK: f64 = 1.25;

/// Attention scores of one group (rows × heads × L × L f32 values) stay below this (128 MiB).
const ATTENTION_BUDGET: usize = 32 << 20;

/// `architecture = "bert"`: the fields of a Hugging Face `config.json` for `BertModel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// Texts are cut at this many tokens, `[CLS]` and `[SEP]` included (sentence-transformers'
    /// `max_seq_length`, 256 for all-MiniLM-L6-v2). Defaults to `max_position_embeddings`.
    pub max_seq_length: Option<usize>,
    /// Cut texts longer than `max_seq_length` (`true`, the default) or refuse them with 400.
    #[serde(default = "yes")]
    pub truncate: bool,
}

fn yes() -> bool {
    true
}

fn two() -> usize {
    2
}

fn bert_eps() -> f64 {
    1e-12
}

/// The configured `bert` architecture.
#[derive(Debug, Clone)]
pub struct BertArch {
    dims: EncoderDims,
    max_seq_length: usize,
    truncate: bool,
    signature: Signature,
}

impl BertArch {
    pub fn new(cfg: BertConfig) -> Result<BertArch, InvalidConfig> {
        let sizes = [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("num_hidden_layers", cfg.num_hidden_layers),
            ("num_attention_heads", cfg.num_attention_heads),
            ("intermediate_size", cfg.intermediate_size),
            ("max_position_embeddings", cfg.max_position_embeddings),
            ("type_vocab_size", cfg.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(InvalidConfig::new(name, "must be at least 1"));
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(InvalidConfig::new(
                "hidden_size",
                format!(
                    "{} is not a multiple of num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        if !(cfg.layer_norm_eps > 0.0 && cfg.layer_norm_eps.is_finite()) {
            return Err(InvalidConfig::new(
                "layer_norm_eps",
                format!("must be a positive number, got {}", cfg.layer_norm_eps),
            ));
        }
        let max_seq_length = cfg.max_seq_length.unwrap_or(cfg.max_position_embeddings);
        if max_seq_length == 0 || max_seq_length > cfg.max_position_embeddings {
            return Err(InvalidConfig::new(
                "max_seq_length",
                format!(
                    "{max_seq_length} must be between 1 and max_position_embeddings ({})",
                    cfg.max_position_embeddings
                ),
            ));
        }
        let signature = Signature {
            inputs: vec![
                IoSpec::new("text", ElemKind::Bytes, &[])
                    .optional()
                    .max_bytes(max_seq_length.saturating_mul(BYTES_PER_TOKEN)),
                IoSpec::new("input_ids", ElemKind::I64, &[-1]).optional(),
                IoSpec::new("attention_mask", ElemKind::I64, &[-1]).optional(),
                IoSpec::new("token_type_ids", ElemKind::I64, &[-1]).optional(),
            ],
            outputs: vec![IoSpec::new(
                "embedding",
                ElemKind::F32,
                &[cfg.hidden_size as i64],
            )],
        };
        Ok(BertArch {
            dims: EncoderDims {
                vocab_size: cfg.vocab_size,
                hidden_size: cfg.hidden_size,
                num_hidden_layers: cfg.num_hidden_layers,
                num_attention_heads: cfg.num_attention_heads,
                intermediate_size: cfg.intermediate_size,
                max_position_embeddings: cfg.max_position_embeddings,
                type_vocab_size: cfg.type_vocab_size,
                layer_norm_eps: cfg.layer_norm_eps,
                hidden_act: cfg.hidden_act,
            },
            max_seq_length,
            truncate: cfg.truncate,
            signature,
        })
    }
}

impl FamilyConfig for BertConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        Ok(Box::new(BertArch::new(self)?))
    }
}

impl Architecture for BertArch {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// `position_ids` is a buffer older transformers saved; the pooler (`pooler.dense.*`) is
    /// what `BertModel` adds for classification and sentence embeddings do not use.
    fn optional_keys(&self) -> Vec<Glob> {
        ["embeddings.position_ids", "pooler.*"]
            .iter()
            .filter_map(|p| Glob::new(p).ok())
            .collect()
    }

    fn required_assets(&self) -> &'static [&'static str] {
        &[TOKENIZER_FILE]
    }

    fn build(&self, vb: VarBuilder<'_>, assets: &Assets) -> candle_core::Result<Box<dyn Model>> {
        let encoder = BertEncoder::load(vb, &self.dims)?;
        let tokenizer = match assets.get(TOKENIZER_FILE) {
            Some(bytes) => Some(
                TextTokenizer::from_json(
                    bytes,
                    self.max_seq_length,
                    self.dims.vocab_size,
                    self.truncate,
                )
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Box::new(BertEmbedder {
            encoder,
            tokenizer,
            dims: self.dims,
            signature: self.signature.clone(),
        }))
    }

    fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        let len = self.max_seq_length.min(16);
        vec![
            None,
            Some(HostTensor::zeros(ElemKind::I64, vec![1, len])),
            None,
            None,
        ]
    }
}

struct BertEmbedder {
    encoder: BertEncoder,
    tokenizer: Option<TextTokenizer>,
    dims: EncoderDims,
    signature: Signature,
}

/// A prepared request: `[rows, len]` ids, types and mask, rows padded to the request's longest.
/// Stored in `Prepared::tensors` as three INT64 tensors in this order.
const IDS: usize = 0;
const MASK: usize = 1;
const TYPES: usize = 2;

fn i64_values(t: &HostTensor) -> &[i64] {
    match &t.data {
        HostData::I64(v) => v,
        _ => &[],
    }
}

/// The rows of a text request after tokenisation.
struct Tokenized {
    ids: Vec<Vec<u32>>,
    types: Vec<Vec<u32>>,
    truncated: Vec<bool>,
}

impl BertEmbedder {
    fn tokenize(&self, texts: &HostTensor) -> Result<Tokenized, InputError> {
        let tokenizer = self.tokenizer.as_ref().ok_or(InputError::MissingAsset {
            file: TOKENIZER_FILE,
            instead: "input_ids",
        })?;
        let HostData::Bytes(strings) = &texts.data else {
            return Err(InputError::Kind {
                input: "text".to_string(),
                expected: ElemKind::Bytes,
            });
        };
        let (mut ids, mut types, mut truncated) = (Vec::new(), Vec::new(), Vec::new());
        for (i, bytes) in strings.iter().enumerate() {
            let text = std::str::from_utf8(bytes).map_err(|_| InputError::NotUtf8 {
                input: "text".to_string(),
                index: i,
            })?;
            let encoded = tokenizer.encode(text).map_err(|e| match e {
                TokenizerError::TooManyBytes { bytes, limit } => InputError::TextTooLong {
                    input: "text".to_string(),
                    index: i,
                    bytes,
                    limit,
                },
                TokenizerError::TooManyTokens { max } => InputError::TooManyTokens {
                    input: "text".to_string(),
                    index: i,
                    max,
                },
                e => InputError::Tokenize {
                    input: "text".to_string(),
                    index: i,
                    reason: e.to_string(),
                },
            })?;
            ids.push(encoded.ids);
            types.push(encoded.type_ids);
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
        let Some(ids) = &inputs[1] else {
            return Err(InputError::Combination("send \"text\" or \"input_ids\""));
        };
        let len = ids.shape[1];
        if len == 0 {
            return Err(InputError::EmptyDimension {
                input: "input_ids".to_string(),
                shape: ids.shape.clone(),
            });
        }
        if len > self.dims.max_position_embeddings {
            return Err(InputError::TooLong {
                input: "input_ids".to_string(),
                len,
                max: self.dims.max_position_embeddings,
                limit: "max_position_embeddings",
            });
        }
        let limits = [
            ("input_ids", 1, self.dims.vocab_size as i64, "vocab_size"),
            ("attention_mask", 2, 2, "0 or 1"),
            (
                "token_type_ids",
                3,
                self.dims.type_vocab_size as i64,
                "type_vocab_size",
            ),
        ];
        for (name, index, bound, what) in limits {
            let Some(t) = &inputs[index] else { continue };
            if t.shape != ids.shape {
                return Err(InputError::ShapeMismatch {
                    input: name.to_string(),
                    shape: t.shape.clone(),
                    other: "input_ids".to_string(),
                    other_shape: ids.shape.clone(),
                });
            }
            if let Some((index, value)) = i64_values(t)
                .iter()
                .enumerate()
                .find(|(_, v)| !(0..bound).contains(*v))
            {
                return Err(InputError::OutOfRange {
                    input: name.to_string(),
                    index,
                    value: *value,
                    bound,
                    what,
                });
            }
        }
        if let Some(mask) = &inputs[2] {
            if let Some(row) = i64_values(mask)
                .chunks(len)
                .position(|r| r.iter().all(|v| *v == 0))
            {
                return Err(InputError::NothingAttended { row });
            }
        }
        Ok(())
    }
}

/// Pads variable-length rows to one `[rows, len]` tensor with mask 0 on the padding.
fn pad_rows(ids: &[Vec<u32>], types: &[Vec<u32>]) -> Vec<Option<HostTensor>> {
    let rows = ids.len();
    let len = ids.iter().map(Vec::len).max().unwrap_or(0);
    let (mut i, mut m, mut t) = (
        vec![0i64; rows * len],
        vec![0i64; rows * len],
        vec![0i64; rows * len],
    );
    for (r, (row_ids, row_types)) in ids.iter().zip(types).enumerate() {
        for (k, (id, ty)) in row_ids.iter().zip(row_types).enumerate() {
            i[r * len + k] = i64::from(*id);
            m[r * len + k] = 1;
            t[r * len + k] = i64::from(*ty);
        }
    }
    let tensor = |values| {
        Some(HostTensor {
            shape: vec![rows, len],
            data: HostData::I64(values),
        })
    };
    vec![tensor(i), tensor(m), tensor(t)]
}

impl Model for BertEmbedder {
    fn prepare(&self, mut inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        let rows = common_rows(&self.signature, &inputs)?;
        let mut notes = Notes::new();
        let tensors = match (&inputs[0], &inputs[1]) {
            (Some(_), Some(_)) => {
                return Err(InputError::Combination(
                    "send either \"text\" or \"input_ids\", not both",
                ))
            }
            (Some(text), None) => {
                if inputs[2].is_some() || inputs[3].is_some() {
                    return Err(InputError::Combination(
                        "\"attention_mask\" and \"token_type_ids\" go with \"input_ids\"; \"text\" is tokenised by the server",
                    ));
                }
                let tokens = self.tokenize(text)?;
                notes.insert("truncated".into(), serde_json::json!(tokens.truncated));
                pad_rows(&tokens.ids, &tokens.types)
            }
            _ => {
                self.check_ids(&inputs)?;
                let mut ids = inputs[1].take();
                let shape = ids.as_ref().map(|t| t.shape.clone()).unwrap_or_default();
                let ones = || {
                    Some(HostTensor {
                        shape: shape.clone(),
                        data: HostData::I64(vec![1; shape.iter().product()]),
                    })
                };
                let mask = inputs[2].take().or_else(ones);
                let types = inputs[3]
                    .take()
                    .or_else(|| Some(HostTensor::zeros(ElemKind::I64, shape.clone())));
                vec![ids.take(), mask, types]
            }
        };
        let counts: Vec<i64> = tensors[MASK]
            .as_ref()
            .map(|m| {
                let len = m.shape[1].max(1);
                i64_values(m).chunks(len).map(|r| r.iter().sum()).collect()
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
        let rows = collect_rows(batch)?;
        let hidden = self.dims.hidden_size;
        let mut outputs: Vec<Vec<f32>> =
            batch.iter().map(|p| vec![0f32; p.rows * hidden]).collect();
        for group in plan_groups(&rows, self.dims.num_attention_heads) {
            let tokens = pad_group(&rows, &group);
            let embeddings = self.encoder.embed(&tokens)?;
            for (k, &index) in group.iter().enumerate() {
                let row = &rows[index];
                outputs[row.request][row.row * hidden..(row.row + 1) * hidden]
                    .copy_from_slice(&embeddings[k * hidden..(k + 1) * hidden]);
            }
        }
        Ok(batch
            .iter()
            .zip(outputs)
            .map(|(p, values)| {
                vec![HostTensor {
                    shape: vec![p.rows, hidden],
                    data: HostData::F32(values),
                }]
            })
            .collect())
    }
}

/// One sequence of a batch, with trailing padding trimmed.
struct Row<'a> {
    request: usize,
    row: usize,
    ids: &'a [i64],
    mask: &'a [i64],
    types: &'a [i64],
}

fn collect_rows<'a>(batch: &[&'a Prepared]) -> candle_core::Result<Vec<Row<'a>>> {
    let mut rows = Vec::new();
    for (request, prepared) in batch.iter().enumerate() {
        let tensor = |i: usize| match prepared.tensors.get(i) {
            Some(Some(t)) if t.shape.len() == 2 => Ok(t),
            _ => candle_core::bail!("a prepared bert request lacks its token tensors"),
        };
        let (ids, mask, types) = (tensor(IDS)?, tensor(MASK)?, tensor(TYPES)?);
        let len = ids.shape[1];
        let (ids, mask, types) = (i64_values(ids), i64_values(mask), i64_values(types));
        let size = prepared.rows * len;
        if ids.len() != size || mask.len() != size || types.len() != size {
            candle_core::bail!("a prepared bert request's token tensors disagree in size");
        }
        for row in 0..prepared.rows {
            let span = row * len..(row + 1) * len;
            let m = &mask[span.clone()];
            // Trailing padding is dropped; padding inside a row stays masked.
            let used = m.iter().rposition(|v| *v != 0).map_or(0, |p| p + 1);
            let start = span.start;
            rows.push(Row {
                request,
                row,
                ids: &ids[start..start + used],
                mask: &m[..used],
                types: &types[start..start + used],
            });
        }
    }
    Ok(rows)
}

/// Groups row indices so each group's padding stays within [`PAD_SLACK`] and its attention
/// scores within [`ATTENTION_BUDGET`]: rows sorted by length, longest first, taken greedily.
fn plan_groups(rows: &[Row], heads: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].ids.len()));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = rows[i].ids.len();
        let fits = groups.last().is_some_and(|g| {
            let longest = rows[g[0]].ids.len();
            let padded = (g.len() + 1) * longest;
            padded as f64 <= (real + len) as f64 * PAD_SLACK
                && (g.len() + 1) * heads * longest * longest <= ATTENTION_BUDGET
        });
        if fits {
            if let Some(g) = groups.last_mut() {
                g.push(i);
            }
            real += len;
        } else {
            groups.push(vec![i]);
            real = len;
        }
    }
    groups
}

fn pad_group(rows: &[Row], group: &[usize]) -> TokenBatch {
    let len = group.iter().map(|&i| rows[i].ids.len()).max().unwrap_or(0);
    let n = group.len() * len;
    let (mut ids, mut types, mut mask) = (vec![0u32; n], vec![0u32; n], vec![0f32; n]);
    for (k, &i) in group.iter().enumerate() {
        let row = &rows[i];
        for (j, ((id, m), ty)) in row.ids.iter().zip(row.mask).zip(row.types).enumerate() {
            // Values were range-checked in `prepare` (tokenizer ids fit vocab_size by construction).
            ids[k * len + j] = u32::try_from(*id).unwrap_or(0);
            types[k * len + j] = u32::try_from(*ty).unwrap_or(0);
            mask[k * len + j] = *m as f32;
        }
    }
    TokenBatch {
        ids,
        types,
        mask,
        rows: group.len(),
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    const SMALL: &str = "vocab_size = 50\nhidden_size = 8\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 16\nmax_position_embeddings = 12\n";

    #[test]
    fn hf_key_names() {
        let names = param_names("bert", SMALL);
        assert_eq!(names.len(), 5 + 2 * 16);
        for key in [
            "embeddings.word_embeddings.weight",
            "embeddings.LayerNorm.bias",
            "encoder.layer.1.attention.self.query.weight",
            "encoder.layer.1.attention.output.LayerNorm.weight",
            "encoder.layer.0.intermediate.dense.bias",
            "encoder.layer.0.output.dense.weight",
        ] {
            assert!(names.contains(&key.to_string()), "{key} not in {names:?}");
        }
        assert_eq!(
            configure("bert", &table(SMALL)).unwrap().required_assets(),
            &["tokenizer.json"]
        );
    }

    #[test]
    fn config_errors() {
        let err = configure("bert", &table(&format!("{SMALL}num_heads = 2"))).unwrap_err();
        assert!(err.to_string().contains("num_heads"), "{err}");
        let bad = SMALL.replace("num_attention_heads = 2", "num_attention_heads = 3");
        assert!(configure("bert", &table(&bad))
            .unwrap_err()
            .to_string()
            .contains("multiple"));
        let err = configure("bert", &table(&format!("{SMALL}max_seq_length = 13"))).unwrap_err();
        assert!(err.to_string().contains("max_seq_length"), "{err}");
        let err = configure(
            "bert",
            &table(&format!("{SMALL}hidden_act = \"gelu_fancy\"")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gelu_fancy"), "{err}");
    }

    fn row<'a>(ids: &'a [i64]) -> Row<'a> {
        Row {
            request: 0,
            row: 0,
            ids,
            mask: ids,
            types: ids,
        }
    }

    #[test]
    fn groups_bound_padding_waste() {
        let long = vec![1i64; 100];
        let mid = vec![1i64; 90];
        let short = vec![1i64; 10];
        let rows = vec![row(&short), row(&long), row(&mid), row(&short), row(&long)];
        let groups = plan_groups(&rows, 12);
        // The two 100s and the 90 share a group (waste 3.4%); the 10s are grouped apart.
        assert_eq!(groups, vec![vec![1, 4, 2], vec![0, 3]]);
        // Attention budget: huge sequences are never batched beyond it.
        let huge = vec![1i64; 512];
        let rows: Vec<Row> = (0..20).map(|_| row(&huge)).collect();
        let groups = plan_groups(&rows, 12);
        assert!(groups
            .iter()
            .all(|g| g.len() * 12 * 512 * 512 <= ATTENTION_BUDGET));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 20);
    }
}
