//! The model repository on disk and the registry of what is being served.
//!
//! - [`scan`]: which version directories exist;
//! - [`pipeline`]: loading one version (strict check, copy out, build, warm up);
//! - `sync`: [`Repository::sync_model`], which reconciles what is on disk with what is served;
//! - `control`: the repository index, explicit load/unload and config changes;
//! - this module: one [`ModelSlot`] per configured model with its [`Engine`], the set of ready
//!   versions behind one `ArcSwap` (a swap is a single atomic store; requests already admitted
//!   keep the `Arc` of the version they started on), and per-version status.
//!
//! The rules of reconciliation: a version is loaded only after its weights file looked the same
//! on two consecutive checks (unless the caller asks for an immediate load); a file that failed is
//! not retried until it changes; a bad version never replaces a good one (the version policy is
//! applied to what actually loaded); an unreadable model directory changes nothing; a deleted
//! version is unloaded only if another ready version remains. Old versions are handed to a
//! graveyard and freed off the request path once their last queued request is done.

mod control;
pub mod pipeline;
pub mod scan;
mod sync;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, ModelConfig};
use crate::engine::{Engine, LoadedVersion};
use crate::state_dict::{FileIdentity, LoadReport};
use crate::telemetry::{Metrics, ModelMetrics};

pub use pipeline::{load_version, LoadFailure};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Versions ready to serve, by number.
#[derive(Debug, Default, Clone)]
pub struct Serving {
    pub versions: BTreeMap<u64, Arc<LoadedVersion>>,
}

impl Serving {
    /// The version requests without an explicit version go to: the highest ready one.
    pub fn newest(&self) -> Option<&Arc<LoadedVersion>> {
        self.versions.values().next_back()
    }
}

/// Triton's model states, as the repository index reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionState {
    Ready,
    Loading,
    Unavailable,
}

/// Status of one version for the repository index.
#[derive(Debug, Clone, Default)]
pub(crate) struct VersionRecord {
    state: Option<VersionState>,
    reason: Option<String>,
    report: Option<LoadReport>,
    /// The file identity that failed; not retried until the file changes.
    failed: Option<FileIdentity>,
    /// The file identity of the loaded copy.
    loaded: Option<FileIdentity>,
}

/// One entry of `POST /v2/repository/index`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub state: VersionState,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The full strict-load report of a version refused for key, shape or dtype problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<LoadReport>,
}

#[derive(Default)]
pub(crate) struct SlotState {
    versions: BTreeMap<u64, VersionRecord>,
    /// The identity seen at the previous check, per version (stability detection).
    last_seen: HashMap<u64, FileIdentity>,
    /// Directory entries already warned about.
    warned: BTreeSet<String>,
    /// Unloaded through the repository API: the watcher leaves it alone until `load`.
    disabled: bool,
    /// Versions unloaded through the repository API.
    held: BTreeSet<u64>,
}

/// One configured model: its config, engine, served versions and status.
pub struct ModelSlot {
    pub name: String,
    config: ArcSwap<ModelConfig>,
    pub engine: Engine,
    serving: ArcSwap<Serving>,
    state: Mutex<SlotState>,
    /// Serialises loads, unloads and syncs of this model (held while loading).
    ops: Mutex<()>,
    pub metrics: ModelMetrics,
}

impl std::fmt::Debug for ModelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSlot")
            .field("name", &self.name)
            .finish()
    }
}

impl ModelSlot {
    pub fn config(&self) -> Arc<ModelConfig> {
        self.config.load_full()
    }

    /// The ready versions (a cheap snapshot).
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    pub fn is_ready(&self) -> bool {
        !self.serving.load().versions.is_empty()
    }

    /// The state of `version`, if wick knows it (on disk, loading, loaded or failed).
    pub fn version_state(&self, version: u64) -> Option<VersionState> {
        if self.serving.load().versions.contains_key(&version) {
            return Some(VersionState::Ready);
        }
        lock(&self.state)
            .versions
            .get(&version)
            .and_then(|r| r.state)
    }

    /// Some version is waiting for its file to stop changing.
    pub fn has_pending(&self) -> bool {
        lock(&self.state)
            .versions
            .values()
            .any(|r| r.state == Some(VersionState::Loading))
    }

    pub(crate) fn set_record(&self, version: u64, f: impl FnOnce(&mut VersionRecord)) {
        f(lock(&self.state).versions.entry(version).or_default());
    }
}

/// How a sync treats files it has not seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Load what is there now (startup, explicit load requests).
    Immediate,
    /// Load a file only once it looked the same on two consecutive checks (the watcher).
    RequireStable,
}

/// What a sync did, for logs and the repository API.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    pub loaded: Vec<u64>,
    pub failed: Vec<(u64, String)>,
    pub unloaded: Vec<u64>,
}

/// Every configured model and the versions being served.
pub struct Repository {
    root: PathBuf,
    models: ArcSwap<BTreeMap<String, Arc<ModelSlot>>>,
    metrics: Arc<Metrics>,
    /// Versions no longer served, kept until their last user lets go (then freed here, off the
    /// request path).
    retired: Mutex<Vec<Arc<LoadedVersion>>>,
    /// Serialises configuration changes.
    reconfigure: Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.root)
            .finish()
    }
}

impl Repository {
    /// Creates the slots (and engines) of every configured model; loads nothing yet.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> std::io::Result<Repository> {
        let mut models = BTreeMap::new();
        for model in &config.models {
            models.insert(model.name.clone(), Arc::new(new_slot(model, &metrics)?));
        }
        Ok(Repository {
            root: config.server.repository.clone(),
            models: ArcSwap::from_pointee(models),
            metrics,
            retired: Mutex::new(Vec::new()),
            reconfigure: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelSlot>> {
        self.models.load().get(name).cloned()
    }

    pub fn slots(&self) -> Vec<Arc<ModelSlot>> {
        self.models.load().values().cloned().collect()
    }

    /// Ready when every model not unloaded through the API serves at least one version.
    pub fn is_ready(&self) -> bool {
        self.models
            .load()
            .values()
            .all(|slot| slot.is_ready() || lock(&slot.state).disabled)
    }

    /// Syncs every model (startup: [`SyncMode::Immediate`]).
    pub fn sync_all(&self, mode: SyncMode) {
        for slot in self.slots() {
            let outcome = self.sync_model(&slot, mode);
            if !outcome.loaded.is_empty() || !outcome.failed.is_empty() {
                tracing::debug!(model = %slot.name, ?outcome, "synced");
            }
        }
        self.reap();
    }

    /// Makes `versions` the served set of `slot` in one atomic store.
    pub(crate) fn publish(&self, slot: &ModelSlot, versions: BTreeMap<u64, Arc<LoadedVersion>>) {
        let previous = slot.serving();
        for (v, old) in &previous.versions {
            if versions.get(v).is_none_or(|new| !Arc::ptr_eq(new, old)) {
                self.metrics.set_serving(&slot.name, *v, &old.sha256, None);
            }
        }
        for (v, new) in &versions {
            self.metrics
                .set_serving(&slot.name, *v, &new.sha256, Some(new.param_bytes));
        }
        slot.serving.store(Arc::new(Serving { versions }));
    }

    pub(crate) fn retire(&self, version: Arc<LoadedVersion>) {
        lock(&self.retired).push(version);
    }

    /// Frees retired versions nobody uses any more. Called by the loader and watcher threads so
    /// the weights are never freed on a request thread.
    pub fn reap(&self) {
        let done: Vec<Arc<LoadedVersion>> = {
            let mut retired = lock(&self.retired);
            let (done, keep) = std::mem::take(&mut *retired)
                .into_iter()
                .partition(|v| Arc::strong_count(v) == 1);
            *retired = keep;
            done
        };
        drop(done);
    }

    /// Number of retired versions still held by queued requests.
    pub fn retired_len(&self) -> usize {
        lock(&self.retired).len()
    }

    /// Stops every engine after its queue drains (shutdown).
    pub fn shutdown(&self) {
        for slot in self.slots() {
            slot.engine.shutdown();
        }
        self.reap();
    }
}

pub(crate) fn new_slot(model: &ModelConfig, metrics: &Arc<Metrics>) -> std::io::Result<ModelSlot> {
    let model_metrics = metrics.for_model(&model.name);
    Ok(ModelSlot {
        name: model.name.clone(),
        engine: Engine::start(&model.name, model.batching, model_metrics.clone())?,
        config: ArcSwap::from_pointee(model.clone()),
        serving: ArcSwap::from_pointee(Serving::default()),
        state: Mutex::new(SlotState::default()),
        ops: Mutex::new(()),
        metrics: model_metrics,
    })
}

/// Errors of the repository API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} could not be loaded: {reason}")]
    LoadFailed { model: String, reason: String },
}
