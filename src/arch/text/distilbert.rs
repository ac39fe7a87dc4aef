//! `distilbert`: Hugging Face `DistilBertModel` checkpoints (multi-qa-distilbert, msmarco
//! DistilBERT, ...) and `DistilBertForSequenceClassification`, on the shared encoder.
//!
//! DistilBERT is BERT's post-LayerNorm encoder under other names
//! (`transformer.layer.N.attention.q_lin`, `sa_layer_norm`, `ffn.lin1`, `output_layer_norm`),
//! without token types and with LayerNorm eps fixed at 1e-12. Its classification head is
//! `pre_classifier` + ReLU on `[CLS]`, then `classifier`, with the body under `distilbert.`.

use serde::Deserialize;

use super::encoder::{EncoderSpec, HiddenAct, Layout, Positions, SizeFields};
use super::family::{Family, TextFamily};
use super::head::ClassifierLayout;
use crate::arch::kernels::fused::Act;
use crate::arch::InvalidConfig;

/// `architecture = "distilbert"`: the fields of a `config.json` for `DistilBertModel`, plus the
/// head fields of [`super::head`].
/// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/distilbert/configuration_distilbert.py>
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    pub max_position_embeddings: usize,
    /// `"gelu"` (the default) or `"relu"`.
    #[serde(default)]
    pub activation: HiddenAct,
    #[serde(default)]
    pub pad_token_id: u32,
    /// Only how the position table was initialised for training; the table is in the
    /// checkpoint either way.
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
}

/// `DistilBertModel`'s parameter names.
const DISTILBERT_LAYOUT: Layout = Layout {
    layers: "transformer.layer",
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
    relative_bias: None,
    fields: SizeFields {
        vocab_size: "vocab_size",
        hidden_size: "dim",
        num_layers: "n_layers",
        num_heads: "n_heads",
        intermediate_size: "hidden_dim",
    },
};

impl TextFamily for DistilBertConfig {
    const FAMILY: Family = Family {
        prefix: "distilbert",
        classifier: ClassifierLayout {
            dense: "pre_classifier",
            act: Act::Relu,
            out: "classifier",
        },
        tokenizer_types: false,
        optional: &["embeddings.position_ids"],
    };

    fn spec(&self) -> Result<EncoderSpec, InvalidConfig> {
        let spec = EncoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.dim,
            num_layers: self.n_layers,
            num_heads: self.n_heads,
            intermediate_size: self.hidden_dim,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 0,
            layer_norm_eps: 1e-12,
            act: self.activation,
            positions: Positions::FromZero,
            relative_buckets: None,
            pad_token_id: self.pad_token_id,
            layout: &DISTILBERT_LAYOUT,
        };
        spec.check()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    const SMALL: &str = "vocab_size = 50\ndim = 8\nn_layers = 2\nn_heads = 2\nhidden_dim = 16\nmax_position_embeddings = 12\n";

    #[test]
    fn keys_and_inputs() {
        let names = param_names("distilbert", SMALL);
        assert_eq!(names.len(), 4 + 2 * 16);
        for key in [
            "embeddings.word_embeddings.weight",
            "embeddings.position_embeddings.weight",
            "transformer.layer.1.attention.q_lin.weight",
            "transformer.layer.1.attention.out_lin.bias",
            "transformer.layer.0.sa_layer_norm.weight",
            "transformer.layer.0.ffn.lin1.weight",
            "transformer.layer.0.ffn.lin2.bias",
            "transformer.layer.0.output_layer_norm.bias",
        ] {
            assert!(names.contains(&key.to_string()), "{key} not in {names:?}");
        }
        let arch = configure("distilbert", &table(SMALL)).unwrap();
        let inputs: Vec<&str> = arch
            .signature()
            .inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(inputs, ["text", "input_ids", "attention_mask"]);
        let names = param_names("distilbert", &format!("{SMALL}task = \"classification\""));
        for key in [
            "distilbert.transformer.layer.0.ffn.lin1.weight",
            "pre_classifier.weight",
            "classifier.bias",
        ] {
            assert!(names.contains(&key.to_string()), "{key} not in {names:?}");
        }
        let err = configure(
            "distilbert",
            &table(&SMALL.replace("n_heads = 2", "n_heads = 3")),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("dim: 8 is not a multiple of n_heads 3"),
            "{err}"
        );
    }
}
