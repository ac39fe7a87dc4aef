//! Triton's per-version inference statistics (the `statistics` extension), as atomic tallies.
//!
//! Each served version has one [`VersionStats`]: counts and summed nanoseconds of successful and
//! failed requests, queue waits, input preparation (decode and tokenisation), forward passes and
//! output encoding, plus per-batch-size tallies of forward passes. They are recorded by the same
//! [`super::ModelMetrics`] calls that feed the Prometheus histograms of `/metrics`, so the two
//! views always describe the same events. Reading them takes a [`StatsSnapshot`]: plain numbers
//! that the protocol layer turns into Triton's ModelStatistics JSON (or gRPC message).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Distinct batch sizes tallied per version; forward passes are bounded by `max_batch_size`,
/// and this caps the map whatever the configuration says.
const MAX_BATCH_SIZES: usize = 1024;

/// A count and the nanoseconds summed over it.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    pub fn add(&self, count: u64, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn get(&self) -> Counted {
        Counted {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// A read [`Tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub count: u64,
    pub ns: u64,
}

/// The statistics of one model version since it was first served.
#[derive(Debug, Default)]
pub struct VersionStats {
    /// Milliseconds since the Unix epoch of the last successful request (0: none yet).
    last_inference_ms: AtomicU64,
    /// Rows inferred (Triton counts a batch of 8 as 8 inferences).
    inference_count: AtomicU64,
    /// Forward passes run.
    execution_count: AtomicU64,
    pub success: Tally,
    pub fail: Tally,
    pub queue: Tally,
    pub compute_input: Tally,
    pub compute_infer: Tally,
    pub compute_output: Tally,
    /// Forward passes by rows in the batch.
    batches: Mutex<BTreeMap<u64, Counted>>,
}

/// Plain numbers read from a [`VersionStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: Counted,
    pub fail: Counted,
    pub queue: Counted,
    pub compute_input: Counted,
    pub compute_infer: Counted,
    pub compute_output: Counted,
    /// (rows, forward passes of that size and their nanoseconds), by rows.
    pub batches: Vec<(u64, Counted)>,
}

impl VersionStats {
    /// A request answered (`ok`) or refused after its version was chosen.
    pub fn request(&self, ok: bool, elapsed: Duration) {
        if ok {
            self.success.add(1, elapsed);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            self.last_inference_ms.store(now, Ordering::Relaxed);
        } else {
            self.fail.add(1, elapsed);
        }
    }

    /// One forward pass of `rows` rows for `requests` requests, taking `elapsed`. Triton counts
    /// the pass's whole duration as each request's compute time.
    pub fn execution(&self, rows: usize, requests: usize, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.compute_infer
            .count
            .fetch_add(requests as u64, Ordering::Relaxed);
        self.compute_infer
            .ns
            .fetch_add(ns.saturating_mul(requests as u64), Ordering::Relaxed);
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let key = rows as u64;
        if batches.len() < MAX_BATCH_SIZES || batches.contains_key(&key) {
            let entry = batches.entry(key).or_default();
            entry.count += 1;
            entry.ns = entry.ns.saturating_add(ns);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.get(),
            fail: self.fail.get(),
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer: self.compute_infer.get(),
            compute_output: self.compute_output.get(),
            batches: self
                .batches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(rows, counted)| (*rows, *counted))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_count_rows_requests_and_batch_sizes() {
        let stats = VersionStats::default();
        stats.execution(8, 2, Duration::from_nanos(100));
        stats.execution(8, 1, Duration::from_nanos(50));
        stats.execution(1, 1, Duration::from_nanos(10));
        stats.request(true, Duration::from_nanos(7));
        stats.request(false, Duration::from_nanos(3));
        let s = stats.snapshot();
        assert_eq!((s.inference_count, s.execution_count), (17, 3));
        assert_eq!(s.compute_infer, Counted { count: 4, ns: 260 });
        assert_eq!(
            s.batches,
            vec![
                (1, Counted { count: 1, ns: 10 }),
                (8, Counted { count: 2, ns: 150 })
            ]
        );
        assert_eq!(s.success, Counted { count: 1, ns: 7 });
        assert_eq!(s.fail, Counted { count: 1, ns: 3 });
        assert!(s.last_inference_ms > 0);
    }
}
