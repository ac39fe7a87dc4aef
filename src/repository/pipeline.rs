//! The load pipeline of one version: strict validation, copy out of the mapping, build, warm up.
//!
//! Runs on whatever thread asks (startup, the watcher, the repository API via `spawn_blocking`),
//! never on the request path. Its result is a [`LoadedVersion`] that has already answered one
//! forward pass with finite outputs, or a [`LoadFailure`] that says exactly what is wrong.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::arch::{Assets, HostData};
use crate::config::ModelConfig;
use crate::engine::LoadedVersion;
use crate::state_dict::{self, LoadError};

use super::scan::WEIGHTS_FILE;

/// Assets such as tokenizer.json are small; anything bigger is refused rather than read.
const MAX_ASSET_BYTES: u64 = 64 << 20;

/// Why a version could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    #[error(transparent)]
    Checkpoint(#[from] LoadError),
    #[error("{name}: {message}")]
    Asset { name: String, message: String },
    #[error("cannot record the architecture's parameters: {0}")]
    Expected(String),
    #[error("building the model failed: {0}")]
    Build(String),
    #[error("warm-up forward pass failed: {0}")]
    Warmup(String),
}

impl LoadFailure {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadFailure::Checkpoint(e) => e.kind(),
            LoadFailure::Asset { .. } => "asset",
            LoadFailure::Expected(_) | LoadFailure::Build(_) => "build",
            LoadFailure::Warmup(_) => "warmup",
        }
    }

    /// The strict report, when the failure is a key/shape/dtype mismatch.
    pub fn report(&self) -> Option<&state_dict::LoadReport> {
        match self {
            LoadFailure::Checkpoint(LoadError::Mismatch(report)) => Some(report),
            _ => None,
        }
    }
}

/// What `target` strings in reports look like: `mlp "digits" version 3`.
pub fn target(config: &ModelConfig, version: u64) -> String {
    format!(
        "{} {:?} version {version}",
        config.architecture.name(),
        config.name
    )
}

/// Loads version `version` of `config` from `dir`.
pub fn load_version(
    config: &ModelConfig,
    version: u64,
    dir: &Path,
) -> Result<LoadedVersion, LoadFailure> {
    let started = Instant::now();
    let arch = &config.architecture;
    let expected = arch.expected().map_err(LoadFailure::Expected)?;
    let assets = read_assets(dir, arch.required_assets())?;
    let loaded = state_dict::load(
        &dir.join(WEIGHTS_FILE),
        &target(config, version),
        &expected,
        &config.mapping,
    )?;
    let vb = VarBuilder::from_tensors(loaded.tensors, DType::F32, &Device::Cpu);
    let model = arch
        .build(vb, &assets)
        .map_err(|e| LoadFailure::Build(e.to_string()))?;

    // One forward pass on zeros before the version may serve: it must run and give finite values.
    let prepared = model
        .prepare(arch.warmup_inputs())
        .map_err(|e| LoadFailure::Warmup(e.to_string()))?;
    let outputs = model
        .forward(&[&prepared])
        .map_err(|e| LoadFailure::Warmup(e.to_string()))?;
    for (spec, tensor) in arch
        .signature()
        .outputs
        .iter()
        .zip(outputs.first().into_iter().flatten())
    {
        if let HostData::F32(values) = &tensor.data {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(LoadFailure::Warmup(format!(
                    "output {:?} is not finite at index {i} for an input of zeros ({})",
                    spec.name, values[i]
                )));
            }
        }
    }

    Ok(LoadedVersion {
        model_name: config.name.clone(),
        version,
        sha256: loaded.sha256,
        param_bytes: loaded.param_bytes,
        signature: arch.signature().clone(),
        model,
        report: loaded.report,
        load_duration: started.elapsed(),
    })
}

fn read_assets(dir: &Path, names: &[&str]) -> Result<Assets, LoadFailure> {
    let mut assets = Assets::default();
    for name in names {
        let path = dir.join(name);
        let failure = |message: String| LoadFailure::Asset {
            name: name.to_string(),
            message,
        };
        let meta = std::fs::metadata(&path)
            .map_err(|e| failure(format!("required beside {WEIGHTS_FILE}: {e}")))?;
        if !meta.is_file() {
            return Err(failure("is not a regular file".into()));
        }
        if meta.len() > MAX_ASSET_BYTES {
            return Err(failure(format!(
                "is {} bytes, above the limit of {MAX_ASSET_BYTES}",
                meta.len()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| failure(e.to_string()))?;
        assets.files.insert(name.to_string(), bytes);
    }
    Ok(assets)
}
