//! Compute-only throughput of the vision and text architectures, for the README's
//! side-by-side comparison with PyTorch eager (scripts/bench_arch_torch.py runs the same shapes).
//!
//! ```text
//! cargo build --release --example arch_bench
//! RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 target/release/examples/arch_bench resnet18 1 8
//! RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 target/release/examples/arch_bench mobilenet_v3_large 1 8
//! RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 target/release/examples/arch_bench minilm 1 8
//! RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 target/release/examples/arch_bench minilm-singles 8
//! RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2 target/release/examples/arch_bench roberta 1 8 --tokens 128
//! ```
//! `roberta`, `distilbert` and `mpnet` run random weights at the sizes
//! scripts/bench_arch_torch.py gives them (roberta-base, distilbert-base, mpnet-base) on rows of
//! `--tokens` token ids (default 128, as minilm), embedded with mean pooling and normalisation.
//! Vision presets (resnet18, resnet50, mobilenet_v3_small, mobilenet_v3_large, efficientnet_b0,
//! convnext_tiny, ...: any preset of `resnet`, `mobilenet_v3`, `efficientnet` or `convnext`) run at
//! 224×224 with deterministic pseudo-random weights (speed does not depend on the values); minilm runs the real weights from models/minilm/1 (scripts/fetch_minilm.sh) on
//! rows of 128 token ids. `minilm-singles N` runs N rows one request at a time, to compare with a
//! batch of N. Each case: 3 warm-up runs, then the median of `--runs` (default 15, 7 for batches
//! above 1) forward passes through the same `Model::prepare` + `Model::forward` the server calls.

// The allocator `wick serve` uses, so the figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use wick::arch::{configure, Configured};
use wick::model::{Assets, HostData, HostTensor, Model};

fn pseudo(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// The family serving a torchvision preset name.
fn vision_family(preset: &str) -> Option<&'static str> {
    [
        "resnet",
        "resnext",
        "wide_resnet",
        "mobilenet_v3",
        "efficientnet",
        "convnext",
    ]
    .into_iter()
    .find(|prefix| preset.starts_with(prefix))
    .map(|prefix| match prefix {
        "resnext" | "wide_resnet" => "resnet",
        other => other,
    })
}

/// A torchvision preset with pseudo-random weights: fan-in scaled, with positive BatchNorm
/// variances and scales so activations stay finite.
fn vision(family: &str, preset: &str) -> anyhow::Result<(Box<dyn Model>, usize)> {
    let arch = configure(family, &format!("preset = \"{preset}\"").parse()?)?;
    let expected = arch.expected().map_err(anyhow::Error::msg)?;
    let mut tensors = HashMap::new();
    for (i, p) in expected.params.iter().enumerate() {
        let n: usize = p.shape.iter().product();
        let fan_in = p.shape.iter().skip(1).product::<usize>().max(1) as f32;
        let mut v = pseudo(n, i as u64 + 1, 1.0 / fan_in.sqrt());
        let positive =
            p.name.ends_with("running_var") || (p.shape.len() == 1 && p.name.ends_with(".weight"));
        if positive {
            v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
        }
        tensors.insert(
            p.name.clone(),
            Tensor::from_vec(v, p.shape.clone(), &Device::Cpu)?,
        );
    }
    let model = arch.build(tensors, &Assets::default())?;
    Ok((model, 3 * 224 * 224))
}

fn minilm() -> anyhow::Result<Box<dyn Model>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm/1");
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        bail!(
            "{} is missing: run scripts/fetch_minilm.sh",
            weights.display()
        );
    }
    let table =
        "vocab_size = 30522\nhidden_size = 384\nnum_hidden_layers = 6\nnum_attention_heads = 12\n\
                 intermediate_size = 1536\nmax_position_embeddings = 512\nmax_seq_length = 256";
    let arch: std::sync::Arc<Configured> = configure("bert", &table.parse()?)?;
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    tensors.remove("embeddings.position_ids");
    let mut assets = Assets::default();
    assets.insert(
        "tokenizer.json",
        std::fs::read(dir.join("tokenizer.json")).context("tokenizer.json")?,
    );
    Ok(arch.build(tensors, &assets)?)
}

/// A text family at full size with deterministic pseudo-random weights (speed does not depend
/// on the values), the sizes scripts/bench_arch_torch.py uses.
fn text_family(name: &str) -> anyhow::Result<(std::sync::Arc<Configured>, Box<dyn Model>)> {
    let table = match name {
        "roberta" => "vocab_size = 50265\nhidden_size = 768\nnum_hidden_layers = 12\nnum_attention_heads = 12\n\
                      intermediate_size = 3072\nmax_position_embeddings = 514\ntype_vocab_size = 1\n\
                      layer_norm_eps = 1e-5\npad_token_id = 1",
        "distilbert" => "vocab_size = 30522\ndim = 768\nn_layers = 6\nn_heads = 12\nhidden_dim = 3072\n\
                         max_position_embeddings = 512",
        "mpnet" => "vocab_size = 30527\nhidden_size = 768\nnum_hidden_layers = 12\nnum_attention_heads = 12\n\
                    intermediate_size = 3072\nmax_position_embeddings = 514",
        other => bail!("no text family {other:?}"),
    };
    let arch = configure(name, &table.parse()?)?;
    let expected = arch.expected().map_err(anyhow::Error::msg)?;
    let mut tensors = HashMap::new();
    for (i, p) in expected.params.iter().enumerate() {
        let n: usize = p.shape.iter().product();
        let fan_in = p.shape.last().copied().unwrap_or(1) as f32;
        let mut v = pseudo(n, i as u64 + 1, 1.0 / fan_in.sqrt());
        if p.name.contains("LayerNorm.weight") || p.name.contains("layer_norm.weight") {
            v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
        }
        tensors.insert(
            p.name.clone(),
            Tensor::from_vec(v, p.shape.clone(), &Device::Cpu)?,
        );
    }
    let model = arch.build(tensors, &Assets::default())?;
    Ok((arch, model))
}

/// `rows` rows of `len` token ids as `input_ids`, aligned with `arch`'s signature.
fn text_request(arch: &Configured, rows: usize, len: usize) -> Vec<Option<HostTensor>> {
    let ids = ids_request(rows, len).swap_remove(1);
    arch.signature()
        .inputs
        .iter()
        .map(|s| {
            if s.name == "input_ids" {
                ids.clone()
            } else {
                None
            }
        })
        .collect()
}

/// Median seconds of `runs` calls of `f` after 3 warm-up calls.
fn median(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn ids_request(rows: usize, len: usize) -> Vec<Option<HostTensor>> {
    // Token ids in the ordinary vocabulary range, [CLS] first and [SEP] last.
    let mut ids = Vec::with_capacity(rows * len);
    for r in 0..rows {
        for j in 0..len {
            ids.push(match j {
                0 => 101,
                j if j + 1 == len => 102,
                j => 1000 + ((r * 7919 + j * 104_729) % 28_000) as i64,
            });
        }
    }
    vec![
        None,
        Some(HostTensor {
            shape: vec![rows, len],
            data: HostData::I64(ids),
        }),
        None,
        None,
    ]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "resnet18".into());
    let mut batches: Vec<usize> = Vec::new();
    let mut runs: Option<usize> = None;
    let mut tokens = 128;
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = Some(args.next().context("--runs N")?.parse()?);
        } else if a == "--tokens" {
            tokens = args.next().context("--tokens N")?.parse()?;
        } else {
            batches.push(a.parse().with_context(|| format!("batch size {a:?}"))?);
        }
    }
    if batches.is_empty() {
        batches = vec![1, 8];
    }
    let threads = candle_core::utils::get_num_threads();
    match which.as_str() {
        preset if vision_family(preset).is_some() => {
            let family = vision_family(preset).context("a vision preset")?;
            let (model, row) = vision(family, preset)?;
            for b in batches {
                let input = HostTensor {
                    shape: vec![b, 3, 224, 224],
                    data: HostData::F32(pseudo(b * row, 7, 1.0)),
                };
                let t = median(runs.unwrap_or(if b > 1 { 7 } else { 15 }), || {
                    let p = model
                        .prepare(vec![Some(input.clone())])
                        .map_err(anyhow::Error::msg)?;
                    model.forward(&[&p])?;
                    Ok(())
                })?;
                println!(
                    "wick {preset} 224x224 batch {b}: {:.1} ms, {:.1} images/s (threads {threads})",
                    t * 1e3,
                    b as f64 / t
                );
            }
        }
        "minilm" => {
            let model = minilm()?;
            for b in batches {
                let request = ids_request(b, tokens);
                let t = median(runs.unwrap_or(if b > 1 { 7 } else { 15 }), || {
                    let p = model.prepare(request.clone()).map_err(anyhow::Error::msg)?;
                    model.forward(&[&p])?;
                    Ok(())
                })?;
                println!("wick minilm seq {tokens} batch {b}: {:.1} ms, {:.1} sequences/s (threads {threads})", t * 1e3, b as f64 / t);
            }
        }
        "minilm-singles" => {
            let model = minilm()?;
            for b in batches {
                let requests: Vec<_> = (0..b).map(|_| ids_request(1, tokens)).collect();
                let t = median(runs.unwrap_or(7), || {
                    for r in &requests {
                        let p = model.prepare(r.clone()).map_err(anyhow::Error::msg)?;
                        model.forward(&[&p])?;
                    }
                    Ok(())
                })?;
                println!("wick minilm seq {tokens} {b} single requests: {:.1} ms, {:.1} sequences/s (threads {threads})", t * 1e3, b as f64 / t);
            }
        }
        "roberta" | "distilbert" | "mpnet" => {
            let (arch, model) = text_family(&which)?;
            for b in batches {
                let request = text_request(&arch, b, tokens);
                let t = median(runs.unwrap_or(if b > 1 { 7 } else { 15 }), || {
                    let p = model.prepare(request.clone()).map_err(anyhow::Error::msg)?;
                    model.forward(&[&p])?;
                    Ok(())
                })?;
                println!("wick {which} seq {tokens} batch {b}: {:.1} ms, {:.1} sequences/s (threads {threads})", t * 1e3, b as f64 / t);
            }
        }
        other => bail!("unknown case {other:?}: a vision preset (resnet18, convnext_tiny, ...), minilm, minilm-singles, roberta, distilbert or mpnet"),
    }
    Ok(())
}
