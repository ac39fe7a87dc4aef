//! Hot-reload figures for the README: a 90 MB checkpoint swapped under load.
//!
//! Starts a server in-process over a temporary repository holding a `linear` 4096 → 5504 model
//! (90.2 MB of F32 weights), drives it with concurrent clients (binary tensors), then publishes
//! version 2 by renaming it into place and reports: the load time of the checkpoint (validation,
//! copy, warm-up), the time from the rename to the first answer from version 2, p50/p99 latency
//! in steady state and during the swap, failed requests, and resident memory in steady state
//! and at its peak during the swap relative to the weights' size.
//!
//! Run with `cargo run --release --example reload_bench` (RAYON_NUM_THREADS and
//! CANDLE_NUM_THREADS as the server would set them: the CPU count).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wick::app::{self, StartOptions};
use wick::bench::Target;
use wick::config::Config;

// The allocator `wick serve` uses, so memory figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IN: usize = 4096;
const OUT: usize = 5504;

/// Writes the checkpoint in 1 MiB pieces, so this process never holds it in memory (the
/// allocator would keep the pages and blur the memory figures).
fn write_checkpoint(path: &Path, seed: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32 - 0.5) * 0.02
    };
    let (weight_bytes, bias_bytes) = (IN * OUT * 4, OUT * 4);
    let mut header = format!(
        r#"{{"linear.weight":{{"dtype":"F32","shape":[{OUT},{IN}],"data_offsets":[0,{weight_bytes}]}},"linear.bias":{{"dtype":"F32","shape":[{OUT}],"data_offsets":[{weight_bytes},{}]}}}}"#,
        weight_bytes + bias_bytes
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for _ in 0..IN * OUT + OUT {
        out.write_all(&next().to_le_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One sample: when the request finished, how long it took, which version answered (0: error).
type Sample = (Instant, Duration, u64);

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 4))
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let repo = tempfile::tempdir()?;
    let staging = repo.path().join(".staging");
    std::fs::create_dir_all(&staging)?;
    let v1 = repo.path().join("big/1");
    std::fs::create_dir_all(&v1)?;
    write_checkpoint(&v1.join("model.safetensors"), 1)?;
    write_checkpoint(&staging.join("model.safetensors"), 2)?;
    let weights_mb = (IN * OUT + OUT) as f64 * 4.0 / 1e6;

    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrepository = {:?}\npoll_interval_ms = 1000\n\n[[models]]\nname = \"big\"\narchitecture = \"linear\"\nconfig = {{ in_features = {IN}, out_features = {OUT} }}\nbatching = {{ max_batch_size = 8 }}\n",
        repo.path().display().to_string()
    );
    let config = Config::parse(&text, Path::new("bench.toml"), repo.path(), &|_| None)?;
    let rss_empty = rss_kb();
    let server = app::start(config, StartOptions::default()).await?;
    let slot = server
        .repository()
        .get("big")
        .ok_or_else(|| anyhow::anyhow!("no model"))?;
    let load_ms = slot
        .serving()
        .newest()
        .and_then(|v| slot.load_duration(v.version))
        .map_or(0, |d| d.as_millis());
    let target = Target::parse(&format!("http://{}", server.addr))?;

    // Binary request: one row of 4096 floats.
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, IN], "datatype": "FP32", "parameters": {"binary_data_size": IN * 4}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": true}}]
    }))?;
    let mut body = header.clone();
    body.extend((0..IN).flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes()));
    let body = bytes::Bytes::from(body);
    let headers = vec![("inference-header-content-length", header.len().to_string())];

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (target, stop, samples, body, headers) = (
            target.clone(),
            Arc::clone(&stop),
            Arc::clone(&samples),
            body.clone(),
            headers.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut conn = target.connect().await?;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = conn
                    .send_full(
                        http::Method::POST,
                        "/v2/models/big/infer",
                        &headers,
                        body.clone(),
                    )
                    .await;
                let version = match &answer {
                    Ok((status, h, _)) if status.is_success() => h
                        .get("x-wick-model-version")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    _ => 0,
                };
                samples
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((Instant::now(), started.elapsed(), version));
            }
            anyhow::Ok(())
        }));
    }

    // Steady state, then the swap, sampling resident memory all along.
    let sampling = Arc::new(AtomicBool::new(true));
    let rss_samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let sampler = {
        let (sampling, rss_samples) = (Arc::clone(&sampling), Arc::clone(&rss_samples));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(mut s) = rss_samples.lock() {
                    s.push((Instant::now(), rss_kb()));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let renamed = Instant::now();
    std::fs::rename(&staging, repo.path().join("big/2"))?;
    let first_v2 = loop {
        if let Some((at, _, _)) = samples
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
            .find(|(at, _, v)| *v == 2 && *at >= renamed)
        {
            break *at;
        }
        anyhow::ensure!(
            renamed.elapsed() < Duration::from_secs(30),
            "version 2 never answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await??;
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();

    let samples = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let warm = renamed - Duration::from_secs(3);
    let steady: Vec<Duration> = samples
        .iter()
        .filter(|(at, _, _)| *at >= warm && *at < renamed)
        .map(|s| s.1)
        .collect();
    let swap_end = first_v2 + Duration::from_millis(500);
    let during: Vec<Duration> = samples
        .iter()
        .filter(|(at, _, _)| *at >= renamed && *at <= swap_end)
        .map(|s| s.1)
        .collect();
    let failed = samples.iter().filter(|s| s.2 == 0).count();
    let rss = rss_samples
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let steady_rss = rss
        .iter()
        .filter(|(at, _)| *at >= warm && *at < renamed)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let peak_rss = rss
        .iter()
        .filter(|(at, _)| *at >= renamed)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let after_rss = rss.last().map_or(0, |s| s.1);
    let over = |kb: u64| (kb.saturating_sub(rss_empty)) as f64 / 1e3 / weights_mb;

    println!("checkpoint: linear {IN}x{OUT}, {weights_mb:.1} MB of F32 weights");
    println!("VmRSS: empty {rss_empty} kB, steady {steady_rss} kB, peak {peak_rss} kB, after {after_rss} kB");
    println!("load of version 1 (validate, copy, sha256, warm-up): {load_ms} ms");
    println!(
        "rename -> first answer from version 2: {} ms",
        (first_v2 - renamed).as_millis()
    );
    println!(
        "latency p50/p99 steady: {:.2}/{:.2} ms ({} requests); during the swap: {:.2}/{:.2} ms ({} requests); ratio p99 {:.2}",
        percentile(steady.clone(), 50.0).as_secs_f64() * 1e3,
        percentile(steady.clone(), 99.0).as_secs_f64() * 1e3,
        steady.len(),
        percentile(during.clone(), 50.0).as_secs_f64() * 1e3,
        percentile(during.clone(), 99.0).as_secs_f64() * 1e3,
        during.len(),
        percentile(during, 99.0).as_secs_f64() / percentile(steady, 99.0).as_secs_f64().max(1e-9)
    );
    println!("failed requests: {failed} of {}", samples.len());
    println!(
        "resident memory above the empty process: steady {:.2}x the weights, peak during the swap {:.2}x, after {:.2}x",
        over(steady_rss),
        over(peak_rss),
        over(after_rss)
    );
    server.shutdown().await;
    Ok(())
}
