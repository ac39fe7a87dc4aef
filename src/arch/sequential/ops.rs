//! The loaded layers of a `sequential` stack and their eval-mode forward passes on row-major
//! batches (`[N, ...]` values in one `Vec<f32>`).
//!
//! Matrix products (Linear, and the convolutions of [`super::window`]) run on candle's gemm;
//! every other layer is one pass over memory, parallel over planes or rows with rayon, so no
//! step uses candle's separate elementwise pool (see [`crate::arch::kernels::fused`] for why
//! that matters on few cores). Normalisation layers are in [`super::norms`].

use candle_core::{bail, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::layers::{Activation, ConvGeometry, LayerSpec, PoolGeometry};
use super::norms::{affine, batch_norm, group_norm, layer_norm};
use super::window::{adaptive_avg_pool, avg_pool, conv, max_pool, pool};
use crate::arch::kernels::fused::Act;
use crate::arch::kernels::planes::with_slice;

/// Below this many values a pass runs on the calling thread (a rayon dispatch costs more).
const PARALLEL_MIN: usize = 16 << 10;

/// A batch flowing through the stack: `n` rows of `row` values each (shape known per layer).
pub struct Batch {
    pub n: usize,
    pub data: Vec<f32>,
}

/// One layer ready to run, with the row shapes it takes and makes.
pub struct Step {
    op: Op,
    input: Vec<usize>,
    output: Vec<usize>,
}

enum Op {
    Linear {
        /// `[out, in]`.
        weight: Tensor,
        bias: Option<Vec<f32>>,
    },
    Conv {
        /// `[cout, cin/groups·kh·kw]`, contiguous.
        weight: Tensor,
        bias: Option<Vec<f32>>,
        geometry: ConvGeometry,
    },
    /// BatchNorm in eval mode: `x·scale[c] + shift[c]`.
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    LayerNorm {
        size: usize,
        eps: f64,
        weight: Option<Vec<f32>>,
        bias: Option<Vec<f32>>,
    },
    GroupNorm {
        groups: usize,
        eps: f64,
        weight: Option<Vec<f32>>,
        bias: Option<Vec<f32>>,
    },
    Embedding {
        table: Vec<f32>,
        dim: usize,
    },
    Act(Activation),
    Softmax {
        /// Index into the row shape.
        dim: usize,
        log: bool,
    },
    MaxPool(PoolGeometry),
    AvgPool {
        geometry: PoolGeometry,
        count_include_pad: bool,
        divisor: Option<usize>,
    },
    AdaptiveAvgPool,
    /// Dropout, Identity, Flatten, Unflatten: the values stay, the shape changes.
    Reshape,
}

fn vector(vb: &VarBuilder, len: usize, name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(len, name)?.to_vec1::<f32>()
}

fn optional(
    vb: &VarBuilder,
    len: usize,
    name: &str,
    present: bool,
) -> candle_core::Result<Option<Vec<f32>>> {
    if present {
        vector(vb, len, name).map(Some)
    } else {
        Ok(None)
    }
}

/// A convolution's weight, flattened to `[cout, cin/groups × kernel]` for the im2col product.
fn load_conv(vb: &VarBuilder, g: &ConvGeometry, bias: bool) -> candle_core::Result<Op> {
    let cin_g = g.cin / g.groups;
    let weight = if g.dims == 1 {
        vb.get((g.cout, cin_g, g.kernel[1]), "weight")?
    } else {
        vb.get((g.cout, cin_g, g.kernel[0], g.kernel[1]), "weight")?
    };
    Ok(Op::Conv {
        weight: weight
            .reshape((g.cout, cin_g * g.kernel[0] * g.kernel[1]))?
            .contiguous()?,
        bias: optional(vb, g.cout, "bias", bias)?,
        geometry: *g,
    })
}

/// A LayerNorm over the trailing `shape`, with its elementwise weight and bias if it has them.
fn load_layer_norm(
    vb: &VarBuilder,
    shape: &[usize],
    eps: f64,
    weight: bool,
    bias: bool,
) -> candle_core::Result<Op> {
    let get = |name: &str| vb.get(shape, name)?.flatten_all()?.to_vec1::<f32>();
    Ok(Op::LayerNorm {
        size: shape.iter().product(),
        eps,
        weight: if weight { Some(get("weight")?) } else { None },
        bias: if bias { Some(get("bias")?) } else { None },
    })
}

/// PyTorch's softmax `dim` (negative counts from the end, the batch dimension included) as an
/// index into the per-row shape of rank `rank`.
fn softmax_dim(dim: i64, rank: usize) -> usize {
    let full = rank as i64 + 1;
    let d = if dim < 0 { dim + full } else { dim };
    (d - 1) as usize
}

impl Step {
    /// Loads layer `spec` from `vb` (already at the layer's index, e.g. `features.3`), asking
    /// for exactly the parameters and buffers PyTorch's module has.
    pub fn load(
        spec: &LayerSpec,
        vb: VarBuilder,
        input: Vec<usize>,
        output: Vec<usize>,
    ) -> candle_core::Result<Step> {
        let op = match spec {
            LayerSpec::Linear {
                in_features,
                out_features,
                bias,
            } => Op::Linear {
                weight: vb.get((*out_features, *in_features), "weight")?,
                bias: optional(&vb, *out_features, "bias", *bias)?,
            },
            LayerSpec::Conv { geometry, bias } => load_conv(&vb, geometry, *bias)?,
            LayerSpec::BatchNorm {
                features,
                eps,
                affine,
                ..
            } => {
                let (scale, shift) = batch_norm(&vb, *features, *eps, *affine)?;
                Op::Affine { scale, shift }
            }
            LayerSpec::LayerNorm {
                shape,
                eps,
                weight,
                bias,
            } => load_layer_norm(&vb, shape, *eps, *weight, *bias)?,
            LayerSpec::GroupNorm {
                groups,
                channels,
                eps,
                affine,
            } => Op::GroupNorm {
                groups: *groups,
                eps: *eps,
                weight: optional(&vb, *channels, "weight", *affine)?,
                bias: optional(&vb, *channels, "bias", *affine)?,
            },
            LayerSpec::Embedding { count, dim } => Op::Embedding {
                table: vb
                    .get((*count, *dim), "weight")?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
                dim: *dim,
            },
            LayerSpec::Act(a) => Op::Act(*a),
            LayerSpec::Softmax { dim, log } => Op::Softmax {
                dim: softmax_dim(*dim, input.len()),
                log: *log,
            },
            LayerSpec::MaxPool(g) => Op::MaxPool(*g),
            LayerSpec::AvgPool {
                geometry,
                count_include_pad,
                divisor,
            } => Op::AvgPool {
                geometry: *geometry,
                count_include_pad: *count_include_pad,
                divisor: *divisor,
            },
            LayerSpec::AdaptiveAvgPool { .. } => Op::AdaptiveAvgPool,
            LayerSpec::NoOp | LayerSpec::Flatten { .. } | LayerSpec::Unflatten { .. } => {
                Op::Reshape
            }
        };
        Ok(Step { op, input, output })
    }

    /// Token ids `[N, ...]` through the Embedding this step holds (ids checked on admission).
    pub fn embed(&self, ids: &[u32], n: usize) -> candle_core::Result<Batch> {
        let Op::Embedding { table, dim } = &self.op else {
            bail!("token ids reach a layer that is not an Embedding");
        };
        let count = table.len() / dim;
        let mut data = Vec::with_capacity(ids.len() * dim);
        for &id in ids {
            let id = id as usize;
            if id >= count {
                bail!("token id {id} is outside the embedding table");
            }
            let start = id * dim;
            data.extend_from_slice(&table[start..start + dim]);
        }
        Ok(Batch { n, data })
    }

    /// Runs the layer on a batch of rows shaped as [`Step::load`] was told.
    pub fn forward(&self, x: Batch) -> candle_core::Result<Batch> {
        let n = x.n;
        let data = match &self.op {
            Op::Linear { weight, bias } => linear(x.data, weight, bias.as_deref())?,
            Op::Conv {
                weight,
                bias,
                geometry,
            } => conv(
                &x.data,
                n,
                &self.input,
                &self.output,
                weight,
                bias.as_deref(),
                geometry,
            )?,
            Op::Affine { scale, shift } => affine(x.data, &self.input, scale, shift),
            Op::LayerNorm {
                size,
                eps,
                weight,
                bias,
            } => layer_norm(x.data, *size, *eps, weight.as_deref(), bias.as_deref()),
            Op::GroupNorm {
                groups,
                eps,
                weight,
                bias,
            } => group_norm(
                x.data,
                &self.input,
                (*groups, *eps),
                weight.as_deref(),
                bias.as_deref(),
            ),
            Op::Embedding { .. } => bail!("an Embedding takes token ids, not values"),
            Op::Act(a) => {
                let mut v = x.data;
                activate(&mut v, *a);
                v
            }
            Op::Softmax { dim, log } => {
                let mut v = x.data;
                softmax(&mut v, &self.input, *dim, *log);
                v
            }
            Op::MaxPool(g) => pool(
                &x.data,
                &self.input,
                &self.output,
                |plane, h, w, dst, ow| max_pool(plane, (h, w), g, dst, ow),
            ),
            Op::AvgPool {
                geometry,
                count_include_pad,
                divisor,
            } => pool(
                &x.data,
                &self.input,
                &self.output,
                |plane, h, w, dst, ow| {
                    avg_pool(
                        plane,
                        (h, w),
                        geometry,
                        (*count_include_pad, *divisor),
                        dst,
                        ow,
                    )
                },
            ),
            Op::AdaptiveAvgPool => pool(
                &x.data,
                &self.input,
                &self.output,
                |plane, h, w, dst, ow| adaptive_avg_pool(plane, (h, w), dst, ow),
            ),
            Op::Reshape => x.data,
        };
        Ok(Batch { n, data })
    }
}

/// `x W^T + b` over rows of `weight.dim(1)` values.
fn linear(data: Vec<f32>, weight: &Tensor, bias: Option<&[f32]>) -> candle_core::Result<Vec<f32>> {
    let inner = weight.dim(1)?;
    let rows = data.len() / inner;
    let t = Tensor::from_vec(data, (rows, inner), &Device::Cpu)?;
    let y = t.matmul(&weight.t()?)?;
    let mut out = with_slice(&y, <[f32]>::to_vec)?;
    if let Some(b) = bias {
        add_rows(&mut out, b);
    }
    Ok(out)
}

/// `f(index, chunk)` over consecutive chunks of `len` values, in parallel when worth it.
pub(super) fn par_planes(v: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if len == 0 {
        return;
    }
    if v.len() >= PARALLEL_MIN {
        v.par_chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        v.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

fn add_rows(v: &mut [f32], bias: &[f32]) {
    par_planes(v, bias.len(), |_, row| {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    });
}

fn activate(v: &mut [f32], a: Activation) {
    let chunk = 4096;
    match a {
        // ReLU keeps NaN, as torch.relu does.
        Activation::Relu => par_planes(v, chunk, |_, c| {
            c.iter_mut()
                .for_each(|x| *x = if *x < 0.0 { 0.0 } else { *x })
        }),
        Activation::LeakyRelu(s) => par_planes(v, chunk, |_, c| {
            c.iter_mut()
                .for_each(|x| *x = if *x < 0.0 { *x * s } else { *x })
        }),
        Activation::GeluErf => par_planes(v, chunk, |_, c| {
            c.iter_mut().for_each(|x| *x = Act::GeluErf.apply(*x))
        }),
        Activation::GeluTanh => par_planes(v, chunk, |_, c| {
            c.iter_mut().for_each(|x| *x = Act::GeluTanh.apply(*x))
        }),
        Activation::Silu => par_planes(v, chunk, |_, c| {
            c.iter_mut().for_each(|x| *x = Act::Silu.apply(*x))
        }),
        Activation::Tanh => par_planes(v, chunk, |_, c| c.iter_mut().for_each(|x| *x = x.tanh())),
        Activation::Sigmoid => par_planes(v, chunk, |_, c| {
            c.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()))
        }),
    }
}

/// Softmax (or log-softmax) along row dimension `dim` of rows shaped `shape`.
fn softmax(v: &mut [f32], shape: &[usize], dim: usize, log: bool) {
    let len = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    par_planes(v, len * inner, |_, block| {
        for i in 0..inner {
            let at = |k: usize| k * inner + i;
            let max = (0..len)
                .map(|k| block[at(k)])
                .fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..len).map(|k| (block[at(k)] - max).exp()).sum();
            for k in 0..len {
                let x = block[at(k)] - max;
                block[at(k)] = if log { x - sum.ln() } else { x.exp() / sum };
            }
        }
    });
}
