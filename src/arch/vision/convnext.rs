//! `convnext`: torchvision's ConvNeXt (convnext_tiny, convnext_small, convnext_base), loading
//! torchvision state dicts by their own key names, for image classification logits.
//!
//! Keys are torchvision's: `features.0.{0,1}` (4×4 stride-4 stem with bias, `LayerNorm2d`), then
//! per stage `features.{k}.{j}` blocks (`block.0` 7×7 depthwise with bias, `block.2` LayerNorm,
//! `block.3`/`block.5` the two Linears around GELU, `layer_scale`), each stage with
//! `out_channels` followed by `features.{k+1}.{0,1}` (`LayerNorm2d`, 2×2 stride-2 convolution);
//! finally `classifier.{0,2}` (`LayerNorm2d` on the pooled features, Linear). LayerNorms use eps
//! 1e-6. A block is `x + layer_scale · fc2(gelu(fc1(ln(dwconv(x)))))`: in channel-major planes
//! the Linears over channels are 1×1 convolutions, the LayerNorm's affine map is folded into fc1
//! and `layer_scale` into fc2 at load time, so a block is the depthwise kernel
//! ([`crate::arch::kernels::depthwise`]), one normalisation pass and two matmuls with fused
//! epilogues (GELU; residual). Stochastic depth is the identity in eval. Input: FP32
//! `[N, 3, H, W]` with `H, W` at least 4 · 2^(downsampling layers) (32 for the presets).

use candle_core::Tensor;
use candle_nn::{LayerNorm, Linear, Module, VarBuilder};
use serde::Deserialize;

use crate::arch::kernels::conv::{ConvBn, ConvSpec};
use crate::arch::kernels::fused::Act;
use crate::arch::kernels::planes::Planes;
use crate::arch::vision::image::{Classifier, ImageArch, Network, CHANNELS};
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};

/// torchvision's ConvNeXt LayerNorm epsilon (`partial(LayerNorm2d, eps=1e-6)`).
const LN_EPS: f64 = 1e-6;

/// `architecture = "convnext"`: `config = { preset = "convnext_tiny", num_classes = 1000 }`, plus
/// torchvision's `block_setting` (a list of `CNBlockConfig`) overriding the preset's stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvNextConfig {
    pub preset: Preset,
    #[serde(default = "imagenet_classes")]
    pub num_classes: usize,
    pub block_setting: Option<Vec<StageSetting>>,
}

/// One `CNBlockConfig(input_channels, out_channels, num_layers)`; `out_channels` absent (None)
/// means no downsampling layer after the stage (torchvision's last stage).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSetting {
    pub input_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    pub num_layers: usize,
}

fn imagenet_classes() -> usize {
    1000
}

/// The torchvision constructors this architecture reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Preset {
    #[serde(rename = "convnext_tiny")]
    Tiny,
    #[serde(rename = "convnext_small")]
    Small,
    #[serde(rename = "convnext_base")]
    Base,
}

impl Preset {
    /// torchvision/models/convnext.py: `convnext_tiny`, `convnext_small`, `convnext_base`.
    fn block_setting(self) -> Vec<StageSetting> {
        let (widths, layers) = match self {
            Preset::Tiny => ([96, 192, 384, 768], [3, 3, 9, 3]),
            Preset::Small => ([96, 192, 384, 768], [3, 3, 27, 3]),
            Preset::Base => ([128, 256, 512, 1024], [3, 3, 27, 3]),
        };
        (0..4)
            .map(|i| StageSetting {
                input_channels: widths[i],
                out_channels: widths.get(i + 1).copied(),
                num_layers: layers[i],
            })
            .collect()
    }
}

/// The resolved network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    stages: Vec<StageSetting>,
    num_classes: usize,
}

impl Layout {
    /// Smallest image side: the stem divides by 4, every downsampling layer by 2.
    fn min_side(&self) -> usize {
        let downsamples = self
            .stages
            .iter()
            .filter(|s| s.out_channels.is_some())
            .count();
        4usize.saturating_mul(1usize.checked_shl(downsamples as u32).unwrap_or(usize::MAX))
    }
}

impl ConvNextConfig {
    fn layout(&self) -> Result<Layout, InvalidConfig> {
        if self.num_classes == 0 {
            return Err(InvalidConfig::new("num_classes", "must be at least 1"));
        }
        let stages = self
            .block_setting
            .clone()
            .unwrap_or_else(|| self.preset.block_setting());
        if stages.is_empty() {
            return Err(InvalidConfig::new("block_setting", "must not be empty"));
        }
        let mut width = stages[0].input_channels;
        for (i, s) in stages.iter().enumerate() {
            if s.input_channels == 0 || s.out_channels == Some(0) {
                return Err(InvalidConfig::new(
                    "block_setting",
                    format!("stage {i} has a width of 0"),
                ));
            }
            // What torchvision would only find at the first forward pass: a stage must take the
            // width the previous one hands on.
            if s.input_channels != width {
                return Err(InvalidConfig::new(
                    "block_setting",
                    format!(
                        "stage {i} takes {} channels but the stage before hands on {width}",
                        s.input_channels
                    ),
                ));
            }
            width = s.out_channels.unwrap_or(s.input_channels);
        }
        let layout = Layout {
            stages,
            num_classes: self.num_classes,
        };
        if layout.min_side() > 1 << 16 {
            return Err(InvalidConfig::new(
                "block_setting",
                "too many downsampling layers for any image",
            ));
        }
        Ok(layout)
    }
}

impl FamilyConfig for ConvNextConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        let num_classes = self.num_classes;
        Ok(Box::new(ImageArch::<ConvNext>::new(
            self.layout()?,
            num_classes,
        )))
    }
}

/// A `LayerNorm2d`'s `(weight, bias)`.
fn norm_affine(vb: VarBuilder, c: usize) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        vb.get(c, "weight")?.to_vec1::<f32>()?,
        vb.get(c, "bias")?.to_vec1::<f32>()?,
    ))
}

/// One `CNBlock`: depthwise 7×7, LayerNorm (affine folded into `fc1`), fc1 + GELU, fc2
/// (`layer_scale` folded in) + the block's input.
#[derive(Debug, Clone)]
struct Block {
    dwconv: ConvBn,
    fc1: ConvBn,
    fc2: ConvBn,
}

impl Block {
    fn load(vb: VarBuilder, dim: usize) -> candle_core::Result<Block> {
        let b = vb.pp("block");
        let dwconv = ConvBn::with_bias(b.pp("0"), ConvSpec::depthwise(dim, 7, 1, 1))?;
        let norm = b.pp("2");
        let (g, beta) = (norm.get(dim, "weight")?, norm.get(dim, "bias")?);
        // fc1(g·x̂ + β) = (W1·diag(g))·x̂ + (b1 + W1·β).
        let w1 = b.pp("3").get((4 * dim, dim), "weight")?;
        let b1 = b.pp("3").get(4 * dim, "bias")?;
        let b1 = (b1 + w1.matmul(&beta.reshape((dim, 1))?)?.reshape(4 * dim)?)?;
        let w1 = w1.broadcast_mul(&g.reshape((1, dim))?)?;
        // layer_scale · (W2·h + b2) = (diag(γ)·W2)·h + γ·b2.
        let gamma = vb.get((dim, 1, 1), "layer_scale")?.reshape((dim, 1))?;
        let w2 = b.pp("5").get((dim, 4 * dim), "weight")?;
        let b2 = b.pp("5").get(dim, "bias")?;
        let w2 = w2.broadcast_mul(&gamma)?;
        let b2 = b2.mul(&gamma.reshape(dim)?)?;
        Ok(Block {
            dwconv,
            fc1: ConvBn::from_folded(
                w1,
                b1.to_vec1::<f32>()?,
                ConvSpec::dense(dim, 4 * dim, 1, 1, 0),
            )?,
            fc2: ConvBn::from_folded(
                w2,
                b2.to_vec1::<f32>()?,
                ConvSpec::dense(4 * dim, dim, 1, 1, 0),
            )?,
        })
    }

    fn forward(&self, x: &Planes) -> candle_core::Result<Planes> {
        let y = self.dwconv.forward_act(x, None, Act::Identity)?;
        let y = y.layer_norm_channels(None, LN_EPS as f32)?;
        let y = self.fc1.forward_act(&y, None, Act::GeluErf)?;
        self.fc2.forward_act(&y, Some(x), Act::Identity)
    }
}

/// `LayerNorm2d` + 2×2 stride-2 convolution between stages.
#[derive(Debug, Clone)]
struct Downsample {
    norm: (Vec<f32>, Vec<f32>),
    conv: ConvBn,
}

/// torchvision's `ConvNeXt` in eval mode.
#[derive(Debug, Clone)]
pub struct ConvNext {
    stem: ConvBn,
    stem_norm: (Vec<f32>, Vec<f32>),
    /// Each stage's blocks and the downsampling layer after it, if any.
    stages: Vec<(Vec<Block>, Option<Downsample>)>,
    head_norm: LayerNorm,
    head: Linear,
}

impl Network for ConvNext {
    type Layout = Layout;
    // LayerNorms, no BatchNorm.
    const BATCH_NORM: bool = false;

    fn min_side(layout: &Layout) -> usize {
        layout.min_side()
    }

    fn load(vb: VarBuilder, layout: &Layout) -> candle_core::Result<ConvNext> {
        let f = vb.pp("features");
        let c0 = layout.stages[0].input_channels;
        let stem = ConvBn::with_bias(f.pp("0.0"), ConvSpec::dense(CHANNELS, c0, 4, 4, 0))?;
        let stem_norm = norm_affine(f.pp("0.1"), c0)?;
        let mut index = 1;
        let mut stages = Vec::with_capacity(layout.stages.len());
        for s in &layout.stages {
            let dim = s.input_channels;
            let blocks = (0..s.num_layers)
                .map(|j| Block::load(f.pp(format!("{index}.{j}")), dim))
                .collect::<candle_core::Result<Vec<_>>>()?;
            index += 1;
            let downsample = match s.out_channels {
                Some(out) => {
                    let d = f.pp(index);
                    index += 1;
                    Some(Downsample {
                        norm: norm_affine(d.pp("0"), dim)?,
                        conv: ConvBn::with_bias(d.pp("1"), ConvSpec::dense(dim, out, 2, 2, 0))?,
                    })
                }
                None => None,
            };
            stages.push((blocks, downsample));
        }
        let last = layout.stages[layout.stages.len() - 1].clone();
        let width = last.out_channels.unwrap_or(last.input_channels);
        let c = vb.pp("classifier");
        Ok(ConvNext {
            stem,
            stem_norm,
            stages,
            head_norm: candle_nn::layer_norm(width, LN_EPS, c.pp("0"))?,
            head: candle_nn::linear(width, layout.num_classes, c.pp("2"))?,
        })
    }
}

impl Classifier for ConvNext {
    fn logits(&self, x: &Planes) -> candle_core::Result<Tensor> {
        let (g, b) = &self.stem_norm;
        let mut x = self
            .stem
            .forward_act(x, None, Act::Identity)?
            .layer_norm_channels(Some((g, b)), LN_EPS as f32)?;
        for (blocks, downsample) in &self.stages {
            for block in blocks {
                x = block.forward(&x)?;
            }
            if let Some(d) = downsample {
                let (g, b) = &d.norm;
                let y = x.layer_norm_channels(Some((g, b)), LN_EPS as f32)?;
                x = d.conv.forward_act(&y, None, Act::Identity)?;
            }
        }
        let pooled = self.head_norm.forward(&x.global_avg_pool()?)?;
        self.head.forward(&pooled)
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    #[test]
    fn block_setting_overrides_and_errors() {
        let names = param_names(
            "convnext",
            "preset = \"convnext_tiny\"\nblock_setting = [\
             { input_channels = 8, out_channels = 16, num_layers = 1 },\
             { input_channels = 16, num_layers = 2 }]",
        );
        assert!(names.contains(&"features.2.1.weight".to_string()));
        assert!(names.contains(&"features.3.1.layer_scale".to_string()));
        assert!(!names.contains(&"features.4.0.weight".to_string()));
        let err = configure(
            "convnext",
            &table(
                "preset = \"convnext_tiny\"\nblock_setting = [\
                 { input_channels = 8, out_channels = 16, num_layers = 1 },\
                 { input_channels = 12, num_layers = 2 }]",
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains("hands on 16"), "{err}");
        let err = configure(
            "convnext",
            &table("preset = \"convnext_tiny\"\nblock_setting = []"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
