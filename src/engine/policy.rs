//! The batching policy: a pure function from the queue's state to "run these now" or "wait".
//!
//! Adaptive batching, in three rules:
//! 1. a request that found the compute thread idle runs at once, with whatever else is queued:
//!    an idle server never makes a lone request wait;
//! 2. requests that arrived while the thread was busy gather until they fill `max_batch_size`
//!    rows or the oldest has waited `max_queue_delay`, whichever comes first;
//! 3. a batch takes requests from the front in order, all of one model version, as long as their
//!    rows fit; a request that does not fit closes the batch (waiting longer cannot help it).
//!
//! Channels, threads and clocks live in the worker; here there is only data, so every rule is
//! unit-tested below.

use std::time::{Duration, Instant};

/// What the policy needs to know about one queued request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub rows: usize,
    pub enqueued: Instant,
    /// Identifies the model version the request is bound to; batches never mix versions.
    pub version: u64,
    /// The compute thread was idle and the queue empty when this request arrived.
    pub arrived_idle: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to run: wait for a new request, or until the instant given.
    Wait(Option<Instant>),
    /// Run the first `n` requests of the queue as one batch.
    Run(usize),
}

/// Decides what the (free) compute thread does next. `queue` is front first.
pub fn next_batch(queue: &[Entry], now: Instant, limits: &Limits) -> Decision {
    let Some(first) = queue.first() else {
        return Decision::Wait(None);
    };
    let mut rows = 0usize;
    let mut n = 0usize;
    for entry in queue {
        if entry.version != first.version || rows + entry.rows > limits.max_batch_size {
            break;
        }
        rows += entry.rows;
        n += 1;
    }
    if n == 0 {
        // The first request alone exceeds the limit. Admission refuses such requests; if one
        // slips through (the limit was lowered by a config reload), it runs alone rather than
        // blocking the queue forever.
        return Decision::Run(1);
    }
    let closed = rows == limits.max_batch_size || n < queue.len();
    if closed || first.arrived_idle {
        return Decision::Run(n);
    }
    let deadline = first.enqueued + limits.max_queue_delay;
    if now >= deadline {
        Decision::Run(n)
    } else {
        Decision::Wait(Some(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits(max_batch_size: usize, delay_ms: u64) -> Limits {
        Limits {
            max_batch_size,
            max_queue_delay: Duration::from_millis(delay_ms),
        }
    }

    fn entry(t0: Instant, at_ms: u64, rows: usize, version: u64, idle: bool) -> Entry {
        Entry {
            rows,
            enqueued: t0 + Duration::from_millis(at_ms),
            version,
            arrived_idle: idle,
        }
    }

    #[test]
    fn empty_queue_waits_for_arrivals() {
        assert_eq!(
            next_batch(&[], Instant::now(), &limits(8, 2)),
            Decision::Wait(None)
        );
    }

    #[test]
    fn a_request_that_found_the_thread_idle_runs_at_once() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 1, 1, true)];
        assert_eq!(next_batch(&q, t0, &limits(8, 100)), Decision::Run(1));
        // ...together with anything that queued behind it.
        let q = [entry(t0, 0, 1, 1, true), entry(t0, 0, 2, 1, false)];
        assert_eq!(next_batch(&q, t0, &limits(8, 100)), Decision::Run(2));
    }

    #[test]
    fn requests_gathered_while_busy_wait_for_the_delay() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 1, 1, false), entry(t0, 1, 1, 1, false)];
        assert_eq!(
            next_batch(&q, t0 + MS, &limits(8, 2)),
            Decision::Wait(Some(t0 + 2 * MS))
        );
        assert_eq!(next_batch(&q, t0 + 2 * MS, &limits(8, 2)), Decision::Run(2));
        // A zero delay means "run what has gathered as soon as the thread is free".
        assert_eq!(next_batch(&q, t0 + MS, &limits(8, 0)), Decision::Run(2));
    }

    #[test]
    fn a_full_batch_runs_without_waiting() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 3, 1, false), entry(t0, 0, 5, 1, false)];
        assert_eq!(next_batch(&q, t0, &limits(8, 1000)), Decision::Run(2));
    }

    #[test]
    fn a_request_that_does_not_fit_closes_the_batch() {
        let t0 = Instant::now();
        let q = [
            entry(t0, 0, 3, 1, false),
            entry(t0, 0, 6, 1, false),
            entry(t0, 0, 1, 1, false),
        ];
        // 3 + 6 > 8: the batch is [3] and runs now; FIFO order is kept (the 1-row request does
        // not jump ahead of the 6-row one).
        assert_eq!(next_batch(&q, t0, &limits(8, 1000)), Decision::Run(1));
    }

    #[test]
    fn batches_never_mix_versions() {
        let t0 = Instant::now();
        let q = [
            entry(t0, 0, 1, 1, false),
            entry(t0, 0, 1, 2, false),
            entry(t0, 0, 1, 1, false),
        ];
        assert_eq!(next_batch(&q, t0, &limits(8, 1000)), Decision::Run(1));
        let q = [entry(t0, 0, 1, 2, false), entry(t0, 0, 1, 1, false)];
        assert_eq!(next_batch(&q, t0, &limits(8, 1000)), Decision::Run(1));
    }

    #[test]
    fn batching_off_runs_one_row_at_a_time() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 1, 1, false), entry(t0, 0, 1, 1, false)];
        assert_eq!(next_batch(&q, t0, &limits(1, 1000)), Decision::Run(1));
    }

    #[test]
    fn an_oversized_request_runs_alone_instead_of_blocking() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 10, 1, false), entry(t0, 0, 1, 1, false)];
        assert_eq!(next_batch(&q, t0, &limits(8, 1000)), Decision::Run(1));
    }
}
