//! Logging setup and the Prometheus metrics: every metric name wick exports is defined here.
//!
//! [`Metrics`] is one registry shared by the HTTP layer (request outcomes and latency), the
//! engine (queue, compute, batch sizes) and the repository (loads, failures, serving versions).
//! Hot paths hold pre-resolved handles ([`ModelMetrics`]) so recording a request costs a few
//! atomic adds, not a label lookup. The same calls keep Triton's per-version statistics
//! ([`stats`]), so `/metrics` and the statistics extension count the same events.

pub mod rollout;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use stats::{Counted, StatsSnapshot, VersionStats};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The message a panic carried (`panic!("...")` or a formatted one), for logs.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    version: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    model: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionInfoLabels {
    model: String,
    version: String,
    sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    model: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    model: String,
    kind: &'static str,
}

type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

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

/// The process-wide metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily,
    queue_duration: HistogramFamily,
    compute_duration: HistogramFamily,
    batch_size: HistogramFamily,
    batch_tokens: HistogramFamily,
    forward_calls: Family<ModelLabel, Counter>,
    queue_depth: Family<ModelLabel, Gauge>,
    rejections: Family<ReasonLabels, Counter>,
    loads: Family<LoadLabels, Counter>,
    load_failures: Family<FailureLabels, Counter>,
    load_duration: HistogramFamily,
    version_info: Family<VersionInfoLabels, Gauge>,
    resident_bytes: Family<VersionLabels, Gauge>,
    config_reloads: Family<ResultLabel, Counter>,
    panics: Family<ThreadLabel, Counter>,
    rollouts: Family<OutcomeLabels, Counter>,
    rollout_candidate: Family<ModelLabel, Gauge>,
    /// Shadow comparisons and rollout states ([`rollout`]).
    rollout: rollout::RolloutMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabel {
    thread: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wick");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            queue_duration: Family::new_with_constructor(latency_histogram),
            compute_duration: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            batch_tokens: Family::new_with_constructor(token_histogram),
            forward_calls: Family::default(),
            queue_depth: Family::default(),
            rejections: Family::default(),
            loads: Family::default(),
            load_failures: Family::default(),
            load_duration: Family::new_with_constructor(load_histogram),
            version_info: Family::default(),
            resident_bytes: Family::default(),
            config_reloads: Family::default(),
            panics: Family::default(),
            rollouts: Family::default(),
            rollout_candidate: Family::default(),
            rollout: rollout::RolloutMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "background_panics",
            "Panics caught on background threads (watcher, loader), which kept working",
            m.panics.clone(),
        );
        registry.register(
            "requests",
            "Inference requests by model, version and outcome",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "End-to-end latency of inference requests, from body read to response",
            m.request_duration.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time requests wait in the model's queue before compute",
            m.queue_duration.clone(),
        );
        registry.register(
            "compute_duration_seconds",
            "Duration of forward passes (one per batch)",
            m.compute_duration.clone(),
        );
        registry.register(
            "batch_size_rows",
            "Rows per forward pass",
            m.batch_size.clone(),
        );
        registry.register(
            "batch_tokens",
            "What a forward pass costs in max_batch_tokens' unit: padded tokens for text models, rows for the others",
            m.batch_tokens.clone(),
        );
        registry.register(
            "forward_calls",
            "Forward passes run (batches)",
            m.forward_calls.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting in the model's queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "rejections",
            "Requests refused or dropped before compute, by reason",
            m.rejections.clone(),
        );
        registry.register(
            "model_loads",
            "Version loads attempted, by result",
            m.loads.clone(),
        );
        registry.register(
            "model_load_failures",
            "Version loads refused, by kind of problem",
            m.load_failures.clone(),
        );
        registry.register(
            "model_load_duration_seconds",
            "Time from starting a version load to it being ready",
            m.load_duration.clone(),
        );
        registry.register(
            "model_version_info",
            "1 for every version being served, labelled with its weights' sha256",
            m.version_info.clone(),
        );
        registry.register(
            "model_weights_resident_bytes",
            "Bytes of weights held in memory per served version",
            m.resident_bytes.clone(),
        );
        registry.register(
            "config_reloads",
            "Config file reloads, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "rollouts",
            "Rollouts ended, by outcome: promoted, operator_promote, or rolled back by the bound it broke (error_rate, latency, disagreement) or by an operator (operator_rollback)",
            m.rollouts.clone(),
        );
        registry.register(
            "rollout_candidate_version",
            "The candidate version of a canary or shadow rollout (0: none)",
            m.rollout_candidate.clone(),
        );
        m.rollout.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one model's hot path.
    pub fn for_model(self: &Arc<Self>, model: &str) -> ModelMetrics {
        let label = ModelLabel {
            model: model.to_string(),
        };
        ModelMetrics {
            model: model.to_string(),
            request_duration: self.request_duration.get_or_create_owned(&label),
            queue_duration: self.queue_duration.get_or_create_owned(&label),
            compute_duration: self.compute_duration.get_or_create_owned(&label),
            batch_size: self.batch_size.get_or_create_owned(&label),
            batch_tokens: self.batch_tokens.get_or_create_owned(&label),
            forward_calls: self.forward_calls.get_or_create_owned(&label),
            queue_depth: self.queue_depth.get_or_create_owned(&label),
            request_counters: Arc::default(),
            stats: Arc::default(),
            all: Arc::clone(self),
        }
    }

    /// A canary rollout ended with `outcome` (`promoted`, `error_rate`, `latency`, ...).
    pub fn rollout_ended(&self, model: &str, outcome: &'static str) {
        self.rollouts
            .get_or_create(&OutcomeLabels {
                model: model.to_string(),
                outcome,
            })
            .inc();
    }

    /// The version in a canary rollout of `model` (0: none).
    pub fn set_rollout_candidate(&self, model: &str, version: u64) {
        self.rollout_candidate
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .set(version as i64);
    }

    pub fn load_succeeded(&self, model: &str, duration: Duration) {
        self.loads
            .get_or_create(&LoadLabels {
                model: model.to_string(),
                result: "success",
            })
            .inc();
        self.load_duration
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn load_failed(&self, model: &str, kind: &'static str) {
        self.loads
            .get_or_create(&LoadLabels {
                model: model.to_string(),
                result: "failure",
            })
            .inc();
        self.load_failures
            .get_or_create(&FailureLabels {
                model: model.to_string(),
                kind,
            })
            .inc();
    }

    /// A panic caught on a background thread (`watcher`, `loader`) that kept working after it.
    pub fn panicked(&self, thread: &'static str) {
        self.panics.get_or_create(&ThreadLabel { thread }).inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Marks a version as served (`bytes` of weights) or, with `None`, as no longer served.
    pub fn set_serving(&self, model: &str, version: u64, sha256: &str, bytes: Option<u64>) {
        let info = VersionInfoLabels {
            model: model.to_string(),
            version: version.to_string(),
            sha256: sha256.to_string(),
        };
        let resident = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        match bytes {
            Some(b) => {
                self.version_info.get_or_create(&info).set(1);
                self.resident_bytes
                    .get_or_create(&resident)
                    .set(i64::try_from(b).unwrap_or(i64::MAX));
            }
            None => {
                self.version_info.remove(&info);
                self.resident_bytes.remove(&resident);
            }
        }
    }
}

/// Request counters already resolved, by (version, outcome).
type RequestCounters = Arc<RwLock<HashMap<(Option<u64>, &'static str), Counter>>>;

/// Pre-resolved metric handles of one model.
#[derive(Clone)]
pub struct ModelMetrics {
    model: String,
    request_duration: Histogram,
    queue_duration: Histogram,
    compute_duration: Histogram,
    batch_size: Histogram,
    batch_tokens: Histogram,
    forward_calls: Counter,
    queue_depth: Gauge,
    /// Resolved request counters by (version, outcome): the family lookup allocates label
    /// strings, which the hot path should not do per request.
    request_counters: RequestCounters,
    /// Triton statistics by version.
    stats: VersionStatsMap,
    all: Arc<Metrics>,
}

/// Statistics of the versions a model served, by version.
type VersionStatsMap = Arc<RwLock<BTreeMap<u64, Arc<VersionStats>>>>;

/// Versions whose statistics are kept per model; past this the lowest version's are dropped
/// (hot reloads publish ever higher versions, and the served ones are the highest).
const MAX_STATS_VERSIONS: usize = 64;

impl std::fmt::Debug for ModelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelMetrics")
            .field("model", &self.model)
            .finish()
    }
}

impl ModelMetrics {
    /// Counts a finished request. `version` is `None` when it failed before one was chosen
    /// (such requests have no Triton statistics: Triton's are per version).
    pub fn request(&self, version: Option<u64>, outcome: &'static str, elapsed: Duration) {
        self.request_duration.observe(elapsed.as_secs_f64());
        if let Some(v) = version {
            self.version_stats(v).request(outcome == "success", elapsed);
        }
        let key = (version, outcome);
        if let Some(counter) = self
            .request_counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            counter.inc();
            return;
        }
        let counter = self.all.requests.get_or_create_owned(&RequestLabels {
            model: self.model.clone(),
            version: version.map(|v| v.to_string()).unwrap_or_default(),
            outcome,
        });
        counter.inc();
        self.request_counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, counter);
    }

    /// The statistics of `version`, created on first use.
    pub fn version_stats(&self, version: u64) -> Arc<VersionStats> {
        if let Some(stats) = self
            .stats
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&version)
        {
            return Arc::clone(stats);
        }
        let mut all = self.stats.write().unwrap_or_else(PoisonError::into_inner);
        let stats = Arc::clone(all.entry(version).or_default());
        while all.len() > MAX_STATS_VERSIONS {
            all.pop_first();
        }
        stats
    }

    /// What `version` did so far (zeros if it has not served yet).
    pub fn stats_snapshot(&self, version: u64) -> StatsSnapshot {
        self.stats
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&version)
            .map(|s| s.snapshot())
            .unwrap_or_default()
    }

    /// Decoding and preparing (tokenising) one request's inputs: Triton's `compute_input`.
    pub fn compute_input(&self, version: u64, elapsed: Duration) {
        self.version_stats(version).compute_input.add(1, elapsed);
    }

    /// Encoding one request's outputs: Triton's `compute_output`.
    pub fn compute_output(&self, version: u64, elapsed: Duration) {
        self.version_stats(version).compute_output.add(1, elapsed);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.all
            .rejections
            .get_or_create(&ReasonLabels {
                model: self.model.clone(),
                reason,
            })
            .inc();
    }

    pub fn queued(&self, stats: &VersionStats, waited: Duration) {
        self.queue_duration.observe(waited.as_secs_f64());
        stats.queue.add(1, waited);
    }

    /// One forward pass of `rows` rows for `requests` requests of one version.
    pub fn batch(&self, stats: &VersionStats, rows: usize, requests: usize, compute: Duration) {
        stats.execution(rows, requests, compute);
        self.forward_calls.inc();
        self.batch_size.observe(rows as f64);
        self.compute_duration.observe(compute.as_secs_f64());
    }

    pub fn batch_tokens(&self, tokens: usize) {
        self.batch_tokens.observe(tokens as f64);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as i64);
    }
}
