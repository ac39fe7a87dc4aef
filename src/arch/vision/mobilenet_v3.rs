//! `mobilenet_v3`: torchvision's MobileNetV3 (mobilenet_v3_small, mobilenet_v3_large), loading
//! torchvision state dicts by their own key names, for image classification logits.
//!
//! Keys are torchvision's: `features.0.{0,1}` (3×3 stride-2 stem, BatchNorm, hardswish),
//! `features.{1..=n}.block.{i}` (the inverted residual blocks of
//! [`crate::arch::vision::mbconv`], squeeze-excitation with ReLU and hardsigmoid),
//! `features.{n+1}.{0,1}` (1×1 to six times the last width, hardswish), then
//! `classifier.{0,3}` (Linear, Hardswish, Dropout, Linear). BatchNorm (eps 1e-3) is folded into
//! the convolutions; `*.num_batches_tracked` is optional. The block table is
//! torchvision's `_mobilenet_v3_conf` with its `width_mult`, `reduced_tail` and `dilated`
//! arguments. Input: FP32 `[N, 3, H, W]`, any `H, W >= 1` (adaptive average pooling).

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};
use serde::Deserialize;

use crate::arch::kernels::conv::{ConvBn, ConvSpec};
use crate::arch::kernels::fused::Act;
use crate::arch::kernels::planes::Planes;
use crate::arch::vision::image::{make_divisible, Classifier, ImageArch, Network, CHANNELS};
use crate::arch::vision::mbconv::{hardswish, BlockSpec, Gate, InvertedResidual};
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};

/// MobileNetV3's BatchNorm epsilon (`partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)`).
const BN_EPS: f64 = 1e-3;

/// `architecture = "mobilenet_v3"`: `config = { preset = "mobilenet_v3_large", num_classes =
/// 1000 }`, plus `_mobilenet_v3_conf`'s `width_mult`, `reduced_tail` and `dilated`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MobileNetV3Config {
    pub preset: Preset,
    #[serde(default = "imagenet_classes")]
    pub num_classes: usize,
    /// Channel multiplier (channels rounded to multiples of 8, at least 8). Default 1.0.
    #[serde(default = "one")]
    pub width_mult: f64,
    /// Halves the widths of the last stage (torchvision's `reduced_tail`).
    #[serde(default)]
    pub reduced_tail: bool,
    /// Dilation 2 instead of stride 2 in the last stage (torchvision's `dilated`).
    #[serde(default)]
    pub dilated: bool,
}

fn imagenet_classes() -> usize {
    1000
}

fn one() -> f64 {
    1.0
}

/// The torchvision constructors this architecture reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Preset {
    #[serde(rename = "mobilenet_v3_small")]
    MobilenetV3Small,
    #[serde(rename = "mobilenet_v3_large")]
    MobilenetV3Large,
}

/// `bneck_conf(input, kernel, expanded, out, use_se, activation, stride, dilation)` before
/// width scaling; `dilation` true means the config's dilation (2 when `dilated`).
type Bneck = (usize, usize, usize, usize, bool, bool, usize, bool);

/// torchvision/models/mobilenetv3.py `_mobilenet_v3_conf`; `r` is `reduce_divider`. The bool
/// after `use_se` is `use_hs` (hardswish, else ReLU).
fn table(preset: Preset, r: usize) -> (Vec<Bneck>, usize) {
    match preset {
        Preset::MobilenetV3Large => (
            vec![
                (16, 3, 16, 16, false, false, 1, false),
                (16, 3, 64, 24, false, false, 2, false),
                (24, 3, 72, 24, false, false, 1, false),
                (24, 5, 72, 40, true, false, 2, false),
                (40, 5, 120, 40, true, false, 1, false),
                (40, 5, 120, 40, true, false, 1, false),
                (40, 3, 240, 80, false, true, 2, false),
                (80, 3, 200, 80, false, true, 1, false),
                (80, 3, 184, 80, false, true, 1, false),
                (80, 3, 184, 80, false, true, 1, false),
                (80, 3, 480, 112, true, true, 1, false),
                (112, 3, 672, 112, true, true, 1, false),
                (112, 5, 672, 160 / r, true, true, 2, true),
                (160 / r, 5, 960 / r, 160 / r, true, true, 1, true),
                (160 / r, 5, 960 / r, 160 / r, true, true, 1, true),
            ],
            1280 / r,
        ),
        Preset::MobilenetV3Small => (
            vec![
                (16, 3, 16, 16, true, false, 2, false),
                (16, 3, 72, 24, false, false, 2, false),
                (24, 3, 88, 24, false, false, 1, false),
                (24, 5, 96, 40, true, true, 2, true),
                (40, 5, 240, 40, true, true, 1, true),
                (40, 5, 240, 40, true, true, 1, true),
                (40, 5, 120, 48, true, true, 1, true),
                (48, 5, 144, 48, true, true, 1, true),
                (48, 5, 288, 96 / r, true, true, 2, true),
                (96 / r, 5, 576 / r, 96 / r, true, true, 1, true),
                (96 / r, 5, 576 / r, 96 / r, true, true, 1, true),
            ],
            1024 / r,
        ),
    }
}

/// The resolved network: its blocks and the classifier's hidden width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    blocks: Vec<BlockSpec>,
    last_channel: usize,
    num_classes: usize,
}

impl MobileNetV3Config {
    fn layout(&self) -> Result<Layout, InvalidConfig> {
        if self.num_classes == 0 {
            return Err(InvalidConfig::new("num_classes", "must be at least 1"));
        }
        if !(self.width_mult.is_finite() && self.width_mult > 0.0 && self.width_mult <= 16.0) {
            return Err(InvalidConfig::new("width_mult", "must be in (0, 16]"));
        }
        let adjust = |c: usize| make_divisible(c as f64 * self.width_mult, 8);
        let (rows, last) = table(self.preset, if self.reduced_tail { 2 } else { 1 });
        let blocks = rows
            .into_iter()
            .map(|(input, kernel, expanded, out, se, hs, stride, dil)| {
                let dilation = if dil && self.dilated { 2 } else { 1 };
                let expanded = adjust(expanded);
                BlockSpec {
                    input: adjust(input),
                    expanded,
                    out: adjust(out),
                    kernel,
                    // torchvision: `stride = 1 if cnf.dilation > 1 else cnf.stride`.
                    stride: if dilation > 1 { 1 } else { stride },
                    dilation,
                    squeeze: se.then(|| make_divisible((expanded / 4) as f64, 8)),
                    act: if hs { Act::Hardswish } else { Act::Relu },
                }
            })
            .collect();
        Ok(Layout {
            blocks,
            last_channel: adjust(last),
            num_classes: self.num_classes,
        })
    }
}

impl FamilyConfig for MobileNetV3Config {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        let num_classes = self.num_classes;
        Ok(Box::new(ImageArch::<MobileNetV3>::new(
            self.layout()?,
            num_classes,
        )))
    }
}

/// torchvision's `MobileNetV3` in eval mode.
#[derive(Debug, Clone)]
pub struct MobileNetV3 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    hidden: Linear,
    head: Linear,
}

impl Network for MobileNetV3 {
    type Layout = Layout;

    fn load(vb: VarBuilder, layout: &Layout) -> candle_core::Result<MobileNetV3> {
        let f = vb.pp("features");
        let conv_bn = |i: usize, spec| {
            ConvBn::load_eps(f.pp(format!("{i}.0")), f.pp(format!("{i}.1")), spec, BN_EPS)
        };
        let first = layout.blocks[0].input;
        let stem = conv_bn(0, ConvSpec::dense(CHANNELS, first, 3, 2, 1))?;
        let se = (Act::Relu, Gate::Hardsigmoid);
        let blocks = layout
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| InvertedResidual::load(f.pp(i + 1), b, BN_EPS, se))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let last_in = layout.blocks[layout.blocks.len() - 1].out;
        let last_out = 6 * last_in;
        let last = conv_bn(
            layout.blocks.len() + 1,
            ConvSpec::dense(last_in, last_out, 1, 1, 0),
        )?;
        let c = vb.pp("classifier");
        Ok(MobileNetV3 {
            stem,
            blocks,
            last,
            hidden: candle_nn::linear(last_out, layout.last_channel, c.pp("0"))?,
            head: candle_nn::linear(layout.last_channel, layout.num_classes, c.pp("3"))?,
        })
    }
}

impl Classifier for MobileNetV3 {
    fn logits(&self, x: &Planes) -> candle_core::Result<Tensor> {
        let mut x = self.stem.forward_act(x, None, Act::Hardswish)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.last.forward_act(&x, None, Act::Hardswish)?;
        let hidden = hardswish(&self.hidden.forward(&x.global_avg_pool()?)?)?;
        self.head.forward(&hidden)
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    #[test]
    fn overrides_change_the_keys_and_bad_configs_are_refused() {
        let names = param_names(
            "mobilenet_v3",
            "preset = \"mobilenet_v3_small\"\nwidth_mult = 0.15",
        );
        // At width 0.15 the first block's expansion equals its input (8): no expansion layer.
        assert!(names.contains(&"features.1.block.0.0.weight".to_string()));
        assert!(names.contains(&"classifier.3.weight".to_string()));
        let err = configure(
            "mobilenet_v3",
            &table("preset = \"mobilenet_v3_small\"\nwidth_mult = 0.0"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("width_mult"), "{err}");
        let err = configure("mobilenet_v3", &table("preset = \"mobilenet_v3_tiny\"")).unwrap_err();
        assert!(err.to_string().contains("mobilenet_v3_tiny"), "{err}");
    }
}
