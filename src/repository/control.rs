//! Operator actions on the repository: the index, explicit load and unload (the repository
//! API), and applying a changed configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, ModelConfig};

use super::{
    lock, new_slot, IndexEntry, ModelSlot, NotServed, Repository, RepositoryError, SyncMode,
    SyncOutcome, VersionState,
};

impl Repository {
    /// The repository index: every model and version with its state and reason.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        for slot in self.slots() {
            let st = lock(&slot.state);
            let before = out.len();
            for (v, record) in &st.versions {
                let Some((state, mut reason)) = record.status() else {
                    continue;
                };
                let mut shadow = None;
                if let Some(active) = st.rollout.as_ref().filter(|r| r.candidate == *v) {
                    reason = active.describe();
                    shadow = active.agreement();
                }
                out.push(IndexEntry {
                    name: slot.name.clone(),
                    version: v.to_string(),
                    state,
                    reason,
                    report: record
                        .failed
                        .as_ref()
                        .and_then(|f| f.failure.report().cloned()),
                    golden: record
                        .failed
                        .as_ref()
                        .and_then(|f| f.failure.golden().cloned())
                        .or_else(|| record.served.as_ref().and_then(|s| s.golden.clone())),
                    shadow,
                });
            }
            if out.len() == before {
                out.push(IndexEntry {
                    name: slot.name.clone(),
                    version: String::new(),
                    state: VersionState::Unavailable,
                    reason: if st.disabled {
                        "unloaded through the repository API".to_string()
                    } else {
                        NotServed::NoVersions.to_string()
                    },
                    report: None,
                    golden: None,
                    shadow: None,
                });
            }
        }
        if ready_only {
            out.retain(|e| e.state == VersionState::Ready);
        }
        out
    }

    /// Explicit load (repository API): re-enables the model (and `version`, or all held
    /// versions), retries files that failed, and loads what is on disk now.
    pub fn load(&self, name: &str, version: Option<u64>) -> Result<SyncOutcome, RepositoryError> {
        let slot = self
            .get(name)
            .ok_or_else(|| RepositoryError::UnknownModel(name.to_string()))?;
        {
            let _ops = lock(&slot.ops);
            let mut st = lock(&slot.state);
            st.disabled = false;
            for (v, record) in st.versions.iter_mut() {
                if version.is_none_or(|wanted| wanted == *v) {
                    record.held = false;
                    record.failed = None;
                }
            }
        }
        let outcome = self.sync_model(&slot, SyncMode::Immediate);
        self.reap();
        let why = if !slot.is_ready() {
            Some(self.not_served(&slot))
        } else {
            version
                .filter(|v| !slot.serving().versions.contains_key(v))
                .map(|v| match outcome.failed.iter().find(|(f, _)| *f == v) {
                    Some(failed) => NotServed::Failed(vec![failed.clone()]),
                    None => NotServed::NotSelected(v),
                })
        };
        match why {
            Some(why) => Err(RepositoryError::LoadFailed {
                model: name.to_string(),
                why,
            }),
            None => Ok(outcome),
        }
    }

    /// Explicit unload (repository API): the whole model, or one version. An unloaded model
    /// or version stays unloaded until an explicit load; queued requests still finish. When one
    /// version is unloaded, the version policy may pick another (rollback), which is loaded
    /// before the unloaded one stops serving.
    pub fn unload(&self, name: &str, version: Option<u64>) -> Result<SyncOutcome, RepositoryError> {
        let slot = self
            .get(name)
            .ok_or_else(|| RepositoryError::UnknownModel(name.to_string()))?;
        {
            let _ops = lock(&slot.ops);
            let mut st = lock(&slot.state);
            match version {
                None => st.disabled = true,
                Some(v) => st.versions.entry(v).or_default().held = true,
            }
        }
        let outcome = self.sync_model(&slot, SyncMode::Immediate);
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
            let slot = match current.get(&model.name) {
                Some(slot) => self.update_slot(slot, model, &mut changes, &mut to_sync)?,
                None => {
                    let slot = Arc::new(new_slot(model, &self.metrics, &self.cpu)?);
                    if let Some(state) = &self.state {
                        state.seed(&slot);
                    }
                    changes.push(format!("model {:?}: added", model.name));
                    to_sync.push(Arc::clone(&slot));
                    slot
                }
            };
            next.insert(model.name.clone(), slot);
        }
        for name in current.keys().filter(|n| !next.contains_key(*n)) {
            changes.push(format!("model {name:?}: removed"));
        }
        // Removed slots and slots replaced by a fresh one both stop here.
        let stopped: Vec<Arc<ModelSlot>> = current
            .iter()
            .filter(|(n, s)| next.get(*n).is_none_or(|new| !Arc::ptr_eq(new, s)))
            .map(|(_, s)| Arc::clone(s))
            .collect();
        self.models.store(Arc::new(next));
        for slot in to_sync {
            self.sync_model(&slot, SyncMode::Immediate);
        }
        // Requests already admitted to a removed or replaced model finish there: shutting its
        // engine down drains the queue before the thread exits.
        for slot in stopped {
            for (v, version) in slot.serving().versions.iter() {
                self.metrics
                    .set_serving(&slot.name, *v, &version.sha256, None);
            }
            slot.engine.shutdown();
        }
        for slot in self.slots() {
            for (v, version) in &slot.serving().versions {
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

    /// The slot a configured model keeps after a config change: the same one with new
    /// serving settings, or a fresh one when the weights must be built again (new architecture
    /// config or key mapping) and load. The fresh slot loads beside the old one, which keeps
    /// serving if the new config does not load.
    fn update_slot(
        &self,
        slot: &Arc<ModelSlot>,
        model: &ModelConfig,
        changes: &mut Vec<String>,
        to_sync: &mut Vec<Arc<ModelSlot>>,
    ) -> std::io::Result<Arc<ModelSlot>> {
        let old = slot.config();
        if *old == *model {
            return Ok(Arc::clone(slot));
        }
        if !old.needs_reload(model) {
            slot.engine.set_config(model.batching);
            slot.config.store(Arc::new(model.clone()));
            changes.push(format!(
                "model {:?}: batching or version policy updated",
                model.name
            ));
            to_sync.push(Arc::clone(slot));
            return Ok(Arc::clone(slot));
        }
        let fresh = Arc::new(new_slot(model, &self.metrics, &self.cpu)?);
        let paused = self.take_over(slot, &fresh);
        self.sync_model(&fresh, SyncMode::Immediate);
        if let Some(active) = lock(&fresh.state).rollout.as_mut() {
            active.paused = active.paused.take().or(paused);
        }
        if fresh.is_ready() {
            changes.push(format!(
                "model {:?}: reloaded with its new architecture config",
                model.name
            ));
            return Ok(fresh);
        }
        changes.push(format!(
            "model {:?}: the new architecture config does not load ({}); keeping the running one",
            model.name,
            self.not_served(&fresh)
        ));
        Ok(Arc::clone(slot))
    }

    /// What a fresh slot (a config change that rebuilds the model) inherits from the running
    /// one before its first sync: the rolled-back versions (not loaded again while their files
    /// are unchanged) and the rollout (its stable version is loaded beside the candidate, whose
    /// observation starts again on the new build). Returns the rollout's pause, which the
    /// restarted rollout keeps.
    fn take_over(&self, old: &ModelSlot, fresh: &ModelSlot) -> Option<String> {
        let old_st = lock(&old.state);
        let mut st = lock(&fresh.state);
        for (v, record) in &old_st.versions {
            let rolled_back = record
                .failed
                .as_ref()
                .filter(|f| f.failure.kind() == "rollback");
            if let Some(failed) = rolled_back {
                st.versions.entry(*v).or_default().failed = Some(failed.clone());
            }
        }
        st.rollout = old_st.rollout.clone();
        st.rollout.as_ref().and_then(|r| r.paused.clone())
    }

    /// Why a model serves nothing, for load errors.
    fn not_served(&self, slot: &ModelSlot) -> NotServed {
        let st = lock(&slot.state);
        let failures: Vec<_> = st
            .versions
            .iter()
            .filter_map(|(v, r)| r.failed.as_ref().map(|f| (*v, Arc::clone(&f.failure))))
            .collect();
        if failures.is_empty() {
            NotServed::NoVersions
        } else {
            NotServed::Failed(failures)
        }
    }
}
