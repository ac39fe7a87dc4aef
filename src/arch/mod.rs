//! Code-defined architecture families and the one registry table that maps a name in
//! config.toml to one.
//!
//! A family is a file with a serde config struct (unknown keys refused) that implements
//! [`FamilyConfig`], an [`Architecture`] that knows its [`Signature`] and builds a runnable
//! [`Model`] from a candle `VarBuilder` by asking for each parameter by the name PyTorch gives
//! it. The registry turns `architecture = "mlp"` plus its `config` table into a [`Configured`]
//! architecture: the family, its parameter list (recorded once, see
//! [`crate::state_dict::recording`]) and the extra files a version needs. Adding a family is
//! one file plus one line in [`REGISTRY`]; a program embedding wick adds its own families to a
//! [`Registry`]. Nothing here touches files, sockets or tokio:
//! weights and assets arrive as values.
//!
//! - [`mlp`]: `linear` and `mlp`;
//! - [`sequential`]: an `nn.Sequential` declared in config.toml;
//! - [`vision`]: torchvision's image classifiers;
//! - [`text`]: Hugging Face text encoders, their tokenizer and heads;
//! - [`kernels`]: wick's own CPU kernels the families run on;
//! - [`batch`]: helpers to stack requests into one batch and split the outputs back.

pub mod batch;
pub mod kernels;
pub mod mlp;
pub mod sequential;
pub mod text;
pub mod vision;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::model::{zeros_request, Assets, HostTensor, Model, Signature};
use crate::state_dict::{record, ExpectedSpec, Glob, RecordError};

/// One architecture family with its typed config applied.
pub trait Architecture: Send + Sync {
    fn signature(&self) -> &Signature;
    /// Checkpoint keys that may be present without being used.
    fn optional_keys(&self) -> Vec<Glob> {
        Vec::new()
    }
    /// Files every version must have beside the weights (e.g. `tokenizer.json`), as paths
    /// relative to the version directory.
    fn required_assets(&self) -> &'static [&'static str] {
        &[]
    }
    /// Files a version may carry and the architecture reads when present (e.g.
    /// sentence-transformers' `modules.json`). Both kinds are part of a version's identity.
    fn optional_assets(&self) -> &'static [&'static str] {
        &[]
    }
    /// Builds the model from weights. `assets` is empty when the registry records the parameter
    /// list, so builders must only parse assets that are present.
    fn build(&self, vb: VarBuilder<'_>, assets: &Assets) -> candle_core::Result<Box<dyn Model>>;
    /// A request of zeros used to warm up a freshly loaded version.
    fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        zeros_request(self.signature())
    }
}

/// A family's config table, deserialised; checking it as a whole makes the architecture.
pub trait FamilyConfig: DeserializeOwned {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig>;
}

/// A config that deserialised but does not describe a valid network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidConfig {
    /// The offending field, as written in config.toml.
    pub field: &'static str,
    pub reason: String,
}

impl InvalidConfig {
    pub fn new(field: &'static str, reason: impl Into<String>) -> InvalidConfig {
        InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

type Make = fn(&toml::Table) -> Result<Box<dyn Architecture>, ConfigProblem>;

/// Every family wick serves: the name config.toml uses and the config type that makes it.
pub const REGISTRY: &[(&str, Make)] = &[
    ("linear", make::<mlp::LinearConfig>),
    ("mlp", make::<mlp::MlpConfig>),
    ("resnet", make::<vision::resnet::ResNetConfig>),
    ("vit", make::<vision::vit::VitConfig>),
    ("convnext", make::<vision::convnext::ConvNextConfig>),
    (
        "mobilenet_v3",
        make::<vision::mobilenet_v3::MobileNetV3Config>,
    ),
    (
        "efficientnet",
        make::<vision::efficientnet::EfficientNetConfig>,
    ),
    ("bert", make::<text::TextConfig<text::bert::BertConfig>>),
    (
        "roberta",
        make::<text::TextConfig<text::roberta::RobertaConfig>>,
    ),
    (
        "distilbert",
        make::<text::TextConfig<text::distilbert::DistilBertConfig>>,
    ),
    ("mpnet", make::<text::TextConfig<text::mpnet::MPNetConfig>>),
    ("sequential", make::<sequential::SequentialConfig>),
];

fn make<C: FamilyConfig>(table: &toml::Table) -> Result<Box<dyn Architecture>, ConfigProblem> {
    let config: C = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| ConfigProblem::Parse(e.to_string().trim_end().to_string()))?;
    config.architecture().map_err(ConfigProblem::Invalid)
}

/// The names of wick's own families.
pub fn known() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|(name, _)| *name)
}

/// Why an architecture could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    #[error("unknown architecture {name:?}; known: {known}")]
    UnknownArchitecture { name: String, known: String },
    #[error("invalid config for architecture {architecture:?}: {problem}")]
    InvalidConfig {
        architecture: &'static str,
        problem: ConfigProblem,
    },
}

/// What is wrong with a family's config table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// An unknown or missing field, or a value of the wrong type (toml's message).
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Invalid(InvalidConfig),
}

/// wick's own families: `architecture = "..."` and its `config` table to a configured
/// architecture (what [`Registry::builtin`] does).
pub fn configure(name: &str, config: &toml::Table) -> Result<Arc<Configured>, ConfigureError> {
    Registry::builtin().configure(name, config)
}

/// The families a process serves: wick's own ([`REGISTRY`]) plus any a program embedding wick
/// adds with [`Registry::with`] (examples/custom_architecture.rs). The config carries it, so a
/// config reload resolves names with the same families.
#[derive(Clone)]
pub struct Registry {
    families: Vec<(&'static str, Make)>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.families.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::builtin()
    }
}

/// A family name that is already registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("architecture {0:?} is already registered")]
pub struct DuplicateArchitecture(pub &'static str);

impl Registry {
    /// wick's own families.
    pub fn builtin() -> Registry {
        Registry {
            families: REGISTRY.to_vec(),
        }
    }

    /// Adds a family: `architecture = "<name>"` configs are then deserialised into `C` (its
    /// `config` table) and made into an architecture by [`FamilyConfig::architecture`].
    pub fn with<C: FamilyConfig>(
        mut self,
        name: &'static str,
    ) -> Result<Registry, DuplicateArchitecture> {
        if self.families.iter().any(|(known, _)| *known == name) {
            return Err(DuplicateArchitecture(name));
        }
        self.families.push((name, make::<C>));
        Ok(self)
    }

    /// The registered names, wick's first.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families.iter().map(|(name, _)| *name)
    }

    /// `architecture = "..."` and its `config` table to a configured architecture.
    pub fn configure(
        &self,
        name: &str,
        config: &toml::Table,
    ) -> Result<Arc<Configured>, ConfigureError> {
        let Some((name, make)) = self.families.iter().find(|(known, _)| *known == name) else {
            return Err(ConfigureError::UnknownArchitecture {
                name: name.to_string(),
                known: self.names().collect::<Vec<_>>().join(", "),
            });
        };
        let inner = make(config).map_err(|problem| ConfigureError::InvalidConfig {
            architecture: name,
            problem,
        })?;
        Ok(Arc::new(Configured::new(name, inner)))
    }
}

/// An architecture plus its registry name and cached parameter list.
pub struct Configured {
    name: &'static str,
    inner: Box<dyn Architecture>,
    expected: OnceLock<Result<Arc<ExpectedSpec>, Arc<RecordError>>>,
}

impl fmt::Debug for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Configured")
            .field("name", &self.name)
            .finish()
    }
}

impl Configured {
    /// An architecture under a registry name; [`configure`] makes these from config tables,
    /// and code that defines its own architecture (tests, embedders) can make one directly.
    pub fn new(name: &'static str, inner: Box<dyn Architecture>) -> Configured {
        Configured {
            name,
            inner,
            expected: OnceLock::new(),
        }
    }

    /// The family itself, for wrappers that build on it.
    pub fn architecture(&self) -> &dyn Architecture {
        self.inner.as_ref()
    }

    /// The registry name (`"mlp"`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    pub fn required_assets(&self) -> &'static [&'static str] {
        self.inner.required_assets()
    }

    pub fn optional_assets(&self) -> &'static [&'static str] {
        self.inner.optional_assets()
    }

    /// Every asset a version may have: the required ones, then the optional ones.
    pub fn assets(&self) -> Vec<&'static str> {
        let mut all = self.inner.required_assets().to_vec();
        all.extend_from_slice(self.inner.optional_assets());
        all
    }

    pub fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        self.inner.warmup_inputs()
    }

    /// The parameters this architecture asks for, recorded on first use.
    pub fn expected(&self) -> Result<Arc<ExpectedSpec>, Arc<RecordError>> {
        self.expected
            .get_or_init(|| {
                let params = record(|vb| self.inner.build(vb, &Assets::default()).map(drop))
                    .map_err(Arc::new)?;
                Ok(Arc::new(ExpectedSpec {
                    params,
                    optional: self.inner.optional_keys(),
                }))
            })
            .clone()
    }

    /// Builds the model from checked F32 tensors named as the architecture asks for them.
    pub fn build(
        &self,
        tensors: HashMap<String, Tensor>,
        assets: &Assets,
    ) -> candle_core::Result<Box<dyn Model>> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        self.inner.build(vb, assets)
    }
}

/// Helpers shared by the architectures' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A TOML table from text.
    pub fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    /// The parameter names an architecture asks for, in request order.
    pub fn param_names(name: &str, config: &str) -> Vec<String> {
        super::configure(name, &table(config))
            .unwrap()
            .expected()
            .unwrap()
            .params
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// Deterministic values in [-1, 1) that are exact in f32.
    pub fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    /// The largest absolute difference between two tensors of one shape.
    pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
