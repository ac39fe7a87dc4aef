//! `efficientnet`: torchvision's EfficientNet (efficientnet_b0 … efficientnet_b4), loading
//! torchvision state dicts by their own key names, for image classification logits.
//!
//! Keys are torchvision's: `features.0.{0,1}` (3×3 stride-2 stem, BatchNorm, SiLU),
//! `features.{1..=7}.{j}.block.{i}` (seven stages of `MBConv`, the inverted residual block of
//! [`crate::arch::vision::mbconv`] with SiLU and a sigmoid-gated squeeze-excitation of width
//! `max(1, input / 4)`), `features.8.{0,1}` (1×1 to four times the last width, SiLU), then
//! `classifier.1` (after `Dropout`, an identity in eval). BatchNorm (eps 1e-5 for b0–b4) is
//! folded into the convolutions; `*.num_batches_tracked` is optional. Stage widths and depths
//! are torchvision's `_efficientnet_conf` table scaled by `width_mult` (channels rounded to
//! multiples of 8) and `depth_mult` (blocks rounded up). Input: FP32 `[N, 3, H, W]`, any
//! `H, W >= 1` (adaptive average pooling).

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};
use serde::Deserialize;

use crate::arch::kernels::conv::{ConvBn, ConvSpec};
use crate::arch::kernels::fused::Act;
use crate::arch::kernels::planes::Planes;
use crate::arch::vision::image::{make_divisible, Classifier, ImageArch, Network, CHANNELS};
use crate::arch::vision::mbconv::{BlockSpec, Gate, InvertedResidual};
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};

/// `nn.BatchNorm2d`'s default epsilon, which efficientnet_b0..b4 use.
const BN_EPS: f64 = 1e-5;

/// `architecture = "efficientnet"`: `config = { preset = "efficientnet_b0", num_classes = 1000 }`,
/// plus `_efficientnet_conf`'s `width_mult` and `depth_mult` overriding the preset's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EfficientNetConfig {
    pub preset: Preset,
    #[serde(default = "imagenet_classes")]
    pub num_classes: usize,
    pub width_mult: Option<f64>,
    pub depth_mult: Option<f64>,
}

fn imagenet_classes() -> usize {
    1000
}

/// The torchvision constructors this architecture reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Preset {
    #[serde(rename = "efficientnet_b0")]
    B0,
    #[serde(rename = "efficientnet_b1")]
    B1,
    #[serde(rename = "efficientnet_b2")]
    B2,
    #[serde(rename = "efficientnet_b3")]
    B3,
    #[serde(rename = "efficientnet_b4")]
    B4,
}

impl Preset {
    /// `(width_mult, depth_mult)` of torchvision's `efficientnet_bN` builders.
    fn mults(self) -> (f64, f64) {
        match self {
            Preset::B0 => (1.0, 1.0),
            Preset::B1 => (1.0, 1.1),
            Preset::B2 => (1.1, 1.2),
            Preset::B3 => (1.2, 1.4),
            Preset::B4 => (1.4, 1.8),
        }
    }
}

/// `bneck_conf(expand_ratio, kernel, stride, input_channels, out_channels, num_layers)` of
/// torchvision/models/efficientnet.py `_efficientnet_conf`, before scaling.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// The resolved network: blocks per stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Width of the stem: the first stage's input width.
    stem: usize,
    stages: Vec<Vec<BlockSpec>>,
    num_classes: usize,
}

impl EfficientNetConfig {
    fn layout(&self) -> Result<Layout, InvalidConfig> {
        if self.num_classes == 0 {
            return Err(InvalidConfig::new("num_classes", "must be at least 1"));
        }
        let (width, depth) = self.preset.mults();
        let width = self.width_mult.unwrap_or(width);
        let depth = self.depth_mult.unwrap_or(depth);
        for (field, v) in [("width_mult", width), ("depth_mult", depth)] {
            if !(v.is_finite() && v > 0.0 && v <= 16.0) {
                return Err(InvalidConfig::new(field, "must be in (0, 16]"));
            }
        }
        let adjust = |c: usize, mult: f64| make_divisible(c as f64 * mult, 8);
        let stages = STAGES
            .iter()
            .map(|&(expand, kernel, stride, input, out, layers)| {
                let (input, out) = (adjust(input, width), adjust(out, width));
                let layers = (layers as f64 * depth).ceil() as usize;
                (0..layers)
                    .map(|j| {
                        // torchvision: a stage's later blocks take its output width, stride 1.
                        let input = if j == 0 { input } else { out };
                        BlockSpec {
                            input,
                            expanded: adjust(input, expand as f64),
                            out,
                            kernel,
                            stride: if j == 0 { stride } else { 1 },
                            dilation: 1,
                            squeeze: Some((input / 4).max(1)),
                            act: Act::Silu,
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Layout {
            stem: adjust(STAGES[0].3, width),
            stages,
            num_classes: self.num_classes,
        })
    }
}

impl FamilyConfig for EfficientNetConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        let num_classes = self.num_classes;
        Ok(Box::new(ImageArch::<EfficientNet>::new(
            self.layout()?,
            num_classes,
        )))
    }
}

/// torchvision's `EfficientNet` in eval mode.
#[derive(Debug, Clone)]
pub struct EfficientNet {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    head: Linear,
}

impl Network for EfficientNet {
    type Layout = Layout;

    fn load(vb: VarBuilder, layout: &Layout) -> candle_core::Result<EfficientNet> {
        let f = vb.pp("features");
        let conv_bn = |i: usize, spec| {
            ConvBn::load_eps(f.pp(format!("{i}.0")), f.pp(format!("{i}.1")), spec, BN_EPS)
        };
        let stem_out = layout.stem;
        let stem = conv_bn(0, ConvSpec::dense(CHANNELS, stem_out, 3, 2, 1))?;
        let se = (Act::Silu, Gate::Sigmoid);
        let mut blocks = Vec::new();
        let mut last_in = stem_out;
        for (s, stage) in layout.stages.iter().enumerate() {
            for (j, b) in stage.iter().enumerate() {
                let vb = f.pp(format!("{}.{j}", s + 1));
                blocks.push(InvertedResidual::load(vb, b, BN_EPS, se)?);
                last_in = b.out;
            }
        }
        let last_out = 4 * last_in;
        let last = conv_bn(
            layout.stages.len() + 1,
            ConvSpec::dense(last_in, last_out, 1, 1, 0),
        )?;
        let head = candle_nn::linear(last_out, layout.num_classes, vb.pp("classifier.1"))?;
        Ok(EfficientNet {
            stem,
            blocks,
            last,
            head,
        })
    }
}

impl Classifier for EfficientNet {
    fn logits(&self, x: &Planes) -> candle_core::Result<Tensor> {
        let mut x = self.stem.forward_act(x, None, Act::Silu)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.last.forward_act(&x, None, Act::Silu)?;
        self.head.forward(&x.global_avg_pool()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    #[test]
    fn depth_and_width_overrides_change_the_keys() {
        let names = param_names(
            "efficientnet",
            "preset = \"efficientnet_b0\"\nwidth_mult = 0.1\ndepth_mult = 0.5",
        );
        // depth 0.5: ceil(3 · 0.5) = 2 blocks in stage 4, so features.4.1 but no features.4.2.
        assert!(names.contains(&"features.4.1.block.3.1.running_var".to_string()));
        assert!(!names.contains(&"features.4.2.block.0.0.weight".to_string()));
        let err = configure(
            "efficientnet",
            &table("preset = \"efficientnet_b0\"\ndepth_mult = -1.0"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("depth_mult"), "{err}");
    }
}
