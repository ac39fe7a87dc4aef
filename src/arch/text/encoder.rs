//! The transformer encoder every text family runs: Hugging Face's BERT-style post-LayerNorm
//! encoder, described by an [`EncoderSpec`] (sizes, where each parameter lives in the
//! checkpoint, how position ids are made, an optional relative position bias).
//!
//! BERT, RoBERTa, DistilBERT and MPNet compute the same thing in eval mode: embeddings (word +
//! position (+ token type)) and a LayerNorm, then per layer self-attention, a residual and a
//! LayerNorm, a feed-forward block, a residual and a LayerNorm. They differ in parameter names
//! ([`Layout`]), in position ids ([`Positions`]: RoBERTa and MPNet count from one past the
//! padding index, over non-padding tokens only) and in MPNet's bucketed relative position bias
//! added to the attention scores. One implementation serves all four, so every speed-up lands once.
//!
//! The CPU-bound parts are arranged for speed, each proven by the parity tests:
//! - query, key and value are one `[3H, H]` matmul (concatenated at load time), with the
//!   attention scale `1/√d` folded into the query weights and bias;
//! - every linear layer runs on a contiguous 2-D `[B·L, H]` matrix (candle's 3-D path broadcasts
//!   the weight per batch element), and LayerNorm always sees contiguous input so candle takes
//!   its fused kernel;
//! - padded keys get exactly zero attention weight (HF adds `f32::MIN` to their scores; the
//!   fused masked softmax skips them), so a padded batch gives the same result as a single row;
//! - bias, activation, residual, relative bias, mask and softmax run as fused in-place kernels
//!   on rayon ([`crate::arch::kernels::fused`]), never on candle's separate elementwise pool.

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::arch::kernels::embed::{embedding_sum, EmbeddingTables, TokenIds};
use crate::arch::kernels::fused::{Act, BiasAct, MaskedSoftmax};
use crate::arch::InvalidConfig;

/// `hidden_act` (DistilBERT: `activation`) of a Hugging Face config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// The exact, erf-based GELU (`"gelu"`, BERT's and MiniLM's).
    #[default]
    Gelu,
    /// The tanh approximation (`"gelu_new"`).
    GeluNew,
    /// The tanh approximation (`"gelu_pytorch_tanh"`).
    GeluPytorchTanh,
    Relu,
    Silu,
}

impl HiddenAct {
    fn act(self) -> Act {
        match self {
            HiddenAct::Gelu => Act::GeluErf,
            HiddenAct::GeluNew | HiddenAct::GeluPytorchTanh => Act::GeluTanh,
            HiddenAct::Relu => Act::Relu,
            HiddenAct::Silu => Act::Silu,
        }
    }
}

/// Where a family keeps each parameter (relative to the encoder's root, e.g. `bert.` in a
/// classification checkpoint) and what its config calls each size.
#[derive(Debug)]
pub struct Layout {
    /// The list of layers (`encoder.layer`), each layer's parameters below `<layers>.<i>`.
    pub layers: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_out: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
    /// MPNet's `[buckets, heads]` relative position bias table.
    pub relative_bias: Option<&'static str>,
    /// The config fields that hold the sizes, for error messages.
    pub fields: SizeFields,
}

/// Config field names of an encoder's sizes.
#[derive(Debug)]
pub struct SizeFields {
    pub vocab_size: &'static str,
    pub hidden_size: &'static str,
    pub num_layers: &'static str,
    pub num_heads: &'static str,
    pub intermediate_size: &'static str,
}

/// `BertModel` (and `RobertaModel`, `XLMRobertaModel`).
pub const BERT_LAYOUT: Layout = Layout {
    layers: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
    relative_bias: None,
    fields: SizeFields {
        vocab_size: "vocab_size",
        hidden_size: "hidden_size",
        num_layers: "num_hidden_layers",
        num_heads: "num_attention_heads",
        intermediate_size: "intermediate_size",
    },
};

/// How a family numbers the positions of a row's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// `0, 1, 2, ...` (BERT, DistilBERT).
    FromZero,
    /// fairseq's `make_positions` (transformers' `create_position_ids_from_input_ids`): tokens
    /// equal to `padding_idx` get `padding_idx`, the others `padding_idx + 1, + 2, ...` counted
    /// over non-padding tokens only (RoBERTa: `pad_token_id`; MPNet: always 1).
    AfterPadding { padding_idx: u32 },
}

/// Everything the encoder is built from.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Rows of the token-type table; 0 for families without one.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub act: HiddenAct,
    pub positions: Positions,
    /// Rows of MPNet's relative attention bias table (`relative_attention_num_buckets`).
    pub relative_buckets: Option<usize>,
    /// The id padded rows are filled with.
    pub pad_token_id: u32,
    pub layout: &'static Layout,
}

impl EncoderSpec {
    /// The longest row the position table can number.
    pub fn max_len(&self) -> usize {
        match self.positions {
            Positions::FromZero => self.max_position_embeddings,
            Positions::AfterPadding { padding_idx } => self
                .max_position_embeddings
                .saturating_sub(padding_idx as usize + 1),
        }
    }

    /// Refuses sizes the encoder cannot be built with, naming the family's config field.
    pub fn check(&self) -> Result<(), InvalidConfig> {
        let f = &self.layout.fields;
        let sizes = [
            (f.vocab_size, self.vocab_size),
            (f.hidden_size, self.hidden_size),
            (f.num_layers, self.num_layers),
            (f.num_heads, self.num_heads),
            (f.intermediate_size, self.intermediate_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(InvalidConfig::new(name, "must be at least 1"));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(InvalidConfig::new(
                f.hidden_size,
                format!(
                    "{} is not a multiple of {} {}",
                    self.hidden_size, f.num_heads, self.num_heads
                ),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(InvalidConfig::new(
                "layer_norm_eps",
                format!("must be a positive number, got {}", self.layer_norm_eps),
            ));
        }
        if self.max_len() == 0 {
            return Err(InvalidConfig::new(
                "max_position_embeddings",
                format!(
                    "{} leaves no position for a token ({:?})",
                    self.max_position_embeddings, self.positions
                ),
            ));
        }
        if let Positions::AfterPadding { padding_idx } = self.positions {
            if padding_idx as usize >= self.vocab_size {
                return Err(InvalidConfig::new(
                    "pad_token_id",
                    format!("{padding_idx} is outside vocab_size {}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }
}

/// `nn.Linear` applied to a contiguous `[rows, in]` matrix, with its epilogue fused.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    /// The weight transposed once at load time, `[in, out]` contiguous. gemm computes
    /// `x·Wᵀ` as `(W·xᵀ)ᵀ`, so the weight is its left operand: stored as PyTorch writes it
    /// (`[out, in]`, rows contiguous) gemm repacked the whole matrix on every call, a cost
    /// proportional to the weights whatever the token count (two thirds of an 8-token MiniLM
    /// forward). Column-major as `[in, out]` gives, it reads the weight in place.
    weight_t: Tensor,
    bias: Vec<f32>,
}

impl Dense {
    /// A layer of `weight` `[out, in]` and `bias` `[out]`.
    pub(crate) fn new(weight: &Tensor, bias: Vec<f32>) -> candle_core::Result<Dense> {
        Ok(Dense {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    pub(crate) fn load(vb: VarBuilder, input: usize, output: usize) -> candle_core::Result<Dense> {
        let weight = vb.get((output, input), "weight")?;
        Dense::new(&weight, vb.get(output, "bias")?.to_vec1::<f32>()?)
    }

    /// `act(x·Wᵀ + b (+ residual))`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: Act,
    ) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight_t)?;
        let epilogue = BiasAct {
            bias: &self.bias,
            act,
        };
        match residual {
            Some(r) => y.inplace_op2(r, &epilogue)?,
            None => y.inplace_op1(&epilogue)?,
        }
        Ok(y)
    }
}

#[cfg(test)]
impl Dense {
    /// `y = x` on `n` features.
    pub(super) fn identity_for_tests(n: usize) -> Dense {
        Dense {
            weight_t: Tensor::eye(n, candle_core::DType::F32, &Device::Cpu).expect("eye"),
            bias: vec![0.0; n],
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    /// Query (pre-scaled by 1/√d), key and value stacked: `[3H, H]` and `[3H]`.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, spec: &EncoderSpec) -> candle_core::Result<Layer> {
        let (h, eps, names) = (spec.hidden_size, spec.layer_norm_eps, spec.layout);
        let scale = 1.0 / ((h / spec.num_heads) as f64).sqrt();
        let part = |name: &str| -> candle_core::Result<(Tensor, Vec<f32>)> {
            let vb = vb.pp(name);
            Ok((
                vb.get((h, h), "weight")?,
                vb.get(h, "bias")?.to_vec1::<f32>()?,
            ))
        };
        let (query, key, value) = (part(names.query)?, part(names.key)?, part(names.value)?);
        let scale32 = scale as f32;
        let qkv = Dense::new(
            &Tensor::cat(&[&(query.0 * scale)?, &key.0, &value.0], 0)?,
            query
                .1
                .iter()
                .map(|b| b * scale32)
                .chain(key.1)
                .chain(value.1)
                .collect(),
        )?;
        Ok(Layer {
            qkv,
            attention_out: Dense::load(vb.pp(names.attention_out), h, h)?,
            attention_norm: candle_nn::layer_norm(h, eps, vb.pp(names.attention_norm))?,
            intermediate: Dense::load(vb.pp(names.intermediate), h, spec.intermediate_size)?,
            output: Dense::load(vb.pp(names.output), spec.intermediate_size, h)?,
            output_norm: candle_nn::layer_norm(h, eps, vb.pp(names.output_norm))?,
        })
    }
}

/// One padded batch: `[B, L]` token ids, token type ids and the 0/1 attention mask.
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
    pub mask: Vec<f32>,
    pub rows: usize,
    pub len: usize,
}

/// The encoder with its weights: token ids in, last hidden states out.
#[derive(Debug, Clone)]
pub struct Encoder {
    word: Tensor,
    position: Tensor,
    token_type: Option<Tensor>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    /// MPNet's relative attention bias, `[buckets, heads]` row-major.
    relative_bias: Option<Vec<f32>>,
    spec: EncoderSpec,
}

impl Encoder {
    /// Asks `vb` for every parameter by the name the family's checkpoints use.
    pub fn load(vb: VarBuilder, spec: &EncoderSpec) -> candle_core::Result<Encoder> {
        let h = spec.hidden_size;
        let emb = vb.pp("embeddings");
        let token_type = match spec.type_vocab_size {
            0 => None,
            n => Some(emb.get((n, h), "token_type_embeddings.weight")?),
        };
        let word = emb.get((spec.vocab_size, h), "word_embeddings.weight")?;
        let position = emb.get(
            (spec.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let embedding_norm = candle_nn::layer_norm(h, spec.layer_norm_eps, emb.pp("LayerNorm"))?;
        let layers_vb = vb.pp(spec.layout.layers);
        let layers = (0..spec.num_layers)
            .map(|i| Layer::load(layers_vb.pp(i), spec))
            .collect::<candle_core::Result<_>>()?;
        let relative_bias = match (spec.layout.relative_bias, spec.relative_buckets) {
            (Some(name), Some(buckets)) => Some(
                vb.pp(name)
                    .get((buckets, spec.num_heads), "weight")?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            _ => None,
        };
        Ok(Encoder {
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            relative_bias,
            spec: *spec,
        })
    }

    /// The last hidden states `[B·L, H]` of a batch.
    pub fn forward(&self, batch: &TokenBatch) -> candle_core::Result<Tensor> {
        let (b, l) = (batch.rows, batch.len);
        if l > self.spec.max_len() || batch.ids.len() != b * l || batch.mask.len() != b * l {
            candle_core::bail!("a token batch of {b}x{l} does not fit the model");
        }
        let positions = self.position_ids(&batch.ids, l);
        let x = embedding_sum(
            EmbeddingTables {
                word: &self.word,
                position: &self.position,
                token_type: self.token_type.as_ref(),
            },
            TokenIds {
                ids: &batch.ids,
                positions: &positions,
                types: &batch.types,
            },
        )?;
        let mut x = self.embedding_norm.forward(&x)?;
        let mask = Tensor::from_slice(&batch.mask, (b, l), &Device::Cpu)?;
        let relative = self.relative_by_offset(l);
        for layer in &self.layers {
            x = self.layer(layer, &x, &mask, relative.as_deref(), (b, l))?;
        }
        Ok(x)
    }

    /// Position ids of `[B, L]` token ids, as the family numbers them.
    fn position_ids(&self, ids: &[u32], len: usize) -> Vec<u32> {
        match self.spec.positions {
            Positions::FromZero => (0..ids.len()).map(|r| (r % len) as u32).collect(),
            Positions::AfterPadding { padding_idx } => ids
                .chunks(len.max(1))
                .flat_map(|row| {
                    let mut count = 0u32;
                    row.iter().map(move |id| {
                        if *id == padding_idx {
                            padding_idx
                        } else {
                            count += 1;
                            padding_idx + count
                        }
                    })
                })
                .collect(),
        }
    }

    /// MPNet's relative position bias for rows of `len` tokens as `[heads, 2·len - 1]`: the
    /// bias of key offset `j - i` at `j - i + len - 1` (see [`MaskedSoftmax`]).
    fn relative_by_offset(&self, len: usize) -> Option<Vec<f32>> {
        let table = self.relative_bias.as_ref()?;
        let heads = self.spec.num_heads;
        let span = 2 * len - 1;
        let mut out = vec![0f32; heads * span];
        for k in 0..span {
            let bucket = relative_position_bucket(k as i64 - (len as i64 - 1));
            for h in 0..heads {
                out[h * span + k] = table[bucket * heads + h];
            }
        }
        Some(out)
    }

    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        relative: Option<&[f32]>,
        (b, l): (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let qkv = layer.qkv.forward(x, None, Act::Identity)?;
        let context = attention(&qkv, mask, self.spec.num_heads, relative, (b, l))?;
        let attended = layer.attention_norm.forward(&layer.attention_out.forward(
            &context,
            Some(x),
            Act::Identity,
        )?)?;
        let inner = layer
            .intermediate
            .forward(&attended, None, self.spec.act.act())?;
        layer.output_norm.forward(
            &layer
                .output
                .forward(&inner, Some(&attended), Act::Identity)?,
        )
    }
}

/// Multi-head scaled dot-product attention of stacked queries (already scaled by `1/√d`), keys
/// and values `[B·L, 3H]` over rows of `L` tokens, keys masked by the 0/1 `mask` `[B, L]`:
/// the context `[B·L, H]` before the output projection. Shared by the text encoder and `vit`
/// (src/arch/vision/vit.rs), whose `nn.MultiheadAttention` computes the same thing.
pub(crate) fn attention(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    relative: Option<&[f32]>,
    (b, l): (usize, usize),
) -> candle_core::Result<Tensor> {
    let h = qkv.dim(1)? / 3;
    let d = h / heads;
    // [B·L, 3H] -> [3, B, heads, L, d], one copy.
    let qkv = qkv
        .reshape((b, l, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let probs = q.matmul(&k.t()?)?;
    probs.inplace_op2(mask, &MaskedSoftmax { heads, relative })?;
    probs
        .matmul(&v)?
        .permute((0, 2, 1, 3))?
        .contiguous()?
        .reshape((b * l, h))
}

/// MPNet's bucket of a relative position `key - query` (transformers'
/// `MPNetEncoder.relative_position_bucket` with its defaults, 32 buckets and a maximum distance
/// of 128, which `compute_position_bias` always uses whatever `relative_attention_num_buckets`
/// says): offsets below 8 get a bucket each, larger ones share buckets on a log scale; keys
/// after the query use the upper 16 buckets. Computed in f32 as PyTorch does.
pub fn relative_position_bucket(relative_position: i64) -> usize {
    const HALF: i64 = 16;
    const EXACT: i64 = 8;
    let n = -relative_position;
    let base = if n < 0 { HALF } else { 0 };
    let n = n.abs();
    let offset = if n < EXACT {
        n
    } else {
        let log = (n as f32 / EXACT as f32).ln() / (128f64 / EXACT as f64).ln() as f32;
        (EXACT + (log * (HALF - EXACT) as f32) as i64).min(HALF - 1)
    };
    (base + offset) as usize
}

/// The bucket count [`relative_position_bucket`] uses.
pub const RELATIVE_BUCKETS: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_buckets_match_transformers() {
        // The first relative position (key - query) of each bucket, from
        // MPNetEncoder.relative_position_bucket(torch.arange(-600, 601)) (transformers 5.24).
        let starts: [(i64, usize); 31] = [
            (-600, 15),
            (-90, 14),
            (-63, 13),
            (-45, 12),
            (-31, 11),
            (-22, 10),
            (-15, 9),
            (-11, 8),
            (-7, 7),
            (-6, 6),
            (-5, 5),
            (-4, 4),
            (-3, 3),
            (-2, 2),
            (-1, 1),
            (0, 0),
            (1, 17),
            (2, 18),
            (3, 19),
            (4, 20),
            (5, 21),
            (6, 22),
            (7, 23),
            (8, 24),
            (12, 25),
            (16, 26),
            (23, 27),
            (32, 28),
            (46, 29),
            (64, 30),
            (91, 31),
        ];
        for pair in starts.windows(2) {
            let ((from, bucket), (next, _)) = (pair[0], pair[1]);
            for r in from..next {
                assert_eq!(relative_position_bucket(r), bucket, "relative position {r}");
            }
        }
        for r in 91..=600 {
            assert_eq!(relative_position_bucket(r), 31, "relative position {r}");
        }
        assert!((-5000..5000).all(|r| relative_position_bucket(r) < RELATIVE_BUCKETS));
    }
}
