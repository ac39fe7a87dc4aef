//! Operator actions on the repository: the index, explicit load and unload (the repository
//! API), and applying a changed configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::config::Config;

use super::{
    lock, new_slot, scan, IndexEntry, ModelSlot, Repository, RepositoryError, SyncMode,
    SyncOutcome, VersionState,
};

impl Repository {
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
            return Err(RepositoryError::LoadFailed {
                model: name.to_string(),
                reason: self.index_reason(&slot),
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

    /// Why a model's versions are not served, for load errors.
    fn index_reason(&self, slot: &ModelSlot) -> String {
        let st = lock(&slot.state);
        let reasons: Vec<String> = st
            .versions
            .iter()
            .filter_map(|(v, r)| {
                r.reason
                    .as_ref()
                    .map(|reason| format!("version {v}: {reason}"))
            })
            .collect();
        if reasons.is_empty() {
            return format!("no version directory with a {} found", scan::WEIGHTS_FILE);
        }
        reasons.join("; ")
    }
}
