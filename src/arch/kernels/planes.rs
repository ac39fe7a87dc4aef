//! Feature maps in channel-major layout (`[C, N, H, W]`), the form every convolution kernel
//! reads and writes, and the pooling steps that stay in it.
//!
//! Why channel-major: one convolution of a whole batch is then a single matmul
//! `W[Cout, Cin·k·k] × cols[Cin·k·k, N·OH·OW]` whose result is already in this layout, so no
//! transpose runs between layers (see [`super::conv`]).

use candle_core::{bail, Storage, Tensor};
use rayon::prelude::*;

/// Runs `f` on the contiguous f32 values of a CPU tensor without copying them.
pub fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!(
            "expected a contiguous tensor, got strides {:?}",
            layout.stride()
        );
    };
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(&cpu.as_slice::<f32>()?[start..end])),
        _ => bail!("wick's convolution kernels run on the CPU only"),
    }
}

/// A batch of feature maps in `[C, N, H, W]` layout, stored as a `[C, N·H·W]` tensor.
#[derive(Debug, Clone)]
pub struct Planes {
    pub data: Tensor,
    pub c: usize,
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl Planes {
    pub(crate) fn from_parts(
        values: Vec<f32>,
        c: usize,
        n: usize,
        h: usize,
        w: usize,
    ) -> candle_core::Result<Planes> {
        let data = Tensor::from_vec(values, (c, n * h * w), &candle_core::Device::Cpu)?;
        Ok(Planes { data, c, n, h, w })
    }

    /// Converts an `[N, C, H, W]` batch (the request layout) into planes.
    pub fn from_nchw(
        values: &[f32],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> candle_core::Result<Planes> {
        let hw = h * w;
        if values.len() != n * c * hw {
            bail!(
                "{} values do not form a [{n}, {c}, {h}, {w}] batch",
                values.len()
            );
        }
        let mut out = vec![0f32; values.len()];
        out.par_chunks_mut(n * hw)
            .enumerate()
            .for_each(|(ci, plane)| {
                for (img, dst) in plane.chunks_mut(hw).enumerate() {
                    let src = (img * c + ci) * hw;
                    dst.copy_from_slice(&values[src..src + hw]);
                }
            });
        Planes::from_parts(out, c, n, h, w)
    }

    /// Global average pooling: `[N, C]` means over each image's plane.
    pub fn global_avg_pool(&self) -> candle_core::Result<Tensor> {
        let (c, n, hw) = (self.c, self.n, self.h * self.w);
        let mut means = vec![0f32; n * c];
        with_slice(&self.data, |x| {
            for ci in 0..c {
                for img in 0..n {
                    let start = (ci * n + img) * hw;
                    let sum: f32 = x[start..start + hw].iter().sum();
                    means[img * c + ci] = sum / hw as f32;
                }
            }
        })?;
        Tensor::from_vec(means, (n, c), &candle_core::Device::Cpu)
    }

    /// `nn.MaxPool2d(kernel_size=3, stride=2, padding=1)` (padding never wins the max).
    pub fn max_pool_3x3_s2(&self) -> candle_core::Result<Planes> {
        let (n, h, w) = (self.n, self.h, self.w);
        let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
        let mut out = vec![0f32; self.c * n * oh * ow];
        with_slice(&self.data, |x| {
            out.par_chunks_mut(n * oh * ow)
                .enumerate()
                .for_each(|(ci, dst)| {
                    for img in 0..n {
                        let src = &x[(ci * n + img) * h * w..(ci * n + img + 1) * h * w];
                        let dst = &mut dst[img * oh * ow..(img + 1) * oh * ow];
                        for y in 0..oh {
                            let (y0, y1) = ((2 * y).saturating_sub(1), (2 * y + 2).min(h));
                            for xo in 0..ow {
                                let (x0, x1) = ((2 * xo).saturating_sub(1), (2 * xo + 2).min(w));
                                let mut m = f32::NEG_INFINITY;
                                for row in src[y0 * w..y1 * w].chunks_exact(w) {
                                    for v in &row[x0..x1] {
                                        // Like torch's max_pool2d, a NaN in the window wins.
                                        m = if *v > m || v.is_nan() { *v } else { m };
                                    }
                                }
                                dst[y * ow + xo] = m;
                            }
                        }
                    }
                });
        })?;
        Planes::from_parts(out, self.c, n, oh, ow)
    }
}
