//! Reconciliation: what is on disk against what is served, for one model.
//!
//! The rules (see the module docs of [`super`]): a file is loaded only after it looked the same
//! on two consecutive checks (unless the caller asks for an immediate load); a failed file is not
//! retried until it changes; the version policy is applied to what actually loaded, so a bad
//! version never pushes out a good one; an unreadable model directory changes nothing; a deleted
//! version goes only if another ready version remains.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::state_dict::FileIdentity;

use super::scan::scan_model;
use super::{
    load_version, lock, ModelSlot, Repository, SlotState, SyncMode, SyncOutcome, VersionRecord,
    VersionState,
};

impl Repository {
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
}
