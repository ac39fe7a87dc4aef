//! Fused elementwise kernels for the transformer path, in place on candle tensors, parallel on
//! rayon.
//!
//! Why: candle runs elementwise ops of 64K+ elements on its own spinning `BarrierPool`, beside
//! the rayon pool its matmuls use. On 2 cores the two pools' threads fight for the CPUs; profiled
//! on MiniLM (perf, sequence length 128) 43% of the time went to the caller spinning at that
//! pool's barrier. These kernels keep every parallel step on rayon and also fuse what candle does
//! in separate passes: bias + activation (+ residual) after a matmul, and mask + softmax in
//! attention. They mutate the matmul's fresh output through candle's `InplaceOp` API, so no
//! extra allocation either.

use candle_core::{bail, CpuStorage, InplaceOp1, InplaceOp2, Layout};
use rayon::prelude::*;

/// Rows are processed in parallel once a tensor has this many elements (smaller ones are not
/// worth a rayon dispatch).
const PARALLEL_MIN: usize = 16 << 10;

/// `erf(x)` as a rational function of `x` on `[-4, 4]` (Eigen's `generic_fast_erf_float`; beyond
/// 4 the f32 value is ±1). Branch-free, so loops over it vectorise; within 1e-6 of libm's `erff`
/// (unit-tested), where libm's scalar call was a quarter of MiniLM's time.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let p = x * p;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    p / q
}

/// `exp(x)` for `x <= 0` (larger inputs are clamped to 0), Cephes' `expf`: round `x/ln2` to
/// `n`, a degree-5 polynomial on the remainder, times `2^n` built from its bits. Branch-free and
/// within 2 ulp of `f32::exp` (unit-tested); softmax only ever exponentiates `score - max`.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    // Below -87.3 the result is under f32's smallest normal: 0 is what softmax needs.
    let underflow = if x < -87.3 { 0.0 } else { 1.0 };
    let x = x.clamp(-87.3, 0.0);
    // Round to nearest with the 1.5·2^23 trick (no libm call, so the loop vectorises).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let r2 = r * r;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 0.166_666_65;
    y = y * r + 0.5;
    let y = y * r2 + r + 1.0;
    // n is in [-126, 0]: 2^n is a normal f32 with exponent bits n + 127.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23) * underflow
}

/// The activation applied after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity,
    /// `x·Φ(x)` with the exact erf (libm's `erff`, the function candle's `gelu_erf` uses).
    GeluErf,
    /// The tanh approximation of GELU.
    GeluTanh,
    Relu,
    Silu,
    Tanh,
    /// `x·relu6(x + 3)/6` (`nn.Hardswish`, MobileNetV3).
    Hardswish,
}

impl Act {
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::GeluErf => 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)),
            Act::GeluTanh => {
                let inner = 0.797_884_6 * (v + 0.044_715 * v * v * v);
                0.5 * v * (1.0 + inner.tanh())
            }
            Act::Relu => v.max(0.0),
            Act::Silu => v / (1.0 + (-v).exp()),
            Act::Tanh => v.tanh(),
            Act::Hardswish => hardswish(v),
        }
    }
}

/// `nn.Hardswish`: `x · min(max(x + 3, 0), 6) / 6`, in PyTorch's order of operations.
#[inline(always)]
pub fn hardswish(v: f32) -> f32 {
    v * (v + 3.0).clamp(0.0, 6.0) / 6.0
}

/// `sigmoid(x)` from [`exp_nonpositive`] of `-|x|`: branch-free, so loops over it vectorise
/// (libm's scalar `exp` does not).
#[inline(always)]
pub fn sigmoid(v: f32) -> f32 {
    let e = exp_nonpositive(-v.abs());
    let r = 1.0 / (1.0 + e);
    if v >= 0.0 {
        r
    } else {
        e * r
    }
}

fn slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused kernels need contiguous tensors");
    };
    match storage {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => bail!("fused kernels take F32 tensors"),
    }
}

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused kernels need contiguous tensors");
    };
    match storage {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("fused kernels take F32 tensors"),
    }
}

/// Runs `f(row index, row)` over the rows of `values`, in parallel when it is large enough.
pub(super) fn for_rows(values: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if values.len() >= PARALLEL_MIN {
        values
            .par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    } else {
        values
            .chunks_mut(width)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    }
}

/// `x[r, :] = act(x[r, :] + bias (+ residual[r, :]))` on a `[rows, bias.len()]` tensor.
pub struct BiasAct<'a> {
    pub bias: &'a [f32],
    pub act: Act,
}

/// `row[j] = f(row[j] + bias[j] (+ residual[j]))`. Generic over `f` so each activation gets its
/// own tight loop, which the compiler vectorises.
#[inline(always)]
fn map_row(row: &mut [f32], bias: &[f32], residual: Option<&[f32]>, f: impl Fn(f32) -> f32) {
    match residual {
        Some(r) => {
            for ((v, b), r) in row.iter_mut().zip(bias).zip(r) {
                *v = f(*v + b + r);
            }
        }
        None => {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = f(*v + b);
            }
        }
    }
}

impl BiasAct<'_> {
    fn run(&self, x: &mut [f32], residual: Option<&[f32]>) -> candle_core::Result<()> {
        let width = self.bias.len();
        if width == 0
            || !x.len().is_multiple_of(width)
            || residual.is_some_and(|r| r.len() != x.len())
        {
            bail!(
                "bias of {width} does not fit a tensor of {} values",
                x.len()
            );
        }
        let bias = self.bias;
        let res = |i: usize| residual.map(|r| &r[i * width..(i + 1) * width]);
        match self.act {
            Act::Identity => for_rows(x, width, |i, row| map_row(row, bias, res(i), |v| v)),
            Act::GeluErf => for_rows(x, width, |i, row| {
                map_row(row, bias, res(i), |v| Act::GeluErf.apply(v))
            }),
            Act::GeluTanh => for_rows(x, width, |i, row| {
                map_row(row, bias, res(i), |v| Act::GeluTanh.apply(v))
            }),
            Act::Relu => for_rows(x, width, |i, row| {
                map_row(row, bias, res(i), |v| v.max(0.0))
            }),
            Act::Silu => for_rows(x, width, |i, row| {
                map_row(row, bias, res(i), |v| Act::Silu.apply(v))
            }),
            Act::Tanh => for_rows(x, width, |i, row| map_row(row, bias, res(i), f32::tanh)),
            Act::Hardswish => for_rows(x, width, |i, row| map_row(row, bias, res(i), hardswish)),
        }
        Ok(())
    }
}

impl InplaceOp1 for BiasAct<'_> {
    fn name(&self) -> &'static str {
        "wick-bias-act"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        self.run(slice_mut(storage, layout)?, None)
    }
}

impl InplaceOp2 for BiasAct<'_> {
    fn name(&self) -> &'static str {
        "wick-bias-residual-act"
    }

    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        xl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<()> {
        self.run(slice_mut(x, xl)?, Some(slice(r, rl)?))
    }
}

/// Masked softmax over the last dimension of attention scores `[B, heads, L, L]`, in place:
/// keys whose mask is 0 get weight exactly 0 (as HF's additive `f32::MIN` mask gives).
///
/// With `relative`, a bias that depends only on the head and on the offset `j - i` between key
/// and query is added to every score first (MPNet's relative position bias, and T5's): it is
/// `[heads, 2L - 1]` with offset `j - i` at index `j - i + L - 1`, so the biases of query `i`
/// are one contiguous slice and the `[B, heads, L, L]` bias tensor PyTorch materialises never
/// exists.
pub struct MaskedSoftmax<'a> {
    pub heads: usize,
    pub relative: Option<&'a [f32]>,
}

impl InplaceOp2 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "wick-masked-softmax"
    }

    /// `x`: scores `[B, heads, L, L]`; `m`: the 0/1 mask `[B, L]`.
    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        xl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<()> {
        let scores = slice_mut(x, xl)?;
        let mask = slice(m, ml)?;
        let dims = xl.dims();
        let len = dims.last().copied().unwrap_or(0);
        if dims.len() != 4
            || len == 0
            || dims[1] != self.heads
            || mask.len() * self.heads * len != scores.len()
        {
            bail!(
                "masked softmax: scores {dims:?} do not match a mask of {} values",
                mask.len()
            );
        }
        let span = 2 * len - 1;
        if let Some(relative) = self.relative {
            if relative.len() != self.heads * span {
                bail!(
                    "masked softmax: a relative bias of {} values does not fit {} heads and length {len}",
                    relative.len(),
                    self.heads
                );
            }
        }
        let rows_per_item = self.heads * len;
        for_rows(scores, len, |i, row| {
            if let Some(relative) = self.relative {
                let (head, query) = ((i / len) % self.heads, i % len);
                let start = head * span + (len - 1 - query);
                for (v, b) in row.iter_mut().zip(&relative[start..start + len]) {
                    *v += b;
                }
            }
            let keep = &mask[(i / rows_per_item) * len..(i / rows_per_item + 1) * len];
            let (_, sum) = masked_exp_row(row, keep);
            // Every row has at least one attended key (checked when requests are prepared).
            let scale = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            row.iter_mut().for_each(|v| *v *= scale);
        });
        Ok(())
    }
}

/// Lanes of the explicit reductions below: float sums and maxima are only vectorised when the
/// code itself says in which order to combine them.
const LANES: usize = 16;

/// Replaces `row[j]` by `exp(row[j] - max)` where `keep[j] != 0` and by 0 elsewhere (`max` over
/// the kept entries) and returns `(max, sum)`. Branch-free on the mask: a masked entry's exponent
/// is clamped to at most 0 and multiplied by its mask value 0.
fn masked_exp_row(row: &mut [f32], keep: &[f32]) -> (f32, f32) {
    let kept = |v: f32, k: f32| if k != 0.0 { v } else { f32::MIN };
    let mut lanes = [f32::MIN; LANES];
    let mut chunks = row.chunks_exact(LANES).zip(keep.chunks_exact(LANES));
    for (v, k) in &mut chunks {
        for j in 0..LANES {
            let x = kept(v[j], k[j]);
            lanes[j] = if x > lanes[j] { x } else { lanes[j] };
        }
    }
    let tail = row.len() - row.len() % LANES;
    let mut max = lanes
        .iter()
        .fold(f32::MIN, |a, b| if *b > a { *b } else { a });
    for (v, k) in row[tail..].iter().zip(&keep[tail..]) {
        let x = kept(*v, *k);
        max = if x > max { x } else { max };
    }
    let mut sums = [0f32; LANES];
    for (v, k) in row.chunks_exact_mut(LANES).zip(keep.chunks_exact(LANES)) {
        for j in 0..LANES {
            v[j] = exp_nonpositive(v[j] - max) * k[j];
            sums[j] += v[j];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for (v, k) in row[tail..].iter_mut().zip(&keep[tail..]) {
        *v = exp_nonpositive(*v - max) * k;
        sum += *v;
    }
    (max, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::testing::max_abs_diff;
    use candle_core::{Device, Tensor};

    #[test]
    fn fast_erf_and_exp_match_libm() {
        let mut worst_erf = 0f32;
        let mut worst_exp = 0f32;
        for i in -200_000i32..=200_000 {
            let x = i as f32 / 20_000.0;
            worst_erf = worst_erf.max((erf(x) - candle_core::cpu::erf::erf_f32(x)).abs());
            let y = -(i.abs() as f32) / 2_300.0;
            let want = y.exp();
            worst_exp = worst_exp.max((exp_nonpositive(y) - want).abs() / want);
        }
        assert!(worst_erf < 1e-6, "erf error {worst_erf}");
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-1000.0), 0.0);
        assert_eq!(exp_nonpositive(5.0), 1.0);
        assert_eq!(erf(10.0), erf(4.0));
        assert!((erf(4.0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bias_act_matches_candle_ops() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..40_000)
            .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
            .collect();
        let bias: Vec<f32> = (0..100).map(|i| i as f32 / 100.0 - 0.5).collect();
        let x = Tensor::from_vec(values.clone(), (400, 100), &dev).unwrap();
        let r = Tensor::from_vec(
            values.iter().map(|v| v * 0.5).collect::<Vec<f32>>(),
            (400, 100),
            &dev,
        )
        .unwrap();
        let b = Tensor::from_vec(bias.clone(), 100, &dev).unwrap();
        let want = x
            .broadcast_add(&b)
            .unwrap()
            .add(&r)
            .unwrap()
            .gelu_erf()
            .unwrap();
        let got = x.copy().unwrap();
        got.inplace_op2(
            &r,
            &BiasAct {
                bias: &bias,
                act: Act::GeluErf,
            },
        )
        .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-6, "{diff}");
        let want = x.broadcast_add(&b).unwrap().gelu().unwrap();
        let got = x.copy().unwrap();
        got.inplace_op1(&BiasAct {
            bias: &bias,
            act: Act::GeluTanh,
        })
        .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn masked_softmax_matches_additive_mask() {
        let dev = Device::Cpu;
        let (b, h, l) = (2, 3, 5);
        let scores: Vec<f32> = (0..b * h * l * l)
            .map(|i| ((i * 13) % 17) as f32 / 4.0)
            .collect();
        let mask = vec![1f32, 1., 1., 0., 0., 1., 0., 1., 1., 1.];
        let s = Tensor::from_vec(scores, (b, h, l, l), &dev).unwrap();
        let m = Tensor::from_vec(mask.clone(), (b, l), &dev).unwrap();
        let additive = ((1.0 - &m).unwrap() * f64::from(f32::MIN))
            .unwrap()
            .reshape((b, 1, 1, l))
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&additive).unwrap()).unwrap();
        let got = s.copy().unwrap();
        got.inplace_op2(
            &m,
            &MaskedSoftmax {
                heads: h,
                relative: None,
            },
        )
        .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn relative_bias_is_added_per_head_and_offset() {
        let dev = Device::Cpu;
        let (b, h, l) = (2, 3, 4);
        let scores: Vec<f32> = (0..b * h * l * l)
            .map(|i| ((i * 7) % 11) as f32 / 3.0)
            .collect();
        let relative: Vec<f32> = (0..h * (2 * l - 1))
            .map(|i| ((i * 5) % 13) as f32 / 4.0 - 1.5)
            .collect();
        // The [B, heads, L, L] bias PyTorch builds: bias[h, i, j] = relative[h, j - i + L - 1].
        let mut full = vec![0f32; b * h * l * l];
        for (n, v) in full.iter_mut().enumerate() {
            let (head, i, j) = ((n / (l * l)) % h, (n / l) % l, n % l);
            *v = relative[head * (2 * l - 1) + j + l - 1 - i];
        }
        let mask = vec![1f32, 1., 0., 1., 1., 1., 1., 0.];
        let s = Tensor::from_vec(scores, (b, h, l, l), &dev).unwrap();
        let bias = Tensor::from_vec(full, (b, h, l, l), &dev).unwrap();
        let m = Tensor::from_vec(mask.clone(), (b, l), &dev).unwrap();
        let additive = ((1.0 - &m).unwrap() * f64::from(f32::MIN))
            .unwrap()
            .reshape((b, 1, 1, l))
            .unwrap();
        let want = candle_nn::ops::softmax_last_dim(
            &(&s + &bias).unwrap().broadcast_add(&additive).unwrap(),
        )
        .unwrap();
        let got = s.copy().unwrap();
        let op = MaskedSoftmax {
            heads: h,
            relative: Some(&relative),
        };
        got.inplace_op2(&m, &op).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-6, "{diff}");
        let short = MaskedSoftmax {
            heads: h,
            relative: Some(&relative[1..]),
        };
        assert!(s.copy().unwrap().inplace_op2(&m, &short).is_err());
    }
}
