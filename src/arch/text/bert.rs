//! `bert`: Hugging Face `BertModel` checkpoints (all-MiniLM-L6-v2, BGE, E5, ...) and
//! `BertForSequenceClassification` (cross-encoders, classifiers), on the shared encoder of
//! [`super::encoder`] with a head of [`super::head`].
//!
//! Embedding checkpoints have `BertModel`'s keys as `save_pretrained` writes them
//! (`embeddings.word_embeddings.weight`, `encoder.layer.N.attention.self.query.weight`, ...;
//! the unused `pooler.*` and the legacy `embeddings.position_ids` buffer may be present);
//! classification checkpoints have them under `bert.` plus the pooler (dense + tanh on
//! `[CLS]`) and `classifier`.

use serde::Deserialize;

use super::encoder::{EncoderSpec, HiddenAct, Positions, BERT_LAYOUT};
use super::family::{Family, TextFamily};
use super::head::ClassifierLayout;
use crate::arch::kernels::fused::Act;
use crate::arch::InvalidConfig;

/// `architecture = "bert"` (and, with RoBERTa's defaults, `"roberta"`): the fields of a Hugging
/// Face `config.json` for `BertModel`, plus the head fields of [`super::head`].
/// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/configuration_bert.py>
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
    /// BERT pads with 0 (its default); RoBERTa numbers positions after it (default 1).
    pub pad_token_id: Option<u32>,
}

fn two() -> usize {
    2
}

fn bert_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// The encoder of these fields with a family's position numbering and padding default.
    pub fn encoder(
        &self,
        positions: Positions,
        pad_token_id: u32,
    ) -> Result<EncoderSpec, InvalidConfig> {
        if self.type_vocab_size == 0 {
            return Err(InvalidConfig::new("type_vocab_size", "must be at least 1"));
        }
        let spec = EncoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: self.layer_norm_eps,
            act: self.hidden_act,
            positions,
            relative_buckets: None,
            pad_token_id,
            layout: &BERT_LAYOUT,
        };
        spec.check()?;
        Ok(spec)
    }
}

impl TextFamily for BertConfig {
    const FAMILY: Family = Family {
        prefix: "bert",
        classifier: ClassifierLayout {
            dense: "bert.pooler.dense",
            act: Act::Tanh,
            out: "classifier",
        },
        tokenizer_types: true,
        optional: &["embeddings.position_ids", "pooler.*"],
    };

    fn spec(&self) -> Result<EncoderSpec, InvalidConfig> {
        self.encoder(Positions::FromZero, self.pad_token_id.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
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
        // A classification head: the body under `bert.`, the pooler and the classifier.
        let names = param_names(
            "bert",
            &format!("{SMALL}task = \"classification\"\nnum_labels = 3"),
        );
        assert_eq!(names.len(), 5 + 2 * 16 + 4);
        for key in [
            "bert.embeddings.word_embeddings.weight",
            "bert.encoder.layer.1.output.LayerNorm.bias",
            "bert.pooler.dense.weight",
            "classifier.bias",
        ] {
            assert!(names.contains(&key.to_string()), "{key} not in {names:?}");
        }
    }

    #[test]
    fn config_errors() {
        let err = configure("bert", &table(&format!("{SMALL}num_heads = 2"))).unwrap_err();
        assert!(err.to_string().contains("num_heads"), "{err}");
        assert!(err.to_string().contains("`pooling`"), "{err}");
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
        let err = configure("bert", &table(&format!("{SMALL}pooling = \"first\""))).unwrap_err();
        assert!(err.to_string().contains("first"), "{err}");
        let err = configure(
            "bert",
            &table(&format!(
                "{SMALL}task = \"classification\"\nnormalize = true"
            )),
        )
        .unwrap_err();
        assert!(err.to_string().contains("normalize"), "{err}");
    }
}
