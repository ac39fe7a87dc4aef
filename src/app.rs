//! Wires one server together: metrics, repository, initial load, watcher, listeners, shutdown.
//!
//! [`start`] binds the listeners first (so liveness answers while models load and readiness says
//! 503 until they are ready), loads every model, starts the watcher and returns a [`Server`]
//! handle. [`Server::shutdown`] is the graceful path: readiness turns 503 at once, the listeners
//! stop accepting, in-flight requests finish within the grace period, the engines drain their
//! queues and their threads are joined. `main.rs` and the integration tests both use this.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::arch::Registry;
use crate::config::{Config, ServerConfig};
use crate::engine::cpu::Cpu;
use crate::http::{self, AppState, BodyLimits, Limits, ServeOptions};
use crate::protocol::DecodeLimits;
use crate::repository::watch::{self as watcher, Command, ConfigSource, WatchHandle};
use crate::repository::{Repository, SyncMode};
use crate::telemetry::Metrics;
use crate::telemetry::{self, LogFormat};

/// How many threads do what. `compute` follows the container's CPU limit unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadBudget {
    /// Threads for the math: candle's rayon pool and its elementwise pool.
    pub compute: usize,
    /// tokio workers for HTTP; kept small, the forward passes run on their own threads.
    pub tokio_workers: usize,
}

impl ThreadBudget {
    /// `configured == 0` means: the CPUs this process may use. Rust's `available_parallelism`
    /// honours the cgroup CPU quota and the affinity mask, unlike candle's default, which
    /// counts the host's physical cores (docs/kernels.md, "Threads").
    pub fn resolve(configured: usize) -> ThreadBudget {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let compute = if configured == 0 {
            available
        } else {
            configured
        };
        ThreadBudget {
            compute,
            tokio_workers: available.clamp(1, 4),
        }
    }
}

/// What `start` needs besides the config.
pub struct StartOptions {
    /// Bearer token of the repository API (required when `admin_listen` is set).
    pub admin_token: Option<String>,
    /// Watch the repository (and the config file, if the config came from one).
    pub watch: bool,
    /// `WICK_*` lookups for config reloads.
    pub env: crate::config::EnvLookup,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            admin_token: None,
            watch: true,
            env: Box::new(|_| None),
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The gRPC listener's address, when `grpc_listen` is set.
    pub grpc_addr: Option<SocketAddr>,
    pub state: AppState,
    stop: watch::Sender<bool>,
    drain_delay: std::time::Duration,
    listeners: Vec<JoinHandle<()>>,
    watcher: Option<WatchHandle>,
}

impl Server {
    pub fn repository(&self) -> &Arc<Repository> {
        &self.state.repository
    }

    /// A channel into the watcher (SIGHUP sends `ReloadConfig`).
    pub fn watcher(&self) -> Option<std::sync::mpsc::Sender<Command>> {
        self.watcher.as_ref().map(WatchHandle::sender)
    }

    /// Graceful shutdown; see the module docs.
    pub async fn shutdown(mut self) {
        self.state.draining.store(true, Ordering::Release);
        if !self.drain_delay.is_zero() {
            tracing::info!(
                ms = self.drain_delay.as_millis() as u64,
                "readiness is 503; still accepting during the drain delay"
            );
            tokio::time::sleep(self.drain_delay).await;
        }
        let _ = self.stop.send(true);
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
        let watcher = self.watcher.take();
        let repository = Arc::clone(&self.state.repository);
        // Joining threads blocks: do it off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || {
            drop(watcher);
            repository.shutdown();
        })
        .await;
    }
}

/// Starts a server for `config`.
pub async fn start(config: Config, options: StartOptions) -> anyhow::Result<Server> {
    let metrics = Arc::new(Metrics::new());
    let repository = Arc::new(
        Repository::new(
            &config,
            metrics,
            Cpu::new(ThreadBudget::resolve(config.server.compute_threads).compute),
        )
        .context("cannot start the compute threads")?,
    );
    let server = &config.server;
    let state = AppState::new(
        Arc::clone(&repository),
        front_end_limits(server),
        server.strict_readiness,
    );
    let (stop, stopped) = watch::channel(false);
    let listening = bind(server, &state, options.admin_token.as_deref(), &stopped).await?;

    // Initial load: off the runtime's workers; liveness already answers meanwhile.
    let loader = Arc::clone(&repository);
    tokio::task::spawn_blocking(move || loader.sync_all(SyncMode::Immediate))
        .await
        .context("the initial load panicked")?;

    let watcher = if options.watch {
        Some(start_watcher(&config, options.env, &repository)?)
    } else {
        None
    };

    Ok(Server {
        addr: listening.addr,
        admin_addr: listening.admin_addr,
        grpc_addr: listening.grpc_addr,
        state,
        stop,
        drain_delay: config.server.drain_delay,
        listeners: listening.tasks,
        watcher,
    })
}

/// The HTTP front end's limits from the `[server]` section.
fn front_end_limits(server: &ServerConfig) -> Limits {
    Limits {
        body: BodyLimits {
            max_bytes: server.limits.max_body_bytes,
            deadline: server.limits.body_deadline,
        },
        decode: DecodeLimits::default(),
        max_inflight_body_bytes: server.limits.max_inflight_body_bytes,
        slow_threads: match server.limits.decode_threads {
            0 => ThreadBudget::resolve(server.compute_threads).tokio_workers,
            n => n,
        },
    }
}

/// The bound listeners and the tasks serving them.
struct Listening {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds the inference listener and, if configured, the repository API's (which needs
/// `admin_token`) and the gRPC one, and serves them until `stopped` turns true.
async fn bind(
    server: &ServerConfig,
    state: &AppState,
    admin_token: Option<&str>,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<Listening> {
    let serve_options = ServeOptions {
        header_read_timeout: server.limits.header_read_timeout,
        keep_alive_idle: server.limits.keep_alive_idle,
        max_connections: server.limits.max_connections,
        max_connections_per_peer: server.limits.max_connections_per_peer,
        grace: server.shutdown_grace,
    };
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let listener = tokio::net::TcpListener::bind(server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", server.listen))?;
    let addr = listener.local_addr()?;
    let mut tasks = vec![tokio::spawn(http::serve(
        listener,
        http::router(state.clone()),
        serve_options,
        shutdown(stopped.clone()),
    ))];

    let mut admin_addr = None;
    if let Some(admin) = server.admin_listen {
        let token = admin_token
            .filter(|t| !t.trim().is_empty())
            .context("admin_listen is set but WICK_ADMIN_TOKEN is empty: the repository API needs a bearer token")?;
        let listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} (admin_listen)"))?;
        admin_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(http::serve(
            listener,
            http::admin::router(state.clone(), token),
            serve_options,
            shutdown(stopped.clone()),
        )));
    }
    let mut grpc_addr = None;
    if let Some(grpc) = server.grpc_listen {
        let listener = tokio::net::TcpListener::bind(grpc)
            .await
            .with_context(|| format!("cannot listen on {grpc} (grpc_listen)"))?;
        grpc_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(http::serve(
            listener,
            crate::grpc::router(state.clone()),
            serve_options,
            shutdown(stopped.clone()),
        )));
    }
    Ok(Listening {
        addr,
        admin_addr,
        grpc_addr,
        tasks,
    })
}

/// The watcher of the repository and, when the config came from a file, of that file (its
/// reloads look up `WICK_*` through `env`).
fn start_watcher(
    config: &Config,
    env: crate::config::EnvLookup,
    repository: &Arc<Repository>,
) -> anyhow::Result<WatchHandle> {
    let source = config.source.clone().map(|path| ConfigSource {
        path,
        env,
        running: config.server.clone(),
        identity: config.source_identity,
        registry: Arc::clone(&config.registry),
    });
    Ok(watcher::start(
        Arc::clone(repository),
        config.server.poll_interval,
        source,
    )?)
}

/// One line per served version, for the startup log.
pub fn describe_models(repository: &Repository) -> Vec<String> {
    repository
        .slots()
        .iter()
        .map(|slot| {
            let serving = slot.serving();
            if serving.versions.is_empty() {
                return format!("{}: no ready version", slot.name);
            }
            let versions = serving
                .versions
                .values()
                .map(|v| {
                    format!(
                        "v{} sha256={} ({} bytes)",
                        v.version, v.sha256, v.param_bytes
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{} ({}): {versions}",
                slot.name,
                slot.config().architecture.name()
            )
        })
        .collect()
}

/// A multi-threaded tokio runtime with `workers` workers.
pub fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

/// `wick serve`: starts a server for the config at `config_path` and serves until SIGTERM or
/// SIGINT, then shuts down gracefully; SIGHUP reloads the config. Errors are logged.
pub fn serve_until_signalled(
    config_path: &std::path::Path,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    serve_until_signalled_with(config_path, log_format, Arc::new(Registry::builtin()))
}

/// [`serve_until_signalled`] for a program that adds its own architecture families to wick's
/// (`registry`, see examples/custom_architecture.rs); config reloads resolve with it too.
pub fn serve_until_signalled_with(
    config_path: &std::path::Path,
    log_format: LogFormat,
    registry: Arc<Registry>,
) -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok();
    let config = Config::load_with(config_path, &env, registry);
    let trace = config.as_ref().ok().and_then(|c| c.server.trace.as_ref());
    // Dropped when serving ends, which flushes the spans still buffered.
    let _exporter = match telemetry::init(log_format, trace) {
        Ok(exporter) => exporter,
        Err(e) => {
            telemetry::init_logging(log_format);
            tracing::error!("cannot start the span exporter: {e}");
            anyhow::bail!("cannot start the span exporter: {e}");
        }
    };
    let result = (|| {
        let config = config?;
        let budget = ThreadBudget::resolve(config.server.compute_threads);
        // candle and rayon size their thread pools from these variables the first time they
        // compute; set them while this process is still single-threaded (no runtime yet).
        std::env::set_var("RAYON_NUM_THREADS", budget.compute.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", budget.compute.to_string());
        runtime(budget.tokio_workers)
            .context("cannot start the runtime")?
            .block_on(serve_config(config, budget))
    })();
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}

async fn serve_config(config: Config, budget: ThreadBudget) -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok();
    let options = StartOptions {
        admin_token: env("WICK_ADMIN_TOKEN"),
        watch: true,
        env: Box::new(env),
    };
    let server = start(config, options).await?;
    tracing::info!(
        listen = %server.addr,
        admin = ?server.admin_addr,
        grpc = ?server.grpc_addr,
        compute_threads = budget.compute,
        tokio_workers = budget.tokio_workers,
        "wick {} serving", env!("CARGO_PKG_VERSION")
    );
    for line in describe_models(server.repository()) {
        tracing::info!("model {line}");
    }
    wait_for_signals(&server).await?;
    tracing::info!("shutting down: readiness is now 503; finishing in-flight requests");
    server.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn wait_for_signals(server: &Server) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                if let Some(tx) = server.watcher() {
                    let _ = tx.send(Command::ReloadConfig);
                }
            }
        }
    }
}
