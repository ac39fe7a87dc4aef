//! `config.toml` and `WICK_*` environment overrides, turned into one validated, typed [`Config`].
//!
//! This module owns parsing and validation only: every unknown key is an error that names the key
//! and its line, model names follow a strict grammar, and each model's `config` table is checked
//! by the architecture registry (so a typo in `hiden` is caught before anything is loaded). It never
//! opens a model file or a socket; relative paths are resolved against the config file's folder
//! so `wick serve --config some/dir/config.toml` works from anywhere.

mod model;
mod promotion;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::arch::{Configured, Registry};
use crate::state_dict::{FileIdentity, KeyMapping};

use model::{resolve_model, RawModel};
use server::{resolve_server, RawServer};

pub use promotion::{GoldenTolerance, RolloutMode, RolloutPolicy};

/// Everything that can be wrong with a configuration, with enough data to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message already names the key, the line and the column, with a snippet.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
}

/// The validated configuration of one wick process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration came from (watched for changes by `serve`).
    pub source: Option<PathBuf>,
    /// That file's identity when it was read, so a change made right after startup is seen.
    pub source_identity: Option<FileIdentity>,
    pub server: ServerConfig,
    pub models: Vec<ModelConfig>,
    /// The architecture families names were resolved with; a reload uses the same.
    pub registry: Arc<Registry>,
}

/// The `[server]` section after defaults and environment overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Repository API listener; `None` disables the API.
    pub admin_listen: Option<SocketAddr>,
    /// gRPC (KServe v2 / Triton `GRPCInferenceService`) listener; `None` disables gRPC.
    pub grpc_listen: Option<SocketAddr>,
    pub repository: PathBuf,
    pub poll_interval: Duration,
    /// Threads for the math (candle's pools); `0` in the file means "the container's CPU limit".
    pub compute_threads: usize,
    pub limits: HttpLimits,
    /// How long in-flight requests get to finish after SIGTERM before the process exits anyway.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long readiness says 503 while the listener still accepts, so load
    /// balancers stop sending before connections are refused.
    pub drain_delay: Duration,
    /// Readiness is 200 only when every configured model has a ready version (Triton's default).
    pub strict_readiness: bool,
    /// Version directories and files may resolve (through symlinks) outside the repository.
    pub allow_external_symlinks: bool,
    /// A writable directory where rolled-back versions are remembered across restarts
    /// (src/repository/state.rs); `None`: a restart forgets them.
    pub state_dir: Option<PathBuf>,
    /// Where request spans are exported (`otlp_endpoint`); `None`: tracing is off.
    pub trace: Option<crate::telemetry::trace::TraceConfig>,
}

/// Protective limits of the HTTP front end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    /// Request-body bytes being received or decoded at once, server-wide.
    pub max_inflight_body_bytes: usize,
    /// Threads of the pool that decodes large bodies and tokenises (0: as many as tokio workers).
    pub decode_threads: usize,
    /// A new connection's first request head, and any request head once its first byte
    /// arrived, must be complete within this.
    pub header_read_timeout: Duration,
    /// Keep-alive connections idle this long are closed.
    pub keep_alive_idle: Duration,
    pub body_deadline: Duration,
    pub max_connections: usize,
    /// Open connections from one IP address (0: no limit; behind a load balancer every
    /// connection comes from a few addresses).
    pub max_connections_per_peer: usize,
}

/// One `[[models]]` entry.
#[derive(Clone)]
pub struct ModelConfig {
    pub name: String,
    pub architecture: Arc<Configured>,
    /// The raw `config` table, kept to detect changes on reload.
    pub arch_config: toml::Table,
    pub mapping: KeyMapping,
    pub version_policy: VersionPolicy,
    pub batching: BatchingConfig,
    /// Tolerances of the golden-output gate (used when a version has `golden.safetensors`).
    pub golden: GoldenTolerance,
    /// A canary rollout for new versions (`None`: a new version takes all traffic at once).
    pub rollout: Option<RolloutPolicy>,
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelConfig")
            .field("name", &self.name)
            .field("architecture", &self.architecture.name())
            .field("arch_config", &self.arch_config)
            .field("mapping", &self.mapping)
            .field("version_policy", &self.version_policy)
            .field("batching", &self.batching)
            .field("golden", &self.golden)
            .field("rollout", &self.rollout)
            .finish()
    }
}

impl PartialEq for ModelConfig {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.architecture.name() == other.architecture.name()
            && self.arch_config == other.arch_config
            && self.mapping == other.mapping
            && self.version_policy == other.version_policy
            && self.batching == other.batching
            && self.golden == other.golden
            && self.rollout == other.rollout
    }
}

impl ModelConfig {
    /// True when a change from `self` to `other` needs the weights reloaded (the architecture or
    /// the key mapping changed); batching and version-policy changes do not.
    pub fn needs_reload(&self, other: &ModelConfig) -> bool {
        self.architecture.name() != other.architecture.name()
            || self.arch_config != other.arch_config
            || self.mapping != other.mapping
    }
}

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The `n` highest versions (default `n = 1`).
    Latest(usize),
    All,
    /// Exactly these versions (pinning, rollback).
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// Which of the `available` versions (any order) this policy selects, highest first.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut sorted: Vec<u64> = available.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        match self {
            VersionPolicy::Latest(n) => sorted.into_iter().take(*n).collect(),
            VersionPolicy::All => sorted,
            VersionPolicy::Specific(wanted) => {
                sorted.into_iter().filter(|v| wanted.contains(v)).collect()
            }
        }
    }
}

/// The per-model batcher and admission settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingConfig {
    /// Rows per forward pass; `1` disables batching. Requests with more rows are split.
    pub max_batch_size: usize,
    /// Rows one request may have; more are refused (400) before anything is computed.
    pub max_request_rows: usize,
    /// What a forward pass may cost: padded tokens for text models (0: no budget).
    pub max_batch_tokens: usize,
    /// What the queue may hold in the same unit (0: no budget); more gets 429.
    pub max_queue_tokens: usize,
    /// The priority of requests that send none (Triton's `priority`: lower runs first).
    pub default_priority: u64,
    /// How long a request that arrived while the model was busy may wait for batch-mates.
    pub max_queue_delay: Duration,
    /// Requests waiting at most; one more gets 429 at once.
    pub max_queue_size: usize,
    /// Queue timeout for requests that do not send Triton's `timeout` parameter (`None`: wait).
    pub default_timeout: Option<Duration>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: 64,
            max_request_rows: 2048,
            max_batch_tokens: 0,
            max_queue_tokens: 0,
            default_priority: 1,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 1024,
            default_timeout: None,
        }
    }
}

// The file format. Every table denies unknown fields so a typo is an error, never a default;
// the `[server]` table is in server.rs, a `[[models]]` entry in model.rs.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    models: Vec<RawModel>,
}

/// Looks up `WICK_*` environment overrides (the process environment in production, a closure
/// in tests).
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send>;

/// Environment overrides for containers. They apply to the `[server]` section only.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WICK_LISTEN", "server.listen"),
    (
        "WICK_ADMIN_LISTEN",
        "server.admin_listen (\"off\" disables)",
    ),
    ("WICK_GRPC_LISTEN", "server.grpc_listen (\"off\" disables)"),
    ("WICK_REPOSITORY", "server.repository"),
    ("WICK_POLL_INTERVAL_MS", "server.poll_interval_ms"),
    ("WICK_COMPUTE_THREADS", "server.compute_threads"),
    ("WICK_MAX_BODY_BYTES", "server.max_body_bytes"),
    (
        "WICK_MAX_INFLIGHT_BODY_BYTES",
        "server.max_inflight_body_bytes",
    ),
    ("WICK_SHUTDOWN_GRACE_MS", "server.shutdown_grace_ms"),
    ("WICK_DRAIN_DELAY_MS", "server.drain_delay_ms"),
    (
        "WICK_OTLP_ENDPOINT",
        "server.otlp_endpoint (\"off\" disables)",
    ),
];

impl Config {
    /// Reads and validates `path`, applying `WICK_*` overrides looked up through `env`.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::load_with(path, env, Arc::new(Registry::builtin()))
    }

    /// [`Config::load`] with the architecture families of `registry` (wick's own plus a
    /// program's, see [`Registry::with`]).
    pub fn load_with(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        registry: Arc<Registry>,
    ) -> Result<Config, ConfigError> {
        // Identity first: if the file changes while it is read, the watcher sees a difference.
        let identity = FileIdentity::stat(path).ok();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut config = Config::parse_with(&text, path, &base, env, registry)?;
        config.source = Some(path.to_path_buf());
        config.source_identity = identity;
        Ok(config)
    }

    /// Parses config text; `origin` names it in errors, `base` resolves relative paths.
    pub fn parse(
        text: &str,
        origin: &Path,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_with(text, origin, base, env, Arc::new(Registry::builtin()))
    }

    /// [`Config::parse`] with the architecture families of `registry`.
    pub fn parse_with(
        text: &str,
        origin: &Path,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        registry: Arc<Registry>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            message,
        };
        let server = resolve_server(raw.server, base, env, &invalid)?;

        let mut models = Vec::with_capacity(raw.models.len());
        let mut seen = BTreeMap::new();
        for (index, model) in raw.models.into_iter().enumerate() {
            if let Some(first) = seen.insert(model.name.clone(), index) {
                return Err(invalid(format!(
                    "models[{index}]: model name {:?} is already used by models[{first}]",
                    model.name
                )));
            }
            models.push(resolve_model(index, model, text, &registry, &invalid)?);
        }
        Ok(Config {
            source: None,
            source_identity: None,
            server,
            models,
            registry,
        })
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests;
