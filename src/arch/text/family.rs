//! One architecture for every text family: a family contributes its config struct (the
//! upstream config.json fields), the [`EncoderSpec`] they describe and where its checkpoints
//! keep things ([`Family`]); the head fields ([`HeadConfig`]) sit beside them in the same
//! config table, and [`TextArch`] turns both into the signature, the parameter list and, with
//! a version's files, a [`TextModel`].

use serde::de::{DeserializeOwned, Deserializer, Error as _, Visitor};
use serde::Deserialize;

use super::encoder::{Encoder, EncoderSpec};
use super::head::{Classifier, ClassifierLayout, Head, HeadConfig, PoolingMode, Task};
use super::model::{Slots, TextModel};
use super::st_files::{self, FolderError, Found};
use super::tokenizer::{TextTokenizer, BYTES_PER_TOKEN};
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};
use crate::model::{Assets, ElemKind, HostTensor, IoSpec, Model, Notes, Signature};
use crate::state_dict::Glob;

/// The tokenizer file every text version carries beside its weights.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A text family's config struct.
pub trait TextFamily: DeserializeOwned {
    const FAMILY: Family;
    /// The encoder the config describes, checked.
    fn spec(&self) -> Result<EncoderSpec, InvalidConfig>;
}

/// Where a family's checkpoints keep what the encoder does not cover.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The attribute transformers' `*ForSequenceClassification` keeps the encoder in (`bert`),
    /// so its keys are `bert.embeddings...`.
    pub prefix: &'static str,
    pub classifier: ClassifierLayout,
    /// Whether the family's tokenizers feed `token_type_ids` when `tokenizer_config.json` does
    /// not say (transformers' `model_input_names`).
    pub tokenizer_types: bool,
    /// Keys a base-model checkpoint may carry without the model using them: saved buffers
    /// (`embeddings.position_ids`) and a pooler sentence embeddings do not use.
    pub optional: &'static [&'static str],
}

/// A text family's config table: the family's own fields and the head fields, split by name.
#[derive(Debug, Clone)]
pub struct TextConfig<F> {
    pub family: F,
    pub head: HeadConfig,
}

impl<'de, F: DeserializeOwned> Deserialize<'de> for TextConfig<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let fields = struct_fields::<HeadConfig>();
        let head: toml::Table = fields
            .iter()
            .filter_map(|f| table.remove(*f).map(|v| (f.to_string(), v)))
            .collect();
        let head = HeadConfig::deserialize(toml::Value::Table(head)).map_err(D::Error::custom)?;
        let family = F::deserialize(toml::Value::Table(table)).map_err(|e| {
            let message = e.to_string();
            if message.contains("unknown field") {
                D::Error::custom(format!(
                    "{}, or a head field: `{}`",
                    message.trim_end(),
                    fields.join("`, `")
                ))
            } else {
                D::Error::custom(message)
            }
        })?;
        Ok(TextConfig { family, head })
    }
}

/// The field names serde's derive gives a struct (what its `deserialize_struct` is told).
fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

impl<F: TextFamily> FamilyConfig for TextConfig<F> {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        Ok(Box::new(TextArch::new(
            self.family.spec()?,
            F::FAMILY,
            self.head,
        )?))
    }
}

/// Files an embedding version may carry (sentence-transformers' and the tokenizer's settings).
const EMBEDDING_ASSETS: &[&str] = &[
    st_files::MODULES,
    st_files::POOLING,
    st_files::SENTENCE_BERT,
    st_files::TOKENIZER_CONFIG,
];

/// Files a classification version may carry.
const CLASSIFICATION_ASSETS: &[&str] = &[st_files::TOKENIZER_CONFIG];

/// A configured text family with its head.
#[derive(Debug, Clone)]
pub struct TextArch {
    spec: EncoderSpec,
    family: Family,
    head: HeadConfig,
    labels: Vec<String>,
    slots: Slots,
    signature: Signature,
}

impl TextArch {
    pub fn new(
        spec: EncoderSpec,
        family: Family,
        head: HeadConfig,
    ) -> Result<TextArch, InvalidConfig> {
        spec.check()?;
        let labels = head.labels()?;
        if let Some(max) = head.max_seq_length {
            if max == 0 || max > spec.max_len() {
                return Err(InvalidConfig::new(
                    "max_seq_length",
                    format!(
                        "{max} must be between 1 and {}, the longest row the position table holds",
                        spec.max_len()
                    ),
                ));
            }
        }
        let classify = head.task == Task::Classification;
        // Decoders keep at most the tokenizer's byte budget of each text (the longest
        // max_seq_length a version's files can set is the position table's).
        let budget = head
            .max_seq_length
            .unwrap_or(spec.max_len())
            .saturating_mul(BYTES_PER_TOKEN);
        let text = |name| {
            IoSpec::new(name, ElemKind::Bytes, &[])
                .optional()
                .max_bytes(budget)
        };
        let mut inputs = vec![text("text")];
        if classify {
            inputs.push(text("text_pair"));
        }
        let ids = |name, bound, what| {
            IoSpec::new(name, ElemKind::I64, &[-1])
                .optional()
                .indices(bound, what)
        };
        inputs.push(ids("input_ids", spec.vocab_size, "vocab_size"));
        inputs.push(ids("attention_mask", 2, "0 or 1"));
        if spec.type_vocab_size > 0 {
            inputs.push(ids(
                "token_type_ids",
                spec.type_vocab_size,
                "type_vocab_size",
            ));
        }
        let outputs = if classify {
            let n = labels.len() as i64;
            vec![
                IoSpec::new("logits", ElemKind::F32, &[n]),
                IoSpec::new("probabilities", ElemKind::F32, &[n]),
                IoSpec::new("label", ElemKind::Bytes, &[]),
            ]
        } else {
            vec![IoSpec::new(
                "embedding",
                ElemKind::F32,
                &[spec.hidden_size as i64],
            )]
        };
        let signature = Signature { inputs, outputs };
        Ok(TextArch {
            slots: Slots::of(&signature),
            spec,
            family,
            head,
            labels,
            signature,
        })
    }

    /// The settings a version serves with: the config's where it sets them, else the version's
    /// files', else the defaults; and which of those each came from.
    fn settings(&self, assets: &Assets) -> Result<Settings, FolderError> {
        let folder = st_files::read(assets)?;
        let (pooling, pooling_from) = pick(
            self.head.pooling.map(Ok),
            folder.pooling.as_ref().map(Found::pair),
            (Ok(PoolingMode::Mean), "default"),
        );
        let pooling = pooling.map_err(|mode| FolderError::Parse {
            file: pooling_from,
            message: format!("{mode}; set `pooling` in the model's config to override it"),
        })?;
        let (normalize, normalize_from) = pick(
            self.head.normalize,
            folder.normalize.as_ref().map(Found::pair),
            (true, "default"),
        );
        let limit = self.spec.max_len();
        let (max_seq_length, length_from) = pick(
            self.head.max_seq_length,
            folder
                .max_seq_length
                .as_ref()
                .filter(|f| f.value >= 1.0)
                .map(|f| (f.value.min(limit as f64) as usize, f.file)),
            (limit, "max_position_embeddings"),
        );
        let mut parameters = Notes::new();
        let mut from = serde_json::Map::new();
        parameters.insert("task".into(), serde_json::json!(self.task_name()));
        if self.head.task == Task::Embedding {
            parameters.insert("pooling".into(), serde_json::json!(pooling.name()));
            parameters.insert("normalize".into(), serde_json::json!(normalize));
            from.insert("pooling".into(), serde_json::json!(pooling_from));
            from.insert("normalize".into(), serde_json::json!(normalize_from));
        } else {
            parameters.insert("labels".into(), serde_json::json!(self.labels));
        }
        parameters.insert("max_seq_length".into(), serde_json::json!(max_seq_length));
        from.insert("max_seq_length".into(), serde_json::json!(length_from));
        parameters.insert("truncate".into(), serde_json::json!(self.head.truncate));
        if folder.lowercase {
            parameters.insert("lowercase".into(), serde_json::json!(true));
        }
        parameters.insert("settings_from".into(), serde_json::Value::Object(from));
        Ok(Settings {
            pooling,
            normalize,
            max_seq_length,
            lowercase: folder.lowercase,
            token_types: self.spec.type_vocab_size > 0
                && folder.token_types.unwrap_or(self.family.tokenizer_types),
            parameters,
        })
    }

    fn task_name(&self) -> &'static str {
        match self.head.task {
            Task::Embedding => "embedding",
            Task::Classification => "classification",
        }
    }
}

/// The config's value if set, else the file's, else the default, with where it came from.
fn pick<T>(
    config: Option<T>,
    file: Option<(T, &'static str)>,
    default: (T, &'static str),
) -> (T, &'static str) {
    match (config, file) {
        (Some(value), _) => (value, "config"),
        (None, Some(found)) => found,
        (None, None) => default,
    }
}

/// What a version serves with, once its files are read.
struct Settings {
    pooling: PoolingMode,
    normalize: bool,
    max_seq_length: usize,
    lowercase: bool,
    token_types: bool,
    parameters: Notes,
}

fn build_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl Architecture for TextArch {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn optional_keys(&self) -> Vec<Glob> {
        let prefix = match self.head.task {
            Task::Embedding => String::new(),
            Task::Classification => format!("{}.", self.family.prefix),
        };
        self.family
            .optional
            .iter()
            // The pooler of a classification checkpoint is its head, never optional.
            .filter(|key| self.head.task == Task::Embedding || !key.starts_with("pooler."))
            .filter_map(|key| Glob::new(&format!("{prefix}{key}")).ok())
            .collect()
    }

    fn required_assets(&self) -> &'static [&'static str] {
        &[TOKENIZER_FILE]
    }

    fn optional_assets(&self) -> &'static [&'static str] {
        match self.head.task {
            Task::Embedding => EMBEDDING_ASSETS,
            Task::Classification => CLASSIFICATION_ASSETS,
        }
    }

    fn build(
        &self,
        vb: candle_nn::VarBuilder<'_>,
        assets: &Assets,
    ) -> candle_core::Result<Box<dyn Model>> {
        let settings = self.settings(assets).map_err(build_error)?;
        let (encoder, head) = match self.head.task {
            Task::Embedding => (
                Encoder::load(vb, &self.spec)?,
                Head::Embedding {
                    pool: settings.pooling.pool(),
                    normalize: settings.normalize,
                },
            ),
            Task::Classification => {
                let encoder = Encoder::load(vb.pp(self.family.prefix), &self.spec)?;
                let scores = self.head.scores(self.labels.len());
                let classifier = Classifier::load(
                    &vb,
                    &self.family.classifier,
                    self.spec.hidden_size,
                    self.labels.clone(),
                    scores,
                )?;
                (encoder, Head::Classification(classifier))
            }
        };
        let tokenizer = match assets.get(TOKENIZER_FILE) {
            Some(bytes) => {
                let tokenizer = TextTokenizer::from_json(
                    bytes,
                    settings.max_seq_length,
                    self.spec.vocab_size,
                    self.head.truncate,
                )
                .map_err(build_error)?;
                Some(if settings.lowercase {
                    tokenizer.lowercase_first().map_err(build_error)?
                } else {
                    tokenizer
                })
            }
            None => None,
        };
        Ok(Box::new(TextModel {
            encoder,
            head,
            tokenizer,
            token_types: settings.token_types,
            spec: self.spec,
            slots: self.slots,
            signature: self.signature.clone(),
            parameters: settings.parameters,
        }))
    }

    fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        let len = self.spec.max_len().min(16);
        let mut inputs = vec![None; self.signature.inputs.len()];
        inputs[self.slots.ids] = Some(HostTensor::zeros(ElemKind::I64, vec![1, len]));
        inputs
    }
}
