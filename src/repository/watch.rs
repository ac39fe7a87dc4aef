//! The watcher: notices new, changed and deleted versions (and config changes) and syncs.
//!
//! inotify (through `notify`) on the whole repository tree is only a fast trigger; the truth is
//! always a fresh scan. A periodic scan every `poll_interval` is the fallback for file systems
//! where inotify is silent (NFS, some FUSE mounts) or when inotify cannot be set up. Bursts of
//! events are debounced into one scan; access events (including our own reads of a checkpoint)
//! are ignored. After a scan that saw a file still changing, a follow-up scan comes shortly after,
//! so a version renamed into place is served within a few hundred milliseconds.
//!
//! The watcher runs on its own thread: loading a version takes the time it takes without ever
//! blocking a request. Config reloads (file change or SIGHUP) come through the same thread so
//! that they never race with a sync.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::Config;
use crate::state_dict::FileIdentity;

use super::{Repository, SyncMode};

/// Quiet time after an event before scanning (bursts of events become one scan).
const DEBOUNCE: Duration = Duration::from_millis(40);
/// Delay of the second look at a file that was still changing.
const SETTLE: Duration = Duration::from_millis(150);

/// Messages to the watcher thread.
#[derive(Debug)]
pub enum Command {
    /// Something changed on disk (or may have).
    Changed,
    /// Re-read the config file now (SIGHUP).
    ReloadConfig,
    Stop,
}

/// Where config reloads come from and how they are applied.
pub struct ConfigSource {
    pub path: PathBuf,
    /// Reads `WICK_*` overrides (the process environment in production).
    pub env: crate::config::EnvLookup,
    /// The server section currently running (changes there need a restart).
    pub running: crate::config::ServerConfig,
    /// The identity of the config file last read (applied or refused).
    pub identity: Option<FileIdentity>,
    /// The architecture families the running config was resolved with.
    pub registry: std::sync::Arc<crate::arch::Registry>,
}

/// A running watcher; dropping it stops the thread.
pub struct WatchHandle {
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// A sender for SIGHUP handlers and tests.
    pub fn sender(&self) -> Sender<Command> {
        self.tx.clone()
    }

    pub fn stop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts watching `repository` (and the config file, if given).
pub fn start(
    repository: Arc<Repository>,
    poll_interval: Duration,
    config: Option<ConfigSource>,
) -> std::io::Result<WatchHandle> {
    let (tx, rx) = mpsc::channel();
    let event_tx = tx.clone();
    let thread = std::thread::Builder::new()
        .name("wick-watch".to_string())
        .spawn(move || {
            let _watcher = inotify_watcher(&repository, config.as_ref(), event_tx);
            run(&repository, poll_interval, config, &rx);
        })?;
    Ok(WatchHandle {
        tx,
        thread: Some(thread),
    })
}

/// Sets up inotify on the repository tree and the config file's folder. `None` (logged) when
/// the platform refuses (e.g. `max_user_instances` exhausted): polling still works.
fn inotify_watcher(
    repository: &Repository,
    config: Option<&ConfigSource>,
    tx: Sender<Command>,
) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => !matches!(
                event.kind,
                EventKind::Access(notify::event::AccessKind::Open(_))
                    | EventKind::Access(notify::event::AccessKind::Read)
                    | EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Read
                    ))
            ),
            // Errors include queue overflows: rescan to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(Command::Changed);
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot use inotify; falling back to polling only");
            return None;
        }
    };
    if let Err(e) = watcher.watch(repository.root(), RecursiveMode::Recursive) {
        tracing::warn!(error = %e, path = %repository.root().display(),
            "cannot watch the repository with inotify; polling only");
    }
    if let Some(parent) = config.and_then(|c| c.path.parent()) {
        let parent = if parent.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            parent
        };
        if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, "cannot watch the config file's folder; SIGHUP and polling still reload it");
        }
    }
    Some(watcher)
}

fn run(
    repository: &Arc<Repository>,
    poll_interval: Duration,
    config: Option<ConfigSource>,
    rx: &mpsc::Receiver<Command>,
) {
    let mut config = config;
    let mut next_poll = Instant::now() + poll_interval;
    let mut due: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = due.map_or(next_poll, |d| d.min(next_poll));
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Command::Changed) => {
                let at = Instant::now() + DEBOUNCE;
                due = Some(due.map_or(at, |d| d.min(at)));
            }
            Ok(Command::ReloadConfig) => {
                if let Some(source) = config.as_mut() {
                    reload_config(repository, source);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Decide from the clock, not from why we woke: a steady stream of events must not
        // postpone the scan forever.
        let now = Instant::now();
        if due.is_none_or(|d| now < d) && now < next_poll {
            continue;
        }
        due = None;
        if now >= next_poll {
            next_poll = now + poll_interval;
        }

        // A panic in a scan (a bug, in wick or in an architecture's code) must not stop hot
        // reload for good: it is logged and counted, and the next scan runs as usual.
        let scan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scan_once(repository, config.as_mut())
        }));
        match scan {
            Ok(true) => due = Some(Instant::now() + SETTLE),
            Ok(false) => {}
            Err(panic) => {
                tracing::error!(panic = %crate::telemetry::panic_message(panic.as_ref()),
                    "a repository scan panicked; the watcher keeps running");
                repository.metrics().panicked("watcher");
            }
        }
    }
}

/// One scan: the config file, then every model. Returns whether another scan is due soon
/// (files still settling, retired versions still in use).
fn scan_once(repository: &Repository, config: Option<&mut ConfigSource>) -> bool {
    if let Some(source) = config {
        let identity = FileIdentity::stat(&source.path).ok();
        if identity.is_some() && identity != source.identity {
            reload_config(repository, source);
        }
    }
    let mut waiting = false;
    for slot in repository.slots() {
        let outcome = repository.sync_model(&slot, SyncMode::RequireStable);
        if !outcome.loaded.is_empty() || !outcome.failed.is_empty() || !outcome.unloaded.is_empty()
        {
            tracing::info!(model = %slot.name, loaded = ?outcome.loaded,
                failed = outcome.failed.len(), unloaded = ?outcome.unloaded, "repository change applied");
        }
        repository.tick_rollout(&slot);
        waiting |= slot.has_pending();
    }
    repository.reap();
    waiting || repository.retired_len() > 0
}

/// Re-reads the config file; applies it only if it is valid as a whole.
/// The file's identity is recorded first, so an invalid file is reported once, not at every
/// scan, and retried only when it changes again.
fn reload_config(repository: &Repository, source: &mut ConfigSource) {
    source.identity = FileIdentity::stat(&source.path).ok();
    let new = match Config::load_with(&source.path, &*source.env, source.registry.clone()) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "the changed config is invalid; the running config stays in effect");
            repository.metrics().config_reload(false);
            return;
        }
    };
    source.identity = new.source_identity;
    if new.server != source.running {
        tracing::warn!(
            "[server] settings changed; they take effect after a restart (models are reloaded now)"
        );
    }
    match repository.reconfigure(&new) {
        Ok(changes) => {
            repository.metrics().config_reload(true);
            if changes.is_empty() {
                tracing::info!("config reloaded; no model changed");
            }
            for change in changes {
                tracing::info!(%change, "config reloaded");
            }
        }
        Err(e) => {
            repository.metrics().config_reload(false);
            tracing::error!(error = %e, "applying the new config failed");
        }
    }
}
