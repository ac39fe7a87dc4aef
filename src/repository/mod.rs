//! The model repository on disk and the registry of what is being served.
//!
//! - [`scan`]: which version directories exist;
//! - [`pipeline`]: loading one version (strict check, copy out, build, warm up);
//! - this module: one [`ModelSlot`] per configured model with its [`Engine`], the set of ready
//!   versions behind one `ArcSwap` (a swap is a single atomic store; requests already admitted
//!   keep the `Arc` of the version they started on), per-version status for the repository
//!   index, and [`Repository::sync_model`], which reconciles what is on disk with what is served.
//!
//! The rules of reconciliation: a version is loaded only after its weights file looked the same
//! on two consecutive checks (unless the caller asks for an immediate load); a file that failed is
//! not retried until it changes; a bad version never replaces a good one (the version policy is
//! applied to what actually loaded); an unreadable model directory changes nothing; a deleted
//! version is unloaded only if another ready version remains. Old versions are handed to a
//! graveyard and freed off the request path once their last queued request is done.

pub mod pipeline;
pub mod scan;
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
use scan::scan_model;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
struct VersionRecord {
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
struct SlotState {
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

    fn set_record(&self, version: u64, f: impl FnOnce(&mut VersionRecord)) {
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

    /// Reconciles one model's served versions with its directory. See the module docs.
    pub fn sync_model(&self, slot: &ModelSlot, mode: SyncMode) -> SyncOutcome {
        let _ops = lock(&slot.ops);
        let mut outcome = SyncOutcome::default();
        let config = slot.config();
        let scan = scan_model(&self.root, &slot.name);
        let serving = slot.serving();

        // Decide under the state lock; load outside it (loading takes time, the index and
        // readiness must stay answerable meanwhile).
        let mut to_load: Vec<(u64, PathBuf, FileIdentity)> = Vec::new();
        let mut loadable: BTreeSet<u64> = BTreeSet::new();
        {
            let mut st = lock(&slot.state);
            for name in &scan.ignored {
                if st.warned.insert(name.clone()) {
                    tracing::warn!(model = %slot.name, entry = %name,
                        "ignoring an entry of the model directory: versions are directories named by a positive integer without leading zeros");
                }
            }
            if scan.unreadable || st.disabled {
                // A vanished directory (NFS blip, symlink swap in progress) never unloads the
                // last good version; a disabled model waits for an explicit load.
                return outcome;
            }
            let on_disk: BTreeSet<u64> = scan.versions.iter().map(|f| f.version).collect();
            st.last_seen.retain(|v, _| on_disk.contains(v));
            let SlotState {
                versions,
                last_seen,
                held,
                ..
            } = &mut *st;
            versions.retain(|v, r| {
                on_disk.contains(v)
                    || serving.versions.contains_key(v)
                    || r.state == Some(VersionState::Ready)
            });
            for found in scan.complete() {
                let Some(identity) = found.identity else {
                    continue;
                };
                let version = found.version;
                let previous = last_seen.insert(version, identity);
                let stable = mode == SyncMode::Immediate || previous == Some(identity);
                if held.contains(&version) {
                    continue;
                }
                let record = versions.entry(version).or_default();
                if record.loaded == Some(identity) && serving.versions.contains_key(&version) {
                    loadable.insert(version);
                    continue;
                }
                if record.failed == Some(identity) {
                    continue;
                }
                if !stable {
                    if !serving.versions.contains_key(&version) {
                        record.state = Some(VersionState::Loading);
                        record.reason = Some("waiting for the file to stop changing".to_string());
                    }
                    continue;
                }
                loadable.insert(version);
                to_load.push((version, found.dir.clone(), identity));
            }
            // Versions already served stay candidates while their directory exists.
            for v in serving.versions.keys() {
                if on_disk.contains(v) && !held.contains(v) {
                    loadable.insert(*v);
                }
            }
        }

        let wanted: BTreeSet<u64> = config
            .version_policy
            .select(&loadable.iter().copied().collect::<Vec<_>>())
            .into_iter()
            .collect();
        to_load.retain(|(v, _, _)| wanted.contains(v));
        to_load.sort_by_key(|(v, _, _)| std::cmp::Reverse(*v));

        let mut versions = serving.versions.clone();
        for (version, dir, identity) in to_load {
            slot.set_record(version, |r| {
                if r.state != Some(VersionState::Ready) {
                    r.state = Some(VersionState::Loading);
                    r.reason = None;
                }
            });
            match load_version(&config, version, &dir) {
                Ok(loaded) => {
                    tracing::info!(model = %slot.name, version, sha256 = %loaded.sha256,
                        bytes = loaded.param_bytes, ms = loaded.load_duration.as_millis() as u64,
                        ignored = loaded.report.ignored.len(), upcast = loaded.report.upcast.len(),
                        "version ready");
                    self.metrics
                        .load_succeeded(&slot.name, loaded.load_duration);
                    slot.set_record(version, |r| {
                        *r = VersionRecord {
                            state: Some(VersionState::Ready),
                            loaded: Some(identity),
                            ..VersionRecord::default()
                        };
                    });
                    if let Some(old) = versions.insert(version, Arc::new(loaded)) {
                        self.retire(old);
                    }
                    outcome.loaded.push(version);
                }
                Err(failure) => {
                    let kind = failure.kind();
                    tracing::error!(model = %slot.name, version, kind, error = %failure,
                        "version refused; the versions already served keep serving");
                    self.metrics.load_failed(&slot.name, kind);
                    let still_serving = versions.contains_key(&version);
                    slot.set_record(version, |r| {
                        r.failed = Some(identity);
                        r.report = failure.report().cloned();
                        if still_serving {
                            r.state = Some(VersionState::Ready);
                            r.reason = Some(format!(
                                "a newer file for this version was refused: {failure}"
                            ));
                        } else {
                            r.state = Some(VersionState::Unavailable);
                            r.reason = Some(failure.to_string());
                        }
                    });
                    outcome.failed.push((version, failure.to_string()));
                }
            }
        }

        // Apply the policy to what is actually ready, so a failed version never pushes out a
        // good one. A version whose directory was deleted goes only if another stays.
        let on_disk: BTreeSet<u64> = scan.versions.iter().map(|f| f.version).collect();
        let held = lock(&slot.state).held.clone();
        let ready_on_disk: Vec<u64> = versions
            .keys()
            .copied()
            .filter(|v| on_disk.contains(v) && !held.contains(v))
            .collect();
        let mut keep: BTreeSet<u64> = config
            .version_policy
            .select(&ready_on_disk)
            .into_iter()
            .collect();
        if keep.is_empty() {
            // Nothing the policy wants is ready: keep serving the best of what we have.
            if let Some(v) = ready_on_disk
                .last()
                .or(versions.keys().rfind(|v| !held.contains(v)))
            {
                keep.insert(*v);
            }
        }
        let dropped: Vec<u64> = versions
            .keys()
            .copied()
            .filter(|v| !keep.contains(v))
            .collect();
        for version in dropped {
            if let Some(old) = versions.remove(&version) {
                tracing::info!(model = %slot.name, version, "version unloaded");
                self.retire(old);
                slot.set_record(version, |r| {
                    r.state = on_disk
                        .contains(&version)
                        .then_some(VersionState::Unavailable);
                    r.reason = Some("unloaded: not selected by the version policy".to_string());
                    r.loaded = None;
                });
                outcome.unloaded.push(version);
            }
        }
        if !outcome.loaded.is_empty() || !outcome.unloaded.is_empty() {
            self.publish(slot, versions);
        }
        outcome
    }

    /// Makes `versions` the served set of `slot` in one atomic store.
    fn publish(&self, slot: &ModelSlot, versions: BTreeMap<u64, Arc<LoadedVersion>>) {
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

    fn retire(&self, version: Arc<LoadedVersion>) {
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

    /// The repository index: every model and version with its state and reason.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        for slot in self.slots() {
            let serving = slot.serving();
            let st = lock(&slot.state);
            let mut seen = BTreeSet::new();
            for (v, record) in &st.versions {
                let state = if serving.versions.contains_key(v) {
                    VersionState::Ready
                } else {
                    match record.state {
                        Some(s) => s,
                        None => continue,
                    }
                };
                seen.insert(*v);
                out.push(IndexEntry {
                    name: slot.name.clone(),
                    version: v.to_string(),
                    state,
                    reason: record.reason.clone().unwrap_or_default(),
                    report: record.report.clone(),
                });
            }
            for v in serving.versions.keys().filter(|v| !seen.contains(v)) {
                out.push(IndexEntry {
                    name: slot.name.clone(),
                    version: v.to_string(),
                    state: VersionState::Ready,
                    reason: String::new(),
                    report: None,
                });
            }
            if !out.iter().any(|e| e.name == slot.name) {
                out.push(IndexEntry {
                    name: slot.name.clone(),
                    version: String::new(),
                    state: VersionState::Unavailable,
                    reason: if st.disabled {
                        "unloaded through the repository API".to_string()
                    } else {
                        format!("no version directory with a {} found", scan::WEIGHTS_FILE)
                    },
                    report: None,
                });
            }
        }
        if ready_only {
            out.retain(|e| e.state == VersionState::Ready);
        }
        out
    }

    /// Explicit load (repository API): re-enables the model (and `version`, or all held
    /// versions) and loads what is on disk now. Returns the model's state afterwards.
    pub fn load(&self, name: &str, version: Option<u64>) -> Result<SyncOutcome, RepositoryError> {
        let slot = self
            .get(name)
            .ok_or_else(|| RepositoryError::UnknownModel(name.to_string()))?;
        {
            let _ops = lock(&slot.ops);
            let mut st = lock(&slot.state);
            st.disabled = false;
            match version {
                Some(v) => {
                    st.held.remove(&v);
                    // An explicit load retries a file that failed before.
                    if let Some(r) = st.versions.get_mut(&v) {
                        r.failed = None;
                    }
                }
                None => {
                    st.held.clear();
                    for r in st.versions.values_mut() {
                        r.failed = None;
                    }
                }
            }
        }
        let outcome = self.sync_model(&slot, SyncMode::Immediate);
        self.reap();
        if !slot.is_ready() {
            let reason = self
                .index(false)
                .into_iter()
                .filter(|e| e.name == name)
                .map(|e| format!("version {}: {}", e.version, e.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RepositoryError::LoadFailed {
                model: name.to_string(),
                reason,
            });
        }
        if let Some(v) = version {
            if !slot.serving().versions.contains_key(&v) {
                let reason = outcome
                    .failed
                    .iter()
                    .find(|(f, _)| *f == v)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| {
                        "not on disk, or not selected by the version policy".to_string()
                    });
                return Err(RepositoryError::LoadFailed {
                    model: name.to_string(),
                    reason: format!("version {v}: {reason}"),
                });
            }
        }
        Ok(outcome)
    }

    /// Explicit unload (repository API): the whole model, or one version. An unloaded model
    /// or version stays unloaded until an explicit load; queued requests still finish.
    pub fn unload(&self, name: &str, version: Option<u64>) -> Result<SyncOutcome, RepositoryError> {
        let slot = self
            .get(name)
            .ok_or_else(|| RepositoryError::UnknownModel(name.to_string()))?;
        let outcome = {
            let _ops = lock(&slot.ops);
            let mut versions = slot.serving().versions.clone();
            let removed: Vec<u64> = {
                let mut st = lock(&slot.state);
                match version {
                    None => {
                        st.disabled = true;
                        versions.keys().copied().collect()
                    }
                    Some(v) => {
                        st.held.insert(v);
                        versions.contains_key(&v).then_some(v).into_iter().collect()
                    }
                }
            };
            for v in &removed {
                if let Some(old) = versions.remove(v) {
                    self.retire(old);
                }
                slot.set_record(*v, |r| {
                    r.state = Some(VersionState::Unavailable);
                    r.reason = Some("unloaded through the repository API".to_string());
                    r.loaded = None;
                });
            }
            self.publish(&slot, versions);
            SyncOutcome {
                unloaded: removed,
                ..SyncOutcome::default()
            }
        };
        // Unloading one version may let the policy pick another (rollback).
        if version.is_some() {
            let more = self.sync_model(&slot, SyncMode::Immediate);
            self.reap();
            return Ok(SyncOutcome {
                unloaded: outcome.unloaded,
                ..more
            });
        }
        self.reap();
        Ok(outcome)
    }

    /// Applies a new configuration's `[[models]]`: adds, removes and updates models. The caller
    /// has already validated it as a whole. `[server]` changes need a restart (reported).
    pub fn reconfigure(&self, config: &Config) -> std::io::Result<Vec<String>> {
        let _guard = lock(&self.reconfigure);
        let current = self.models.load_full();
        let mut next = BTreeMap::new();
        let mut changes = Vec::new();
        let mut to_sync = Vec::new();
        for model in &config.models {
            match current.get(&model.name) {
                Some(slot) => {
                    let old = slot.config();
                    if *old != *model {
                        if old.needs_reload(model) {
                            // New architecture or key mapping: the weights must be checked and
                            // built again. A fresh slot loads beside the old one; the old one
                            // keeps serving until the new slot is ready.
                            let fresh = Arc::new(new_slot(model, &self.metrics)?);
                            self.sync_model(&fresh, SyncMode::Immediate);
                            if fresh.is_ready() {
                                changes.push(format!(
                                    "model {:?}: reloaded with its new architecture config",
                                    model.name
                                ));
                                next.insert(model.name.clone(), fresh);
                                continue;
                            }
                            changes.push(format!(
                                "model {:?}: the new architecture config does not load ({}); keeping the running one",
                                model.name,
                                self.index_reason(&fresh)
                            ));
                            next.insert(model.name.clone(), Arc::clone(slot));
                            continue;
                        }
                        slot.engine.set_config(model.batching);
                        slot.config.store(Arc::new(model.clone()));
                        changes.push(format!(
                            "model {:?}: batching or version policy updated",
                            model.name
                        ));
                        to_sync.push(Arc::clone(slot));
                    }
                    next.insert(model.name.clone(), Arc::clone(slot));
                }
                None => {
                    let slot = Arc::new(new_slot(model, &self.metrics)?);
                    changes.push(format!("model {:?}: added", model.name));
                    to_sync.push(Arc::clone(&slot));
                    next.insert(model.name.clone(), slot);
                }
            }
        }
        for name in current.keys().filter(|n| !next.contains_key(*n)) {
            changes.push(format!("model {name:?}: removed"));
        }
        let removed: Vec<Arc<ModelSlot>> = current
            .iter()
            .filter(|(n, _)| !next.contains_key(*n))
            .map(|(_, s)| Arc::clone(s))
            .collect();
        let replaced: Vec<Arc<ModelSlot>> = current
            .iter()
            .filter(|(n, s)| next.get(*n).is_some_and(|new| !Arc::ptr_eq(new, s)))
            .map(|(_, s)| Arc::clone(s))
            .collect();
        self.models.store(Arc::new(next));
        for slot in to_sync {
            self.sync_model(&slot, SyncMode::Immediate);
        }
        // Requests already admitted to a removed or replaced model finish there: shutting its
        // engine down drains the queue before the thread exits.
        for slot in removed.into_iter().chain(replaced) {
            for (v, version) in slot.serving().versions.iter() {
                self.metrics
                    .set_serving(&slot.name, *v, &version.sha256, None);
            }
            slot.engine.shutdown();
        }
        for slot in self.slots() {
            let serving = slot.serving();
            for (v, version) in &serving.versions {
                self.metrics.set_serving(
                    &slot.name,
                    *v,
                    &version.sha256,
                    Some(version.param_bytes),
                );
            }
        }
        self.reap();
        Ok(changes)
    }

    fn index_reason(&self, slot: &ModelSlot) -> String {
        let st = lock(&slot.state);
        st.versions
            .iter()
            .filter_map(|(v, r)| {
                r.reason
                    .as_ref()
                    .map(|reason| format!("version {v}: {reason}"))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Stops every engine after its queue drains (shutdown).
    pub fn shutdown(&self) {
        for slot in self.slots() {
            slot.engine.shutdown();
        }
        self.reap();
    }
}

fn new_slot(model: &ModelConfig, metrics: &Arc<Metrics>) -> std::io::Result<ModelSlot> {
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
