//! `mpnet`: Hugging Face `MPNetModel` checkpoints (all-mpnet-base-v2, multi-qa-mpnet, ...) and
//! `MPNetForSequenceClassification`, on the shared encoder.
//!
//! MPNet is BERT's post-LayerNorm encoder under other names (`attention.attn.q`,
//! `attention.LayerNorm`), without token types, with two differences: position ids are
//! numbered after padding index 1 (`MPNetEmbeddings` fixes it at 1 whatever `pad_token_id`
//! says) over non-padding tokens, and every layer adds a relative position bias to its
//! attention scores: `encoder.relative_attention_bias.weight` `[buckets, heads]`, looked up by
//! the bucket of each key-query offset ([`super::encoder::relative_position_bucket`]). Its
//! classification head is RoBERTa's: `classifier.dense` + tanh on `<s>`, then
//! `classifier.out_proj`, with the body under `mpnet.`.

use serde::Deserialize;

use super::encoder::{EncoderSpec, HiddenAct, Layout, Positions, BERT_LAYOUT, RELATIVE_BUCKETS};
use super::family::{Family, TextFamily};
use super::head::ClassifierLayout;
use crate::arch::kernels::fused::Act;
use crate::arch::InvalidConfig;

/// `architecture = "mpnet"`: the fields of a `config.json` for `MPNetModel`, plus the head
/// fields of [`super::head`].
/// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/mpnet/configuration_mpnet.py>
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MPNetConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "mpnet_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// The id padded rows are filled with (default 1). Positions count after index 1 whatever
    /// this says, as `MPNetEmbeddings` does.
    #[serde(default = "one")]
    pub pad_token_id: u32,
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
}

fn mpnet_eps() -> f64 {
    1e-12
}

fn one() -> u32 {
    1
}

fn buckets() -> usize {
    RELATIVE_BUCKETS
}

/// `MPNetEmbeddings.padding_idx`.
const MPNET_PADDING_IDX: u32 = 1;

/// `MPNetModel`'s parameter names.
const MPNET_LAYOUT: Layout = Layout {
    query: "attention.attn.q",
    key: "attention.attn.k",
    value: "attention.attn.v",
    attention_out: "attention.attn.o",
    attention_norm: "attention.LayerNorm",
    relative_bias: Some("encoder.relative_attention_bias"),
    ..BERT_LAYOUT
};

impl TextFamily for MPNetConfig {
    const FAMILY: Family = Family {
        prefix: "mpnet",
        classifier: ClassifierLayout {
            dense: "classifier.dense",
            act: Act::Tanh,
            out: "classifier.out_proj",
        },
        tokenizer_types: false,
        optional: &["embeddings.position_ids", "pooler.*"],
    };

    fn spec(&self) -> Result<EncoderSpec, InvalidConfig> {
        // transformers buckets offsets into 32 whatever the table holds
        // (`compute_position_bias` is called with its default): a smaller table would be
        // indexed past its end.
        if self.relative_attention_num_buckets < RELATIVE_BUCKETS {
            return Err(InvalidConfig::new(
                "relative_attention_num_buckets",
                format!(
                    "{} is below the {RELATIVE_BUCKETS} buckets MPNet's position bias uses",
                    self.relative_attention_num_buckets
                ),
            ));
        }
        let spec = EncoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 0,
            layer_norm_eps: self.layer_norm_eps,
            act: self.hidden_act,
            positions: Positions::AfterPadding {
                padding_idx: MPNET_PADDING_IDX,
            },
            relative_buckets: Some(self.relative_attention_num_buckets),
            pad_token_id: self.pad_token_id,
            layout: &MPNET_LAYOUT,
        };
        spec.check()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    const SMALL: &str = "vocab_size = 50\nhidden_size = 8\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 16\nmax_position_embeddings = 12\n";

    #[test]
    fn keys_and_bucket_limit() {
        let names = param_names("mpnet", SMALL);
        assert_eq!(names.len(), 4 + 2 * 16 + 1);
        for key in [
            "embeddings.word_embeddings.weight",
            "encoder.layer.1.attention.attn.q.weight",
            "encoder.layer.1.attention.attn.o.bias",
            "encoder.layer.1.attention.LayerNorm.weight",
            "encoder.layer.0.intermediate.dense.weight",
            "encoder.layer.0.output.LayerNorm.bias",
            "encoder.relative_attention_bias.weight",
        ] {
            assert!(names.contains(&key.to_string()), "{key} not in {names:?}");
        }
        let names = param_names("mpnet", &format!("{SMALL}task = \"classification\""));
        assert!(names.contains(&"mpnet.encoder.relative_attention_bias.weight".to_string()));
        assert!(names.contains(&"classifier.out_proj.weight".to_string()));
        let err = configure(
            "mpnet",
            &table(&format!("{SMALL}relative_attention_num_buckets = 16")),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("relative_attention_num_buckets"),
            "{err}"
        );
        let err = configure("mpnet", &table(&format!("{SMALL}type_vocab_size = 2"))).unwrap_err();
        assert!(err.to_string().contains("type_vocab_size"), "{err}");
    }
}
