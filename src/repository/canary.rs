//! A running rollout (canary or shadow): what requests observe of the candidate and the stable
//! version, and applying [`super::rollout::decide`]'s verdict (promote, or roll back: unload the
//! candidate and mark its files failed with the reason, so it is not loaded again until they
//! change; with a `state_dir`, not after a restart either).
//!
//! A rollout starts when a model with a `rollout` config loads a version newer than the one it
//! serves (src/repository/sync.rs). While it runs, the plan keeps the stable version served
//! (`protect` in src/repository/plan.rs); a canary splits the requests that name no version
//! ([`super::Serving::route`]), a shadow copies a share of them to the candidate
//! (src/repository/shadow.rs). The watcher's scans call [`Repository::tick_rollout`]; operators
//! act through src/repository/operator.rs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{RolloutMode, RolloutPolicy};
use crate::telemetry::Metrics;

use super::rollout::{self, Decision, Observation, RollbackReason, Window};
use super::shadow::{Shadow, ShadowTap};
use super::{lock, Failed, LoadFailure, ModelSlot, Repository, SyncMode};

/// Latencies kept per version for the p99: the most recent ones (a sliding window, bounded).
const LATENCY_SAMPLES: usize = 2048;

/// Requests and errors of one version during a rollout.
#[derive(Debug, Default)]
struct VersionWindow {
    requests: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<VecDeque<Duration>>,
}

impl VersionWindow {
    fn record(&self, ok: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut latencies = lock(&self.latencies);
        if latencies.len() == LATENCY_SAMPLES {
            latencies.pop_front();
        }
        latencies.push_back(latency);
    }

    fn window(&self) -> Window {
        let mut samples: Vec<Duration> = lock(&self.latencies).iter().copied().collect();
        Window {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            p99: rollout::p99(&mut samples),
        }
    }
}

/// What the request path records during a rollout.
#[derive(Debug, Default)]
pub struct RolloutStats {
    candidate: VersionWindow,
    stable: VersionWindow,
    /// Numbers requests without an id, so they are split by the same rule.
    anonymous: AtomicU64,
}

impl RolloutStats {
    /// A key for a request that carries no id.
    pub(crate) fn anonymous_key(&self) -> [u8; 8] {
        self.anonymous.fetch_add(1, Ordering::Relaxed).to_le_bytes()
    }
}

/// The rollout as requests see it (published with the served versions).
#[derive(Debug, Clone)]
pub struct Canary {
    pub candidate: u64,
    pub stable: u64,
    pub percent: f64,
    pub stats: Arc<RolloutStats>,
}

impl Canary {
    /// Records the outcome of a request that `version` answered (`ok`: not a server error).
    pub fn record(&self, version: u64, ok: bool, latency: Duration) {
        if version == self.candidate {
            self.stats.candidate.record(ok, latency);
        } else if version == self.stable {
            self.stats.stable.record(ok, latency);
        }
    }
}

/// A rollout in progress, in the model's state.
#[derive(Debug, Clone)]
pub(crate) struct ActiveRollout {
    pub candidate: u64,
    pub stable: u64,
    started: Instant,
    pub policy: RolloutPolicy,
    stats: Arc<RolloutStats>,
    /// In shadow mode: the thread and statistics of the comparison (shared by clones; the
    /// shadow stops when the last clone goes).
    shadow: Option<Arc<Shadow>>,
    /// Paused by an operator: who (token id) and why. Promotion waits; rollback does not.
    pub paused: Option<String>,
}

impl ActiveRollout {
    pub fn new(
        model: &str,
        candidate: u64,
        stable: u64,
        policy: RolloutPolicy,
        metrics: &Arc<Metrics>,
    ) -> ActiveRollout {
        let shadow = (policy.mode() == RolloutMode::Shadow).then(|| {
            Arc::new(Shadow::start(
                model,
                candidate,
                stable,
                policy.shadow_percent,
                Arc::clone(metrics),
            ))
        });
        ActiveRollout {
            candidate,
            stable,
            started: Instant::now(),
            policy,
            stats: Arc::default(),
            shadow,
            paused: None,
        }
    }

    pub fn mode(&self) -> RolloutMode {
        self.policy.mode()
    }

    /// What requests read: the canary split, or the shadow tap.
    pub fn published(&self) -> (Option<Canary>, Option<ShadowTap>) {
        match &self.shadow {
            Some(shadow) => (None, Some(shadow.tap())),
            None => (
                Some(Canary {
                    candidate: self.candidate,
                    stable: self.stable,
                    percent: self.policy.canary_percent,
                    stats: Arc::clone(&self.stats),
                }),
                None,
            ),
        }
    }

    /// The value of `wick_rollout_state`.
    pub fn state_label(&self) -> &'static str {
        match (self.paused.is_some(), self.mode()) {
            (true, _) => "paused",
            (false, RolloutMode::Canary) => "canary",
            (false, RolloutMode::Shadow) => "shadow",
        }
    }

    fn observe(&self) -> Observation {
        let (candidate, agreement) = match &self.shadow {
            Some(shadow) => (shadow.window(), Some(shadow.agreement())),
            None => (self.stats.candidate.window(), None),
        };
        Observation {
            elapsed: self.started.elapsed(),
            candidate,
            stable: self.stats.stable.window(),
            agreement,
            paused: self.paused.is_some(),
        }
    }

    /// The shadow comparison so far (shadow mode only).
    pub fn agreement(&self) -> Option<rollout::Agreement> {
        self.shadow.as_ref().map(|s| s.agreement())
    }

    /// What the repository index says about the candidate.
    pub fn describe(&self) -> String {
        let elapsed = self.started.elapsed().as_secs();
        let of = self.policy.promote_after.as_secs();
        let mut text = match &self.shadow {
            None => {
                let c = self.stats.candidate.window();
                format!(
                    "canary: {}% of the requests naming no version (stable version {}), {} requests, {} errors, {elapsed} s of {of} s",
                    self.policy.canary_percent, self.stable, c.requests, c.errors,
                )
            }
            Some(shadow) => {
                let (w, a) = (shadow.window(), shadow.agreement());
                format!(
                    "shadow: computes on {}% of the requests naming no version, answered by stable version {}; {} compared, {} failed, max abs diff {:.3e}, min cosine {:.6}, argmax agreement {:.4}, {elapsed} s of {of} s",
                    self.policy.shadow_percent, self.stable, a.samples, w.errors,
                    a.max_abs_diff, a.min_cosine, a.argmax_agreement,
                )
            }
        };
        if let Some(who) = &self.paused {
            text.push_str(&format!("; paused by {who}"));
        }
        text
    }
}

impl Repository {
    /// Decides the rollout of `slot`, if one runs, and applies the decision.
    pub fn tick_rollout(&self, slot: &ModelSlot) {
        let promoted = {
            let _ops = lock(&slot.ops);
            let config = slot.config();
            let mut st = lock(&slot.state);
            let Some(active) = st.rollout.clone() else {
                return;
            };
            match rollout::decide(&active.policy, &config.golden, &active.observe()) {
                Decision::Continue => return,
                Decision::Promote => {
                    st.rollout = None;
                    tracing::info!(model = %slot.name, version = active.candidate,
                        stable = active.stable, mode = active.mode().as_str(),
                        "candidate promoted; the previous version retires under the version policy");
                    true
                }
                Decision::RollBack(reason) => {
                    st.rollout = None;
                    self.roll_back(slot, &mut st, &active, reason);
                    false
                }
            }
        };
        {
            let _ops = lock(&slot.ops);
            self.publish(slot);
        }
        if promoted {
            self.promoted(slot, "promoted");
        } else {
            self.reap();
        }
    }

    /// After the rollout of `slot` was taken out of its state and published for a promotion:
    /// counts it (`outcome` labels the metric) and lets the version policy retire the old
    /// version, which the plan no longer protects. Called with neither lock held.
    pub(crate) fn promoted(&self, slot: &ModelSlot, outcome: &'static str) {
        self.metrics.rollout_ended(&slot.name, outcome);
        self.sync_model(slot, SyncMode::RequireStable);
        self.reap();
    }

    /// Unloads the candidate and marks its files failed with `reason`: not loaded again until
    /// they change (with a `state_dir`, remembered across restarts too). The caller has taken
    /// the rollout out of the state and publishes afterwards.
    pub(crate) fn roll_back(
        &self,
        slot: &ModelSlot,
        st: &mut super::SlotState,
        active: &ActiveRollout,
        reason: RollbackReason,
    ) {
        tracing::error!(model = %slot.name, version = active.candidate, stable = active.stable,
            mode = active.mode().as_str(), %reason,
            "candidate rolled back; the stable version takes all traffic again");
        self.metrics.rollout_ended(&slot.name, reason.label());
        let Some(record) = st.versions.get_mut(&active.candidate) else {
            return;
        };
        if let Some(served) = record.served.take() {
            let failure = LoadFailure::RolledBack {
                mode: active.mode().as_str(),
                reason,
            };
            self.remember_rollback(
                &slot.name,
                active.candidate,
                &served.version.sha256,
                &served.files,
                &failure.to_string(),
            );
            self.retire(served.version);
            record.failed = Some(Failed {
                files: served.files,
                failure: Arc::new(failure),
            });
        }
    }
}
