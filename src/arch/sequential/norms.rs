//! Normalisation layers of a `sequential` stack in eval mode: BatchNorm as a per-channel
//! affine map precomputed at load time, LayerNorm and GroupNorm with their statistics per row
//! (or per group) accumulated in f64, one parallel pass each.

use candle_nn::VarBuilder;

use super::ops::par_planes;

fn vector(vb: &VarBuilder, len: usize, name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(len, name)?.to_vec1::<f32>()
}

/// BatchNorm's `running_mean`, `running_var` (and `weight`, `bias` when affine) as the
/// `(scale, shift)` of `x·scale + shift` per channel.
pub fn batch_norm(
    vb: &VarBuilder,
    features: usize,
    eps: f64,
    affine: bool,
) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let mean = vector(vb, features, "running_mean")?;
    let var = vector(vb, features, "running_var")?;
    let (gamma, beta) = if affine {
        (
            vector(vb, features, "weight")?,
            vector(vb, features, "bias")?,
        )
    } else {
        (vec![1.0; features], vec![0.0; features])
    };
    // Computed in f64 and rounded once: closer to PyTorch's F32 result than
    // rounding at every step.
    let scale: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| f64::from(*g) / (f64::from(*v) + eps).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| (f64::from(*b) - f64::from(*m) * s) as f32)
        .collect();
    Ok((scale.iter().map(|s| *s as f32).collect(), shift))
}

/// `x·scale[c] + shift[c]` over rows shaped `[C, ...]`.
pub fn affine(mut v: Vec<f32>, input: &[usize], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let c = input[0];
    let plane = input[1..].iter().product::<usize>();
    par_planes(&mut v, plane, |i, p| {
        let (s, b) = (scale[i % c], shift[i % c]);
        for v in p {
            *v = *v * s + b;
        }
    });
    v
}

/// LayerNorm over the last `size` values of every row.
pub fn layer_norm(
    mut v: Vec<f32>,
    size: usize,
    eps: f64,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    par_planes(&mut v, size, |_, row| {
        normalise(row, eps);
        for (j, v) in row.iter_mut().enumerate() {
            let w = weight.map_or(1.0, |w| w[j]);
            let b = bias.map_or(0.0, |b| b[j]);
            *v = *v * w + b;
        }
    });
    v
}

/// GroupNorm of rows shaped `[C, ...]`: statistics per group of `C / groups` channels, then the
/// affine map per channel.
pub fn group_norm(
    mut v: Vec<f32>,
    input: &[usize],
    (groups, eps): (usize, f64),
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let c = input[0];
    let plane = input[1..].iter().product::<usize>();
    let per_group = c / groups;
    par_planes(&mut v, per_group * plane, |i, chunk| {
        normalise(chunk, eps);
        let first = (i % groups) * per_group;
        for (k, p) in chunk.chunks_mut(plane).enumerate() {
            let w = weight.map_or(1.0, |w| w[first + k]);
            let b = bias.map_or(0.0, |b| b[first + k]);
            for v in p {
                *v = *v * w + b;
            }
        }
    });
    v
}

/// `(x - mean) / sqrt(var + eps)` in place, statistics accumulated in f64 (biased variance, as
/// PyTorch's normalisation layers use).
fn normalise(v: &mut [f32], eps: f64) {
    let len = v.len() as f64;
    let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / len;
    let var = v
        .iter()
        .map(|x| (f64::from(*x) - mean).powi(2))
        .sum::<f64>()
        / len;
    let inv = 1.0 / (var + eps).sqrt();
    for x in v {
        *x = ((f64::from(*x) - mean) * inv) as f32;
    }
}
