//! The metrics of rollouts beyond the outcome counter: the shadow comparison per version pair,
//! what happened to the shadow samples, and the state of each model's rollout. Kept apart from
//! src/telemetry/mod.rs so the rollout's metrics live in one place; they register into the same
//! registry (see [`RolloutMetrics::register`]).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;

/// A model's candidate and stable version: the pair a shadow comparison is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    model: String,
    candidate: String,
    stable: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    model: String,
    candidate: String,
    stable: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    model: String,
    state: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The states `wick_rollout_state` reports, one series each (1 for the current one).
pub const ROLLOUT_STATES: [&str; 4] = ["none", "canary", "shadow", "paused"];

/// The rollout metric families (registered by [`Metrics::new`]).
#[derive(Default)]
pub struct RolloutMetrics {
    max_abs_diff: Family<PairLabels, FloatGauge>,
    min_cosine: Family<PairLabels, FloatGauge>,
    argmax_agreement: Family<PairLabels, FloatGauge>,
    samples: Family<SampleLabels, Counter>,
    state: Family<StateLabels, Gauge>,
}

impl RolloutMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shadow_max_abs_diff",
            "Largest absolute difference between the candidate's and the stable version's outputs over the shadow samples compared",
            self.max_abs_diff.clone(),
        );
        registry.register(
            "shadow_min_cosine",
            "Lowest cosine similarity of a candidate output row with the stable version's over the shadow samples compared",
            self.min_cosine.clone(),
        );
        registry.register(
            "shadow_argmax_agreement",
            "Share of output rows whose argmax agrees between the candidate and the stable version over the shadow samples compared",
            self.argmax_agreement.clone(),
        );
        registry.register(
            "shadow_samples",
            "Shadow samples by outcome: compared, failed (the candidate refused or failed it), dropped (the shadow queue was full), busy (the model's queue was half full)",
            self.samples.clone(),
        );
        registry.register(
            "rollout_state",
            "The state of a model's rollout: 1 for the current one of none, canary, shadow, paused",
            self.state.clone(),
        );
    }
}

/// One shadow comparison's statistics so far.
#[derive(Debug, Clone, Copy)]
pub struct ShadowFigures {
    pub max_abs_diff: f64,
    pub min_cosine: f64,
    pub argmax_agreement: f64,
}

impl Metrics {
    fn pair(model: &str, candidate: u64, stable: u64) -> PairLabels {
        PairLabels {
            model: model.to_string(),
            candidate: candidate.to_string(),
            stable: stable.to_string(),
        }
    }

    /// The comparison of `candidate` with `stable` so far.
    pub fn set_shadow_figures(&self, model: &str, candidate: u64, stable: u64, f: ShadowFigures) {
        let labels = Metrics::pair(model, candidate, stable);
        let r = &self.rollout;
        r.max_abs_diff.get_or_create(&labels).set(f.max_abs_diff);
        r.min_cosine.get_or_create(&labels).set(f.min_cosine);
        r.argmax_agreement
            .get_or_create(&labels)
            .set(f.argmax_agreement);
    }

    /// One shadow sample of `candidate` against `stable` ended with `outcome`.
    pub fn shadow_sample(&self, model: &str, candidate: u64, stable: u64, outcome: &'static str) {
        self.rollout
            .samples
            .get_or_create(&SampleLabels {
                model: model.to_string(),
                candidate: candidate.to_string(),
                stable: stable.to_string(),
                outcome,
            })
            .inc();
    }

    /// The rollout state of `model`: one of [`ROLLOUT_STATES`].
    pub fn set_rollout_state(&self, model: &str, state: &'static str) {
        for s in ROLLOUT_STATES {
            self.rollout
                .state
                .get_or_create(&StateLabels {
                    model: model.to_string(),
                    state: s,
                })
                .set(i64::from(s == state));
        }
    }
}
