//! Winograd F(2×2, 3×3) for the 3×3, stride-1, padding-1 convolutions of ResNets.
//!
//! Why: those convolutions are 83% of resnet18's multiply-adds, and on CPU the im2col route
//! spends as much time moving memory (a 9× copy of the input, then gemm's packing of it) as
//! multiplying. Winograd computes each 2×2 output tile from a 4×4 input tile with 16 products per
//! channel pair instead of 36: the input is transformed once (`V = Bᵀ·d·B`, 4× the input size,
//! not 9×), the weights once at load time (`U = G·g·Gᵀ`), the 16 element-wise products over
//! channels become 16 matmuls `U[e] × V[e]`, and the output transform `Aᵀ·M·A` is fused with the
//! bias, residual and ReLU epilogue. The transforms only use 0, ±1 and ±½, so F32 results stay
//! within the parity tests' tolerance of torchvision's direct convolution.

use candle_core::{bail, Tensor};
use rayon::prelude::*;

use super::planes::{with_slice, Planes};

/// Upper bound on the transformed-input buffer of one chunk of tiles, in f32 elements (2 MiB;
/// the products take as much again). Measured on resnet18 at batch 8, A/B in one window: 8 MiB
/// chunks ran 210-240 ms, 2 MiB chunks 160-190 ms (they stay in cache); batch 1 is unchanged.
const TILE_BUDGET: usize = 512 << 10;

/// A 3×3 stride-1 padding-1 convolution's weights in the Winograd domain: `[16, cout, cin]`.
#[derive(Debug, Clone)]
pub struct Winograd3x3 {
    u: Tensor,
    cin: usize,
    cout: usize,
}

/// `[a, (a+b+c)/2, (a−b+c)/2, c]`: one row or column of `G·g` (G is 4×3).
fn g_row(a: f32, b: f32, c: f32) -> [f32; 4] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
}

impl Winograd3x3 {
    /// Transforms folded weights `[cout, cin·9]` (row-major 3×3 kernels) into `U = G·g·Gᵀ`.
    pub fn new(weight: &Tensor, cin: usize, cout: usize) -> candle_core::Result<Winograd3x3> {
        let mut u = vec![0f32; 16 * cout * cin];
        with_slice(weight, |w| {
            if w.len() != cout * cin * 9 {
                bail!(
                    "a 3x3 kernel of {cout}x{cin} needs {} values, got {}",
                    cout * cin * 9,
                    w.len()
                );
            }
            for co in 0..cout {
                for ci in 0..cin {
                    let g = &w[(co * cin + ci) * 9..(co * cin + ci + 1) * 9];
                    // G·g: 4 rows of 3, computed column by column.
                    let cols: Vec<[f32; 4]> =
                        (0..3).map(|j| g_row(g[j], g[3 + j], g[6 + j])).collect();
                    for i in 0..4 {
                        let row = g_row(cols[0][i], cols[1][i], cols[2][i]);
                        for (j, v) in row.iter().enumerate() {
                            u[((i * 4 + j) * cout + co) * cin + ci] = *v;
                        }
                    }
                }
            }
            Ok(())
        })??;
        Ok(Winograd3x3 {
            u: Tensor::from_vec(u, (16, cout, cin), &candle_core::Device::Cpu)?,
            cin,
            cout,
        })
    }

    /// The convolution of `x` plus `bias` (and `residual`), ReLU if asked; output size = input.
    pub fn forward(
        &self,
        x: &Planes,
        bias: &[f32],
        residual: Option<&Planes>,
        relu: bool,
    ) -> candle_core::Result<Planes> {
        let (cin, cout) = (self.cin, self.cout);
        if x.c != cin || bias.len() != cout {
            bail!("winograd convolution expects {cin} channels, got {}", x.c);
        }
        let (n, h, w) = (x.n, x.h, x.w);
        let grid = Grid {
            h,
            w,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
        };
        let tiles = n * grid.th * grid.tw;
        let total = n * h * w;
        if let Some(r) = residual {
            if (r.c, r.n, r.h, r.w) != (cout, n, h, w) {
                bail!("residual shape does not match the convolution output");
            }
        }
        let chunk = (TILE_BUDGET / (16 * cin)).clamp(1, tiles);
        let mut out = vec![0f32; cout * total];
        let mut start = 0;
        while start < tiles {
            let end = (start + chunk).min(tiles);
            let len = end - start;
            // [cin, 16, len] in memory, seen as 16 matrices [cin, len] with row stride 16·len.
            let v = with_slice(&x.data, |src| {
                input_transform(src, cin, n, &grid, (start, end))
            })?;
            let v = Tensor::from_vec(v, (cin, 16, len), &candle_core::Device::Cpu)?;
            // The 16 products run as one rayon loop rather than 16 parallel regions one after
            // the other: on small matrices the thread hand-offs cost more than the math.
            let m = (0..16)
                .into_par_iter()
                .map(|e| self.u.get(e)?.matmul(&v.narrow(1, e, 1)?.squeeze(1)?))
                .collect::<candle_core::Result<Vec<Tensor>>>()?;
            let product = Product { m: &m, cout, len };
            let res = residual.map(|r| &r.data);
            output_transform(&mut out, &product, bias, res, &grid, (start, end), relu)?;
            start = end;
        }
        Planes::from_parts(out, cout, n, h, w)
    }
}

/// Image size and tile grid (2×2 output tiles) of one convolution.
struct Grid {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Grid {
    /// (image, tile row, tile column) of tile `t`.
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.th * self.tw;
        (t / per_image, (t % per_image) / self.tw, t % self.tw)
    }
}

/// `V = Bᵀ·d·B` for every channel and tile in `start..end`, as `[cin, 16, len]`.
fn input_transform(
    src: &[f32],
    cin: usize,
    n: usize,
    grid: &Grid,
    (start, end): (usize, usize),
) -> Vec<f32> {
    let (h, w) = (grid.h, grid.w);
    let len = end - start;
    let mut v = vec![0f32; cin * 16 * len];
    v.par_chunks_mut(16 * len)
        .enumerate()
        .for_each(|(ci, dst)| {
            let plane = &src[ci * n * h * w..(ci + 1) * n * h * w];
            let (mut img, mut ty, mut tx) = grid.tile(start);
            for k in 0..len {
                let image = &plane[img * h * w..(img + 1) * h * w];
                // The 4×4 input patch at rows 2ty−1.., columns 2tx−1.. (zero outside the image).
                let mut d = [[0f32; 4]; 4];
                let interior = ty > 0 && tx > 0 && 2 * ty + 3 <= h && 2 * tx + 3 <= w;
                if interior {
                    for (r, row) in d.iter_mut().enumerate() {
                        let at = (2 * ty + r - 1) * w + 2 * tx - 1;
                        row.copy_from_slice(&image[at..at + 4]);
                    }
                } else {
                    for (r, row) in d.iter_mut().enumerate() {
                        let y = (2 * ty + r) as isize - 1;
                        if y < 0 || y as usize >= h {
                            continue;
                        }
                        let line = &image[y as usize * w..(y as usize + 1) * w];
                        for (c, value) in row.iter_mut().enumerate() {
                            let xx = (2 * tx + c) as isize - 1;
                            if xx >= 0 && (xx as usize) < w {
                                *value = line[xx as usize];
                            }
                        }
                    }
                }
                // Bᵀ·d (rows), then ·B (columns); Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]].
                let bd = [
                    [
                        d[0][0] - d[2][0],
                        d[0][1] - d[2][1],
                        d[0][2] - d[2][2],
                        d[0][3] - d[2][3],
                    ],
                    [
                        d[1][0] + d[2][0],
                        d[1][1] + d[2][1],
                        d[1][2] + d[2][2],
                        d[1][3] + d[2][3],
                    ],
                    [
                        d[2][0] - d[1][0],
                        d[2][1] - d[1][1],
                        d[2][2] - d[1][2],
                        d[2][3] - d[1][3],
                    ],
                    [
                        d[1][0] - d[3][0],
                        d[1][1] - d[3][1],
                        d[1][2] - d[3][2],
                        d[1][3] - d[3][3],
                    ],
                ];
                for (r, row) in bd.iter().enumerate() {
                    let out = [
                        row[0] - row[2],
                        row[1] + row[2],
                        row[2] - row[1],
                        row[1] - row[3],
                    ];
                    for (c, value) in out.iter().enumerate() {
                        dst[(r * 4 + c) * len + k] = *value;
                    }
                }
                tx += 1;
                if tx == grid.tw {
                    tx = 0;
                    ty += 1;
                    if ty == grid.th {
                        ty = 0;
                        img += 1;
                    }
                }
            }
        });
    v
}

/// The 16 matmul results of a chunk, each `[cout, len]`.
struct Product<'a> {
    m: &'a [Tensor],
    cout: usize,
    len: usize,
}

/// `Y = Aᵀ·M·A` per channel and tile (Aᵀ = [[1,1,1,0],[0,1,−1,−1]]), plus bias (and residual),
/// ReLU if asked, written at the tile's 2×2 output positions (clipped at odd edges).
fn output_transform(
    out: &mut [f32],
    product: &Product,
    bias: &[f32],
    residual: Option<&Tensor>,
    grid: &Grid,
    (start, end): (usize, usize),
    relu: bool,
) -> candle_core::Result<()> {
    let (h, w) = (grid.h, grid.w);
    let (cout, len) = (product.cout, product.len);
    let total = out.len() / cout.max(1);
    // Borrow the 16 results' storage for the whole pass (read locks, no copies).
    let guards: Vec<_> = product.m.iter().map(|t| t.storage_and_layout()).collect();
    let mut m: Vec<&[f32]> = Vec::with_capacity(16);
    for (storage, layout) in &guards {
        let (lo, hi) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("winograd product is not contiguous".into()))?;
        match &**storage {
            candle_core::Storage::Cpu(cpu) => m.push(&cpu.as_slice::<f32>()?[lo..hi]),
            _ => bail!("winograd runs on the CPU only"),
        }
    }
    if m.iter().any(|x| x.len() != cout * len) {
        bail!("winograd products do not have {cout}x{len} values");
    }
    let mut run = |res: Option<&[f32]>| {
        out.par_chunks_mut(total).enumerate().for_each(|(co, row)| {
            let b = bias[co];
            let base = co * len;
            let (mut img, mut ty, mut tx) = grid.tile(start);
            for k in 0..end - start {
                let at = |e: usize| m[e][base + k];
                // Aᵀ·M: two rows of four; then ·A.
                let r0 = [
                    at(0) + at(4) + at(8),
                    at(1) + at(5) + at(9),
                    at(2) + at(6) + at(10),
                    at(3) + at(7) + at(11),
                ];
                let r1 = [
                    at(4) - at(8) - at(12),
                    at(5) - at(9) - at(13),
                    at(6) - at(10) - at(14),
                    at(7) - at(11) - at(15),
                ];
                let y = [
                    [r0[0] + r0[1] + r0[2], r0[1] - r0[2] - r0[3]],
                    [r1[0] + r1[1] + r1[2], r1[1] - r1[2] - r1[3]],
                ];
                let (y0, x0) = (2 * ty, 2 * tx);
                for (i, pair) in y.iter().enumerate() {
                    if y0 + i >= h {
                        continue;
                    }
                    for (j, value) in pair.iter().enumerate() {
                        if x0 + j >= w {
                            continue;
                        }
                        let p = (img * h + y0 + i) * w + x0 + j;
                        let mut v = value + b;
                        if let Some(r) = res {
                            v += r[co * total + p];
                        }
                        row[p] = if relu && v < 0.0 { 0.0 } else { v };
                    }
                }
                tx += 1;
                if tx == grid.tw {
                    tx = 0;
                    ty += 1;
                    if ty == grid.th {
                        ty = 0;
                        img += 1;
                    }
                }
            }
        });
    };
    match residual {
        Some(r) => with_slice(r, |r| run(Some(r))),
        None => {
            run(None);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::testing::pseudo;
    use candle_core::{Device, Module};

    /// Winograd equals candle's direct conv2d (+ bias, residual, ReLU) for odd and even sizes,
    /// several images, and chunked tiles.
    #[test]
    fn matches_direct_convolution() {
        let dev = Device::Cpu;
        for (cin, cout, h, w, n) in [
            (3, 4, 5, 7, 2),
            (8, 6, 6, 6, 1),
            (4, 5, 1, 1, 3),
            (2, 3, 9, 4, 2),
        ] {
            let weight =
                Tensor::from_vec(pseudo(cout * cin * 9, 1), (cout, cin, 3, 3), &dev).unwrap();
            let bias = pseudo(cout, 2);
            let xv = pseudo(n * cin * h * w, 3);
            let x = Tensor::from_vec(xv.clone(), (n, cin, h, w), &dev).unwrap();
            let cfg = candle_nn::Conv2dConfig {
                padding: 1,
                stride: 1,
                ..Default::default()
            };
            let direct = candle_nn::Conv2d::new(weight.clone(), None, cfg)
                .forward(&x)
                .unwrap();
            let res = pseudo(n * cout * h * w, 4);
            let want = direct
                .broadcast_add(&Tensor::from_vec(bias.clone(), (1, cout, 1, 1), &dev).unwrap())
                .unwrap()
                .add(&Tensor::from_vec(res.clone(), (n, cout, h, w), &dev).unwrap())
                .unwrap()
                .relu()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();

            let wg =
                Winograd3x3::new(&weight.reshape((cout, cin * 9)).unwrap(), cin, cout).unwrap();
            let planes = Planes::from_nchw(&xv, n, cin, h, w).unwrap();
            let residual = Planes::from_nchw(&res, n, cout, h, w).unwrap();
            let got = wg.forward(&planes, &bias, Some(&residual), true).unwrap();
            let got = got.data.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for img in 0..n {
                for co in 0..cout {
                    for p in 0..h * w {
                        let a = got[(co * n + img) * h * w + p];
                        let b = want[(img * cout + co) * h * w + p];
                        assert!((a - b).abs() < 1e-5, "{cin}->{cout} {h}x{w}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
