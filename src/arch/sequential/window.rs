//! The sliding-window layers of a `sequential` stack: convolutions (im2col + one matmul per
//! group and chunk of images on candle's gemm, the scheme of [`crate::arch::kernels::conv`]
//! generalised to rectangular kernels, dilation and groups) and max, average and adaptive
//! average pooling with PyTorch's window rules, parallel over planes.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::layers::{ConvGeometry, PoolGeometry};
use crate::arch::kernels::planes::with_slice;

/// Upper bound on one im2col buffer, in f32 elements (8 MiB), as in the resnet kernels: larger
/// batches are convolved a few images at a time.
const COLS_BUDGET: usize = 2 << 20;

/// Below this many values a pass runs on the calling thread (a rayon dispatch costs more).
const PARALLEL_MIN: usize = 16 << 10;

/// Runs a pooling over every `[H, W]` plane: `f(plane, h, w, dst, ow)` fills one output plane.
pub fn pool(
    x: &[f32],
    input: &[usize],
    output: &[usize],
    f: impl Fn(&[f32], usize, usize, &mut [f32], usize) + Sync,
) -> Vec<f32> {
    let rank = input.len();
    let (h, w) = (input[rank - 2], input[rank - 1]);
    let (oh, ow) = (output[rank - 2], output[rank - 1]);
    let planes = x.len() / (h * w);
    let mut out = vec![0f32; planes * oh * ow];
    let run = |(i, dst): (usize, &mut [f32])| f(&x[i * h * w..(i + 1) * h * w], h, w, dst, ow);
    if x.len() >= PARALLEL_MIN {
        out.par_chunks_mut(oh * ow).enumerate().for_each(run);
    } else {
        out.chunks_mut(oh * ow).enumerate().for_each(run);
    }
    out
}

pub fn max_pool(x: &[f32], (h, w): (usize, usize), g: &PoolGeometry, dst: &mut [f32], ow: usize) {
    for (o, d) in dst.iter_mut().enumerate() {
        let (oy, ox) = (o / ow, o % ow);
        let mut m = f32::NEG_INFINITY;
        for ky in 0..g.kernel[0] {
            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
            if iy < 0 || iy as usize >= h {
                continue;
            }
            for kx in 0..g.kernel[1] {
                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                if ix < 0 || ix as usize >= w {
                    continue;
                }
                let v = x[iy as usize * w + ix as usize];
                // Like torch's max_pool2d, a NaN in the window wins.
                if v > m || v.is_nan() {
                    m = v;
                }
            }
        }
        *d = m;
    }
}

/// PyTorch's avg_pool2d: the window is clipped to input + padding for the count, then to the
/// input for the sum.
pub fn avg_pool(
    x: &[f32],
    (h, w): (usize, usize),
    g: &PoolGeometry,
    (count_include_pad, divisor): (bool, Option<usize>),
    dst: &mut [f32],
    ow: usize,
) {
    let (ph, pw) = (g.padding[0] as isize, g.padding[1] as isize);
    for (o, d) in dst.iter_mut().enumerate() {
        let (oy, ox) = ((o / ow) as isize, (o % ow) as isize);
        let y0 = oy * g.stride[0] as isize - ph;
        let x0 = ox * g.stride[1] as isize - pw;
        let y1 = (y0 + g.kernel[0] as isize).min(h as isize + ph);
        let x1 = (x0 + g.kernel[1] as isize).min(w as isize + pw);
        let padded = (y1 - y0) * (x1 - x0);
        let (y0, x0) = (y0.max(0), x0.max(0));
        let (y1, x1) = (y1.min(h as isize), x1.min(w as isize));
        let mut sum = 0f32;
        for y in y0..y1 {
            for xx in x0..x1 {
                sum += x[y as usize * w + xx as usize];
            }
        }
        let count = match divisor {
            Some(d) => d as isize,
            None if count_include_pad => padded,
            None => (y1 - y0) * (x1 - x0),
        };
        *d = if count > 0 { sum / count as f32 } else { 0.0 };
    }
}

/// PyTorch's adaptive_avg_pool2d: output cell `o` of `O` averages input `[⌊o·I/O⌋, ⌈(o+1)·I/O⌉)`.
pub fn adaptive_avg_pool(x: &[f32], (h, w): (usize, usize), dst: &mut [f32], ow: usize) {
    let oh = dst.len() / ow;
    for (o, d) in dst.iter_mut().enumerate() {
        let (oy, ox) = (o / ow, o % ow);
        let (y0, y1) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
        let (x0, x1) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
        let mut sum = 0f32;
        for y in y0..y1 {
            sum += x[y * w + x0..y * w + x1].iter().sum::<f32>();
        }
        *d = sum / ((y1 - y0) * (x1 - x0)) as f32;
    }
}

/// A convolution of `n` images `[cin, H, W]` (Conv1d: `[cin, L]`, read as H = 1): im2col of a
/// few images at a time per group, one matmul with the group's weights, then the bias on the way
/// into the NCHW output.
pub fn conv(
    x: &[f32],
    n: usize,
    input: &[usize],
    output: &[usize],
    weight: &Tensor,
    bias: Option<&[f32]>,
    g: &ConvGeometry,
) -> candle_core::Result<Vec<f32>> {
    let (h, w) = if g.dims == 1 {
        (1, input[1])
    } else {
        (input[1], input[2])
    };
    let (oh, ow) = if g.dims == 1 {
        (1, output[1])
    } else {
        (output[1], output[2])
    };
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let depth = cin_g * g.kernel[0] * g.kernel[1];
    let plane = oh * ow;
    let images = (COLS_BUDGET / (depth * plane).max(1)).clamp(1, n.max(1));
    let mut out = vec![0f32; n * g.cout * plane];
    let mut first = 0;
    while first < n {
        let count = images.min(n - first);
        for group in 0..g.groups {
            let cols = im2col(x, (first, count), group * cin_g, (h, w), (oh, ow), g);
            let cols = Tensor::from_vec(cols, (depth, count * plane), &Device::Cpu)?;
            let product = weight.narrow(0, group * cout_g, cout_g)?.matmul(&cols)?;
            with_slice(&product, |p| {
                for co in 0..cout_g {
                    let channel = group * cout_g + co;
                    let b = bias.map_or(0.0, |b| b[channel]);
                    for img in 0..count {
                        let src = &p[(co * count + img) * plane..(co * count + img + 1) * plane];
                        let at = ((first + img) * g.cout + channel) * plane;
                        for (d, s) in out[at..at + plane].iter_mut().zip(src) {
                            *d = s + b;
                        }
                    }
                }
            })?;
        }
        first += count;
    }
    Ok(out)
}

/// The im2col matrix `[cin_g·kh·kw, count·OH·OW]` of images `first..first + count`, channels
/// from `c0`: row `(ci, ky, kx)` holds what each output position sees through that tap (zero in
/// the padding).
pub fn im2col(
    x: &[f32],
    (first, count): (usize, usize),
    c0: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    g: &ConvGeometry,
) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    let cin_g = g.cin / g.groups;
    let len = count * oh * ow;
    let mut cols = vec![0f32; cin_g * kh * kw * len];
    let fill = |(row, dst): (usize, &mut [f32])| {
        let (ci, ky, kx) = (row / (kh * kw), (row / kw) % kh, row % kw);
        for img in 0..count {
            let src = &x[((first + img) * g.cin + c0 + ci) * h * w..][..h * w];
            for oy in 0..oh {
                let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                if iy < 0 || iy as usize >= h {
                    continue;
                }
                let line = &src[iy as usize * w..(iy as usize + 1) * w];
                let dst = &mut dst[(img * oh + oy) * ow..(img * oh + oy + 1) * ow];
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix =
                        (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                    if ix >= 0 && (ix as usize) < w {
                        *d = line[ix as usize];
                    }
                }
            }
        }
    };
    if cols.len() >= PARALLEL_MIN {
        cols.par_chunks_mut(len).enumerate().for_each(fill);
    } else {
        cols.chunks_mut(len).enumerate().for_each(fill);
    }
    cols
}
