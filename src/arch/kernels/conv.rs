//! CPU building blocks of convolutional networks (`resnet`): convolutions with BatchNorm folded in,
//! computed as im2col + one matmul per batch, with bias, residual and ReLU fused into one pass.
//!
//! Why not candle's `conv2d` + `batch_norm`: candle runs im2col per image and then BatchNorm,
//! ReLU and the residual add as four more passes over memory, each allocating a tensor (stock
//! candle ran resnet18 at 0.4× PyTorch's speed, docs/kernels.md). Here activations
//! live in channel-major layout
//! `[C, N, H, W]` ([`Planes`]), so one convolution of the whole batch is a single matmul
//! `W[Cout, Cin·k·k] × cols[Cin·k·k, N·OH·OW]` whose result is already in that layout; the
//! BatchNorm of eval mode is an affine map per output channel, folded into `W` and a bias at load
//! time; and one epilogue pass adds the bias (and the block's residual) and applies ReLU. The
//! matmul is candle's (gemm, multi-threaded); the memory passes are parallel over rows with rayon.
//! 3×3 stride-1 convolutions, most of a ResNet's work, take the Winograd route instead
//! ([`super::winograd`]), with the same folded weights and the same fused epilogue.

use candle_core::{bail, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::depthwise::{activate, depthwise, DepthwiseSpec};
use super::fused::{hardswish, sigmoid, Act};
use super::planes::{with_slice, Planes};
use super::winograd::Winograd3x3;

/// torchvision's `nn.BatchNorm2d` default epsilon.
const BN_EPS: f64 = 1e-5;

/// Upper bound on one im2col buffer, in f32 elements (8 MiB): larger batches or images are
/// convolved in column chunks, so memory stays bounded whatever the request size. Measured on
/// resnet18 at batch 8: buffers of 64 MiB cost 15% of the time in page faults (glibc maps every
/// allocation above 32 MiB afresh) and fall out of the L3 cache; 8 MiB chunks avoid both.
const COLS_BUDGET: usize = 2 << 20;

/// Geometry of one `nn.Conv2d(bias=False)` followed by its `nn.BatchNorm2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    /// `nn.Conv2d`'s `groups`: input and output channels split into this many independent
    /// convolutions (ResNeXt's 3x3 convolutions). 1 for a dense convolution.
    pub groups: usize,
    /// `nn.Conv2d`'s `dilation`; only depthwise convolutions (`groups == cin == cout`) take
    /// other values than 1 (MobileNetV3's `dilated` tail).
    pub dilation: usize,
}

impl ConvSpec {
    /// A dense (`groups = 1`) convolution.
    pub fn dense(cin: usize, cout: usize, kernel: usize, stride: usize, pad: usize) -> ConvSpec {
        ConvSpec {
            cin,
            cout,
            kernel,
            stride,
            pad,
            groups: 1,
            dilation: 1,
        }
    }

    /// A depthwise convolution (`groups == cin == cout`) of `channels` channels with
    /// torchvision's padding `(kernel - 1) / 2 · dilation`.
    pub fn depthwise(channels: usize, kernel: usize, stride: usize, dilation: usize) -> ConvSpec {
        ConvSpec {
            cin: channels,
            cout: channels,
            kernel,
            stride,
            pad: (kernel - 1) / 2 * dilation,
            groups: channels,
            dilation,
        }
    }

    fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.cin && self.groups == self.cout
    }
}

/// How a convolution is computed.
#[derive(Debug, Clone)]
enum Kernel {
    /// im2col + matmul with the folded weights `[cout, cin·k·k]` (contiguous).
    Im2col(Tensor),
    /// 3×3, stride 1, padding 1: Winograd F(2×2, 3×3) (see [`super::winograd`]).
    Winograd(Winograd3x3),
    /// `groups == cin == cout`: the direct kernel of [`super::depthwise`], weights `[c, k·k]`.
    Depthwise(Vec<f32>),
}

/// A convolution with its BatchNorm folded in: `y = W'·x + b'` where
/// `W' = W·γ/√(σ²+ε)` and `b' = β − μ·γ/√(σ²+ε)` per output channel.
#[derive(Debug, Clone)]
pub struct ConvBn {
    kernel: Kernel,
    bias: Vec<f32>,
    spec: ConvSpec,
}

impl ConvBn {
    /// Loads `conv.weight` and `bn.{weight,bias,running_mean,running_var}` by torchvision's names
    /// and folds them. Works on the recording backend's placeholders too (they are zeros).
    pub fn load(conv: VarBuilder, bn: VarBuilder, spec: ConvSpec) -> candle_core::Result<ConvBn> {
        Self::load_eps(conv, bn, spec, BN_EPS)
    }

    /// [`ConvBn::load`] with another BatchNorm epsilon (MobileNetV3's is 1e-3).
    pub fn load_eps(
        conv: VarBuilder,
        bn: VarBuilder,
        spec: ConvSpec,
        eps: f64,
    ) -> candle_core::Result<ConvBn> {
        check_groups(&spec)?;
        let k = spec.kernel;
        let g = spec.groups;
        // torchvision stores a grouped weight as `[cout, cin / groups, k, k]`: output channel
        // `co` of group `co / (cout / groups)` sees only that group's input channels.
        let cin_g = spec.cin / g;
        let w = conv.get((spec.cout, cin_g, k, k), "weight")?;
        let gamma = bn.get(spec.cout, "weight")?;
        let beta = bn.get(spec.cout, "bias")?;
        let mean = bn.get(spec.cout, "running_mean")?;
        let var = bn.get(spec.cout, "running_var")?;
        let scale = gamma.div(&(var + eps)?.sqrt()?)?;
        let weight = w
            .reshape((spec.cout, cin_g * k * k))?
            .broadcast_mul(&scale.reshape((spec.cout, 1))?)?
            .contiguous()?;
        let bias = (beta - mean.mul(&scale)?)?.to_vec1::<f32>()?;
        ConvBn::from_folded(weight, bias, spec)
    }

    /// Loads a plain `nn.Conv2d(bias=True)` (`conv.weight`, `conv.bias`): ConvNeXt's stem,
    /// downsampling and depthwise convolutions.
    pub fn with_bias(conv: VarBuilder, spec: ConvSpec) -> candle_core::Result<ConvBn> {
        check_groups(&spec)?;
        let (k, cin_g) = (spec.kernel, spec.cin / spec.groups);
        let w = conv.get((spec.cout, cin_g, k, k), "weight")?;
        let bias = conv.get(spec.cout, "bias")?.to_vec1::<f32>()?;
        ConvBn::from_folded(w.reshape((spec.cout, cin_g * k * k))?, bias, spec)
    }

    /// A convolution from weights already in the kernel's form: `weight` `[cout, cin/groups·k·k]`
    /// with every affine map after it folded in, and its `bias`.
    pub fn from_folded(
        weight: Tensor,
        bias: Vec<f32>,
        spec: ConvSpec,
    ) -> candle_core::Result<ConvBn> {
        check_groups(&spec)?;
        if spec.dilation != 1 && !spec.is_depthwise() {
            bail!("only depthwise convolutions take a dilation");
        }
        let weight = weight.contiguous()?;
        let kernel = if spec.is_depthwise() {
            Kernel::Depthwise(weight.flatten_all()?.to_vec1::<f32>()?)
        } else if (spec.kernel, spec.stride, spec.pad, spec.groups) == (3, 1, 1, 1) {
            Kernel::Winograd(Winograd3x3::new(&weight, spec.cin, spec.cout)?)
        } else {
            Kernel::Im2col(weight)
        };
        Ok(ConvBn { kernel, bias, spec })
    }

    /// Convolves `x`, adds the folded bias and, if given, `residual` (same shape as the output),
    /// then applies ReLU if asked: the whole tail of a ResNet block in one pass.
    pub fn forward(
        &self,
        x: &Planes,
        residual: Option<&Planes>,
        relu: bool,
    ) -> candle_core::Result<Planes> {
        let act = if relu { Act::Relu } else { Act::Identity };
        self.forward_act(x, residual, act)
    }

    /// [`ConvBn::forward`] with any activation (MobileNetV3's hardswish, EfficientNet's SiLU,
    /// ConvNeXt's GELU). A depthwise convolution takes no residual.
    pub fn forward_act(
        &self,
        x: &Planes,
        residual: Option<&Planes>,
        act: Act,
    ) -> candle_core::Result<Planes> {
        let weight = match &self.kernel {
            Kernel::Winograd(w) => return self.winograd(w, x, residual, act),
            Kernel::Depthwise(w) => {
                if residual.is_some() {
                    bail!("a depthwise convolution takes no residual");
                }
                return depthwise(x, w, &self.bias, &DepthwiseSpec::from(&self.spec), act);
            }
            Kernel::Im2col(weight) => weight,
        };
        let ConvSpec {
            cin,
            cout,
            kernel: k,
            stride: s,
            pad,
            groups,
            ..
        } = self.spec;
        if x.c != cin {
            bail!("convolution expects {cin} channels, got {}", x.c);
        }
        if x.h + 2 * pad < k || x.w + 2 * pad < k {
            bail!("a {}x{} input is smaller than the {k}x{k} kernel", x.h, x.w);
        }
        let (oh, ow) = ((x.h + 2 * pad - k) / s + 1, (x.w + 2 * pad - k) / s + 1);
        let total = x.n * oh * ow;
        if let Some(r) = residual {
            if (r.c, r.n, r.h, r.w) != (cout, x.n, oh, ow) {
                bail!("residual shape does not match the convolution output");
            }
        }
        let mut out = vec![0f32; cout * total];
        if groups == 1 {
            self.group(weight, x, &mut out, (&self.bias, residual), act)?;
        } else {
            // Each group is a dense convolution of its own channel planes: in `[C, N·H·W]`
            // layout those are contiguous rows of the input, and its outputs are contiguous
            // rows of `out`, so no copy or transpose joins the groups.
            let (cin_g, cout_g) = (cin / groups, cout / groups);
            for (gi, out_g) in out.chunks_mut(cout_g * total).enumerate() {
                let planes = Planes {
                    data: x.data.narrow(0, gi * cin_g, cin_g)?,
                    c: cin_g,
                    ..*x
                };
                let residual = match residual {
                    Some(r) => Some(Planes {
                        data: r.data.narrow(0, gi * cout_g, cout_g)?,
                        c: cout_g,
                        ..*r
                    }),
                    None => None,
                };
                let w_g = weight.narrow(0, gi * cout_g, cout_g)?;
                let bias = &self.bias[gi * cout_g..(gi + 1) * cout_g];
                self.group(&w_g, &planes, out_g, (bias, residual.as_ref()), act)?;
            }
        }
        Planes::from_parts(out, cout, x.n, oh, ow)
    }

    /// The Winograd route; its epilogue fuses only ReLU, so other activations take one more pass.
    fn winograd(
        &self,
        w: &Winograd3x3,
        x: &Planes,
        residual: Option<&Planes>,
        act: Act,
    ) -> candle_core::Result<Planes> {
        if matches!(act, Act::Relu | Act::Identity) {
            return w.forward(x, &self.bias, residual, act == Act::Relu);
        }
        let y = w.forward(x, &self.bias, residual, false)?;
        let mut values = y.data.flatten_all()?.to_vec1::<f32>()?;
        values
            .par_chunks_mut(1 << 14)
            .for_each(|c| activate(c, act));
        Planes::from_parts(values, y.c, y.n, y.h, y.w)
    }

    /// One dense convolution (a whole convolution, or one group of a grouped one) of `x` with
    /// `weight` `[cout, cin·k·k]` into `out` (`[cout, N·OH·OW]`), with the fused epilogue.
    fn group(
        &self,
        weight: &Tensor,
        x: &Planes,
        out: &mut [f32],
        (bias, residual): (&[f32], Option<&Planes>),
        act: Act,
    ) -> candle_core::Result<()> {
        let ConvSpec {
            kernel: k,
            stride: s,
            pad,
            ..
        } = self.spec;
        let (oh, ow) = ((x.h + 2 * pad - k) / s + 1, (x.w + 2 * pad - k) / s + 1);
        let total = x.n * oh * ow;
        let depth = x.c * k * k;
        let pointwise = k == 1 && s == 1 && pad == 0;
        let chunk = if pointwise {
            total
        } else {
            (COLS_BUDGET / depth).clamp(1, total)
        };
        let mut start = 0;
        while start < total {
            let end = (start + chunk).min(total);
            let rhs = if pointwise {
                x.data.narrow(1, start, end - start)?
            } else {
                im2col(x, &self.spec, (oh, ow), (start, end))?
            };
            let product = weight.matmul(&rhs)?;
            let residual = residual.map(|r| &r.data);
            epilogue(out, &product, (bias, residual), (start, end), act)?;
            start = end;
        }
        Ok(())
    }
}

/// Writes `act(product + bias (+ residual))` into columns `start..end` of every output row.
fn epilogue(
    out: &mut [f32],
    product: &Tensor,
    (bias, residual): (&[f32], Option<&Tensor>),
    cols: (usize, usize),
    act: Act,
) -> candle_core::Result<()> {
    with_slice(product, |p| match residual {
        Some(r) => with_slice(r, |r| fill_act(out, p, bias, Some(r), cols, act)),
        None => {
            fill_act(out, p, bias, None, cols, act);
            Ok(())
        }
    })?
}

/// [`fill_rows`] with `act` resolved once, so each activation gets its own vector loop.
fn fill_act(
    out: &mut [f32],
    p: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    cols: (usize, usize),
    act: Act,
) {
    match act {
        Act::Identity => fill_rows(out, p, bias, residual, cols, |v| v),
        // ReLU as a select that keeps NaN (as torch.relu does) and vectorises, unlike `f32::max`.
        Act::Relu => fill_rows(
            out,
            p,
            bias,
            residual,
            cols,
            |v| if v < 0.0 { 0.0 } else { v },
        ),
        Act::Hardswish => fill_rows(out, p, bias, residual, cols, hardswish),
        Act::Silu => fill_rows(out, p, bias, residual, cols, |v| v * sigmoid(v)),
        other => fill_rows(out, p, bias, residual, cols, |v| other.apply(v)),
    }
}

/// Refuses channel counts that do not split into the spec's groups.
fn check_groups(spec: &ConvSpec) -> candle_core::Result<()> {
    let g = spec.groups;
    if g == 0 || !spec.cin.is_multiple_of(g) || !spec.cout.is_multiple_of(g) || spec.kernel == 0 {
        bail!(
            "{} input and {} output channels do not split into {g} groups",
            spec.cin,
            spec.cout
        );
    }
    Ok(())
}

/// The epilogue's loop, generic over the activation so each variant is a tight vector loop.
#[inline(always)]
fn fill_rows(
    out: &mut [f32],
    product: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    (start, end): (usize, usize),
    f: impl Fn(f32) -> f32 + Sync,
) {
    let len = end - start;
    let total = out.len() / bias.len();
    out.par_chunks_mut(total).enumerate().for_each(|(co, row)| {
        let dst = &mut row[start..end];
        let src = &product[co * len..(co + 1) * len];
        let b = bias[co];
        match residual {
            Some(r) => {
                let r = &r[co * total + start..co * total + end];
                for ((d, s), r) in dst.iter_mut().zip(src).zip(r) {
                    *d = f(s + b + r);
                }
            }
            None => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f(s + b);
                }
            }
        }
    });
}

/// The im2col matrix of output columns `start..end` (columns ordered image, row, column):
/// row `(ci, kh, kw)` holds the input value each output position sees through that kernel tap,
/// zero where the tap falls into the padding.
fn im2col(
    x: &Planes,
    spec: &ConvSpec,
    (oh, ow): (usize, usize),
    (start, end): (usize, usize),
) -> candle_core::Result<Tensor> {
    let ConvSpec {
        kernel: k,
        stride: s,
        pad,
        ..
    } = *spec;
    let (n, h, w) = (x.n, x.h, x.w);
    let len = end - start;
    let depth = x.c * k * k;
    let mut cols = vec![0f32; depth * len];
    with_slice(&x.data, |src| {
        cols.par_chunks_mut(len).enumerate().for_each(|(row, dst)| {
            let (ci, kh, kw) = (row / (k * k), (row / k) % k, row % k);
            let plane = &src[ci * n * h * w..(ci + 1) * n * h * w];
            let mut j = start;
            while j < end {
                let (img, rem) = (j / (oh * ow), j % (oh * ow));
                let (y, x0) = (rem / ow, rem % ow);
                let run = (ow - x0).min(end - j);
                let iy = (y * s + kh) as isize - pad as isize;
                if iy >= 0 && (iy as usize) < h {
                    let line = &plane[(img * h + iy as usize) * w..(img * h + iy as usize + 1) * w];
                    tap_row(
                        &mut dst[j - start..j - start + run],
                        line,
                        x0,
                        s,
                        kw as isize - pad as isize,
                    );
                }
                j += run;
            }
        });
    })?;
    Tensor::from_vec(cols, (depth, len), &candle_core::Device::Cpu)
}

/// `dst[t] = line[(x0 + t)·s + offset]` where that index is inside the line (the rest stays 0).
fn tap_row(dst: &mut [f32], line: &[f32], x0: usize, s: usize, offset: isize) {
    let w = line.len() as isize;
    let first = (x0 * s) as isize + offset;
    let s_i = s as isize;
    // Valid t: 0 <= first + t·s < w.
    let t_lo = if first >= 0 {
        0
    } else {
        ((-first + s_i - 1) / s_i) as usize
    };
    let t_hi = if first >= w {
        0
    } else {
        (((w - first + s_i - 1) / s_i) as usize).min(dst.len())
    };
    if t_lo >= t_hi {
        return;
    }
    let i0 = (first + (t_lo as isize) * s_i) as usize;
    if s == 1 {
        dst[t_lo..t_hi].copy_from_slice(&line[i0..i0 + (t_hi - t_lo)]);
    } else {
        for (d, v) in dst[t_lo..t_hi].iter_mut().zip(line[i0..].iter().step_by(s)) {
            *d = *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::testing::pseudo;
    use candle_core::{DType, Device, Module, ModuleT};
    use std::collections::HashMap;

    /// The folded, fused, batched convolution equals candle's conv2d + batch_norm + relu +
    /// residual on NCHW, for strides, paddings, 1x1 and chunked columns.
    #[test]
    fn conv_bn_matches_reference_ops() {
        let dev = Device::Cpu;
        for (cin, cout, k, s, pad, h, w, n, groups) in [
            (3, 8, 7, 2, 3, 13, 10, 2, 1),
            (4, 6, 3, 1, 1, 9, 7, 3, 1),
            (4, 6, 3, 2, 1, 8, 9, 1, 1),
            (5, 7, 1, 1, 0, 6, 5, 2, 1),
            (5, 7, 1, 2, 0, 7, 6, 2, 1),
            // Grouped (ResNeXt): 3x3 at strides 1 and 2, and a grouped 1x1.
            (8, 12, 3, 1, 1, 7, 6, 2, 4),
            (8, 8, 3, 2, 1, 9, 8, 3, 2),
            (6, 9, 1, 1, 0, 5, 4, 2, 3),
        ] {
            let spec = ConvSpec {
                cin,
                cout,
                kernel: k,
                stride: s,
                pad,
                groups,
                dilation: 1,
            };
            let mut ts = HashMap::new();
            let wv = pseudo(cout * cin / groups * k * k, 1);
            ts.insert(
                "c.weight".to_string(),
                Tensor::from_vec(wv, (cout, cin / groups, k, k), &dev).unwrap(),
            );
            ts.insert(
                "b.weight".to_string(),
                Tensor::from_vec(pseudo(cout, 2), cout, &dev).unwrap(),
            );
            ts.insert(
                "b.bias".to_string(),
                Tensor::from_vec(pseudo(cout, 3), cout, &dev).unwrap(),
            );
            ts.insert(
                "b.running_mean".to_string(),
                Tensor::from_vec(pseudo(cout, 4), cout, &dev).unwrap(),
            );
            let var: Vec<f32> = pseudo(cout, 5).iter().map(|v| v.abs() + 0.5).collect();
            ts.insert(
                "b.running_var".to_string(),
                Tensor::from_vec(var, cout, &dev).unwrap(),
            );
            let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, &dev);
            let conv = ConvBn::load(vb.pp("c"), vb.pp("b"), spec).unwrap();

            let xv = pseudo(n * cin * h * w, 6);
            let x = Tensor::from_vec(xv.clone(), (n, cin, h, w), &dev).unwrap();
            let cfg = candle_nn::Conv2dConfig {
                padding: pad,
                stride: s,
                groups,
                ..Default::default()
            };
            let reference_conv = candle_nn::Conv2d::new(ts["c.weight"].clone(), None, cfg);
            let bn = candle_nn::BatchNorm::new(
                cout,
                ts["b.running_mean"].clone(),
                ts["b.running_var"].clone(),
                ts["b.weight"].clone(),
                ts["b.bias"].clone(),
                BN_EPS,
            )
            .unwrap();
            let y = bn
                .forward_t(&reference_conv.forward(&x).unwrap(), false)
                .unwrap();
            let (oh, ow) = (y.dim(2).unwrap(), y.dim(3).unwrap());
            let res = pseudo(n * cout * oh * ow, 7);
            let r = Tensor::from_vec(res.clone(), (n, cout, oh, ow), &dev).unwrap();
            let want = (y + r)
                .unwrap()
                .relu()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();

            let planes = Planes::from_nchw(&xv, n, cin, h, w).unwrap();
            let residual = Planes::from_nchw(&res, n, cout, oh, ow).unwrap();
            let got = conv.forward(&planes, Some(&residual), true).unwrap();
            let got_v = got.data.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for img in 0..n {
                for co in 0..cout {
                    for p in 0..oh * ow {
                        let a = got_v[(co * n + img) * oh * ow + p];
                        let b = want[(img * cout + co) * oh * ow + p];
                        assert!((a - b).abs() < 1e-4, "k{k} s{s} g{groups}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn tap_row_handles_edges_and_strides() {
        let line = [1.0, 2.0, 3.0, 4.0, 5.0];
        let mut dst = [0.0; 4];
        tap_row(&mut dst, &line, 0, 1, -1);
        assert_eq!(dst, [0.0, 1.0, 2.0, 3.0]);
        let mut dst = [0.0; 3];
        tap_row(&mut dst, &line, 0, 2, -1);
        assert_eq!(dst, [0.0, 2.0, 4.0]);
        let mut dst = [0.0; 3];
        tap_row(&mut dst, &line, 1, 2, 1);
        assert_eq!(dst, [4.0, 0.0, 0.0]);
    }
}
