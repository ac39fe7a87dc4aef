//! The metric families wick exports, their label sets and histogram buckets, registered in
//! one place: [`TrafficFamilies`] (what requests do; recorded by http and engine) and
//! [`RepositoryFamilies`] (loads, served versions, config reloads, rollouts). The recording
//! calls are on [`super::Metrics`] and [`super::ModelMetrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ModelLabel {
    pub(super) model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) model: String,
    pub(super) version: String,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) model: String,
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabels {
    pub(super) model: String,
    pub(super) version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionInfoLabels {
    pub(super) model: String,
    pub(super) version: String,
    pub(super) sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct LoadLabels {
    pub(super) model: String,
    pub(super) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FailureLabels {
    pub(super) model: String,
    pub(super) kind: &'static str,
}

pub(super) type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
}

fn token_histogram() -> Histogram {
    Histogram::new([
        16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0,
    ])
}

fn load_histogram() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// Registers `metric` under `name` and hands it back (the registry keeps a shared clone).
pub(super) fn registered<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// What requests do: outcomes, latency, queueing, batches (recorded by http and engine).
pub(super) struct TrafficFamilies {
    pub(super) requests: Family<RequestLabels, Counter>,
    pub(super) request_duration: HistogramFamily,
    pub(super) queue_duration: HistogramFamily,
    pub(super) compute_duration: HistogramFamily,
    pub(super) batch_size: HistogramFamily,
    pub(super) batch_tokens: HistogramFamily,
    pub(super) forward_calls: Family<ModelLabel, Counter>,
    pub(super) queue_depth: Family<ModelLabel, Gauge>,
    pub(super) rejections: Family<ReasonLabels, Counter>,
}

impl TrafficFamilies {
    pub(super) fn new(r: &mut Registry) -> TrafficFamilies {
        let histogram = |r: &mut Registry, name, help, buckets: fn() -> Histogram| {
            registered(r, name, help, Family::new_with_constructor(buckets))
        };
        TrafficFamilies {
            requests: registered(
                r,
                "requests",
                "Inference requests by model, version and outcome",
                Family::default(),
            ),
            request_duration: histogram(
                r,
                "request_duration_seconds",
                "End-to-end latency of inference requests, from body read to response",
                latency_histogram,
            ),
            queue_duration: histogram(
                r,
                "queue_duration_seconds",
                "Time requests wait in the model's queue before compute",
                latency_histogram,
            ),
            compute_duration: histogram(
                r,
                "compute_duration_seconds",
                "Duration of forward passes (one per batch)",
                latency_histogram,
            ),
            batch_size: histogram(r, "batch_size_rows", "Rows per forward pass", batch_histogram),
            batch_tokens: histogram(
                r,
                "batch_tokens",
                "What a forward pass costs in max_batch_tokens' unit: padded tokens for text models, rows for the others",
                token_histogram,
            ),
            forward_calls: registered(
                r,
                "forward_calls",
                "Forward passes run (batches)",
                Family::default(),
            ),
            queue_depth: registered(
                r,
                "queue_depth",
                "Requests waiting in the model's queue",
                Family::default(),
            ),
            rejections: registered(
                r,
                "rejections",
                "Requests refused or dropped before compute, by reason",
                Family::default(),
            ),
        }
    }
}

/// What the repository does: loads, the versions served, config reloads, rollouts.
pub(super) struct RepositoryFamilies {
    pub(super) loads: Family<LoadLabels, Counter>,
    pub(super) load_failures: Family<FailureLabels, Counter>,
    pub(super) load_duration: HistogramFamily,
    pub(super) version_info: Family<VersionInfoLabels, Gauge>,
    pub(super) resident_bytes: Family<VersionLabels, Gauge>,
    pub(super) config_reloads: Family<ResultLabel, Counter>,
    pub(super) rollouts: Family<OutcomeLabels, Counter>,
    pub(super) rollout_candidate: Family<ModelLabel, Gauge>,
}

impl RepositoryFamilies {
    pub(super) fn new(r: &mut Registry) -> RepositoryFamilies {
        RepositoryFamilies {
            loads: registered(
                r,
                "model_loads",
                "Version loads attempted, by result",
                Family::default(),
            ),
            load_failures: registered(
                r,
                "model_load_failures",
                "Version loads refused, by kind of problem",
                Family::default(),
            ),
            load_duration: registered(
                r,
                "model_load_duration_seconds",
                "Time from starting a version load to it being ready",
                Family::new_with_constructor(load_histogram),
            ),
            version_info: registered(
                r,
                "model_version_info",
                "1 for every version being served, labelled with its weights' sha256",
                Family::default(),
            ),
            resident_bytes: registered(
                r,
                "model_weights_resident_bytes",
                "Bytes of weights held in memory per served version",
                Family::default(),
            ),
            config_reloads: registered(
                r,
                "config_reloads",
                "Config file reloads, by result",
                Family::default(),
            ),
            rollouts: registered(
                r,
                "rollouts",
                "Rollouts ended, by outcome: promoted, operator_promote, or rolled back by the bound it broke (error_rate, latency, disagreement) or by an operator (operator_rollback)",
                Family::default(),
            ),
            rollout_candidate: registered(
                r,
                "rollout_candidate_version",
                "The candidate version of a canary or shadow rollout (0: none)",
                Family::default(),
            ),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    pub(super) model: String,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ThreadLabel {
    pub(super) thread: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabel {
    pub(super) result: &'static str,
}
