//! The bounded pool that does a request's slow work off the async workers: decompressing and
//! decoding large bodies, and preparing requests of text models (tokenising).
//!
//! tokio's workers must stay free to answer health probes and accept connections: three
//! clients sending gzip bombs once delayed `/v2/health/live` by a second on two workers. Work
//! sent here runs on tokio's blocking threads, at most `threads` at a time; the rest waits its
//! turn without holding a thread (its body's bytes are already counted in the in-flight
//! budget, so the wait is bounded too).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::error::ApiError;

#[derive(Debug, Clone)]
pub struct SlowPool {
    permits: Arc<Semaphore>,
}

impl SlowPool {
    pub fn new(threads: usize) -> SlowPool {
        SlowPool {
            permits: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// Runs `work` on the pool and waits for its result.
    pub async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|e| ApiError::Internal(format!("slow work failed: {e}")))?
    }
}
