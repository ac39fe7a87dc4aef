//! Serving a loaded model: the per-model queue, admission, the batching policy, the compute
//! thread, deadlines, cancellation and replies.
//!
//! Each configured model has one [`Engine`]: a bounded queue that handlers submit prepared
//! requests to (a full queue refuses at once), and one dedicated OS thread that takes batches
//! chosen by the pure [`policy`], runs the forward pass, and answers each request over its own
//! oneshot channel. Forward passes never run on tokio's workers. A request is bound to the model
//! version it was admitted with, so a version swap never changes the weights under a queued
//! request, and batches never mix versions. Requests whose client went away or whose timeout
//! passed are dropped before compute; a batch that fails is retried request by request so one
//! bad request cannot fail its batch-mates.

pub mod cpu;
pub mod policy;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::BatchingConfig;
use crate::model::{HostTensor, Model, Notes, Prepared, Signature};
use crate::telemetry::ModelMetrics;

/// A model version with its weights in memory, ready to serve. Shared by `Arc`: the registry
/// holds one, every queued request holds one, so the weights live until the last user is done.
pub struct LoadedVersion {
    pub model_name: String,
    pub version: u64,
    /// Hex sha256 of the weights file, as `sha256sum` prints it.
    pub sha256: String,
    /// Bytes held by the weights in memory.
    pub param_bytes: u64,
    pub signature: Signature,
    pub model: Box<dyn Model>,
}

impl std::fmt::Debug for LoadedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedVersion")
            .field("model_name", &self.model_name)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// What a request gets back.
#[derive(Debug)]
pub struct Outputs {
    /// Aligned with the signature's outputs.
    pub tensors: Vec<HostTensor>,
    pub notes: Notes,
}

impl Outputs {
    /// The outputs of a request that was split into consecutive parts, joined back in order:
    /// tensors along their rows, per-row notes (JSON arrays) one after the other; other notes
    /// keep the first part's value.
    pub fn concat(parts: Vec<Outputs>) -> Result<Outputs, ComputeError> {
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            return Err(ComputeError::WrongOutputs {
                results: 0,
                requests: 1,
                outputs: 0,
            });
        };
        let mut columns: Vec<Vec<HostTensor>> =
            first.tensors.into_iter().map(|t| vec![t]).collect();
        let mut notes = first.notes;
        for part in parts {
            if part.tensors.len() != columns.len() {
                return Err(ComputeError::WrongOutputs {
                    results: part.tensors.len(),
                    requests: 1,
                    outputs: columns.len(),
                });
            }
            for (column, tensor) in columns.iter_mut().zip(part.tensors) {
                column.push(tensor);
            }
            for (key, value) in part.notes {
                if let (Some(serde_json::Value::Array(all)), serde_json::Value::Array(more)) =
                    (notes.get_mut(&key), value)
                {
                    all.extend(more);
                }
            }
        }
        let tensors = columns
            .into_iter()
            .map(|column| {
                HostTensor::concat_rows(column).ok_or(ComputeError::Failed {
                    message: "the parts of a split request returned outputs of different shapes"
                        .to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Outputs { tensors, notes })
    }
}

/// Why a request was not answered with outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("model {model:?} has {limit} requests queued, its max_queue_size; retry later")]
    QueueFull { model: String, limit: usize },
    #[error("the request has {rows} rows; model {model:?} takes at most {max} per request (max_request_rows)")]
    TooManyRows {
        model: String,
        rows: usize,
        max: usize,
    },
    #[error("model {model:?} has {queued} tokens queued; {tokens} more would pass its max_queue_tokens of {limit}; retry later")]
    QueueTokensFull {
        model: String,
        queued: usize,
        tokens: usize,
        limit: usize,
    },
    #[error("the request waited {waited_us} µs in the queue, past its timeout of {timeout_us} µs")]
    Timeout { waited_us: u128, timeout_us: u128 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("inference failed: {0}")]
    Compute(ComputeError),
}

/// Why a forward pass produced no outputs: a failure of the model, never of the request (those
/// are refused by `Model::prepare` before queueing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    /// The model returned an error (candle's message).
    #[error("{message}")]
    Failed { message: String },
    #[error("the model panicked: {message}")]
    Panicked { message: String },
    #[error("the model returned {results} results for {requests} requests (each must have {outputs} outputs)")]
    WrongOutputs {
        results: usize,
        requests: usize,
        outputs: usize,
    },
}

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Who decides a queued request's fate: the compute thread (it starts the request) or the
/// waiting handler (its deadline passed first). Exactly one of them wins.
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

impl Ticket {
    /// Called by the compute thread when it takes the request into a batch.
    fn start(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called by the handler when the request's deadline passes: true if the request had not
    /// started and never will; false if it is being computed (then wait for the answer).
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn is_abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) == ABANDONED
    }
}

/// One admitted request.
pub struct Job {
    pub version: Arc<LoadedVersion>,
    pub prepared: Prepared,
    pub reply: oneshot::Sender<Result<Outputs, EngineError>>,
    pub enqueued: Instant,
    /// Drop the request (with a timeout error) if it has not started by then.
    pub deadline: Option<Instant>,
    /// Triton's priority: lower runs first; `None` takes the model's default.
    pub priority: Option<u64>,
    ticket: Ticket,
    arrived_idle: bool,
    /// What the request costs a forward pass (`Model::cost`).
    tokens: usize,
    /// The request's span (src/telemetry/trace.rs; disabled unless spans are exported) and
    /// its `queue` stage, which ends when the request's batch starts.
    span: tracing::Span,
    queue: tracing::Span,
}

impl Job {
    pub fn new(
        version: Arc<LoadedVersion>,
        prepared: Prepared,
        reply: oneshot::Sender<Result<Outputs, EngineError>>,
        timeout: Option<Duration>,
    ) -> Job {
        let enqueued = Instant::now();
        let tokens = version.model.cost(&prepared);
        Job {
            version,
            prepared,
            reply,
            enqueued,
            deadline: timeout.map(|t| enqueued + t),
            priority: None,
            ticket: Ticket::default(),
            arrived_idle: false,
            tokens,
            span: tracing::Span::none(),
            queue: tracing::Span::none(),
        }
    }

    /// Traces the request's time in the queue and in its batch under `span`.
    pub fn with_span(mut self, span: tracing::Span) -> Job {
        self.queue = crate::stage_span!(&span, "queue");
        self.span = span;
        self
    }

    /// Ends the request's `queue` stage and opens its `compute` stage, in a batch of
    /// `requests` requests and `rows` rows.
    fn start_compute(&mut self, requests: usize, rows: usize) -> tracing::Span {
        self.queue = tracing::Span::none();
        crate::stage_span!(
            &self.span,
            "compute",
            batch_requests = requests,
            batch_rows = rows
        )
    }

    pub fn with_priority(mut self, priority: Option<u64>) -> Job {
        self.priority = priority;
        self
    }

    /// The handle the waiting handler keeps to give up on the request at its deadline.
    pub fn ticket(&self) -> Ticket {
        self.ticket.clone()
    }
}

struct State {
    /// In queue order: priority (lower first), then arrival.
    jobs: VecDeque<Job>,
    /// Requests admitted by a front end and not yet queued (being read, decoded, tokenised).
    incoming: usize,
    /// Tokens of the queued requests (`max_queue_tokens`).
    queued_tokens: usize,
    /// A batch is being computed.
    busy: bool,
    /// The compute thread is blocked on the condition variable: only then does a submit need
    /// to wake it (a futex syscall per request otherwise).
    sleeping: bool,
    closing: bool,
    config: BatchingConfig,
}

struct Inner {
    name: String,
    state: Mutex<State>,
    wake: Condvar,
    metrics: ModelMetrics,
    cpu: Arc<cpu::Cpu>,
    pools: cpu::Pools,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-updated in a way that
        // matters (every mutation is a single push/drain), so recover the guard.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The queue and compute thread of one model.
pub struct Engine {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.inner.name)
            .finish()
    }
}

impl Engine {
    /// Starts the compute thread of model `name`, whose forward passes share `cpu` with every
    /// other model's.
    pub fn start(
        name: &str,
        config: BatchingConfig,
        metrics: ModelMetrics,
        cpu: Arc<cpu::Cpu>,
    ) -> std::io::Result<Engine> {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(config.max_queue_size.min(4096)),
                incoming: 0,
                queued_tokens: 0,
                busy: false,
                sleeping: false,
                closing: false,
                config,
            }),
            wake: Condvar::new(),
            metrics,
            cpu,
            pools: cpu::Pools::new(name),
        });
        let worker_inner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name(format!("wick-compute-{name}"))
            .spawn(move || worker::run(&worker_inner))?;
        Ok(Engine {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn config(&self) -> BatchingConfig {
        self.inner.lock().config
    }

    /// Applies new batching settings (config reload); queued requests stay queued.
    pub fn set_config(&self, config: BatchingConfig) {
        self.inner.lock().config = config;
        self.inner.wake.notify_one();
    }

    /// Whether a new request would be refused for a full queue (checked before decoding a body).
    pub fn is_full(&self) -> bool {
        let state = self.inner.lock();
        state.jobs.len() >= state.config.max_queue_size
    }

    pub fn queue_len(&self) -> usize {
        self.inner.lock().jobs.len()
    }

    /// Announces a request on its way to the queue (its body being read or decoded): until the
    /// returned guard is submitted or dropped, the batching policy knows a batch-mate may come.
    pub fn incoming(&self) -> Incoming {
        self.inner.lock().incoming += 1;
        Incoming {
            inner: Some(Arc::clone(&self.inner)),
        }
    }

    /// Admits a request or refuses it at once. Never blocks on compute. `incoming` is the
    /// request's announcement, if it made one.
    pub fn submit(&self, mut job: Job, incoming: Option<Incoming>) -> Result<(), EngineError> {
        let mut state = self.inner.lock();
        if let Some(mut incoming) = incoming {
            // Counted off under the same lock as the push, so the policy never sees the
            // request twice or not at all.
            incoming.inner = None;
            state.incoming = state.incoming.saturating_sub(1);
        }
        let wake = state.sleeping;
        let result = self.admit(&mut state, &mut job);
        if let Err(e) = result {
            drop(state);
            if wake {
                self.inner.wake.notify_one();
            }
            return Err(e);
        }
        job.arrived_idle = !state.busy && state.jobs.is_empty();
        let priority = job.priority.unwrap_or(state.config.default_priority);
        job.priority = Some(priority);
        state.queued_tokens += job.tokens;
        // After every queued request of the same or a higher priority (lower number).
        let at = state
            .jobs
            .iter()
            .rposition(|queued| queued.priority.unwrap_or(u64::MAX) <= priority)
            .map_or(0, |i| i + 1);
        state.jobs.insert(at, job);
        self.inner.metrics.set_queue_depth(state.jobs.len());
        drop(state);
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// The checks of [`Engine::submit`].
    fn admit(&self, state: &mut State, job: &mut Job) -> Result<(), EngineError> {
        if state.closing {
            return Err(EngineError::ShuttingDown);
        }
        if job.prepared.rows > state.config.max_batch_size {
            return Err(EngineError::TooManyRows {
                model: self.inner.name.clone(),
                rows: job.prepared.rows,
                max: state.config.max_batch_size,
            });
        }
        if state.jobs.len() >= state.config.max_queue_size {
            return Err(EngineError::QueueFull {
                model: self.inner.name.clone(),
                limit: state.config.max_queue_size,
            });
        }
        let limit = state.config.max_queue_tokens;
        if limit > 0 && !state.jobs.is_empty() && state.queued_tokens + job.tokens > limit {
            return Err(EngineError::QueueTokensFull {
                model: self.inner.name.clone(),
                queued: state.queued_tokens,
                tokens: job.tokens,
                limit,
            });
        }
        Ok(())
    }

    /// Stops admitting, lets the thread finish every queued request, and joins it.
    pub fn shutdown(&self) {
        self.inner.lock().closing = true;
        self.inner.wake.notify_all();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // The worker catches model panics itself; a join error means a bug in the worker
            // loop, and the process is shutting this engine down anyway.
            if handle.join().is_err() {
                tracing::error!(model = %self.inner.name, "compute thread ended with a panic");
            }
        }
    }
}

/// A request on its way to a model's queue (see [`Engine::incoming`]). Dropping it without
/// submitting (the body was refused) tells the policy not to wait for it.
#[derive(Debug)]
pub struct Incoming {
    inner: Option<Arc<Inner>>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let mut state = inner.lock();
            state.incoming = state.incoming.saturating_sub(1);
            let wake = state.sleeping;
            drop(state);
            if wake {
                inner.wake.notify_one();
            }
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("name", &self.name).finish()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
