//! The settings a version folder carries beside its weights: sentence-transformers' module
//! files and the tokenizer's `tokenizer_config.json`, read the way sentence-transformers 6.2
//! reads them, so a model folder from the Hub serves as `SentenceTransformer(folder)` encodes.
//!
//! - `modules.json` lists the modules after the transformer: a `Normalize` module means
//!   normalised embeddings; its absence means raw ones. Modules wick does not implement (`Dense`,
//!   `LayerNorm`, ...) change the embedding, so a folder with one is refused rather than served
//!   wrong.
//! - `1_Pooling/config.json` holds the pooling mode: the 6.x `"pooling_mode": "cls"` string or
//!   the 2.x `pooling_mode_*_token(s)` booleans (none set means mean, as sentence-transformers
//!   converts them).
//! - `sentence_bert_config.json`'s `max_seq_length` (2.x) and `do_lower_case`; without the
//!   former, the tokenizer's `model_max_length` (6.x keeps the length there), capped at what the
//!   position table holds.
//! - `tokenizer_config.json`'s `model_input_names` says whether the tokenizer feeds
//!   `token_type_ids` to the model (BERT's does, RoBERTa's does not).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::head::PoolingMode;
use crate::model::Assets;

pub const MODULES: &str = "modules.json";
pub const POOLING: &str = "1_Pooling/config.json";
pub const SENTENCE_BERT: &str = "sentence_bert_config.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// A setting and the file it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<T> {
    pub value: T,
    pub file: &'static str,
}

impl<T: Clone> Found<T> {
    /// The value and its file.
    pub fn pair(&self) -> (T, &'static str) {
        (self.value.clone(), self.file)
    }
}

/// What a version folder's files say; `None` where they say nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderSettings {
    /// `Err` names a pooling wick does not implement: an error only if nothing overrides it.
    pub pooling: Option<Found<Result<PoolingMode, String>>>,
    pub normalize: Option<Found<bool>>,
    /// As written (tokenizers write 1e30 for "no limit"): the caller caps it.
    pub max_seq_length: Option<Found<f64>>,
    pub lowercase: bool,
    /// Whether the tokenizer feeds `token_type_ids` (`model_input_names`).
    pub token_types: Option<bool>,
}

/// Why a version folder's settings cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("{file} is not valid: {message}")]
    Parse { file: &'static str, message: String },
    #[error("modules.json has a {kind} module at {path:?}; wick serves Transformer, Pooling and Normalize only (remove modules.json to serve the pooled output without it)")]
    UnsupportedModule { kind: String, path: String },
    #[error("modules.json puts the Pooling module in {path:?}; wick reads it from 1_Pooling/")]
    PoolingPath { path: String },
}

#[derive(Debug, Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

fn json<T: for<'de> Deserialize<'de>>(
    assets: &Assets,
    file: &'static str,
) -> Result<Option<T>, FolderError> {
    assets
        .get(file)
        .map(|bytes| {
            serde_json::from_slice(bytes).map_err(|e| FolderError::Parse {
                file,
                message: e.to_string(),
            })
        })
        .transpose()
}

/// Reads the settings from whichever of the files are present.
pub fn read(assets: &Assets) -> Result<FolderSettings, FolderError> {
    let mut out = FolderSettings::default();
    let mut pooling_file = true;
    if let Some(modules) = json::<Vec<Module>>(assets, MODULES)? {
        let short = |m: &Module| m.kind.rsplit('.').next().unwrap_or_default().to_string();
        let mut normalize = false;
        pooling_file = false;
        for module in &modules {
            match short(module).as_str() {
                "Transformer" => {}
                "Normalize" => normalize = true,
                "Pooling" if module.path.trim_end_matches('/') == "1_Pooling" => {
                    pooling_file = true
                }
                "Pooling" => {
                    return Err(FolderError::PoolingPath {
                        path: module.path.clone(),
                    })
                }
                kind => {
                    return Err(FolderError::UnsupportedModule {
                        kind: kind.to_string(),
                        path: module.path.clone(),
                    })
                }
            }
        }
        out.normalize = Some(Found {
            value: normalize,
            file: MODULES,
        });
    }
    if pooling_file {
        if let Some(config) = json::<Map<String, Value>>(assets, POOLING)? {
            out.pooling = Some(Found {
                value: pooling_mode(&config),
                file: POOLING,
            });
        }
    }
    let sentence_bert = json::<Map<String, Value>>(assets, SENTENCE_BERT)?.unwrap_or_default();
    out.lowercase = sentence_bert.get("do_lower_case") == Some(&Value::Bool(true));
    let tokenizer = json::<Map<String, Value>>(assets, TOKENIZER_CONFIG)?.unwrap_or_default();
    out.max_seq_length = match (
        sentence_bert.get("max_seq_length").and_then(Value::as_f64),
        tokenizer.get("model_max_length").and_then(Value::as_f64),
    ) {
        (Some(value), _) => Some(Found {
            value,
            file: SENTENCE_BERT,
        }),
        (None, Some(value)) => Some(Found {
            value,
            file: TOKENIZER_CONFIG,
        }),
        (None, None) => None,
    };
    out.token_types = tokenizer
        .get("model_input_names")
        .and_then(Value::as_array)
        .map(|names| names.iter().any(|n| n == "token_type_ids"));
    Ok(out)
}

/// The 2.x flags in sentence-transformers' order of concatenation, and the mode each stands for.
const LEGACY_FLAGS: [(&str, &str); 6] = [
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
];

/// The pooling a `1_Pooling/config.json` asks for (sentence-transformers'
/// `_convert_legacy_pooling_kwargs`: `pooling_mode` wins; else the flags set, none meaning mean).
fn pooling_mode(config: &Map<String, Value>) -> Result<PoolingMode, String> {
    let modes: Vec<String> = match config.get("pooling_mode") {
        Some(Value::String(mode)) => vec![mode.clone()],
        Some(Value::Array(modes)) => modes
            .iter()
            .map(|m| m.as_str().map_or_else(|| m.to_string(), String::from))
            .collect(),
        Some(other) => return Err(format!("pooling_mode {other}")),
        None => {
            let set: Vec<String> = LEGACY_FLAGS
                .iter()
                .filter(|(flag, _)| config.get(*flag) == Some(&Value::Bool(true)))
                .map(|(_, mode)| mode.to_string())
                .collect();
            if set.is_empty() {
                vec!["mean".to_string()]
            } else {
                set
            }
        }
    };
    match modes.as_slice() {
        [mode] => match mode.as_str() {
            "mean" => Ok(PoolingMode::Mean),
            "cls" => Ok(PoolingMode::Cls),
            "max" => Ok(PoolingMode::Max),
            other => Err(format!(
                "pooling mode {other:?} (wick implements mean, cls and max)"
            )),
        },
        _ => Err(format!(
            "the concatenation of pooling modes {modes:?} (wick implements one of mean, cls and max)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets(files: &[(&str, &str)]) -> Assets {
        let mut assets = Assets::default();
        for (name, text) in files {
            assets.insert(name, text.as_bytes().to_vec());
        }
        assets
    }

    const MODULES_2X: &str = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn reads_the_2x_layout() {
        let got = read(&assets(&[
            (MODULES, MODULES_2X),
            (
                POOLING,
                r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}"#,
            ),
            (SENTENCE_BERT, r#"{"max_seq_length": 256, "do_lower_case": true}"#),
            (TOKENIZER_CONFIG, r#"{"model_max_length": 512}"#),
        ]))
        .unwrap();
        assert_eq!(got.pooling.unwrap().value, Ok(PoolingMode::Mean));
        assert_eq!(
            got.normalize,
            Some(Found {
                value: true,
                file: MODULES
            })
        );
        assert_eq!(
            got.max_seq_length,
            Some(Found {
                value: 256.0,
                file: SENTENCE_BERT
            })
        );
        assert!(got.lowercase);
        assert_eq!(got.token_types, None);
    }

    #[test]
    fn reads_the_6x_layout() {
        let modules = r#"[{"path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {"path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]"#;
        let got = read(&assets(&[
            (MODULES, modules),
            (
                POOLING,
                r#"{"embedding_dimension": 36, "pooling_mode": "max"}"#,
            ),
            (
                SENTENCE_BERT,
                r#"{"transformer_task": "feature-extraction"}"#,
            ),
            (
                TOKENIZER_CONFIG,
                r#"{"model_max_length": 40, "model_input_names": ["input_ids", "attention_mask"]}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(got.pooling.unwrap().value, Ok(PoolingMode::Max));
        assert!(!got.normalize.unwrap().value);
        assert_eq!(
            got.max_seq_length,
            Some(Found {
                value: 40.0,
                file: TOKENIZER_CONFIG
            })
        );
        assert_eq!(got.token_types, Some(false));
        // A "no limit" sentinel stays a number for the caller to cap.
        let got = read(&assets(&[(
            TOKENIZER_CONFIG,
            r#"{"model_max_length": 1000000000000000019884624838656}"#,
        )]))
        .unwrap();
        assert!(got.max_seq_length.unwrap().value > 1e29);
    }

    #[test]
    fn pooling_modes_follow_sentence_transformers() {
        let mode = |text: &str| pooling_mode(&serde_json::from_str(text).unwrap());
        assert_eq!(
            mode(r#"{"pooling_mode_cls_token": true}"#),
            Ok(PoolingMode::Cls)
        );
        assert_eq!(
            mode(r#"{"pooling_mode_max_tokens": true}"#),
            Ok(PoolingMode::Max)
        );
        assert_eq!(
            mode(r#"{"pooling_mode_mean_tokens": false}"#),
            Ok(PoolingMode::Mean)
        );
        assert_eq!(mode(r#"{"pooling_mode": ["cls"]}"#), Ok(PoolingMode::Cls));
        let err = mode(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#);
        assert!(err.unwrap_err().contains("concatenation"));
        assert!(mode(r#"{"pooling_mode": "weightedmean"}"#)
            .unwrap_err()
            .contains("weightedmean"));
        assert!(mode(r#"{"pooling_mode_lasttoken": true}"#)
            .unwrap_err()
            .contains("lasttoken"));
    }

    #[test]
    fn refuses_modules_it_cannot_serve() {
        let dense = r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
            {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#;
        assert_eq!(
            read(&assets(&[(MODULES, dense)])).unwrap_err(),
            FolderError::UnsupportedModule {
                kind: "Dense".into(),
                path: "2_Dense".into()
            }
        );
        let moved = r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
            {"path": "2_Pooling", "type": "sentence_transformers.models.Pooling"}]"#;
        assert!(matches!(
            read(&assets(&[(MODULES, moved)])),
            Err(FolderError::PoolingPath { .. })
        ));
        assert!(matches!(
            read(&assets(&[(POOLING, "{")])),
            Err(FolderError::Parse { file: POOLING, .. })
        ));
    }
}
