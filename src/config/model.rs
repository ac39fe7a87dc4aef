//! One `[[models]]` entry: its file form and its resolution into a [`ModelConfig`]: the name
//! grammar, the architecture and its `config` table (checked by the registry, with the line of
//! the mistake), the key mapping, the version policy, batching, and the promotion settings of
//! src/config/promotion.rs.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::promotion;
use super::{BatchingConfig, ConfigError, GoldenTolerance, ModelConfig, VersionPolicy};
use crate::arch::{self, Configured, Registry};
use crate::model::naming::validate_model_name;
use crate::state_dict::KeyMapping;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) name: String,
    architecture: toml::Spanned<String>,
    #[serde(default)]
    config: Option<toml::Spanned<toml::Table>>,
    #[serde(default)]
    load: Option<RawLoad>,
    #[serde(default)]
    version_policy: Option<RawVersionPolicy>,
    #[serde(default)]
    batching: Option<RawBatching>,
    #[serde(default)]
    golden: Option<promotion::RawGolden>,
    #[serde(default)]
    rollout: Option<promotion::RawRollout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    #[serde(default)]
    strip_prefix: Option<String>,
    #[serde(default)]
    ignore: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersionPolicy {
    latest: Option<usize>,
    all: Option<bool>,
    specific: Option<Vec<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatching {
    max_batch_size: Option<usize>,
    max_request_rows: Option<usize>,
    max_batch_tokens: Option<usize>,
    max_queue_tokens: Option<usize>,
    default_priority: Option<u64>,
    max_queue_delay_us: Option<u64>,
    max_queue_size: Option<usize>,
    default_timeout_us: Option<u64>,
}

/// Entry `index` of `[[models]]`, validated; `text` is the whole file, to name lines in errors.
pub(super) fn resolve_model(
    index: usize,
    raw: RawModel,
    text: &str,
    registry: &Registry,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<ModelConfig, ConfigError> {
    let here = format!("models[{index}] ({:?})", raw.name);
    let fail = |m: String| invalid(format!("{here}: {m}"));
    validate_model_name(&raw.name).map_err(|m| fail(format!("name: {m}")))?;

    let (architecture, arch_config) =
        resolve_architecture(&raw.architecture, raw.config, text, registry)
            .map_err(|(line, e)| invalid(format!("{here}, line {line}: {e}")))?;
    let mapping = match raw.load {
        None => KeyMapping::default(),
        Some(load) => KeyMapping::new(load.strip_prefix, load.ignore)
            .map_err(|m| fail(format!("load: {m}")))?,
    };
    let version_policy = match raw.version_policy {
        None => VersionPolicy::Latest(1),
        Some(p) => p.resolve(&fail)?,
    };
    let batching = match raw.batching {
        None => BatchingConfig::default(),
        Some(b) => b.resolve(&fail)?,
    };
    let golden = match raw.golden {
        None => GoldenTolerance::default(),
        Some(g) => g.resolve().map_err(fail)?,
    };
    let rollout = raw
        .rollout
        .map(promotion::RawRollout::resolve)
        .transpose()
        .map_err(fail)?;

    Ok(ModelConfig {
        name: raw.name,
        architecture,
        arch_config,
        mapping,
        version_policy,
        batching,
        golden,
        rollout,
    })
}

/// The architecture configured by the registry, and its `config` table (empty when absent).
/// An error comes with the line to blame: the `architecture` key's for an unknown name, the
/// `config` table's for a bad setting.
fn resolve_architecture(
    name: &toml::Spanned<String>,
    config: Option<toml::Spanned<toml::Table>>,
    text: &str,
    registry: &Registry,
) -> Result<(Arc<Configured>, toml::Table), (usize, arch::ConfigureError)> {
    let arch_line = line_of(text, name.span().start);
    let (arch_config, config_line) = match config {
        Some(spanned) => {
            let line = line_of(text, spanned.span().start);
            (spanned.into_inner(), line)
        }
        None => (toml::Table::new(), arch_line),
    };
    match registry.configure(name.get_ref(), &arch_config) {
        Ok(architecture) => Ok((architecture, arch_config)),
        Err(e) => {
            let line = match e {
                arch::ConfigureError::UnknownArchitecture { .. } => arch_line,
                arch::ConfigureError::InvalidConfig { .. } => config_line,
            };
            Err((line, e))
        }
    }
}

impl RawVersionPolicy {
    /// Exactly one of the three forms; `fail` prefixes the model.
    fn resolve(self, fail: &dyn Fn(String) -> ConfigError) -> Result<VersionPolicy, ConfigError> {
        match (self.latest, self.all, self.specific) {
            (Some(0), None, None) => {
                Err(fail("version_policy.latest must be at least 1".to_string()))
            }
            (Some(n), None, None) => Ok(VersionPolicy::Latest(n)),
            (None, Some(true), None) => Ok(VersionPolicy::All),
            (None, None, Some(list)) if !list.is_empty() && !list.contains(&0) => {
                Ok(VersionPolicy::Specific(list))
            }
            _ => Err(fail(
                "version_policy must be exactly one of { latest = N }, \
                 { all = true } or { specific = [positive versions] }"
                    .to_string(),
            )),
        }
    }
}

impl RawBatching {
    /// The settings given, the defaults of [`BatchingConfig`] for the rest; `fail` prefixes
    /// the model.
    fn resolve(self, fail: &dyn Fn(String) -> ConfigError) -> Result<BatchingConfig, ConfigError> {
        let defaults = BatchingConfig::default();
        let max_batch_size = self.max_batch_size.unwrap_or(defaults.max_batch_size);
        let max_queue_size = self.max_queue_size.unwrap_or(defaults.max_queue_size);
        if max_batch_size == 0 || max_queue_size == 0 {
            return Err(fail(
                "batching.max_batch_size and batching.max_queue_size must be at least 1"
                    .to_string(),
            ));
        }
        let max_request_rows = self.max_request_rows.unwrap_or(defaults.max_request_rows);
        if max_request_rows < max_batch_size {
            return Err(fail(format!(
                "batching.max_request_rows ({max_request_rows}) must be at least max_batch_size ({max_batch_size})"
            )));
        }
        Ok(BatchingConfig {
            max_batch_size,
            max_request_rows,
            max_batch_tokens: self.max_batch_tokens.unwrap_or(0),
            max_queue_tokens: self.max_queue_tokens.unwrap_or(0),
            default_priority: self
                .default_priority
                .unwrap_or(defaults.default_priority)
                .max(1),
            max_queue_delay: Duration::from_micros(self.max_queue_delay_us.unwrap_or(0)),
            max_queue_size,
            default_timeout: self
                .default_timeout_us
                .filter(|us| *us > 0)
                .map(Duration::from_micros),
        })
    }
}

/// The 1-based line of byte `offset` in `text` (0 if the offset is not in it).
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|prefix| prefix.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(0)
}
