//! Depthwise convolution (`groups == channels`: MobileNetV3's and EfficientNet's 3×3/5×5,
//! ConvNeXt's 7×7) computed directly on channel-major planes, with bias and activation fused.
//!
//! Why not the grouped im2col route of [`super::conv`]: a depthwise group is one input channel,
//! so each group's "matmul" is a `[1, k·k] × [k·k, H·W]` product: one GEMM call per channel with
//! a fresh k·k-row im2col copy of the plane, all overhead and no reuse. Here each `(channel,
//! image)` plane is convolved on its own (in parallel over planes): the plane is copied once into
//! a zero-padded buffer whose rows are split into `stride` phases (even and odd columns for stride
//! 2), so every kernel tap is a contiguous run of the buffer and the inner loop
//! `acc[x] += w · row[x + offset]` over an output row vectorises, for any stride and dilation.
//! The BatchNorm of eval mode is folded into the weights and bias by [`super::conv::ConvBn`].

use candle_core::bail;
use rayon::prelude::*;

use super::conv::ConvSpec;
use super::fused::{hardswish, sigmoid, Act};
use super::planes::{with_slice, Planes};

/// Geometry of one depthwise `nn.Conv2d(c, c, k, stride, padding, dilation, groups=c)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseSpec {
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub dilation: usize,
}

impl From<&ConvSpec> for DepthwiseSpec {
    /// The geometry of a depthwise `ConvSpec` (`groups == cin == cout`).
    fn from(s: &ConvSpec) -> DepthwiseSpec {
        DepthwiseSpec {
            channels: s.cin,
            kernel: s.kernel,
            stride: s.stride,
            pad: s.pad,
            dilation: s.dilation,
        }
    }
}

impl DepthwiseSpec {
    /// The output size of an `h × w` input, or `None` if the (dilated) kernel does not fit.
    pub fn output(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let span = self.dilation * (self.kernel - 1) + 1;
        let (hp, wp) = (h + 2 * self.pad, w + 2 * self.pad);
        if hp < span || wp < span || self.stride == 0 {
            return None;
        }
        Some(((hp - span) / self.stride + 1, (wp - span) / self.stride + 1))
    }
}

/// Convolves every plane of `x` with its channel's `k × k` filter (`weight` is `[c, k·k]`),
/// adds `bias[c]` and applies `act`.
pub fn depthwise(
    x: &Planes,
    weight: &[f32],
    bias: &[f32],
    spec: &DepthwiseSpec,
    act: Act,
) -> candle_core::Result<Planes> {
    let DepthwiseSpec {
        channels: c,
        kernel: k,
        ..
    } = *spec;
    if x.c != c || weight.len() != c * k * k || bias.len() != c {
        bail!("depthwise convolution of {c} channels got {} channels", x.c);
    }
    let Some((oh, ow)) = spec.output(x.h, x.w) else {
        bail!("a {}x{} input is smaller than the {k}x{k} kernel", x.h, x.w);
    };
    let (n, h, w) = (x.n, x.h, x.w);
    let layout = PaddedLayout::new(spec, h, w);
    let mut out = vec![0f32; c * n * oh * ow];
    with_slice(&x.data, |src| {
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || vec![0f32; layout.len()],
            |buf, (plane, dst)| {
                let ci = plane / n;
                layout.fill(buf, &src[plane * h * w..(plane + 1) * h * w], (h, w));
                let filter = &weight[ci * k * k..(ci + 1) * k * k];
                for (oy, acc) in dst.chunks_mut(ow).enumerate() {
                    acc.fill(bias[ci]);
                    for kh in 0..k {
                        let row = layout.row(buf, oy * spec.stride + kh * spec.dilation);
                        for kw in 0..k {
                            let tap = layout.tap(row, kw * spec.dilation, ow);
                            let wv = filter[kh * k + kw];
                            for (a, v) in acc.iter_mut().zip(tap) {
                                *a += wv * v;
                            }
                        }
                    }
                    activate(acc, act);
                }
            },
        );
    })?;
    Planes::from_parts(out, c, n, oh, ow)
}

/// A zero-padded plane with each row stored as `stride` phases: phase `q` holds padded columns
/// `q, q + s, q + 2s, …`, so the columns output `x` reads through tap offset `o` (`x·s + o`) are
/// `x + o / s` of phase `o % s`, contiguous in `x`.
#[derive(Debug, Clone, Copy)]
struct PaddedLayout {
    pad: usize,
    stride: usize,
    /// Length of one phase.
    phase: usize,
    /// Padded rows.
    rows: usize,
}

impl PaddedLayout {
    fn new(spec: &DepthwiseSpec, h: usize, w: usize) -> PaddedLayout {
        PaddedLayout {
            pad: spec.pad,
            stride: spec.stride,
            phase: (w + 2 * spec.pad).div_ceil(spec.stride),
            rows: h + 2 * spec.pad,
        }
    }

    fn row_len(&self) -> usize {
        self.phase * self.stride
    }

    fn len(&self) -> usize {
        self.rows * self.row_len()
    }

    /// Copies the `h × w` plane `src` into `buf` (the padding stays zero).
    fn fill(&self, buf: &mut [f32], src: &[f32], (h, w): (usize, usize)) {
        buf.fill(0.0);
        let (p, s) = (self.pad, self.stride);
        for (y, line) in src.chunks_exact(w).take(h).enumerate() {
            let row = &mut buf[(y + p) * self.row_len()..(y + p + 1) * self.row_len()];
            if s == 1 {
                row[p..p + w].copy_from_slice(line);
                continue;
            }
            // Phase by phase, so no division per value: phase `q` starts at the first input
            // column `xi0` with `(xi0 + p) % s == q`, then takes every `s`-th.
            for q in 0..s {
                let xi0 = (q + s - p % s) % s;
                if xi0 >= w {
                    continue;
                }
                let start = q * self.phase + (xi0 + p) / s;
                let dst = &mut row[start..(q + 1) * self.phase];
                for (d, v) in dst.iter_mut().zip(line[xi0..].iter().step_by(s)) {
                    *d = *v;
                }
            }
        }
    }

    fn row<'a>(&self, buf: &'a [f32], y: usize) -> &'a [f32] {
        &buf[y * self.row_len()..(y + 1) * self.row_len()]
    }

    /// The `len` values output columns `0..len` see through column offset `offset`.
    fn tap<'a>(&self, row: &'a [f32], offset: usize, len: usize) -> &'a [f32] {
        let start = (offset % self.stride) * self.phase + offset / self.stride;
        &row[start..start + len]
    }
}

/// Applies `act` to every value of `row`, one tight loop per activation.
pub(crate) fn activate(row: &mut [f32], act: Act) {
    match act {
        Act::Identity => {}
        // A select that keeps NaN, as torch.relu does.
        Act::Relu => row
            .iter_mut()
            .for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v }),
        Act::Hardswish => row.iter_mut().for_each(|v| *v = hardswish(*v)),
        Act::Silu => row.iter_mut().for_each(|v| *v *= sigmoid(*v)),
        other => row.iter_mut().for_each(|v| *v = other.apply(*v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::testing::pseudo;
    use candle_core::{Device, Module, Tensor};

    /// Equals candle's grouped conv2d (groups = channels) + bias + activation on NCHW, for the
    /// kernels, strides and dilations MobileNetV3, EfficientNet and ConvNeXt use.
    #[test]
    fn depthwise_matches_grouped_conv2d() {
        let dev = Device::Cpu;
        for (c, k, s, pad, d, h, w, n, act) in [
            (4, 3, 1, 1, 1, 7, 9, 2, Act::Relu),
            (5, 3, 2, 1, 1, 8, 9, 3, Act::Hardswish),
            (3, 5, 2, 2, 1, 11, 6, 2, Act::Silu),
            (6, 5, 1, 2, 1, 5, 7, 1, Act::Identity),
            (4, 7, 1, 3, 1, 9, 8, 2, Act::Identity),
            (3, 5, 1, 4, 2, 6, 7, 2, Act::Hardswish),
            (2, 3, 2, 1, 1, 1, 1, 2, Act::Relu),
            (2, 3, 3, 0, 1, 10, 7, 1, Act::Identity),
        ] {
            let spec = DepthwiseSpec {
                channels: c,
                kernel: k,
                stride: s,
                pad,
                dilation: d,
            };
            let wv = pseudo(c * k * k, 1);
            let bias = pseudo(c, 2);
            let xv = pseudo(n * c * h * w, 3);
            let x = Tensor::from_vec(xv.clone(), (n, c, h, w), &dev).unwrap();
            let cfg = candle_nn::Conv2dConfig {
                padding: pad,
                stride: s,
                dilation: d,
                groups: c,
                ..Default::default()
            };
            let weight = Tensor::from_vec(wv.clone(), (c, 1, k, k), &dev).unwrap();
            let b = Tensor::from_vec(bias.clone(), c, &dev).unwrap();
            let reference = candle_nn::Conv2d::new(weight, Some(b), cfg);
            let y = reference.forward(&x).unwrap();
            let (oh, ow) = (y.dim(2).unwrap(), y.dim(3).unwrap());
            assert_eq!(spec.output(h, w), Some((oh, ow)));
            let want: Vec<f32> = y
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| act.apply(v))
                .collect();
            let planes = Planes::from_nchw(&xv, n, c, h, w).unwrap();
            let got = depthwise(&planes, &wv, &bias, &spec, act).unwrap();
            let got_v = got.data.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for img in 0..n {
                for ci in 0..c {
                    for p in 0..oh * ow {
                        let a = got_v[(ci * n + img) * oh * ow + p];
                        let b = want[(img * c + ci) * oh * ow + p];
                        assert!((a - b).abs() < 1e-5, "k{k} s{s} d{d}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_larger_than_the_input_is_refused() {
        let spec = DepthwiseSpec {
            channels: 1,
            kernel: 7,
            stride: 1,
            pad: 0,
            dilation: 1,
        };
        assert_eq!(spec.output(6, 9), None);
        let planes = Planes::from_nchw(&[0.0; 54], 1, 1, 6, 9).unwrap();
        assert!(depthwise(&planes, &[0.0; 49], &[0.0], &spec, Act::Identity).is_err());
    }

    #[test]
    fn fast_sigmoid_matches_libm() {
        let mut worst = 0f32;
        for i in -100_000i32..=100_000 {
            let v = i as f32 / 2_000.0;
            let want = 1.0 / (1.0 + (-v).exp());
            worst = worst.max((sigmoid(v) - want).abs());
        }
        assert!(worst < 2e-7, "{worst}");
    }
}
