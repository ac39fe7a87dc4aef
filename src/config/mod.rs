//! `config.toml` and `WICK_*` environment overrides, turned into one validated, typed [`Config`].
//!
//! This module owns parsing and validation only: every unknown key is an error that names the key
//! and its line, model names follow a strict grammar, and each model's `config` table is checked
//! by the architecture registry (so a typo in `hiden` is caught before anything is loaded). It never
//! opens a model file or a socket; relative paths are resolved against the config file's folder
//! so `wick serve --config some/dir/config.toml` works from anywhere.

mod promotion;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::arch::{self, Configured, Registry};
use crate::model::naming::validate_model_name;

use crate::state_dict::{FileIdentity, KeyMapping};

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

// ---------------------------------------------------------------------------------------------
// The file format. Every table denies unknown fields so a typo is an error, never a default.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    admin_listen: Option<String>,
    repository: PathBuf,
    #[serde(default = "default_poll_interval_ms")]
    poll_interval_ms: u64,
    #[serde(default)]
    compute_threads: usize,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_max_inflight_body_bytes")]
    max_inflight_body_bytes: usize,
    #[serde(default)]
    decode_threads: usize,
    #[serde(default = "default_header_read_timeout_ms")]
    header_read_timeout_ms: u64,
    #[serde(default = "default_keep_alive_idle_ms")]
    keep_alive_idle_ms: u64,
    #[serde(default = "default_body_deadline_ms")]
    body_deadline_ms: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    max_connections_per_peer: usize,
    #[serde(default = "default_shutdown_grace_ms")]
    shutdown_grace_ms: u64,
    #[serde(default)]
    drain_delay_ms: u64,
    #[serde(default = "default_true")]
    strict_readiness: bool,
    #[serde(default)]
    allow_external_symlinks: bool,
    #[serde(default)]
    state_dir: Option<PathBuf>,
}

fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_max_body_bytes() -> usize {
    64 << 20
}
fn default_max_inflight_body_bytes() -> usize {
    256 << 20
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_keep_alive_idle_ms() -> u64 {
    // Longer than the 60 s idle timeout of common load balancers, so they close first and
    // never send a request on a connection the server is closing.
    75_000
}
fn default_body_deadline_ms() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    4096
}
fn default_shutdown_grace_ms() -> u64 {
    30_000
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    architecture: toml::Spanned<String>,
    #[serde(default)]
    config: Option<toml::Spanned<toml::Table>>,
    #[serde(default)]
    load: Option<RawLoad>,
    #[serde(default)]
    version_policy: Option<RawVersionPolicy>,
    #[serde(default)]
    batching: Option<RawBatching>,
    #[serde(default)]
    golden: Option<promotion::RawGolden>,
    #[serde(default)]
    rollout: Option<promotion::RawRollout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    #[serde(default)]
    strip_prefix: Option<String>,
    #[serde(default)]
    ignore: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersionPolicy {
    latest: Option<usize>,
    all: Option<bool>,
    specific: Option<Vec<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatching {
    max_batch_size: Option<usize>,
    max_request_rows: Option<usize>,
    max_batch_tokens: Option<usize>,
    max_queue_tokens: Option<usize>,
    default_priority: Option<u64>,
    max_queue_delay_us: Option<u64>,
    max_queue_size: Option<usize>,
    default_timeout_us: Option<u64>,
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

fn resolve_server(
    raw: RawServer,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<ServerConfig, ConfigError> {
    let env_or = |var: &'static str, value: String| env(var).unwrap_or(value);
    let listen_text = env_or("WICK_LISTEN", raw.listen);
    let listen = parse_addr(&listen_text).map_err(|m| invalid(format!("server.listen: {m}")))?;
    let admin_listen = match env("WICK_ADMIN_LISTEN").or(raw.admin_listen) {
        None => None,
        Some(text) if text == "off" || text.is_empty() => None,
        Some(text) => {
            Some(parse_addr(&text).map_err(|m| invalid(format!("server.admin_listen: {m}")))?)
        }
    };
    let repository = env("WICK_REPOSITORY")
        .map(PathBuf::from)
        .unwrap_or(raw.repository);
    let repository = if repository.is_absolute() {
        repository
    } else {
        base.join(repository)
    };
    let number = |var: &'static str, value: u64| -> Result<u64, ConfigError> {
        match env(var) {
            None => Ok(value),
            Some(text) => text.trim().parse::<u64>().map_err(|e| ConfigError::Env {
                var,
                value: text.clone(),
                message: e.to_string(),
            }),
        }
    };
    let poll_interval_ms = number("WICK_POLL_INTERVAL_MS", raw.poll_interval_ms)?;
    if poll_interval_ms == 0 {
        return Err(invalid(
            "server.poll_interval_ms: must be at least 1".to_string(),
        ));
    }
    let compute_threads = number("WICK_COMPUTE_THREADS", raw.compute_threads as u64)? as usize;
    let max_body_bytes = number("WICK_MAX_BODY_BYTES", raw.max_body_bytes as u64)? as usize;
    if max_body_bytes < 1024 {
        return Err(invalid(
            "server.max_body_bytes: must be at least 1024".to_string(),
        ));
    }
    let max_inflight_body_bytes = number(
        "WICK_MAX_INFLIGHT_BODY_BYTES",
        raw.max_inflight_body_bytes as u64,
    )? as usize;
    if max_inflight_body_bytes < max_body_bytes {
        return Err(invalid(format!(
            "server.max_inflight_body_bytes: {max_inflight_body_bytes} is below max_body_bytes ({max_body_bytes}): a body of the largest size could never be admitted"
        )));
    }
    let shutdown_grace_ms = number("WICK_SHUTDOWN_GRACE_MS", raw.shutdown_grace_ms)?;
    let drain_delay_ms = number("WICK_DRAIN_DELAY_MS", raw.drain_delay_ms)?;
    if raw.max_connections == 0 {
        return Err(invalid(
            "server.max_connections: must be at least 1".to_string(),
        ));
    }
    Ok(ServerConfig {
        listen,
        admin_listen,
        repository,
        poll_interval: Duration::from_millis(poll_interval_ms),
        compute_threads,
        limits: HttpLimits {
            max_body_bytes,
            max_inflight_body_bytes,
            decode_threads: raw.decode_threads,
            header_read_timeout: Duration::from_millis(raw.header_read_timeout_ms.max(1)),
            keep_alive_idle: Duration::from_millis(raw.keep_alive_idle_ms.max(1)),
            body_deadline: Duration::from_millis(raw.body_deadline_ms.max(1)),
            max_connections: raw.max_connections,
            max_connections_per_peer: raw.max_connections_per_peer,
        },
        shutdown_grace: Duration::from_millis(shutdown_grace_ms),
        drain_delay: Duration::from_millis(drain_delay_ms),
        strict_readiness: raw.strict_readiness,
        allow_external_symlinks: raw.allow_external_symlinks,
        // Relative to the config file, like the repository.
        state_dir: raw.state_dir.map(|d| base.join(d)),
    })
}

fn parse_addr(text: &str) -> Result<SocketAddr, AddrError> {
    text.parse::<SocketAddr>().map_err(|source| AddrError {
        text: text.to_string(),
        source,
    })
}

/// A listen address that is not `IP:port`.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not an IP:port address ({source})")]
struct AddrError {
    text: String,
    source: std::net::AddrParseError,
}

fn resolve_model(
    index: usize,
    raw: RawModel,
    text: &str,
    registry: &Registry,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<ModelConfig, ConfigError> {
    let here = format!("models[{index}] ({:?})", raw.name);
    validate_model_name(&raw.name).map_err(|m| invalid(format!("{here}: name: {m}")))?;

    let arch_line = line_of(text, raw.architecture.span().start);
    let (arch_config, config_line) = match raw.config {
        Some(spanned) => {
            let line = line_of(text, spanned.span().start);
            (spanned.into_inner(), line)
        }
        None => (toml::Table::new(), arch_line),
    };
    let architecture = registry
        .configure(raw.architecture.get_ref(), &arch_config)
        .map_err(|e| {
            let line = match e {
                arch::ConfigureError::UnknownArchitecture { .. } => arch_line,
                arch::ConfigureError::InvalidConfig { .. } => config_line,
            };
            invalid(format!("{here}, line {line}: {e}"))
        })?;

    let mapping = match raw.load {
        None => KeyMapping::default(),
        Some(load) => KeyMapping::new(load.strip_prefix, load.ignore)
            .map_err(|m| invalid(format!("{here}: load: {m}")))?,
    };

    let version_policy = match raw.version_policy {
        None => VersionPolicy::Latest(1),
        Some(p) => match (p.latest, p.all, p.specific) {
            (Some(0), None, None) => {
                return Err(invalid(format!(
                    "{here}: version_policy.latest must be at least 1"
                )));
            }
            (Some(n), None, None) => VersionPolicy::Latest(n),
            (None, Some(true), None) => VersionPolicy::All,
            (None, None, Some(list)) if !list.is_empty() && !list.contains(&0) => {
                VersionPolicy::Specific(list)
            }
            _ => {
                return Err(invalid(format!(
                    "{here}: version_policy must be exactly one of {{ latest = N }}, \
                     {{ all = true }} or {{ specific = [positive versions] }}"
                )));
            }
        },
    };

    let defaults = BatchingConfig::default();
    let batching = match raw.batching {
        None => defaults,
        Some(b) => {
            let max_batch_size = b.max_batch_size.unwrap_or(defaults.max_batch_size);
            let max_queue_size = b.max_queue_size.unwrap_or(defaults.max_queue_size);
            if max_batch_size == 0 || max_queue_size == 0 {
                return Err(invalid(format!(
                    "{here}: batching.max_batch_size and batching.max_queue_size must be at least 1"
                )));
            }
            let max_request_rows = b.max_request_rows.unwrap_or(defaults.max_request_rows);
            if max_request_rows < max_batch_size {
                return Err(invalid(format!(
                    "{here}: batching.max_request_rows ({max_request_rows}) must be at least max_batch_size ({max_batch_size})"
                )));
            }
            BatchingConfig {
                max_batch_size,
                max_request_rows,
                max_batch_tokens: b.max_batch_tokens.unwrap_or(0),
                max_queue_tokens: b.max_queue_tokens.unwrap_or(0),
                default_priority: b
                    .default_priority
                    .unwrap_or(defaults.default_priority)
                    .max(1),
                max_queue_delay: Duration::from_micros(b.max_queue_delay_us.unwrap_or(0)),
                max_queue_size,
                default_timeout: b
                    .default_timeout_us
                    .filter(|us| *us > 0)
                    .map(Duration::from_micros),
            }
        }
    };

    let golden = match raw.golden {
        None => GoldenTolerance::default(),
        Some(g) => g.resolve().map_err(|m| invalid(format!("{here}: {m}")))?,
    };

    let rollout = raw
        .rollout
        .map(promotion::RawRollout::resolve)
        .transpose()
        .map_err(|m| invalid(format!("{here}: {m}")))?;

    Ok(ModelConfig {
        name: raw.name,
        architecture,
        arch_config,
        mapping,
        version_policy,
        batching,
        golden,
        rollout,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|prefix| prefix.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
