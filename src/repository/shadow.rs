//! Shadow mode: the candidate computes on a sampled copy of live requests while clients get
//! the stable version's answer, and its outputs are compared with the stable version's.
//!
//! The request path only decides whether a request is sampled (the same hash of the request id
//! as a canary, [`super::rollout::routes_to_candidate`]), keeps a copy of its decoded inputs
//! and, once the stable answer is encoded, offers inputs and answer to a bounded queue with
//! `try_send`: a full queue drops the sample (counted), so the request never waits for the
//! shadow. One thread per shadow rollout takes the samples, prepares them with the candidate's
//! own model (its tokenizer, not the stable one's), submits them to the model's engine at the
//! lowest priority (behind every client request) and only while the model's queue is less than
//! half full, and compares the outputs with [`super::golden::compare`], accumulated by
//! [`super::rollout::Tally`]. The rollout decision ([`super::rollout::decide`]) then judges the
//! comparison by the model's golden tolerances; src/repository/canary.rs applies it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::engine::{EngineError, Job, LoadedVersion, Outputs};
use crate::model::{common_request_rows, cut_request, ElemKind, HostTensor};
use crate::telemetry::rollout::ShadowFigures;
use crate::telemetry::Metrics;

use super::golden::{self, OutputComparison};
use super::rollout::{self, Agreement, Tally, Window};
use super::{lock, ModelSlot};

/// Samples waiting for the shadow thread at most; one more is dropped.
const QUEUE: usize = 32;

/// Shadow work runs behind every client request (lower numbers run first).
const SHADOW_PRIORITY: u64 = u64::MAX;

/// One sampled request: what the candidate computes on, and what the stable version answered.
pub struct Sample {
    pub slot: Arc<ModelSlot>,
    pub candidate: Arc<LoadedVersion>,
    /// The decoded inputs, aligned with the signature's inputs.
    pub inputs: Vec<Option<HostTensor>>,
    /// The stable version's outputs, aligned with the signature's outputs.
    pub stable: Vec<HostTensor>,
}

/// What the request path and the shadow thread share.
#[derive(Debug)]
struct Shared {
    model: String,
    candidate: u64,
    stable: u64,
    tally: Mutex<Tally>,
    /// Samples the candidate was given, and those it refused or failed.
    requests: AtomicU64,
    errors: AtomicU64,
    /// Numbers requests without an id, so they are sampled by the same rule.
    anonymous: AtomicU64,
    /// The rollout ended: samples still queued are dropped unread.
    ended: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn count(&self, outcome: &'static str) {
        self.metrics
            .shadow_sample(&self.model, self.candidate, self.stable, outcome);
    }
}

/// The shadow as requests see it (published with the served versions).
#[derive(Debug, Clone)]
pub struct ShadowTap {
    pub candidate: u64,
    pub stable: u64,
    pub percent: f64,
    tx: SyncSender<Sample>,
    shared: Arc<Shared>,
}

impl ShadowTap {
    /// Whether the request with `id` (or, without one, the next number) is copied to the
    /// candidate.
    pub fn samples(&self, id: Option<&[u8]>) -> bool {
        match id {
            Some(id) => rollout::routes_to_candidate(id, self.percent),
            None => {
                let n = self.shared.anonymous.fetch_add(1, Ordering::Relaxed);
                rollout::routes_to_candidate(&n.to_le_bytes(), self.percent)
            }
        }
    }

    /// Hands a sample to the shadow thread without waiting: a full queue drops it (counted).
    pub fn offer(&self, sample: Sample) {
        match self.tx.try_send(sample) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.count("dropped")
            }
        }
    }
}

/// The shadow of a running rollout: owns the thread's lifetime (the thread ends once every
/// [`ShadowTap`] is gone and drops what is still queued once this is dropped).
#[derive(Debug)]
pub(crate) struct Shadow {
    tap: ShadowTap,
}

impl Shadow {
    /// Starts the shadow thread of `model`'s candidate. If the thread cannot start, every
    /// sample is dropped (and counted): the rollout then never has evidence to promote.
    pub fn start(
        model: &str,
        candidate: u64,
        stable: u64,
        percent: f64,
        metrics: Arc<Metrics>,
    ) -> Shadow {
        let (tx, rx) = sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            model: model.to_string(),
            candidate,
            stable,
            tally: Mutex::new(Tally::default()),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            anonymous: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            metrics,
        });
        let worker = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("wick-shadow-{model}"))
            .spawn(move || run(&worker, &rx));
        if let Err(e) = spawned {
            tracing::error!(model, error = %e, "cannot start the shadow thread; every sample will be dropped");
        }
        Shadow {
            tap: ShadowTap {
                candidate,
                stable,
                percent,
                tx,
                shared,
            },
        }
    }

    pub fn tap(&self) -> ShadowTap {
        self.tap.clone()
    }

    /// The comparison so far.
    pub fn agreement(&self) -> Agreement {
        lock(&self.tap.shared.tally).agreement()
    }

    /// The candidate's shadow requests and failures (no latency: shadow work waits behind
    /// client requests on purpose, so its latency says nothing about the candidate).
    pub fn window(&self) -> Window {
        Window {
            requests: self.tap.shared.requests.load(Ordering::Relaxed),
            errors: self.tap.shared.errors.load(Ordering::Relaxed),
            p99: None,
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.tap.shared.ended.store(true, Ordering::Release);
    }
}

/// What became of one sample.
enum Outcome {
    Compared(Vec<OutputComparison>),
    /// The candidate refused the inputs or its forward pass failed.
    Failed(String),
    /// The model's queue was too full to add shadow work.
    Busy,
    /// The engine is shutting down.
    Dropped,
}

fn run(shared: &Shared, rx: &Receiver<Sample>) {
    while let Ok(sample) = rx.recv() {
        if shared.ended.load(Ordering::Acquire) {
            continue;
        }
        // A panic in a model's prepare or in the comparison fails this sample, not the thread.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process(sample)))
            .unwrap_or_else(|panic| {
                shared.metrics.panicked("shadow");
                Outcome::Failed(crate::telemetry::panic_message(panic.as_ref()))
            });
        record(shared, outcome);
    }
}

fn record(shared: &Shared, outcome: Outcome) {
    match outcome {
        Outcome::Compared(outputs) => {
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let agreement = {
                let mut tally = lock(&shared.tally);
                tally.add(&outputs);
                tally.agreement()
            };
            shared.metrics.set_shadow_figures(
                &shared.model,
                shared.candidate,
                shared.stable,
                ShadowFigures {
                    max_abs_diff: agreement.max_abs_diff,
                    min_cosine: agreement.min_cosine,
                    argmax_agreement: agreement.argmax_agreement,
                },
            );
            shared.count("compared");
        }
        Outcome::Failed(why) => {
            shared.requests.fetch_add(1, Ordering::Relaxed);
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(model = %shared.model, version = shared.candidate, error = %why,
                "the candidate failed a shadow sample");
            shared.count("failed");
        }
        Outcome::Busy => shared.count("busy"),
        Outcome::Dropped => shared.count("dropped"),
    }
}

/// Runs one sample through the candidate and compares its outputs with the stable answer.
fn process(sample: Sample) -> Outcome {
    let Sample {
        slot,
        candidate,
        inputs,
        stable,
    } = sample;
    let config = slot.engine.config();
    // Never take the queue slots clients need: shadow work only enters a queue less than half
    // full (an empty one when it holds a single request).
    if slot.engine.queue_len() >= (config.max_queue_size / 2).max(1) {
        return Outcome::Busy;
    }
    let mut answers = Vec::new();
    for part in split(inputs, config.max_batch_size) {
        let prepared = match candidate.model.prepare(part) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(format!("the candidate refused the inputs: {e}")),
        };
        let (tx, rx) = oneshot::channel();
        // No deadline: an expired job would be counted as a client's timeout. The thread waits
        // for each answer before the next sample, so at most one shadow request is queued.
        let job = Job::new(Arc::clone(&candidate), prepared, tx, None)
            .with_priority(Some(SHADOW_PRIORITY));
        match slot.engine.submit(job, None) {
            Ok(()) => {}
            Err(EngineError::QueueFull { .. } | EngineError::QueueTokensFull { .. }) => {
                return Outcome::Busy
            }
            Err(EngineError::ShuttingDown) => return Outcome::Dropped,
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        match rx.blocking_recv() {
            Ok(Ok(outputs)) => answers.push(outputs),
            Ok(Err(EngineError::ShuttingDown)) | Err(_) => return Outcome::Dropped,
            Ok(Err(e)) => return Outcome::Failed(e.to_string()),
        }
    }
    let produced = match answers.len() {
        1 => answers.pop(),
        _ => Outputs::concat(answers).ok(),
    };
    let Some(produced) = produced else {
        return Outcome::Failed(
            "the parts of the sample returned outputs of different shapes".to_string(),
        );
    };
    Outcome::Compared(compare_outputs(&candidate, &stable, &produced.tensors))
}

/// Compares every numeric output (BYTES outputs, labels, cannot be compared numerically; their
/// logits are). An output the candidate did not produce compares as a shape mismatch.
fn compare_outputs(
    candidate: &LoadedVersion,
    stable: &[HostTensor],
    produced: &[HostTensor],
) -> Vec<OutputComparison> {
    let missing = HostTensor {
        shape: Vec::new(),
        data: crate::model::HostData::F32(Vec::new()),
    };
    candidate
        .signature
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, spec)| spec.kind != ElemKind::Bytes)
        .filter_map(|(i, spec)| {
            let expected = stable.get(i)?;
            let got = produced.get(i).unwrap_or(&missing);
            golden::compare(&spec.name, expected, got).ok()
        })
        .collect()
}

/// Cuts a request's inputs into parts of at most `max_batch_size` rows, as the request path
/// does (the engine refuses bigger parts). Inputs that disagree on their rows stay whole: the
/// model refuses them as it refused them for the stable version.
fn split(inputs: Vec<Option<HostTensor>>, max_batch_size: usize) -> Vec<Vec<Option<HostTensor>>> {
    match common_request_rows(&inputs) {
        Some(rows) if max_batch_size > 0 && rows > max_batch_size => {
            cut_request(inputs, rows, max_batch_size)
        }
        _ => vec![inputs],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HostData;

    fn rows(n: usize) -> HostTensor {
        HostTensor {
            shape: vec![n, 2],
            data: HostData::F32((0..n * 2).map(|v| v as f32).collect()),
        }
    }

    #[test]
    fn samples_are_split_like_requests() {
        let parts = split(vec![Some(rows(5)), None], 2);
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| p[0].as_ref().map_or(0, HostTensor::rows))
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(parts.iter().all(|p| p[1].is_none()));
        assert_eq!(split(vec![Some(rows(2))], 2).len(), 1);
        // Inputs that disagree on their rows stay whole.
        assert_eq!(split(vec![Some(rows(5)), Some(rows(4))], 2).len(), 1);
    }
}
