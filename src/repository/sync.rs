//! Applying a reconciliation plan to one model: scan, plan, load, record, retire, publish.
//!
//! The decisions are [`super::plan`]'s; this layer only does the impure parts: reading the
//! directory, running the loads outside the state lock (loading takes time, and the index and
//! readiness must stay answerable meanwhile), logging, counting, and handing retired versions to
//! the graveyard.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ModelConfig, RolloutPolicy, VersionPolicy};
use crate::telemetry::Metrics;

use super::canary::ActiveRollout;
use super::plan::{self, Disk, Inputs, RetireReason};
use super::scan::{scan_model, Scan, VersionFiles};
use super::{
    load_version, lock, Failed, LoadFailure, ModelSlot, Repository, Served, SlotState, SyncMode,
    SyncOutcome, VersionRecord,
};

/// What each version's files looked like at a check.
type SeenFiles = BTreeMap<u64, Option<VersionFiles>>;

/// Versions listed on disk (the most re-plans one sync can need).
fn disk_versions(disk: &Disk<VersionFiles>) -> usize {
    match disk {
        Disk::Listed(versions) => versions.len(),
        Disk::Unreadable => 0,
    }
}

impl Repository {
    /// Reconciles one model's served versions with its directory (see [`super::plan`]).
    pub fn sync_model(&self, slot: &ModelSlot, mode: SyncMode) -> SyncOutcome {
        let _ops = lock(&slot.ops);
        let config = slot.config();
        let scan = scan_model(&self.root, &slot.name, &identity_files(&config));
        self.warn_ignored(slot, &scan);
        let disk = disk_of(&scan);
        let mut outcome = SyncOutcome::default();
        // When a load fails, the policy may want another version instead (v2 broken under
        // `latest 1`: serve v1 now, not one poll later): plan again with the failure known.
        // Each round either loads nothing new or records another failure, so this ends; the
        // re-plans see the files as they looked before this sync, so nothing skips the
        // two-checks rule.
        let mut seen_before = None;
        for _ in 0..=disk_versions(&disk) {
            let (loads, before) = self.plan_loads(
                slot,
                mode,
                &config.version_policy,
                &disk,
                seen_before.take(),
            );
            seen_before = Some(before);
            let failures = outcome.failed.len();
            for (version, files) in loads {
                self.load_one(slot, &config, version, files, &mut outcome);
            }
            if outcome.failed.len() == failures {
                break;
            }
        }
        let retired = {
            let mut st = lock(&slot.state);
            let known = st.versions.iter().map(|(v, r)| (*v, r.known())).collect();
            let retire = plan::plan_retirements(&Inputs {
                mode,
                policy: &config.version_policy,
                disabled: st.disabled,
                disk: &disk,
                known: &known,
                protect: st.rollout.as_ref().map(|r| r.stable),
            });
            for (version, reason) in &retire {
                self.retire_version(&mut st.versions, *version, *reason, &disk);
            }
            retire
        };
        for (version, _) in &retired {
            tracing::info!(model = %slot.name, version, "version unloaded");
            outcome.unloaded.push(*version);
        }
        if !outcome.loaded.is_empty() || !outcome.unloaded.is_empty() {
            self.publish(slot);
        }
        outcome
    }

    /// The first step of a sync: plans the loads and records what was seen and what waits.
    /// `seen_before` replaces what the records say was seen at the previous check (a re-plan
    /// within one sync passes what the first plan of the sync saw as "before"); returns the
    /// loads and the files seen before this plan.
    fn plan_loads(
        &self,
        slot: &ModelSlot,
        mode: SyncMode,
        policy: &VersionPolicy,
        disk: &Disk<VersionFiles>,
        seen_before: Option<SeenFiles>,
    ) -> (Vec<(u64, VersionFiles)>, SeenFiles) {
        let mut st = lock(&slot.state);
        let before: SeenFiles = seen_before.unwrap_or_else(|| {
            st.versions
                .iter()
                .map(|(v, r)| (*v, r.last_seen.clone()))
                .collect()
        });
        let known = st
            .versions
            .iter()
            .map(|(v, r)| {
                let mut known = r.known();
                known.last_seen = before.get(v).cloned().flatten();
                (*v, known)
            })
            .collect();
        let step = plan::plan_loads(&Inputs {
            mode,
            policy,
            disabled: st.disabled,
            disk,
            known: &known,
            protect: st.rollout.as_ref().map(|r| r.stable),
        });
        st.versions.retain(|v, _| !step.forget.contains(v));
        if matches!(disk, Disk::Listed(_)) && !st.disabled {
            for (v, record) in st.versions.iter_mut() {
                record.last_seen = step.seen.get(v).cloned();
                record.waiting = step.waiting.contains(v);
            }
            for (v, files) in &step.seen {
                st.versions.entry(*v).or_default().last_seen = Some(files.clone());
            }
            for v in &step.waiting {
                st.versions.entry(*v).or_default().waiting = true;
            }
        }
        for (v, _) in &step.loads {
            st.versions.entry(*v).or_default().loading = true;
        }
        (step.loads, before)
    }

    /// Loads one planned version outside the state lock and records the outcome.
    fn load_one(
        &self,
        slot: &ModelSlot,
        config: &ModelConfig,
        version: u64,
        files: VersionFiles,
        outcome: &mut SyncOutcome,
    ) {
        let dir = self.root.join(&slot.name).join(version.to_string());
        // A panic while loading (a bug in an architecture's build, say) fails this version like
        // any refused load; the thread that syncs keeps working.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            load_version(config, version, &dir, &self.containment)
        }))
        .unwrap_or_else(|panic| {
            self.metrics.panicked("loader");
            Err(LoadFailure::Panicked {
                message: crate::telemetry::panic_message(panic.as_ref()),
            })
        });
        let mut st = lock(&slot.state);
        if let (Ok(_), Some(policy)) = (&result, config.rollout) {
            start_rollout(&slot.name, &mut st, version, policy, &self.metrics);
        }
        let record = st.versions.entry(version).or_default();
        record.loading = false;
        match result {
            Ok(loaded) => {
                tracing::info!(model = %slot.name, version, sha256 = %loaded.version.sha256,
                    bytes = loaded.version.param_bytes, ms = loaded.duration.as_millis() as u64,
                    ignored = loaded.report.ignored.len(), upcast = loaded.report.upcast.len(),
                    parameters = %serde_json::Value::from_iter(loaded.version.model.parameters()),
                    "version ready");
                self.metrics.load_succeeded(&slot.name, loaded.duration);
                if let Some(golden) = &loaded.golden {
                    tracing::info!(model = %slot.name, version, report = %golden, "golden gate passed");
                }
                let served = Served {
                    version: Arc::new(loaded.version),
                    files,
                    load_duration: loaded.duration,
                    golden: loaded.golden,
                };
                if let Some(old) = record.served.replace(served) {
                    self.retire(old.version);
                }
                // Its files loaded again: whatever rolled back an earlier file of this
                // version is no reason to refuse these at the next restart.
                if record.failed.take().is_some() {
                    self.forget_rollback(&slot.name, version);
                }
                record.unloaded = None;
                outcome.loaded.push(version);
            }
            Err(failure) => {
                let kind = failure.kind();
                tracing::error!(model = %slot.name, version, kind, error = %failure,
                    "version refused; the versions already served keep serving");
                self.metrics.load_failed(&slot.name, kind);
                let failure = Arc::new(failure);
                record.failed = Some(Failed {
                    files,
                    failure: Arc::clone(&failure),
                });
                outcome.failed.push((version, failure));
            }
        }
    }

    /// Takes a version out of service: its weights go to the graveyard; its record stays (with
    /// the reason) while its directory exists.
    fn retire_version(
        &self,
        versions: &mut BTreeMap<u64, VersionRecord>,
        version: u64,
        reason: RetireReason,
        disk: &Disk<VersionFiles>,
    ) {
        let Some(record) = versions.get_mut(&version) else {
            return;
        };
        if let Some(served) = record.served.take() {
            self.retire(served.version);
        }
        record.unloaded = Some(reason);
        let on_disk = match disk {
            Disk::Listed(listed) => listed.contains_key(&version),
            Disk::Unreadable => true,
        };
        if !on_disk && !record.held {
            versions.remove(&version);
        }
    }

    fn warn_ignored(&self, slot: &ModelSlot, scan: &Scan) {
        let mut st = lock(&slot.state);
        for name in &scan.ignored {
            if st.warned.insert(name.clone()) {
                tracing::warn!(model = %slot.name, entry = %name,
                    "ignoring an entry of the model directory: versions are directories named by a positive integer without leading zeros");
            }
        }
    }
}

/// Starts a canary for `version` when it is newer than the version being served (or replaces
/// the candidate of a rollout already running, keeping its stable version).
fn start_rollout(
    model: &str,
    st: &mut SlotState,
    version: u64,
    policy: RolloutPolicy,
    metrics: &Arc<Metrics>,
) {
    let stable = st.rollout.as_ref().map(|r| r.stable).or_else(|| {
        st.versions
            .iter()
            .filter(|(v, r)| **v != version && r.served.is_some())
            .map(|(v, _)| *v)
            .max()
    });
    let Some(stable) = stable.filter(|s| *s < version) else {
        return;
    };
    tracing::info!(
        model,
        version,
        stable,
        mode = policy.mode().as_str(),
        percent = policy.canary_percent.max(policy.shadow_percent),
        promote_after_s = policy.promote_after.as_secs(),
        "rollout started"
    );
    st.rollout = Some(ActiveRollout::new(model, version, stable, policy, metrics));
}

/// The files besides the weights whose change makes a new version of the files: the
/// architecture's assets and the golden file (a changed golden file runs the gate again).
fn identity_files(config: &ModelConfig) -> Vec<&'static str> {
    let mut files = config.architecture.assets();
    files.push(super::golden::GOLDEN_FILE);
    files
}

/// The plan's view of a directory scan.
fn disk_of(scan: &Scan) -> Disk<VersionFiles> {
    if scan.unreadable {
        return Disk::Unreadable;
    }
    Disk::Listed(
        scan.versions
            .iter()
            .map(|f| (f.version, f.files.clone()))
            .collect(),
    )
}
