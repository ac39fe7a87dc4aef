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

    /// LayerNorm over the channels of every position (torchvision's `LayerNorm2d`, ConvNeXt's
    /// permute + `nn.LayerNorm` + permute), then `· weight[c] + bias[c]` if `affine` is given.
    /// In channel-major layout a position's channels are a column, so the statistics are
    /// accumulated row by row over all positions at once (vectorised), with no transpose.
    pub fn layer_norm_channels(
        &self,
        affine: Option<(&[f32], &[f32])>,
        eps: f32,
    ) -> candle_core::Result<Planes> {
        let (c, p) = (self.c, self.n * self.h * self.w);
        if affine.is_some_and(|(g, b)| g.len() != c || b.len() != c) {
            bail!("a LayerNorm of another width than {c} channels");
        }
        let mut out = vec![0f32; c * p];
        with_slice(&self.data, |x| {
            // Statistics per position, in parallel over blocks of positions.
            const BLOCK: usize = 1024;
            let mut mean = vec![0f32; p];
            let mut rstd = vec![0f32; p];
            mean.par_chunks_mut(BLOCK)
                .zip(rstd.par_chunks_mut(BLOCK))
                .enumerate()
                .for_each(|(b, (mean, rstd))| {
                    let start = b * BLOCK;
                    let len = mean.len();
                    for row in x.chunks_exact(p) {
                        for (m, v) in mean.iter_mut().zip(&row[start..start + len]) {
                            *m += v;
                        }
                    }
                    mean.iter_mut().for_each(|m| *m /= c as f32);
                    for row in x.chunks_exact(p) {
                        for ((r, m), v) in rstd.iter_mut().zip(&*mean).zip(&row[start..start + len])
                        {
                            *r += (v - m) * (v - m);
                        }
                    }
                    rstd.iter_mut()
                        .for_each(|r| *r = 1.0 / (*r / c as f32 + eps).sqrt());
                });
            out.par_chunks_mut(p).enumerate().for_each(|(ci, dst)| {
                let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[ci], b[ci]));
                let row = &x[ci * p..(ci + 1) * p];
                for (((d, v), m), r) in dst.iter_mut().zip(row).zip(&mean).zip(&rstd) {
                    *d = (v - m) * r * g + b;
                }
            });
        })?;
        Planes::from_parts(out, c, self.n, self.h, self.w)
    }

    /// Multiplies plane `(c, image)` by `scale[image, c]` (`[N, C]`, squeeze-and-excitation's
    /// gate).
    pub fn scale_channels(&self, scale: &Tensor) -> candle_core::Result<Planes> {
        let (c, n, hw) = (self.c, self.n, self.h * self.w);
        if scale.dims() != [n, c] {
            bail!(
                "a channel scale of shape {:?} for {n} images of {c} channels",
                scale.dims()
            );
        }
        let mut out = vec![0f32; c * n * hw];
        with_slice(&self.data, |x| {
            with_slice(scale, |s| {
                out.par_chunks_mut(hw).enumerate().for_each(|(plane, dst)| {
                    let f = s[(plane % n) * c + plane / n];
                    for (d, v) in dst.iter_mut().zip(&x[plane * hw..(plane + 1) * hw]) {
                        *d = v * f;
                    }
                });
            })
        })??;
        Planes::from_parts(out, c, n, self.h, self.w)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::testing::{max_abs_diff, pseudo};
    use candle_core::{Device, Module};

    /// LayerNorm over channels equals torchvision's LayerNorm2d: permute to NHWC, `layer_norm`
    /// over the last dimension, permute back (checked across several position blocks).
    #[test]
    fn layer_norm_channels_matches_permuted_layer_norm() {
        let dev = Device::Cpu;
        let (n, c, h, w) = (3, 5, 23, 31);
        let xv: Vec<f32> = pseudo(n * c * h * w, 1)
            .iter()
            .map(|v| v * 3.0 + 0.5)
            .collect();
        let (g, b) = (pseudo(c, 2), pseudo(c, 3));
        let x = Tensor::from_vec(xv.clone(), (n, c, h, w), &dev).unwrap();
        let ln = candle_nn::LayerNorm::new(
            Tensor::from_vec(g.clone(), c, &dev).unwrap(),
            Tensor::from_vec(b.clone(), c, &dev).unwrap(),
            1e-6,
        );
        let want = ln
            .forward(&x.permute((0, 2, 3, 1)).unwrap())
            .unwrap()
            .permute((3, 0, 1, 2))
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((c, n * h * w))
            .unwrap();
        let planes = Planes::from_nchw(&xv, n, c, h, w).unwrap();
        let got = planes.layer_norm_channels(Some((&g, &b)), 1e-6).unwrap();
        let diff = max_abs_diff(&got.data, &want);
        assert!(diff < 1e-5, "{diff}");
        assert!(planes
            .layer_norm_channels(Some((&g[1..], &b)), 1e-6)
            .is_err());
    }

    #[test]
    fn scale_channels_scales_each_image_and_channel() {
        let (n, c, h, w) = (2, 3, 2, 2);
        let xv: Vec<f32> = (0..n * c * h * w).map(|i| i as f32).collect();
        let planes = Planes::from_nchw(&xv, n, c, h, w).unwrap();
        let s: Vec<f32> = (0..n * c).map(|i| (i + 1) as f32).collect();
        let scale = Tensor::from_vec(s.clone(), (n, c), &Device::Cpu).unwrap();
        let got = planes.scale_channels(&scale).unwrap();
        let got = got.data.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for img in 0..n {
            for ci in 0..c {
                for p in 0..h * w {
                    let want = xv[(img * c + ci) * h * w + p] * s[img * c + ci];
                    assert_eq!(got[(ci * n + img) * h * w + p], want);
                }
            }
        }
        let wrong = Tensor::zeros((c, n), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(planes.scale_channels(&wrong).is_err());
    }

    #[test]
    fn max_pool_pads_with_minus_infinity() {
        let v: Vec<f32> = (0..16).map(|i| -(i as f32)).collect();
        let p = Planes::from_nchw(&v, 1, 1, 4, 4)
            .unwrap()
            .max_pool_3x3_s2()
            .unwrap();
        assert_eq!((p.h, p.w), (2, 2));
        let got = p.data.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, vec![0.0, -1.0, -4.0, -5.0]);
    }
}
