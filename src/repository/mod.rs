//! The model repository on disk and the registry of what is being served.
//!
//! - [`scan`]: which version directories exist;
//! - [`plan`]: the reconciliation rules as a pure function (what to load, what to retire);
//! - [`pipeline`]: loading one version (strict check, copy out, build, warm up, golden gate);
//! - [`golden`]: the golden-output gate (reading `golden.safetensors`, the comparison);
//! - [`rollout`]: the rollout decision as a pure function; [`canary`] applies it, [`shadow`]
//!   runs shadow comparisons, `operator` takes operators' promote / roll back / pause, and
//!   [`state`] remembers rolled-back versions across restarts (`state_dir`);
//! - `sync`: [`Repository::sync_model`], the thin layer that applies a plan;
//! - `control`: the repository index, explicit load/unload and config changes;
//! - this module: one [`ModelSlot`] per configured model with its [`Engine`] and one
//!   [`VersionRecord`] per version, the single source of truth for its state. The set of served
//!   versions that requests read is derived from the records after every change and published
//!   behind one `ArcSwap` (a swap is a single atomic store; requests already admitted keep the
//!   `Arc` of the version they started on). Old versions are handed to a graveyard and freed off
//!   the request path once their last queued request is done.
//!
//! The rules of reconciliation are listed in [`plan`] and docs/hot-reload.md.

pub mod canary;
mod control;
pub mod golden;
mod operator;
pub mod pipeline;
pub mod plan;
pub mod rollout;
pub mod scan;
pub mod shadow;
pub mod state;
mod sync;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, ModelConfig};
use crate::engine::cpu::Cpu;
use crate::engine::{Engine, LoadedVersion};
use crate::state_dict::LoadReport;

use crate::telemetry::{Metrics, ModelMetrics};
use golden::GoldenReport;
use scan::VersionFiles;

pub use operator::{Actor, RolloutAction, RolloutError, RolloutStatus};
pub use pipeline::{load_version, LoadFailure, Loaded};
pub use plan::{RetireReason, SyncMode};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Versions ready to serve, by number.
#[derive(Debug, Default, Clone)]
pub struct Serving {
    pub versions: BTreeMap<u64, Arc<LoadedVersion>>,
    /// A canary rollout in progress.
    pub canary: Option<canary::Canary>,
    /// A shadow rollout in progress: requests naming no version go to its stable version, and
    /// a share of them is copied to the candidate.
    pub shadow: Option<shadow::ShadowTap>,
}

impl Serving {
    /// The highest ready version.
    pub fn newest(&self) -> Option<&Arc<LoadedVersion>> {
        self.versions.values().next_back()
    }

    /// The version a request naming none goes to: during a canary, the candidate for its
    /// share of request ids (a request without an id gets a number instead) and the stable
    /// version for the rest; during a shadow, always the stable version; otherwise the highest
    /// ready one.
    pub fn route(&self, request_id: Option<&[u8]>) -> Option<&Arc<LoadedVersion>> {
        if let Some(stable) = self
            .shadow
            .as_ref()
            .and_then(|s| self.versions.get(&s.stable))
        {
            return Some(stable);
        }
        if let Some(c) = &self.canary {
            if let (Some(candidate), Some(stable)) = (
                self.versions.get(&c.candidate),
                self.versions.get(&c.stable),
            ) {
                let anonymous;
                let key = match request_id {
                    Some(id) => id,
                    None => {
                        anonymous = c.stats.anonymous_key();
                        &anonymous[..]
                    }
                };
                return Some(if rollout::routes_to_candidate(key, c.percent) {
                    candidate
                } else {
                    stable
                });
            }
        }
        self.newest()
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

/// A version being served, with what its load reported.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    version: Arc<LoadedVersion>,
    files: VersionFiles,
    load_duration: Duration,
    /// Its passing golden comparison, when it has a golden file.
    golden: Option<GoldenReport>,
}

/// Files of a version that failed to load, and why.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    files: VersionFiles,
    failure: Arc<LoadFailure>,
}

/// Everything known about one version: the one place its state lives.
#[derive(Debug, Clone, Default)]
pub(crate) struct VersionRecord {
    served: Option<Served>,
    failed: Option<Failed>,
    /// The files seen at the previous check (stability detection).
    last_seen: Option<VersionFiles>,
    /// Unloaded through the repository API: neither loaded nor served until an explicit load.
    held: bool,
    /// Its files changed since the previous check: waiting for them to settle.
    waiting: bool,
    /// A load is running.
    loading: bool,
    /// Why it stopped being served (while its directory exists).
    unloaded: Option<RetireReason>,
}

impl VersionRecord {
    /// The plan's view of this record.
    fn known(&self) -> plan::Known<VersionFiles> {
        plan::Known {
            served: self.served.as_ref().map(|s| s.files.clone()),
            failed: self.failed.as_ref().map(|f| f.files.clone()),
            last_seen: self.last_seen.clone(),
            held: self.held,
        }
    }

    /// The state and reason the repository index shows; `None` for versions it does not list
    /// (on disk but never selected by the version policy).
    fn status(&self) -> Option<(VersionState, String)> {
        let failure = || self.failed.as_ref().map(|f| f.failure.to_string());
        if self.served.is_some() {
            let note = failure()
                .map(|f| format!("a newer file for this version was refused: {f}"))
                .unwrap_or_default();
            return Some((VersionState::Ready, note));
        }
        if self.loading {
            return Some((VersionState::Loading, String::new()));
        }
        if self.waiting {
            return Some((
                VersionState::Loading,
                "waiting for the file to stop changing".to_string(),
            ));
        }
        if let Some(reason) = failure() {
            return Some((VersionState::Unavailable, reason));
        }
        if self.held {
            return Some((
                VersionState::Unavailable,
                "unloaded through the repository API".to_string(),
            ));
        }
        self.unloaded.map(|reason| {
            let text = match reason {
                RetireReason::Policy => "unloaded: not selected by the version policy",
                RetireReason::Api => "unloaded through the repository API",
            };
            (VersionState::Unavailable, text.to_string())
        })
    }
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
    /// The golden comparison: the failing one of a refused file, else the served version's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub golden: Option<GoldenReport>,
    /// A shadow candidate's comparison with its stable version so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<rollout::Agreement>,
}

#[derive(Default)]
pub(crate) struct SlotState {
    versions: BTreeMap<u64, VersionRecord>,
    /// Directory entries already warned about.
    warned: BTreeSet<String>,
    /// Unloaded through the repository API: the watcher leaves it alone until `load`.
    disabled: bool,
    /// A canary or shadow rollout in progress.
    rollout: Option<canary::ActiveRollout>,
}

/// One configured model: its config, engine, version records and the served set.
pub struct ModelSlot {
    pub name: String,
    config: ArcSwap<ModelConfig>,
    pub engine: Engine,
    /// Derived from `state` by [`Repository::publish`]; what requests read, lock-free.
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

    /// The state of `version`, if the repository lists it.
    pub fn version_state(&self, version: u64) -> Option<VersionState> {
        lock(&self.state)
            .versions
            .get(&version)
            .and_then(VersionRecord::status)
            .map(|(state, _)| state)
    }

    /// How long the load of a served version took.
    pub fn load_duration(&self, version: u64) -> Option<Duration> {
        lock(&self.state)
            .versions
            .get(&version)
            .and_then(|r| r.served.as_ref())
            .map(|s| s.load_duration)
    }

    /// Some version is waiting for its files to stop changing.
    pub fn has_pending(&self) -> bool {
        lock(&self.state).versions.values().any(|r| r.waiting)
    }
}

/// What a sync did, for logs and the repository API.
#[derive(Debug, Default, Clone)]
pub struct SyncOutcome {
    pub loaded: Vec<u64>,
    pub failed: Vec<(u64, Arc<LoadFailure>)>,
    pub unloaded: Vec<u64>,
}

/// Every configured model and the versions being served.
pub struct Repository {
    root: PathBuf,
    /// The compute budget every model's engine shares.
    cpu: Arc<Cpu>,
    /// Where version files may resolve to.
    containment: pipeline::Containment,
    models: ArcSwap<BTreeMap<String, Arc<ModelSlot>>>,
    metrics: Arc<Metrics>,
    /// Versions no longer served, kept until their last user lets go (then freed here, off the
    /// request path).
    retired: Mutex<Vec<Arc<LoadedVersion>>>,
    /// Serialises configuration changes.
    reconfigure: Mutex<()>,
    /// Rolled-back versions remembered across restarts (`state_dir`), if configured.
    state: Option<state::StateDir>,
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
    /// The forward passes of every model share `cpu`.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        cpu: Arc<Cpu>,
    ) -> std::io::Result<Repository> {
        let state = match &config.server.state_dir {
            Some(dir) => Some(state::StateDir::open(dir)?),
            None => None,
        };
        let mut models = BTreeMap::new();
        for model in &config.models {
            let slot = new_slot(model, &metrics, &cpu)?;
            if let Some(state) = &state {
                state.seed(&slot);
            }
            models.insert(model.name.clone(), Arc::new(slot));
        }
        Ok(Repository {
            state,
            cpu,
            containment: pipeline::Containment {
                root: config.server.repository.clone(),
                allow_external: config.server.allow_external_symlinks,
            },
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

    /// Derives the served set of `slot` from its records and makes it visible to requests in
    /// one atomic store. Called with the model's `ops` lock held.
    fn publish(&self, slot: &ModelSlot) {
        let (versions, (canary, shadow), state) = {
            let st = lock(&slot.state);
            let versions: BTreeMap<u64, Arc<LoadedVersion>> = st
                .versions
                .iter()
                .filter_map(|(v, r)| r.served.as_ref().map(|s| (*v, Arc::clone(&s.version))))
                .collect();
            let published = st.rollout.as_ref().map(|r| r.published());
            let state = st.rollout.as_ref().map_or("none", |r| r.state_label());
            (versions, published.unwrap_or_default(), state)
        };
        self.metrics.set_rollout_candidate(
            &slot.name,
            canary
                .as_ref()
                .map(|c| c.candidate)
                .or(shadow.as_ref().map(|s| s.candidate))
                .unwrap_or(0),
        );
        self.metrics.set_rollout_state(&slot.name, state);
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
        slot.serving.store(Arc::new(Serving {
            versions,
            canary,
            shadow,
        }));
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

pub(crate) fn new_slot(
    model: &ModelConfig,
    metrics: &Arc<Metrics>,
    cpu: &Arc<Cpu>,
) -> std::io::Result<ModelSlot> {
    let model_metrics = metrics.for_model(&model.name);
    Ok(ModelSlot {
        name: model.name.clone(),
        engine: Engine::start(
            &model.name,
            model.batching,
            model_metrics.clone(),
            Arc::clone(cpu),
        )?,
        config: ArcSwap::from_pointee(model.clone()),
        serving: ArcSwap::from_pointee(Serving::default()),
        state: Mutex::new(SlotState::default()),
        ops: Mutex::new(()),
        metrics: model_metrics,
    })
}

/// Why a model or version is not served after an explicit load, for the repository API.
#[derive(Debug, Clone)]
pub enum NotServed {
    /// No version directory with a complete set of files.
    NoVersions,
    /// These versions failed to load.
    Failed(Vec<(u64, Arc<LoadFailure>)>),
    /// The version is not on disk, or the version policy does not select it.
    NotSelected(u64),
}

impl std::fmt::Display for NotServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotServed::NoVersions => write!(
                f,
                "no version directory with a {} found",
                scan::WEIGHTS_FILE
            ),
            NotServed::Failed(failures) => {
                for (i, (version, failure)) in failures.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "version {version}: {failure}")?;
                }
                Ok(())
            }
            NotServed::NotSelected(v) => write!(
                f,
                "version {v}: not on disk, or not selected by the version policy"
            ),
        }
    }
}

/// Errors of the repository API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepositoryError {
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} could not be loaded: {why}")]
    LoadFailed { model: String, why: NotServed },
}
