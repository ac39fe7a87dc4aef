//! `roberta`: Hugging Face `RobertaModel` and `XLMRobertaModel` checkpoints (XLM-R, BGE-M3,
//! multilingual E5, ...) and their `*ForSequenceClassification`, on the shared encoder.
//!
//! RoBERTa is BERT's network with fairseq's position numbering: position ids start at
//! `pad_token_id + 1` and count only non-padding tokens (transformers'
//! `create_position_ids_from_input_ids`), so `max_position_embeddings` (514) holds rows of
//! `max_position_embeddings - pad_token_id - 1` (512) tokens. Its tokenizers feed no
//! `token_type_ids` (the table has one row, `type_vocab_size = 1`). The classification head
//! (`RobertaClassificationHead`) is `classifier.dense` + tanh on `<s>`, then
//! `classifier.out_proj`; the body sits under `roberta.` with no pooler.

use serde::Deserialize;

use super::bert::BertConfig;
use super::encoder::{EncoderSpec, Positions};
use super::family::{Family, TextFamily};
use super::head::ClassifierLayout;
use crate::arch::kernels::fused::Act;
use crate::arch::InvalidConfig;

/// `architecture = "roberta"`: the fields of a `config.json` for `RobertaModel` or
/// `XLMRobertaModel` — BERT's fields (transformers' `RobertaConfig` copies `BertConfig`), with
/// `pad_token_id` defaulting to 1.
/// <https://github.com/huggingface/transformers/blob/main/src/transformers/models/roberta/configuration_roberta.py>
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct RobertaConfig(pub BertConfig);

impl TextFamily for RobertaConfig {
    const FAMILY: Family = Family {
        prefix: "roberta",
        classifier: ClassifierLayout {
            dense: "classifier.dense",
            act: Act::Tanh,
            out: "classifier.out_proj",
        },
        tokenizer_types: false,
        optional: &[
            "embeddings.position_ids",
            "embeddings.token_type_ids",
            "pooler.*",
        ],
    };

    fn spec(&self) -> Result<EncoderSpec, InvalidConfig> {
        let pad = self.0.pad_token_id.unwrap_or(1);
        self.0
            .encoder(Positions::AfterPadding { padding_idx: pad }, pad)
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    const SMALL: &str = "vocab_size = 50\nhidden_size = 8\nnum_hidden_layers = 1\nnum_attention_heads = 2\nintermediate_size = 16\nmax_position_embeddings = 12\ntype_vocab_size = 1\n";

    #[test]
    fn keys_and_position_limit() {
        let names = param_names("roberta", SMALL);
        assert_eq!(names.len(), 5 + 16);
        assert!(names.contains(&"encoder.layer.0.attention.self.key.bias".to_string()));
        let names = param_names("roberta", &format!("{SMALL}task = \"classification\""));
        for key in [
            "roberta.embeddings.position_embeddings.weight",
            "classifier.dense.weight",
            "classifier.out_proj.bias",
        ] {
            assert!(names.contains(&key.to_string()), "{key} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("pooler")));
        // Positions start at pad_token_id + 1 = 2: 12 positions hold rows of 10 tokens.
        let err = configure("roberta", &table(&format!("{SMALL}max_seq_length = 11"))).unwrap_err();
        assert!(err.to_string().contains("between 1 and 10"), "{err}");
        configure("roberta", &table(&format!("{SMALL}max_seq_length = 10"))).unwrap();
        let err = configure("roberta", &table(&format!("{SMALL}pad_token_id = 11"))).unwrap_err();
        assert!(err.to_string().contains("no position"), "{err}");
    }
}
