//! What the convolutional image classifiers (`resnet`, `convnext`, `mobilenet_v3`, `efficientnet`) share
//! around their networks: the `input` `[N, 3, H, W]` → `logits` `[N, num_classes]` signature,
//! the warm-up image, and a [`Model`] that batches consecutive requests of one image size into
//! one forward pass on channel-major planes ([`Planes`]). Requests of another size start the next
//! batch (a convolution runs one geometry per matmul).

use std::marker::PhantomData;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::arch::batch::split_rows;
use crate::arch::kernels::planes::Planes;
use crate::arch::Architecture;
use crate::model::{
    common_rows, Assets, ElemKind, HostTensor, InputError, IoSpec, Model, Prepared, Signature,
};
use crate::state_dict::Glob;

/// Channels of the image input.
pub const CHANNELS: usize = 3;

/// A network from an image batch in planes layout to its logits `[N, num_classes]`.
pub trait Classifier: Send + Sync + 'static {
    fn logits(&self, x: &Planes) -> candle_core::Result<Tensor>;
}

/// A classifier family: the layout its config resolves to, and how its network loads from it.
/// [`ImageArch`] makes the rest (signature, optional keys, serving, warm-up) the same for all.
pub trait Network: Classifier + Sized {
    /// The resolved config (preset plus overrides).
    type Layout: Send + Sync + 'static;
    /// Whether the network has BatchNorms: checkpoints may then carry `num_batches_tracked`,
    /// which eval mode does not read.
    const BATCH_NORM: bool = true;

    fn load(vb: VarBuilder, layout: &Self::Layout) -> candle_core::Result<Self>;

    /// The smallest height and width its strided layers accept.
    fn min_side(_layout: &Self::Layout) -> usize {
        1
    }
}

/// A configured classifier family as an [`Architecture`].
pub struct ImageArch<N: Network> {
    layout: N::Layout,
    signature: Signature,
    network: PhantomData<fn() -> N>,
}

impl<N: Network> ImageArch<N> {
    pub fn new(layout: N::Layout, num_classes: usize) -> ImageArch<N> {
        ImageArch {
            layout,
            signature: signature(num_classes),
            network: PhantomData,
        }
    }
}

impl<N: Network> Architecture for ImageArch<N> {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn optional_keys(&self) -> Vec<Glob> {
        match N::BATCH_NORM {
            true => Glob::new("*.num_batches_tracked").into_iter().collect(),
            false => Vec::new(),
        }
    }

    fn build(&self, vb: VarBuilder<'_>, _: &Assets) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(ImageModel {
            net: N::load(vb, &self.layout)?,
            signature: self.signature.clone(),
            min_side: N::min_side(&self.layout),
        }))
    }

    fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        warmup(N::min_side(&self.layout).max(32))
    }
}

/// `input` FP32 `[-1, 3, -1, -1]` → `logits` FP32 `[-1, num_classes]`.
pub fn signature(num_classes: usize) -> Signature {
    Signature {
        inputs: vec![IoSpec::new(
            "input",
            ElemKind::F32,
            &[CHANNELS as i64, -1, -1],
        )],
        outputs: vec![IoSpec::new("logits", ElemKind::F32, &[num_classes as i64])],
    }
}

/// One zero image of `side × side`: a real size (not 1×1), so the warm-up runs every kernel on
/// non-degenerate shapes.
pub fn warmup(side: usize) -> Vec<Option<HostTensor>> {
    vec![Some(HostTensor::zeros(
        ElemKind::F32,
        vec![1, CHANNELS, side, side],
    ))]
}

/// A classifier served: `min_side` is the smallest height and width its strided layers accept.
pub struct ImageModel<C> {
    pub net: C,
    pub signature: Signature,
    pub min_side: usize,
}

/// `(rows, height, width, values)` of a prepared request.
fn image_batch(prepared: &Prepared) -> candle_core::Result<(usize, usize, usize, &[f32])> {
    match prepared.tensors.first() {
        Some(Some(HostTensor { shape, data })) if shape.len() == 4 => match data.f32s() {
            Some(values) => Ok((shape[0], shape[2], shape[3], values)),
            None => candle_core::bail!("a prepared request lacks its F32 image input"),
        },
        _ => candle_core::bail!("a prepared request lacks its [N, 3, H, W] image input"),
    }
}

impl<C: Classifier> Model for ImageModel<C> {
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        let rows = common_rows(&self.signature, &inputs)?;
        if let Some(Some(t)) = inputs.first() {
            if t.shape[2] == 0 || t.shape[3] == 0 {
                return Err(InputError::EmptyDimension {
                    input: "input".to_string(),
                    shape: t.shape.clone(),
                });
            }
            if t.shape[2] < self.min_side || t.shape[3] < self.min_side {
                return Err(InputError::Shape {
                    input: "input".to_string(),
                    shape: t.shape.clone(),
                    expected: format!(
                        "[N, 3, H, W] with H and W at least {} (its strided layers)",
                        self.min_side
                    ),
                });
            }
        }
        Ok(Prepared {
            rows,
            tensors: inputs,
            notes: Default::default(),
        })
    }

    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        let mut outputs = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let (_, h, w, _) = image_batch(batch[start])?;
            let mut end = start + 1;
            while end < batch.len()
                && image_batch(batch[end]).is_ok_and(|(_, bh, bw, _)| (bh, bw) == (h, w))
            {
                end += 1;
            }
            let group = &batch[start..end];
            let mut values = Vec::new();
            let mut n = 0;
            for prepared in group {
                let (rows, _, _, v) = image_batch(prepared)?;
                values.extend_from_slice(v);
                n += rows;
            }
            let x = Planes::from_nchw(&values, n, CHANNELS, h, w)?;
            let logits = self.net.logits(&x)?;
            outputs.extend(split_rows(&logits, group.iter().map(|p| p.rows))?);
            start = end;
        }
        Ok(outputs)
    }
}

/// torchvision's `_make_divisible(v, 8)` (torchvision/models/_utils.py): `v` rounded to the
/// nearest multiple of `divisor`, at least `divisor`, and not more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut rounded = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * v {
        rounded += divisor;
    }
    rounded
}

/// A `1×1` convolution with bias on pooled `[N, C]` features (torchvision's squeeze-excitation
/// `fc1`/`fc2`, weights `[out, in, 1, 1]`) as the `nn.Linear` it amounts to.
pub fn linear_from_conv1x1(
    vb: &candle_nn::VarBuilder,
    out: usize,
    inp: usize,
) -> candle_core::Result<candle_nn::Linear> {
    let w = vb.get((out, inp, 1, 1), "weight")?.reshape((out, inp))?;
    let b = vb.get(out, "bias")?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

#[cfg(test)]
mod tests {
    use super::make_divisible;

    #[test]
    fn make_divisible_as_torchvision() {
        // Values from torchvision's _make_divisible.
        assert_eq!(make_divisible(16.0 * 0.15, 8), 8);
        assert_eq!(make_divisible(72.0 * 0.15, 8), 16);
        assert_eq!(make_divisible(240.0 * 0.15, 8), 40);
        assert_eq!(make_divisible(960.0, 8), 960);
        assert_eq!(make_divisible(32.0 * 1.1, 8), 32);
        assert_eq!(make_divisible(24.0 * 1.4, 8), 32);
        assert_eq!(make_divisible(36.0 / 4.0, 8), 16);
    }
}
