//! The `[server]` section: its file form with the defaults, and its resolution into a
//! [`ServerConfig`] with the `WICK_*` environment overrides of [`super::ENV_OVERRIDES`] applied.
//! The environment wins over the file so one image can be configured per container.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, HttpLimits, ServerConfig};
use crate::telemetry::trace::{self, TraceConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: String,
    admin_listen: Option<String>,
    #[serde(default)]
    grpc_listen: Option<String>,
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
    #[serde(default)]
    otlp_endpoint: Option<String>,
    #[serde(default = "default_trace_sample_ratio")]
    trace_sample_ratio: f64,
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
fn default_trace_sample_ratio() -> f64 {
    1.0
}

/// The `[server]` section with the environment overrides applied, validated.
pub(super) fn resolve_server(
    raw: RawServer,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<ServerConfig, ConfigError> {
    let env = Overrides(env);
    let (listen, admin_listen) = resolve_listeners(&raw, env, invalid)?;
    let grpc_listen = optional_listener(
        env.get("WICK_GRPC_LISTEN").or(raw.grpc_listen.clone()),
        "grpc_listen",
        invalid,
    )?;
    let repository = resolve_repository(&raw, base, env);
    let poll_interval_ms = env.number("WICK_POLL_INTERVAL_MS", raw.poll_interval_ms)?;
    if poll_interval_ms == 0 {
        return Err(invalid(
            "server.poll_interval_ms: must be at least 1".to_string(),
        ));
    }
    let compute_threads = env.number("WICK_COMPUTE_THREADS", raw.compute_threads as u64)? as usize;
    let limits = resolve_limits(&raw, env, invalid)?;
    let shutdown_grace_ms = env.number("WICK_SHUTDOWN_GRACE_MS", raw.shutdown_grace_ms)?;
    let drain_delay_ms = env.number("WICK_DRAIN_DELAY_MS", raw.drain_delay_ms)?;
    let trace = resolve_trace(&raw, env, invalid)?;
    Ok(ServerConfig {
        listen,
        admin_listen,
        grpc_listen,
        repository,
        poll_interval: Duration::from_millis(poll_interval_ms),
        compute_threads,
        limits,
        shutdown_grace: Duration::from_millis(shutdown_grace_ms),
        drain_delay: Duration::from_millis(drain_delay_ms),
        strict_readiness: raw.strict_readiness,
        allow_external_symlinks: raw.allow_external_symlinks,
        // Relative to the config file, like the repository.
        state_dir: raw.state_dir.map(|d| base.join(d)),
        trace,
    })
}

/// Request tracing: on when an OTLP collector is named (`WICK_OTLP_ENDPOINT` wins; `off`
/// disables).
fn resolve_trace(
    raw: &RawServer,
    env: Overrides,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<Option<TraceConfig>, ConfigError> {
    let endpoint = match env.get("WICK_OTLP_ENDPOINT").or(raw.otlp_endpoint.clone()) {
        Some(text) if text == "off" => return Ok(None),
        Some(text) => {
            trace::traces_url(&text).map_err(|m| invalid(format!("server.otlp_endpoint: {m}")))?
        }
        None => return Ok(None),
    };
    if !(0.0..=1.0).contains(&raw.trace_sample_ratio) {
        return Err(invalid(
            "server.trace_sample_ratio: must be between 0 and 1".to_string(),
        ));
    }
    Ok(Some(TraceConfig {
        endpoint,
        sample_ratio: raw.trace_sample_ratio,
    }))
}

/// The `WICK_*` lookup; a variable that is set wins over the file.
#[derive(Clone, Copy)]
struct Overrides<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Overrides<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
    }

    /// `var` as a number if it is set (an error names it if it is not one), else `value`.
    fn number(&self, var: &'static str, value: u64) -> Result<u64, ConfigError> {
        match self.get(var) {
            None => Ok(value),
            Some(text) => text.trim().parse::<u64>().map_err(|e| ConfigError::Env {
                var,
                value: text.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// The inference listener and the optional repository-API listener (`"off"` or empty: none).
fn resolve_listeners(
    raw: &RawServer,
    env: Overrides<'_>,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<(SocketAddr, Option<SocketAddr>), ConfigError> {
    let listen_text = env.get("WICK_LISTEN").unwrap_or_else(|| raw.listen.clone());
    let listen = parse_addr(&listen_text).map_err(|m| invalid(format!("server.listen: {m}")))?;
    let admin_listen = optional_listener(
        env.get("WICK_ADMIN_LISTEN").or(raw.admin_listen.clone()),
        "admin_listen",
        invalid,
    )?;
    Ok((listen, admin_listen))
}

/// An optional listener's address (`"off"` or empty: none); `key` names it in errors.
fn optional_listener(
    text: Option<String>,
    key: &str,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<Option<SocketAddr>, ConfigError> {
    match text {
        None => Ok(None),
        Some(text) if text == "off" || text.is_empty() => Ok(None),
        Some(text) => parse_addr(&text)
            .map(Some)
            .map_err(|m| invalid(format!("server.{key}: {m}"))),
    }
}

/// The repository folder; a relative path is taken from the config file's folder (`base`).
fn resolve_repository(raw: &RawServer, base: &Path, env: Overrides<'_>) -> PathBuf {
    let repository = env
        .get("WICK_REPOSITORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| raw.repository.clone());
    if repository.is_absolute() {
        repository
    } else {
        base.join(repository)
    }
}

/// The HTTP front end's limits. A zero timeout becomes 1 ms rather than "no limit".
fn resolve_limits(
    raw: &RawServer,
    env: Overrides<'_>,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<HttpLimits, ConfigError> {
    let max_body_bytes = env.number("WICK_MAX_BODY_BYTES", raw.max_body_bytes as u64)? as usize;
    if max_body_bytes < 1024 {
        return Err(invalid(
            "server.max_body_bytes: must be at least 1024".to_string(),
        ));
    }
    let max_inflight_body_bytes = env.number(
        "WICK_MAX_INFLIGHT_BODY_BYTES",
        raw.max_inflight_body_bytes as u64,
    )? as usize;
    if max_inflight_body_bytes < max_body_bytes {
        return Err(invalid(format!(
            "server.max_inflight_body_bytes: {max_inflight_body_bytes} is below max_body_bytes ({max_body_bytes}): a body of the largest size could never be admitted"
        )));
    }
    if raw.max_connections == 0 {
        return Err(invalid(
            "server.max_connections: must be at least 1".to_string(),
        ));
    }
    Ok(HttpLimits {
        max_body_bytes,
        max_inflight_body_bytes,
        decode_threads: raw.decode_threads,
        header_read_timeout: Duration::from_millis(raw.header_read_timeout_ms.max(1)),
        keep_alive_idle: Duration::from_millis(raw.keep_alive_idle_ms.max(1)),
        body_deadline: Duration::from_millis(raw.body_deadline_ms.max(1)),
        max_connections: raw.max_connections,
        max_connections_per_peer: raw.max_connections_per_peer,
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
