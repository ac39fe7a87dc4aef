//! Logging setup and the Prometheus metrics: every metric wick exports is registered in
//! src/telemetry/families.rs, and recorded through the calls defined here.
//!
//! [`Metrics`] is one registry shared by the HTTP layer (request outcomes and latency), the
//! engine (queue, compute, batch sizes) and the repository (loads, failures, serving versions).
//! Hot paths hold pre-resolved handles ([`ModelMetrics`]) so recording a request costs a few
//! atomic adds, not a label lookup. The same calls keep Triton's per-version statistics
//! ([`stats`]), so `/metrics` and the statistics extension count the same events.

mod families;
pub mod rollout;
pub mod stats;
pub mod trace;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use families::{
    registered, FailureLabels, LoadLabels, ModelLabel, OutcomeLabels, ReasonLabels,
    RepositoryFamilies, RequestLabels, ResultLabel, ThreadLabel, TrafficFamilies,
    VersionInfoLabels, VersionLabels,
};

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

/// Installs the global tracing subscriber: log lines on stderr, filtered by `RUST_LOG` (default
/// `info`), and with `trace` the exporter of request spans ([`trace`]), whose guard flushes
/// them when dropped.
pub fn init(
    format: LogFormat,
    trace: Option<&trace::TraceConfig>,
) -> Result<Option<trace::Exporter>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Request spans are the exporter's: log lines never carry them.
    if let Ok(off) = format!("{}=off", trace::TARGET).parse() {
        filter = filter.add_directive(off);
    }
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => logs.with_filter(filter).boxed(),
    };
    let (spans, exporter) = match trace {
        Some(config) => {
            let (layer, exporter) = trace::layer(config)?;
            let only_spans = tracing_subscriber::filter::Targets::new()
                .with_target(trace::TARGET, tracing::Level::INFO);
            (Some(layer.with_filter(only_spans)), Some(exporter))
        }
        None => (None, None),
    };
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(exporter)
}

/// Installs log output only (the commands other than `serve`).
pub fn init_logging(format: LogFormat) {
    let _ = init(format, None);
}

/// The process-wide metrics registry.
pub struct Metrics {
    registry: Registry,
    panics: Family<ThreadLabel, Counter>,
    traffic: TrafficFamilies,
    repository: RepositoryFamilies,
    /// Shadow comparisons and rollout states ([`rollout`]).
    rollout: rollout::RolloutMetrics,
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
        // Registration order is the order of the exposition: panics first, so they stand out.
        let panics = registered(
            &mut registry,
            "background_panics",
            "Panics caught on background threads (watcher, loader), which kept working",
            Family::default(),
        );
        let traffic = TrafficFamilies::new(&mut registry);
        let repository = RepositoryFamilies::new(&mut registry);
        let rollout = rollout::RolloutMetrics::default();
        rollout.register(&mut registry);
        Metrics {
            registry,
            panics,
            traffic,
            repository,
            rollout,
        }
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
            request_duration: self.traffic.request_duration.get_or_create_owned(&label),
            queue_duration: self.traffic.queue_duration.get_or_create_owned(&label),
            compute_duration: self.traffic.compute_duration.get_or_create_owned(&label),
            batch_size: self.traffic.batch_size.get_or_create_owned(&label),
            batch_tokens: self.traffic.batch_tokens.get_or_create_owned(&label),
            forward_calls: self.traffic.forward_calls.get_or_create_owned(&label),
            queue_depth: self.traffic.queue_depth.get_or_create_owned(&label),
            request_counters: Arc::default(),
            stats: Arc::default(),
            all: Arc::clone(self),
        }
    }

    /// A canary rollout ended with `outcome` (`promoted`, `error_rate`, `latency`, ...).
    pub fn rollout_ended(&self, model: &str, outcome: &'static str) {
        self.repository
            .rollouts
            .get_or_create(&OutcomeLabels {
                model: model.to_string(),
                outcome,
            })
            .inc();
    }

    /// The version in a canary rollout of `model` (0: none).
    pub fn set_rollout_candidate(&self, model: &str, version: u64) {
        self.repository
            .rollout_candidate
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .set(version as i64);
    }

    pub fn load_succeeded(&self, model: &str, duration: Duration) {
        self.repository
            .loads
            .get_or_create(&LoadLabels {
                model: model.to_string(),
                result: "success",
            })
            .inc();
        self.repository
            .load_duration
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn load_failed(&self, model: &str, kind: &'static str) {
        self.repository
            .loads
            .get_or_create(&LoadLabels {
                model: model.to_string(),
                result: "failure",
            })
            .inc();
        self.repository
            .load_failures
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
        self.repository
            .config_reloads
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
                self.repository.version_info.get_or_create(&info).set(1);
                self.repository
                    .resident_bytes
                    .get_or_create(&resident)
                    .set(i64::try_from(b).unwrap_or(i64::MAX));
            }
            None => {
                self.repository.version_info.remove(&info);
                self.repository.resident_bytes.remove(&resident);
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
        let counter = self
            .all
            .traffic
            .requests
            .get_or_create_owned(&RequestLabels {
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
            .traffic
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
