//! A test architecture: the real `linear` model (same checkpoint keys, same maths) whose forward
//! pass takes a fixed extra time, can be held until the test releases it, counts its calls, and
//! fails batches that contain a poisoned row, so queueing, batching, timeouts, cancellation and
//! failure isolation can be observed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use candle_nn::VarBuilder;
use wick::arch::{Architecture, Configured};
use wick::config::Config;
use wick::model::{Assets, HostData, HostTensor, InputError, Model, Prepared, Signature};

use super::{demo_model, simple_with, Repo, TestServer};

/// A first input value that makes any batch containing it fail.
pub const POISON: f32 = 666.0;

/// What the slow model observed.
#[derive(Default)]
pub struct Probe {
    pub forward_calls: AtomicUsize,
    /// Rows of every forward call, in order.
    pub batches: Mutex<Vec<usize>>,
    /// First input value of every row computed.
    pub computed: Mutex<Vec<f32>>,
    /// While true, forward passes wait (after counting their call); see [`Probe::hold`].
    held: Mutex<bool>,
    released: Condvar,
}

impl Probe {
    pub fn calls(&self) -> usize {
        self.forward_calls.load(Ordering::SeqCst)
    }

    pub fn computed(&self) -> Vec<f32> {
        self.computed.lock().unwrap().clone()
    }

    /// Forgets what was observed so far (the warm-up pass of a fresh version).
    pub fn reset(&self) {
        self.forward_calls.store(0, Ordering::SeqCst);
        self.batches.lock().unwrap().clear();
        self.computed.lock().unwrap().clear();
    }

    /// Makes the next forward passes wait: the compute thread stays busy, deterministically,
    /// until the returned guard is dropped (also when the test fails, so the compute thread can
    /// be joined).
    pub fn hold(&self) -> Held<'_> {
        *self.held.lock().unwrap() = true;
        Held(self)
    }

    fn wait_while_held(&self) {
        let held = self.held.lock().unwrap();
        drop(self.released.wait_while(held, |held| *held).unwrap());
    }
}

/// Forward passes wait while this lives; see [`Probe::hold`].
pub struct Held<'a>(&'a Probe);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.released.notify_all();
    }
}

/// A config serving the demo `simple` model from `repo` with `batching` (a TOML inline table),
/// through [`Slow`] with `delay` per forward pass, and the probe that watches it.
pub fn slow_config(
    repo: &Repo,
    extra_server: &str,
    delay: Duration,
    batching: &str,
) -> (Config, Arc<Probe>) {
    repo.install("simple", 1, &demo_model("simple", 1));
    let mut config = repo.config(extra_server, &simple_with(batching));
    let probe = Arc::new(Probe::default());
    config.models[0].architecture = Slow::configured(10, delay, Arc::clone(&probe));
    (config, probe)
}

/// A server of [`slow_config`], its repository, and the probe, reset after the warm-up pass.
pub async fn slow_server(
    extra_server: &str,
    delay: Duration,
    batching: &str,
) -> (TestServer, Repo, Arc<Probe>) {
    let repo = Repo::new();
    let (config, probe) = slow_config(&repo, extra_server, delay, batching);
    let server = TestServer::start(config).await;
    probe.reset();
    (server, repo, probe)
}

pub struct Slow {
    inner: Arc<Configured>,
    delay: Duration,
    probe: Arc<Probe>,
}

impl Slow {
    /// Wraps `linear` with `in_features` inputs and one output.
    pub fn configured(in_features: usize, delay: Duration, probe: Arc<Probe>) -> Arc<Configured> {
        let table: toml::Table = format!("in_features = {in_features}\nout_features = 1")
            .parse()
            .unwrap();
        let inner = wick::arch::configure("linear", &table).unwrap();
        Arc::new(Configured::new(
            "linear",
            Box::new(Slow {
                inner,
                delay,
                probe,
            }),
        ))
    }
}

impl Architecture for Slow {
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn build(&self, vb: VarBuilder<'_>, assets: &Assets) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(SlowModel {
            inner: self.inner.architecture().build(vb, assets)?,
            delay: self.delay,
            probe: Arc::clone(&self.probe),
        }))
    }
}

struct SlowModel {
    inner: Box<dyn Model>,
    delay: Duration,
    probe: Arc<Probe>,
}

fn first_values(p: &Prepared) -> Vec<f32> {
    match &p.tensors[0] {
        Some(HostTensor {
            data: HostData::F32(v),
            shape,
        }) => {
            let row = shape[1..].iter().product::<usize>().max(1);
            v.chunks(row).map(|r| r[0]).collect()
        }
        _ => Vec::new(),
    }
}

impl Model for SlowModel {
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        self.inner.prepare(inputs)
    }

    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        self.probe.forward_calls.fetch_add(1, Ordering::SeqCst);
        let rows: usize = batch.iter().map(|p| p.rows).sum();
        self.probe.batches.lock().unwrap().push(rows);
        let firsts: Vec<f32> = batch.iter().flat_map(|p| first_values(p)).collect();
        self.probe.wait_while_held();
        std::thread::sleep(self.delay);
        if firsts.contains(&POISON) {
            candle_core::bail!("poisoned row in the batch");
        }
        self.probe.computed.lock().unwrap().extend(firsts);
        self.inner.forward(batch)
    }
}
