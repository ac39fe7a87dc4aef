//! The BERT encoder network of the `bert` architecture: Hugging Face `BertModel`'s embeddings and
//! transformer layers by their state-dict names, and sentence-transformers' pooling.
//!
//! Names follow `transformers.BertModel.state_dict()` exactly (`embeddings.LayerNorm.weight`,
//! `encoder.layer.N.attention.self.query.weight`, ...). The computation is HF's in eval mode, with
//! the CPU-bound parts arranged for speed, each proven by the parity tests:
//! - query, key and value are one `[3H, H]` matmul (concatenated at load time), with the
//!   attention scale `1/√d` folded into the query weights and bias;
//! - every linear layer runs on a contiguous 2-D `[B·L, H]` matrix (candle's 3-D path broadcasts
//!   the weight per batch element), and LayerNorm always sees contiguous input so candle takes
//!   its fused kernel; softmax is candle's fused last-dimension kernel;
//! - padded keys get exactly zero attention weight (HF adds `f32::MIN` to their scores; the
//!   fused masked softmax skips them), so a padded batch gives the same embedding as a single row;
//! - bias, activation, residual, mask and softmax run as fused in-place kernels on rayon
//!   ([`crate::arch::kernels::fused`]), never on candle's separate elementwise thread pool.

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::arch::kernels::fused::{
    embedding_sum, mean_pool_normalize, Act, BiasAct, MaskedSoftmax,
};

/// `hidden_act` of a Hugging Face BERT config.
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

/// The sizes the encoder is built with (the config fields of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderDims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: HiddenAct,
}

/// `nn.Linear` applied to a contiguous `[rows, in]` matrix, with its epilogue fused.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor,
    bias: Vec<f32>,
}

impl Dense {
    fn load(vb: VarBuilder, input: usize, output: usize) -> candle_core::Result<Dense> {
        Ok(Dense {
            weight: vb.get((output, input), "weight")?,
            bias: vb.get(output, "bias")?.to_vec1::<f32>()?,
        })
    }

    /// `act(x·Wᵀ + b (+ residual))`.
    fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: Act,
    ) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
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
    fn load(vb: VarBuilder, dims: &EncoderDims) -> candle_core::Result<Layer> {
        let h = dims.hidden_size;
        let eps = dims.layer_norm_eps;
        let attn = vb.pp("attention");
        let this = attn.pp("self");
        let scale = 1.0 / ((h / dims.num_attention_heads) as f64).sqrt();
        let query = Dense::load(this.pp("query"), h, h)?;
        let key = Dense::load(this.pp("key"), h, h)?;
        let value = Dense::load(this.pp("value"), h, h)?;
        let scale32 = scale as f32;
        let qkv = Dense {
            weight: Tensor::cat(&[&(query.weight * scale)?, &key.weight, &value.weight], 0)?,
            bias: query
                .bias
                .iter()
                .map(|b| b * scale32)
                .chain(key.bias)
                .chain(value.bias)
                .collect(),
        };
        Ok(Layer {
            qkv,
            attention_out: Dense::load(attn.pp("output.dense"), h, h)?,
            attention_norm: candle_nn::layer_norm(h, eps, attn.pp("output.LayerNorm"))?,
            intermediate: Dense::load(vb.pp("intermediate.dense"), h, dims.intermediate_size)?,
            output: Dense::load(vb.pp("output.dense"), dims.intermediate_size, h)?,
            output_norm: candle_nn::layer_norm(h, eps, vb.pp("output.LayerNorm"))?,
        })
    }
}

/// `BertModel` without its pooler, plus mean pooling and L2 normalisation.
#[derive(Debug, Clone)]
pub struct BertEncoder {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    dims: EncoderDims,
}

/// One padded batch: `[B, L]` token ids, token type ids and the 0/1 attention mask.
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
    pub mask: Vec<f32>,
    pub rows: usize,
    pub len: usize,
}

impl BertEncoder {
    pub fn load(vb: VarBuilder, dims: &EncoderDims) -> candle_core::Result<BertEncoder> {
        let h = dims.hidden_size;
        let emb = vb.pp("embeddings");
        let encoder = vb.pp("encoder.layer");
        Ok(BertEncoder {
            word: emb.get((dims.vocab_size, h), "word_embeddings.weight")?,
            position: emb.get(
                (dims.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type: emb.get((dims.type_vocab_size, h), "token_type_embeddings.weight")?,
            embedding_norm: candle_nn::layer_norm(h, dims.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers: (0..dims.num_hidden_layers)
                .map(|i| Layer::load(encoder.pp(i), dims))
                .collect::<candle_core::Result<_>>()?,
            dims: *dims,
        })
    }

    /// Sentence embeddings `[B, H]` (row-major) of a batch: the last hidden state averaged over
    /// the attended positions, then L2-normalised (sentence-transformers' Pooling + Normalize).
    pub fn embed(&self, batch: &TokenBatch) -> candle_core::Result<Vec<f32>> {
        let (b, l) = (batch.rows, batch.len);
        if l > self.dims.max_position_embeddings
            || batch.ids.len() != b * l
            || batch.mask.len() != b * l
        {
            candle_core::bail!("a token batch of {b}x{l} does not fit the model");
        }
        let x = embedding_sum(
            [&self.word, &self.position, &self.token_type],
            &batch.ids,
            &batch.types,
            l,
        )?;
        let mut x = self.embedding_norm.forward(&x)?;
        let mask = Tensor::from_slice(&batch.mask, (b, l), &Device::Cpu)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &mask, (b, l))?;
        }
        mean_pool_normalize(&x, &batch.mask, l)
    }

    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        (b, l): (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let h = self.dims.hidden_size;
        let heads = self.dims.num_attention_heads;
        let d = h / heads;
        // [B·L, 3H] -> [3, B, heads, L, d], one copy.
        let qkv = layer
            .qkv
            .forward(x, None, Act::Identity)?
            .reshape((b, l, 3, heads, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let probs = q.matmul(&k.t()?)?;
        probs.inplace_op2(mask, &MaskedSoftmax { heads })?;
        let context = probs
            .matmul(&v)?
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((b * l, h))?;
        let attended = layer.attention_norm.forward(&layer.attention_out.forward(
            &context,
            Some(x),
            Act::Identity,
        )?)?;
        let inner = layer
            .intermediate
            .forward(&attended, None, self.dims.hidden_act.act())?;
        layer.output_norm.forward(
            &layer
                .output
                .forward(&inner, Some(&attended), Act::Identity)?,
        )
    }
}
