//! The load pipeline of one version: strict validation, copy out of the mapping, build, warm up,
//! golden gate.
//!
//! Runs on whatever thread asks (startup, the watcher, the repository API via `spawn_blocking`),
//! never on the request path. Its result is a [`LoadedVersion`] that has already answered one
//! forward pass with finite outputs (and matched its golden outputs, if it has
//! any), or a [`LoadFailure`] that says exactly what is wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ModelConfig;
use crate::engine::LoadedVersion;
use crate::model::{Assets, HostData, InputError};
use sha2::{Digest, Sha256};

use crate::state_dict::{self, LoadError, LoadReport, RecordError};

use super::golden::{self, GoldenFailure, GoldenReport, GOLDEN_FILE};
use super::scan::WEIGHTS_FILE;

/// Assets such as tokenizer.json are small; anything bigger is refused rather than read.
const MAX_ASSET_BYTES: u64 = 64 << 20;

/// Why a version could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    #[error(transparent)]
    Checkpoint(#[from] LoadError),
    #[error("{name}: {problem}")]
    Asset { name: String, problem: AssetProblem },
    #[error("cannot record the architecture's parameters: {0}")]
    Record(Arc<RecordError>),
    #[error("building the model failed: {0}")]
    Build(candle_core::Error),
    #[error("warm-up: {0}")]
    Warmup(#[from] WarmupFailure),
    #[error("golden outputs: {0}")]
    Golden(#[from] GoldenFailure),
    #[error("rolled back from its {mode}: {reason}")]
    RolledBack {
        /// `canary` or `shadow`.
        mode: &'static str,
        reason: super::rollout::RollbackReason,
    },
    /// Rolled back before a restart, remembered in `state_dir` (src/repository/state.rs).
    #[error("rolled back before the server restarted (remembered in state_dir): {reason}")]
    RolledBackEarlier { reason: String },
    #[error("{path} resolves to {resolved}, outside the repository {root}; symlinks may only point inside it (or set allow_external_symlinks = true)")]
    OutsideRepository {
        path: PathBuf,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("loading panicked: {message}")]
    Panicked { message: String },
    #[error("cannot resolve {path}: {source}")]
    Resolve {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a version's files may live: inside the repository, following symlinks, unless the
/// operator allows links to point elsewhere. Links inside the repository (Kubernetes' `..data`
/// swaps of a mounted volume) are what makes hot reload work and stay allowed.
#[derive(Debug, Clone)]
pub struct Containment {
    pub root: PathBuf,
    pub allow_external: bool,
}

impl Containment {
    /// Refuses `path` if it resolves outside the repository.
    fn check(&self, path: &Path) -> Result<(), LoadFailure> {
        if self.allow_external {
            return Ok(());
        }
        let resolve = |p: &Path| {
            std::fs::canonicalize(p).map_err(|source| LoadFailure::Resolve {
                path: p.to_path_buf(),
                source,
            })
        };
        let root = resolve(&self.root)?;
        let resolved = resolve(path)?;
        if resolved.starts_with(&root) {
            return Ok(());
        }
        Err(LoadFailure::OutsideRepository {
            path: path.to_path_buf(),
            resolved,
            root,
        })
    }
}

/// Why an asset file (e.g. `tokenizer.json`) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AssetProblem {
    #[error("required beside {WEIGHTS_FILE}: {0}")]
    Missing(std::io::Error),
    #[error("is not a regular file")]
    NotAFile,
    #[error("is {size} bytes, above the limit of {MAX_ASSET_BYTES}")]
    TooLarge { size: u64 },
    #[error("{0}")]
    Read(std::io::Error),
}

/// Why the warm-up forward pass on zeros refused a version.
#[derive(Debug, thiserror::Error)]
pub enum WarmupFailure {
    #[error("the model refused its own warm-up inputs: {0}")]
    Input(InputError),
    #[error("the forward pass failed: {0}")]
    Forward(candle_core::Error),
    #[error("output {output:?} is not finite at index {index} for an input of zeros ({value})")]
    NonFinite {
        output: String,
        index: usize,
        value: f32,
    },
}

impl LoadFailure {
    /// A short label for metrics (`wick_model_load_failures_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            LoadFailure::Checkpoint(e) => e.kind(),
            LoadFailure::Asset { .. } => "asset",
            LoadFailure::Record(_) => "record",
            LoadFailure::Build(_) => "build",
            LoadFailure::Warmup(WarmupFailure::Input(_)) => "warmup_input",
            LoadFailure::Warmup(WarmupFailure::Forward(_)) => "warmup_forward",
            LoadFailure::Warmup(WarmupFailure::NonFinite { .. }) => "warmup_non_finite",
            LoadFailure::OutsideRepository { .. } => "outside_repository",
            LoadFailure::Resolve { .. } => "io",
            LoadFailure::Panicked { .. } => "panic",
            LoadFailure::Golden(g) => g.kind(),
            LoadFailure::RolledBack { .. } | LoadFailure::RolledBackEarlier { .. } => "rollback",
        }
    }

    /// The strict report, when the failure is a key/shape/dtype mismatch.
    pub fn report(&self) -> Option<&LoadReport> {
        match self {
            LoadFailure::Checkpoint(LoadError::Mismatch(report)) => Some(report),
            _ => None,
        }
    }

    /// The golden comparison, when the failure is outputs that differ from the golden file.
    pub fn golden(&self) -> Option<&GoldenReport> {
        match self {
            LoadFailure::Golden(g) => g.report(),
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

/// A version ready to serve, with what its load reported.
#[derive(Debug)]
pub struct Loaded {
    pub version: LoadedVersion,
    /// The clean load report (ignored, optional and upcast keys).
    pub report: LoadReport,
    /// The passing golden comparison, when the version has a golden file.
    pub golden: Option<GoldenReport>,
    pub duration: Duration,
}

/// Loads version `version` of `config` from `dir`.
pub fn load_version(
    config: &ModelConfig,
    version: u64,
    dir: &Path,
    containment: &Containment,
) -> Result<Loaded, LoadFailure> {
    let started = Instant::now();
    let arch = &config.architecture;
    let expected = arch.expected().map_err(LoadFailure::Record)?;
    containment.check(dir)?;
    containment.check(&dir.join(WEIGHTS_FILE))?;
    let assets = read_assets(
        dir,
        arch.required_assets(),
        arch.optional_assets(),
        containment,
    )?;
    let state = state_dict::load(
        &dir.join(WEIGHTS_FILE),
        &target(config, version),
        &expected,
        &config.mapping,
    )?;
    let model = arch
        .build(state.tensors, &assets)
        .map_err(LoadFailure::Build)?;

    // One forward pass on zeros before the version may serve: it must run and give finite values.
    let prepared = model
        .prepare(arch.warmup_inputs())
        .map_err(WarmupFailure::Input)?;
    let outputs = model
        .forward(&[&prepared])
        .map_err(WarmupFailure::Forward)?;
    for (spec, tensor) in arch
        .signature()
        .outputs
        .iter()
        .zip(outputs.first().into_iter().flatten())
    {
        if let HostData::F32(values) = &tensor.data {
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(WarmupFailure::NonFinite {
                    output: spec.name.clone(),
                    index,
                    value: values[index],
                }
                .into());
            }
        }
    }

    // The golden gate runs after the warm-up, on the built model, before the version may serve.
    let golden_path = dir.join(GOLDEN_FILE);
    if golden_path.exists() {
        containment.check(&golden_path)?;
    }
    let golden = golden::gate(model.as_ref(), arch.signature(), dir, &config.golden)?;

    Ok(Loaded {
        golden,
        version: LoadedVersion {
            model_name: config.name.clone(),
            version,
            sha256: version_sha256(&state.sha256, &assets),
            param_bytes: state.param_bytes,
            signature: arch.signature().clone(),
            model,
        },
        report: state.report,
        duration: started.elapsed(),
    })
}

/// The sha256 that identifies a version's files. Weights alone: the file's own hash, as
/// `sha256sum model.safetensors` prints it. With assets (a tokenizer, sentence-transformers
/// settings), the hash of `sha256sum`'s listing of the weights and then each asset present, in
/// the architecture's order, so a changed tokenizer changes the version's identity too:
/// `sha256sum model.safetensors tokenizer.json | sha256sum`.
fn version_sha256(weights_sha256: &str, assets: &Assets) -> String {
    if assets.is_empty() {
        return weights_sha256.to_string();
    }
    let mut listing = format!("{weights_sha256}  {WEIGHTS_FILE}\n");
    for (name, bytes) in &assets.order() {
        listing.push_str(&format!(
            "{}  {name}\n",
            state_dict::hex(&Sha256::digest(bytes))
        ));
    }
    state_dict::hex(&Sha256::digest(listing.as_bytes()))
}

/// Reads the assets a version has: every required one (refusing the version without it) and
/// the optional ones that are present.
fn read_assets(
    dir: &Path,
    required: &[&str],
    optional: &[&str],
    containment: &Containment,
) -> Result<Assets, LoadFailure> {
    let mut assets = Assets::default();
    for (name, needed) in required
        .iter()
        .map(|n| (n, true))
        .chain(optional.iter().map(|n| (n, false)))
    {
        let path = dir.join(name);
        let failure = |problem| LoadFailure::Asset {
            name: name.to_string(),
            problem,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if !needed && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(failure(AssetProblem::Missing(e))),
        };
        if !meta.is_file() {
            return Err(failure(AssetProblem::NotAFile));
        }
        containment.check(&path)?;
        if meta.len() > MAX_ASSET_BYTES {
            return Err(failure(AssetProblem::TooLarge { size: meta.len() }));
        }
        let bytes = std::fs::read(&path).map_err(|e| failure(AssetProblem::Read(e)))?;
        assets.insert(name, bytes);
    }
    Ok(assets)
}
