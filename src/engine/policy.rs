//! The batching policy: a pure function from the queue's state to "run these now" or "wait".
//!
//! Adaptive batching, in four rules:
//! 1. a request that found the compute thread idle runs at once, with whatever else is queued:
//!    an idle server never makes a lone request wait;
//! 2. a batch is closed as soon as waiting cannot help: when no request is on its way to the
//!    queue (admitted by the HTTP layer and still being read, decoded or tokenised), nothing can
//!    join the batch soon, so it runs now whatever `max_queue_delay` says. This is what keeps a
//!    closed-loop load fast with a delay configured: 32 clients can never fill 64 rows, and
//!    waiting the full delay for each batch used to cut throughput to a third;
//! 3. otherwise requests gather until they fill `max_batch_size` rows (or `max_batch_tokens`
//!    tokens) or the oldest has waited `max_queue_delay`, whichever comes first;
//! 4. a batch takes requests from the front in queue order (priority, then arrival), all of one
//!    model version, as long as their rows and tokens fit; a request that does not fit closes
//!    the batch (waiting longer cannot help it).
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
    /// Tokens the request costs a forward pass (text models; rows for the others).
    pub tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_batch_size: usize,
    /// 0: no token budget.
    pub max_batch_tokens: usize,
    pub max_queue_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to run: wait for a new request, or until the instant given.
    Wait(Option<Instant>),
    /// Run the first `n` requests of the queue as one batch.
    Run(usize),
}

/// Decides what the (free) compute thread does next. `queue` is front first; `incoming` is the
/// number of requests admitted for this model and not yet queued.
pub fn next_batch(queue: &[Entry], incoming: usize, now: Instant, limits: &Limits) -> Decision {
    let Some(first) = queue.first() else {
        return Decision::Wait(None);
    };
    let mut rows = 0usize;
    let mut tokens = 0usize;
    let mut n = 0usize;
    for entry in queue {
        let over_tokens =
            limits.max_batch_tokens > 0 && n > 0 && tokens + entry.tokens > limits.max_batch_tokens;
        if entry.version != first.version
            || rows + entry.rows > limits.max_batch_size
            || over_tokens
        {
            break;
        }
        rows += entry.rows;
        tokens += entry.tokens;
        n += 1;
    }
    if n == 0 {
        // The first request alone exceeds the limit. Admission refuses such requests; if one
        // slips through (the limit was lowered by a config reload), it runs alone rather than
        // blocking the queue forever.
        return Decision::Run(1);
    }
    let full = rows == limits.max_batch_size
        || (limits.max_batch_tokens > 0 && tokens >= limits.max_batch_tokens);
    let closed = full || n < queue.len();
    if closed || first.arrived_idle || incoming == 0 {
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
            max_batch_tokens: 0,
            max_queue_delay: Duration::from_millis(delay_ms),
        }
    }

    fn entry(t0: Instant, at_ms: u64, rows: usize, version: u64, idle: bool) -> Entry {
        Entry {
            rows,
            enqueued: t0 + Duration::from_millis(at_ms),
            version,
            arrived_idle: idle,
            tokens: rows,
        }
    }

    /// The policy with requests still on their way (the case where the delay applies).
    fn next(queue: &[Entry], now: Instant, limits: &Limits) -> Decision {
        next_batch(queue, 1, now, limits)
    }

    #[test]
    fn empty_queue_waits_for_arrivals() {
        assert_eq!(
            next(&[], Instant::now(), &limits(8, 2)),
            Decision::Wait(None)
        );
    }

    #[test]
    fn a_request_that_found_the_thread_idle_runs_at_once() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 1, 1, true)];
        assert_eq!(next(&q, t0, &limits(8, 100)), Decision::Run(1));
        // ...together with anything that queued behind it.
        let q = [entry(t0, 0, 1, 1, true), entry(t0, 0, 2, 1, false)];
        assert_eq!(next(&q, t0, &limits(8, 100)), Decision::Run(2));
    }

    #[test]
    fn requests_gathered_while_busy_wait_for_the_delay() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 1, 1, false), entry(t0, 1, 1, 1, false)];
        assert_eq!(
            next(&q, t0 + MS, &limits(8, 2)),
            Decision::Wait(Some(t0 + 2 * MS))
        );
        assert_eq!(next(&q, t0 + 2 * MS, &limits(8, 2)), Decision::Run(2));
        // A zero delay means "run what has gathered as soon as the thread is free".
        assert_eq!(next(&q, t0 + MS, &limits(8, 0)), Decision::Run(2));
    }

    #[test]
    fn a_full_batch_runs_without_waiting() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 3, 1, false), entry(t0, 0, 5, 1, false)];
        assert_eq!(next(&q, t0, &limits(8, 1000)), Decision::Run(2));
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
        assert_eq!(next(&q, t0, &limits(8, 1000)), Decision::Run(1));
    }

    #[test]
    fn batches_never_mix_versions() {
        let t0 = Instant::now();
        let q = [
            entry(t0, 0, 1, 1, false),
            entry(t0, 0, 1, 2, false),
            entry(t0, 0, 1, 1, false),
        ];
        assert_eq!(next(&q, t0, &limits(8, 1000)), Decision::Run(1));
        let q = [entry(t0, 0, 1, 2, false), entry(t0, 0, 1, 1, false)];
        assert_eq!(next(&q, t0, &limits(8, 1000)), Decision::Run(1));
    }

    #[test]
    fn batching_off_runs_one_row_at_a_time() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 1, 1, false), entry(t0, 0, 1, 1, false)];
        assert_eq!(next(&q, t0, &limits(1, 1000)), Decision::Run(1));
    }

    #[test]
    fn an_oversized_request_runs_alone_instead_of_blocking() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 10, 1, false), entry(t0, 0, 1, 1, false)];
        assert_eq!(next(&q, t0, &limits(8, 1000)), Decision::Run(1));
    }

    #[test]
    fn a_batch_closes_when_no_request_is_on_its_way() {
        let t0 = Instant::now();
        let q = [entry(t0, 0, 1, 1, false), entry(t0, 0, 1, 1, false)];
        // Requests being decoded may join: wait for them (up to the delay).
        assert_eq!(
            next_batch(&q, 2, t0, &limits(64, 2)),
            Decision::Wait(Some(t0 + 2 * MS))
        );
        // Everything admitted is already queued: waiting cannot help, run now.
        assert_eq!(next_batch(&q, 0, t0, &limits(64, 2)), Decision::Run(2));
    }

    #[test]
    fn the_token_budget_closes_a_batch() {
        let t0 = Instant::now();
        let text = |tokens| Entry {
            tokens,
            ..entry(t0, 0, 1, 1, false)
        };
        let l = Limits {
            max_batch_tokens: 100,
            ..limits(64, 1000)
        };
        let q = [text(60), text(30), text(20)];
        // 60 + 30 fit; 20 more would pass 100.
        assert_eq!(next(&q, t0, &l), Decision::Run(2));
        // A request larger than the budget alone still runs (alone).
        let q = [text(500), text(1)];
        assert_eq!(next(&q, t0, &l), Decision::Run(1));
        // Exactly full runs without waiting.
        let q = [text(100)];
        assert_eq!(next(&q, t0, &l), Decision::Run(1));
    }
}
