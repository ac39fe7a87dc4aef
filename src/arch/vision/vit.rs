//! `vit`: torchvision's VisionTransformer (vit_b_16, vit_b_32, vit_l_16), loading torchvision
//! state dicts by their own key names, for image classification logits.
//!
//! Keys are torchvision's: `conv_proj.{weight,bias}` (the patch embedding, a `patch_size`-strided
//! convolution), `class_token`, `encoder.pos_embedding`,
//! `encoder.layers.encoder_layer_{i}.{ln_1, self_attention.{in_proj_weight, in_proj_bias,
//! out_proj}, ln_2, mlp.0, mlp.3}`, `encoder.ln`, `heads.head`. Each layer is pre-LayerNorm
//! (eps 1e-6): `x + attention(ln_1(x))`, then `x + mlp(ln_2(x))` with the exact GELU. The
//! attention is the text encoder's ([`crate::arch::text::encoder::attention`]), with the
//! `1/√d` scale folded into the query rows of `in_proj` at load time as the text families do.
//! Input: FP32 `[N, 3, image_size, image_size]` (torchvision refuses any other size: the
//! position embedding has one row per patch).

use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::arch::batch::{split_rows, stack_f32};
use crate::arch::kernels::fused::Act;
use crate::arch::text::encoder::{attention, Dense};
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};
use crate::model::{
    common_rows, Assets, ElemKind, HostTensor, InputError, IoSpec, Model, Prepared, Signature,
};
use crate::state_dict::Glob;

/// torchvision's `VisionTransformer` LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)`).
const LN_EPS: f64 = 1e-6;

/// Channels of the image input.
const CHANNELS: usize = 3;

/// `architecture = "vit"`: `config = { preset = "vit_b_16", num_classes = 1000 }`, plus
/// torchvision's `VisionTransformer` size arguments overriding the preset's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub preset: Preset,
    #[serde(default = "imagenet_classes")]
    pub num_classes: usize,
    pub image_size: Option<usize>,
    pub patch_size: Option<usize>,
    pub num_layers: Option<usize>,
    pub num_heads: Option<usize>,
    pub hidden_dim: Option<usize>,
    pub mlp_dim: Option<usize>,
}

fn imagenet_classes() -> usize {
    1000
}

/// The torchvision constructors this architecture reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    #[serde(rename = "vit_b_16")]
    VitB16,
    #[serde(rename = "vit_b_32")]
    VitB32,
    #[serde(rename = "vit_l_16")]
    VitL16,
}

/// Resolved sizes: torchvision's constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sizes {
    image_size: usize,
    patch_size: usize,
    num_layers: usize,
    num_heads: usize,
    hidden_dim: usize,
    mlp_dim: usize,
    num_classes: usize,
}

impl Sizes {
    fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

impl VitConfig {
    fn sizes(&self) -> Result<Sizes, InvalidConfig> {
        // torchvision/models/vision_transformer.py: vit_b_16, vit_b_32, vit_l_16.
        let (patch, layers, heads, hidden, mlp) = match self.preset {
            Preset::VitB16 => (16, 12, 12, 768, 3072),
            Preset::VitB32 => (32, 12, 12, 768, 3072),
            Preset::VitL16 => (16, 24, 16, 1024, 4096),
        };
        let s = Sizes {
            image_size: self.image_size.unwrap_or(224),
            patch_size: self.patch_size.unwrap_or(patch),
            num_layers: self.num_layers.unwrap_or(layers),
            num_heads: self.num_heads.unwrap_or(heads),
            hidden_dim: self.hidden_dim.unwrap_or(hidden),
            mlp_dim: self.mlp_dim.unwrap_or(mlp),
            num_classes: self.num_classes,
        };
        for (field, v) in [
            ("num_classes", s.num_classes),
            ("image_size", s.image_size),
            ("patch_size", s.patch_size),
            ("num_layers", s.num_layers),
            ("num_heads", s.num_heads),
            ("hidden_dim", s.hidden_dim),
            ("mlp_dim", s.mlp_dim),
        ] {
            if v == 0 {
                return Err(InvalidConfig::new(field, "must be at least 1"));
            }
        }
        if !s.image_size.is_multiple_of(s.patch_size) {
            return Err(InvalidConfig::new(
                "image_size",
                format!(
                    "{} is not a multiple of patch_size {}",
                    s.image_size, s.patch_size
                ),
            ));
        }
        if !s.hidden_dim.is_multiple_of(s.num_heads) {
            return Err(InvalidConfig::new(
                "hidden_dim",
                format!("{} does not split into {} heads", s.hidden_dim, s.num_heads),
            ));
        }
        Ok(s)
    }
}

/// The configured `vit` architecture.
#[derive(Debug, Clone)]
pub struct VitArch {
    sizes: Sizes,
    signature: Signature,
}

impl FamilyConfig for VitConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        let sizes = self.sizes()?;
        let side = sizes.image_size as i64;
        Ok(Box::new(VitArch {
            signature: Signature {
                inputs: vec![IoSpec::new(
                    "input",
                    ElemKind::F32,
                    &[CHANNELS as i64, side, side],
                )],
                outputs: vec![IoSpec::new(
                    "logits",
                    ElemKind::F32,
                    &[sizes.num_classes as i64],
                )],
            },
            sizes,
        }))
    }
}

impl Architecture for VitArch {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn optional_keys(&self) -> Vec<Glob> {
        Vec::new()
    }

    fn build(&self, vb: VarBuilder<'_>, _: &Assets) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(VitModel {
            net: Vit::load(vb, self.sizes)?,
            signature: self.signature.clone(),
        }))
    }

    fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        let side = self.sizes.image_size;
        vec![Some(HostTensor::zeros(
            ElemKind::F32,
            vec![1, CHANNELS, side, side],
        ))]
    }
}

/// One `EncoderBlock`.
#[derive(Debug, Clone)]
struct Layer {
    ln_1: LayerNorm,
    /// `in_proj` with its query rows pre-scaled by `1/√d`.
    qkv: Dense,
    out_proj: Dense,
    ln_2: LayerNorm,
    mlp_0: Dense,
    mlp_3: Dense,
}

impl Layer {
    fn load(vb: VarBuilder, s: &Sizes) -> candle_core::Result<Layer> {
        let h = s.hidden_dim;
        let attn = vb.pp("self_attention");
        let scale = 1.0 / ((h / s.num_heads) as f64).sqrt();
        let w = attn.get((3 * h, h), "in_proj_weight")?;
        let b = attn.get(3 * h, "in_proj_bias")?;
        let w = Tensor::cat(
            &[&(w.narrow(0, 0, h)? * scale)?, &w.narrow(0, h, 2 * h)?],
            0,
        )?;
        let b = Tensor::cat(
            &[&(b.narrow(0, 0, h)? * scale)?, &b.narrow(0, h, 2 * h)?],
            0,
        )?;
        Ok(Layer {
            ln_1: candle_nn::layer_norm(h, LN_EPS, vb.pp("ln_1"))?,
            qkv: Dense::new(&w, b.to_vec1::<f32>()?)?,
            out_proj: Dense::load(attn.pp("out_proj"), h, h)?,
            ln_2: candle_nn::layer_norm(h, LN_EPS, vb.pp("ln_2"))?,
            mlp_0: Dense::load(vb.pp("mlp.0"), h, s.mlp_dim)?,
            mlp_3: Dense::load(vb.pp("mlp.3"), s.mlp_dim, h)?,
        })
    }

    /// `x` `[B·L, H]` through the block.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        heads: usize,
        bl: (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let qkv = self
            .qkv
            .forward(&self.ln_1.forward(x)?, None, Act::Identity)?;
        let context = attention(&qkv, mask, heads, None, bl)?;
        let x = self.out_proj.forward(&context, Some(x), Act::Identity)?;
        let inner = self
            .mlp_0
            .forward(&self.ln_2.forward(&x)?, None, Act::GeluErf)?;
        self.mlp_3.forward(&inner, Some(&x), Act::Identity)
    }
}

/// torchvision's `VisionTransformer` in eval mode.
#[derive(Debug, Clone)]
pub struct Vit {
    /// `conv_proj.weight` as `[hidden, 3·p·p]`.
    patch: Dense,
    class_token: Tensor,
    pos_embedding: Tensor,
    layers: Vec<Layer>,
    ln: LayerNorm,
    head: Dense,
    sizes: Sizes,
}

impl Vit {
    fn load(vb: VarBuilder, s: Sizes) -> candle_core::Result<Vit> {
        let (h, p) = (s.hidden_dim, s.patch_size);
        let conv = vb.pp("conv_proj");
        let weight = conv
            .get((h, CHANNELS, p, p), "weight")?
            .reshape((h, CHANNELS * p * p))?;
        let patch = Dense::new(&weight, conv.get(h, "bias")?.to_vec1::<f32>()?)?;
        let class_token = vb.get((1, 1, h), "class_token")?.reshape((1, h))?;
        let enc = vb.pp("encoder");
        let pos_embedding = enc
            .get((1, s.patches() + 1, h), "pos_embedding")?
            .reshape((s.patches() + 1, h))?;
        let layers = (0..s.num_layers)
            .map(|i| Layer::load(enc.pp(format!("layers.encoder_layer_{i}")), &s))
            .collect::<candle_core::Result<_>>()?;
        Ok(Vit {
            patch,
            class_token,
            pos_embedding,
            layers,
            ln: candle_nn::layer_norm(h, LN_EPS, enc.pp("ln"))?,
            head: Dense::load(vb.pp("heads.head"), h, s.num_classes)?,
            sizes: s,
        })
    }

    /// Logits `[N, num_classes]` of an `[N, 3, S, S]` batch given as row-major values.
    pub fn forward(&self, values: &[f32], n: usize) -> candle_core::Result<Tensor> {
        let Sizes {
            image_size: side,
            patch_size: p,
            hidden_dim: h,
            ..
        } = self.sizes;
        if values.len() != n * CHANNELS * side * side {
            candle_core::bail!(
                "{} values do not form {n} images of {side}x{side}",
                values.len()
            );
        }
        let grid = side / p;
        let depth = CHANNELS * p * p;
        // Patches as rows `(c, ky, kx)`: the convolution's weight order, so the stride-p
        // convolution is one matmul.
        let mut rows = vec![0f32; n * grid * grid * depth];
        for (r, row) in rows.chunks_mut(depth).enumerate() {
            let (img, py, px) = (r / (grid * grid), (r / grid) % grid, r % grid);
            for c in 0..CHANNELS {
                for ky in 0..p {
                    let src = ((img * CHANNELS + c) * side + py * p + ky) * side + px * p;
                    let dst = (c * p + ky) * p;
                    row[dst..dst + p].copy_from_slice(&values[src..src + p]);
                }
            }
        }
        let patches = Tensor::from_vec(rows, (n * grid * grid, depth), &Device::Cpu)?;
        let tokens = self
            .patch
            .forward(&patches, None, Act::Identity)?
            .reshape((n, grid * grid, h))?;
        let class = self.class_token.unsqueeze(0)?.broadcast_as((n, 1, h))?;
        let l = grid * grid + 1;
        let x = Tensor::cat(&[&class, &tokens], 1)?
            .broadcast_add(&self.pos_embedding.unsqueeze(0)?)?
            .reshape((n * l, h))?
            .contiguous()?;
        let mask = Tensor::ones((n, l), candle_core::DType::F32, &Device::Cpu)?;
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, self.sizes.num_heads, (n, l))?;
        }
        // Only the class token reaches the head; LayerNorm is per token, so normalise just it.
        let class = x
            .reshape((n, l, h))?
            .narrow(1, 0, 1)?
            .reshape((n, h))?
            .contiguous()?;
        self.head
            .forward(&self.ln.forward(&class)?, None, Act::Identity)
    }
}

struct VitModel {
    net: Vit,
    signature: Signature,
}

impl Model for VitModel {
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        let rows = common_rows(&self.signature, &inputs)?;
        Ok(Prepared {
            rows,
            tensors: inputs,
            notes: Default::default(),
        })
    }

    /// Every request has the one image size, so the whole batch is one forward pass.
    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        let image = 3 * self.net.sizes.image_size * self.net.sizes.image_size;
        let (values, n) = stack_f32(batch, image)?;
        let logits = self.net.forward(&values, n)?;
        split_rows(&logits, batch.iter().map(|p| p.rows))
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    #[test]
    fn keys_and_config_errors() {
        let names = param_names("vit", "preset = \"vit_b_16\"\nnum_layers = 2");
        assert!(names.contains(&"encoder.layers.encoder_layer_1.mlp.3.bias".to_string()));
        assert!(!names.contains(&"encoder.layers.encoder_layer_2.ln_1.weight".to_string()));
        let err = configure("vit", &table("preset = \"vit_b_16\"\nimage_size = 30")).unwrap_err();
        assert!(err.to_string().contains("patch_size"), "{err}");
        let err = configure("vit", &table("preset = \"vit_b_16\"\nnum_heads = 5")).unwrap_err();
        assert!(err.to_string().contains("heads"), "{err}");
    }
}
