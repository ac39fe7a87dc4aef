//! One CPU budget shared by every model's forward passes.
//!
//! Each model has its own compute thread, and a forward pass parallelises its math over threads
//! (candle's gemm, wick's kernels, all on rayon). If every busy model used every CPU, four busy
//! models on a 2-core container would run four times as many threads as cores, and a quiet
//! model's lone request would wait behind all of them. Instead a forward pass runs on a rayon
//! pool sized to its fair share of the budget: all of it when it computes alone, half when two
//! models compute at once, and so on ([`share`]), never less than one thread. A pass that
//! starts while another holds the whole budget runs at once with its share (the other pass
//! cannot be resized mid-flight, so the cores are briefly shared): a quiet model never waits
//! for a busy one's batch to end, and the busy one's next pass takes its reduced share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The threads of a forward pass when `active` passes (this one included) share `threads`.
pub fn share(threads: usize, active: usize) -> usize {
    (threads / active.max(1)).max(1)
}

/// The process's compute budget, shared by the engines of every model.
#[derive(Debug)]
pub struct Cpu {
    threads: usize,
    active: AtomicUsize,
}

impl Cpu {
    pub fn new(threads: usize) -> Arc<Cpu> {
        Arc::new(Cpu {
            threads: threads.max(1),
            active: AtomicUsize::new(0),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Marks a forward pass as running until the returned guard drops; returns its share.
    pub fn enter(&self) -> Running<'_> {
        let active = self.active.fetch_add(1, Ordering::AcqRel) + 1;
        Running {
            cpu: self,
            threads: share(self.threads, active),
        }
    }
}

/// A forward pass in progress and the threads it may use.
#[derive(Debug)]
pub struct Running<'a> {
    cpu: &'a Cpu,
    pub threads: usize,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.cpu.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One engine's rayon pools, one per share size it has used, made on first use.
#[derive(Debug, Default)]
pub struct Pools {
    name: String,
    pools: Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>,
}

impl Pools {
    pub fn new(name: &str) -> Pools {
        Pools {
            name: name.to_string(),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// A pool of `threads` threads, or `None` if the system refused to start one (the caller
    /// then runs on the global pool).
    pub fn get(&self, threads: usize) -> Option<Arc<rayon::ThreadPool>> {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(&threads) {
            return Some(Arc::clone(pool));
        }
        let name = self.name.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("wick-{name}-{threads}.{i}"))
            .build()
            .map_err(
                |e| tracing::warn!(error = %e, "cannot start a compute pool; using the global one"),
            )
            .ok()?;
        let pool = Arc::new(pool);
        pools.insert(threads, Arc::clone(&pool));
        Some(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_divide_the_budget_and_never_drop_to_zero() {
        assert_eq!(share(2, 1), 2);
        assert_eq!(share(2, 2), 1);
        assert_eq!(share(2, 4), 1);
        assert_eq!(share(8, 3), 2);
        assert_eq!(share(1, 0), 1);
    }

    #[test]
    fn a_pass_s_share_follows_the_passes_running_beside_it() {
        let cpu = Cpu::new(4);
        let a = cpu.enter();
        assert_eq!(a.threads, 4);
        let b = cpu.enter();
        assert_eq!(b.threads, 2);
        drop(a);
        let c = cpu.enter();
        assert_eq!(c.threads, 2);
        drop(b);
        drop(c);
        assert_eq!(cpu.enter().threads, 4);
    }

    #[test]
    fn pools_are_made_once_per_size_and_have_that_many_threads() {
        let pools = Pools::new("t");
        let one = pools.get(1).unwrap();
        assert_eq!(one.current_num_threads(), 1);
        assert!(Arc::ptr_eq(&one, &pools.get(1).unwrap()));
        assert_eq!(pools.get(2).unwrap().install(rayon::current_num_threads), 2);
    }
}
