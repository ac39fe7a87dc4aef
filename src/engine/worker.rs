//! The compute thread's loop: prune, ask the policy, run a batch, answer, repeat.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crate::model::{ForwardLimits, HostTensor, Prepared};

use super::policy::{self, Decision, Entry, Limits};
use super::{ComputeError, EngineError, Inner, Job, Outputs};
use crate::telemetry::panic_message;

pub(super) fn run(inner: &Arc<Inner>) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut state = inner.lock();
    loop {
        let now = Instant::now();
        prune(inner, &mut state.jobs, now);
        if state.jobs.is_empty() && state.closing {
            return;
        }
        entries.clear();
        entries.extend(state.jobs.iter().map(|job| Entry {
            rows: job.prepared.rows,
            enqueued: job.enqueued,
            version: Arc::as_ptr(&job.version) as usize as u64,
            arrived_idle: job.arrived_idle,
            tokens: job.tokens,
        }));
        let limits = Limits {
            max_batch_size: state.config.max_batch_size,
            max_batch_tokens: state.config.max_batch_tokens,
            max_queue_delay: state.config.max_queue_delay,
        };
        let decision = match policy::next_batch(&entries, state.incoming, now, &limits) {
            // While shutting down nothing new arrives: waiting for batch-mates is pointless.
            Decision::Wait(Some(_)) if state.closing => {
                Decision::Run(batch_len_ignoring_delay(&entries, &limits))
            }
            d => d,
        };
        match decision {
            Decision::Run(n) => {
                // A handler may have given up on a request at its deadline just now: such
                // requests are dropped here, never computed.
                let batch: Vec<Job> = state.jobs.drain(..n).collect();
                state.queued_tokens -= batch.iter().map(|j| j.tokens).sum::<usize>();
                let batch: Vec<Job> = batch.into_iter().filter(|job| job.ticket.start()).collect();
                state.busy = true;
                inner.metrics.set_queue_depth(state.jobs.len());
                let forward_limits = ForwardLimits {
                    max_batch_tokens: state.config.max_batch_tokens,
                };
                drop(state);
                if !batch.is_empty() {
                    execute(inner, batch, &forward_limits);
                }
                state = inner.lock();
                state.busy = false;
            }
            Decision::Wait(until) => {
                // Also wake for the earliest request deadline, so a timed-out request gets its
                // answer promptly rather than when the batch would have run.
                let earliest = state.jobs.iter().filter_map(|j| j.deadline).min();
                let until = match (until, earliest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                state.sleeping = true;
                state = match until {
                    None => inner
                        .wake
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                    Some(t) => {
                        let timeout = t.saturating_duration_since(Instant::now());
                        inner
                            .wake
                            .wait_timeout(state, timeout)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0
                    }
                };
                state.sleeping = false;
            }
        }
    }
}

/// How many requests from the front form a batch when nobody waits for the delay.
fn batch_len_ignoring_delay(entries: &[Entry], limits: &Limits) -> usize {
    let no_delay = Limits {
        max_queue_delay: std::time::Duration::ZERO,
        ..*limits
    };
    match policy::next_batch(entries, 0, Instant::now(), &no_delay) {
        Decision::Run(n) => n,
        Decision::Wait(_) => 1,
    }
}

/// Drops requests whose client went away or whose deadline passed.
fn prune(inner: &Inner, jobs: &mut std::collections::VecDeque<Job>, now: Instant) {
    if !jobs.iter().any(|j| {
        j.reply.is_closed() || j.ticket.is_abandoned() || j.deadline.is_some_and(|d| d <= now)
    }) {
        return;
    }
    let mut kept = std::collections::VecDeque::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        if job.ticket.is_abandoned() {
            // Its handler already answered (timeout) and counted it.
        } else if job.reply.is_closed() {
            inner.metrics.rejected("client_disconnected");
        } else if job.deadline.is_some_and(|d| d <= now) {
            inner.metrics.rejected("timeout");
            let waited = now.duration_since(job.enqueued);
            let timeout = job
                .deadline
                .map(|d| d.duration_since(job.enqueued))
                .unwrap_or_default();
            let _ = job.reply.send(Err(EngineError::Timeout {
                waited_us: waited.as_micros(),
                timeout_us: timeout.as_micros(),
            }));
        } else {
            kept.push_back(job);
        }
    }
    *jobs = kept;
    inner.metrics.set_queue_depth(jobs.len());
}

fn execute(inner: &Inner, mut batch: Vec<Job>, limits: &ForwardLimits) {
    let started = Instant::now();
    // Batches never mix versions: the first request's version is every request's.
    let stats = inner.metrics.version_stats(batch[0].version.version);
    for job in &batch {
        inner
            .metrics
            .queued(&stats, started.duration_since(job.enqueued));
    }
    let rows: usize = batch.iter().map(|j| j.prepared.rows).sum();
    let tokens: usize = batch.iter().map(|j| j.tokens).sum();
    let requests = batch.len();
    let traced: Vec<tracing::Span> = batch
        .iter_mut()
        .map(|job| job.start_compute(requests, rows))
        .collect();
    let prepared: Vec<&Prepared> = batch.iter().map(|j| &j.prepared).collect();
    let result = forward(inner, &batch[0], &prepared, limits);
    drop(traced);
    inner
        .metrics
        .batch(&stats, rows, batch.len(), started.elapsed());
    inner.metrics.batch_tokens(tokens);
    match result {
        Ok(outputs) => {
            for (job, tensors) in batch.into_iter().zip(outputs) {
                reply(job, Ok(tensors));
            }
        }
        Err(message) if batch.len() == 1 => {
            tracing::warn!(model = %inner.name, error = %message, "forward pass failed");
            for job in batch {
                reply(job, Err(message.clone()));
            }
        }
        Err(message) => {
            // Isolate the failure: every request gets its own answer.
            tracing::warn!(model = %inner.name, error = %message, size = batch.len(),
                "batched forward pass failed; retrying its requests one by one");
            for job in batch {
                let started = Instant::now();
                let result = forward(inner, &job, &[&job.prepared], limits);
                inner
                    .metrics
                    .batch(&stats, job.prepared.rows, 1, started.elapsed());
                reply(job, result.map(|mut o| o.pop().unwrap_or_default()));
            }
        }
    }
}

/// Runs one forward pass on its share of the CPU budget, catching panics, and checks that every
/// request got all its outputs.
fn forward(
    inner: &Inner,
    first: &Job,
    prepared: &[&Prepared],
    limits: &ForwardLimits,
) -> Result<Vec<Vec<HostTensor>>, ComputeError> {
    let version = &first.version;
    let running = inner.cpu.enter();
    let pass = || {
        catch_unwind(AssertUnwindSafe(|| {
            version.model.forward_with(prepared, limits)
        }))
    };
    let outcome = match inner.pools.get(running.threads) {
        Some(pool) => pool.install(pass),
        None => pass(),
    };
    drop(running);
    let outputs = match outcome {
        Ok(Ok(outputs)) => outputs,
        Ok(Err(e)) => {
            return Err(ComputeError::Failed {
                message: e.to_string(),
            })
        }
        Err(panic) => {
            return Err(ComputeError::Panicked {
                message: panic_message(panic.as_ref()),
            })
        }
    };
    let expected = version.signature.outputs.len();
    if outputs.len() != prepared.len() || outputs.iter().any(|o| o.len() != expected) {
        return Err(ComputeError::WrongOutputs {
            results: outputs.len(),
            requests: prepared.len(),
            outputs: expected,
        });
    }
    Ok(outputs)
}

fn reply(job: Job, result: Result<Vec<HostTensor>, ComputeError>) {
    let answer = match result {
        Ok(tensors) => Ok(Outputs {
            tensors,
            notes: job.prepared.notes,
        }),
        Err(error) => Err(EngineError::Compute(error)),
    };
    // The client may have gone away meanwhile; nothing to do then.
    let _ = job.reply.send(answer);
}
