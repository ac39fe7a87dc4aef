//! A running canary rollout: what requests observe of the candidate and the stable version, and
//! applying [`super::rollout::decide`]'s verdict (promote, or roll back: unload the candidate and
//! mark its files failed with the reason, so it is not loaded again until they change).
//!
//! A rollout starts when a model with a `rollout` config loads a version newer than the one it
//! serves (src/repository/sync.rs). While it runs, the plan keeps the stable version served
//! (`protect` in src/repository/plan.rs) and requests that name no version are split by
//! [`super::Serving::route`]. The watcher's scans call [`Repository::tick_rollout`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RolloutPolicy;

use super::rollout::{self, Decision, Observation, RollbackReason, Window};
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
}

impl ActiveRollout {
    pub fn new(candidate: u64, stable: u64, policy: RolloutPolicy) -> ActiveRollout {
        ActiveRollout {
            candidate,
            stable,
            started: Instant::now(),
            policy,
            stats: Arc::default(),
        }
    }

    pub fn canary(&self) -> Canary {
        Canary {
            candidate: self.candidate,
            stable: self.stable,
            percent: self.policy.canary_percent,
            stats: Arc::clone(&self.stats),
        }
    }

    fn observe(&self) -> Observation {
        Observation {
            elapsed: self.started.elapsed(),
            candidate: self.stats.candidate.window(),
            stable: self.stats.stable.window(),
            agreement: None,
            paused: false,
        }
    }

    /// What the repository index says about the candidate.
    pub fn describe(&self) -> String {
        let c = self.stats.candidate.window();
        format!(
            "canary: {}% of the requests naming no version (stable version {}), {} requests, {} errors, {} s of {} s",
            self.policy.canary_percent,
            self.stable,
            c.requests,
            c.errors,
            self.started.elapsed().as_secs(),
            self.policy.promote_after.as_secs()
        )
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
                        stable = active.stable, "canary promoted; the previous version retires under the version policy");
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
            self.metrics.rollout_ended(&slot.name, "promoted");
            // The plan no longer protects the stable version: the version policy retires it.
            self.sync_model(slot, SyncMode::RequireStable);
        }
        self.reap();
    }

    /// Unloads the candidate and marks its files failed with `reason`: not loaded again until
    /// they change.
    fn roll_back(
        &self,
        slot: &ModelSlot,
        st: &mut super::SlotState,
        active: &ActiveRollout,
        reason: RollbackReason,
    ) {
        tracing::error!(model = %slot.name, version = active.candidate, stable = active.stable,
            %reason, "canary rolled back; the stable version takes all traffic again");
        self.metrics.rollout_ended(&slot.name, reason.label());
        let Some(record) = st.versions.get_mut(&active.candidate) else {
            return;
        };
        if let Some(served) = record.served.take() {
            self.retire(served.version);
            record.failed = Some(Failed {
                files: served.files,
                failure: Arc::new(LoadFailure::RolledBack(reason)),
            });
        }
    }
}
