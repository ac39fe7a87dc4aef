//! `resnet`: torchvision's ResNet-18/34/50/101/152, ResNeXt and Wide ResNet (`BasicBlock` and
//! `Bottleneck` with grouped 3x3 convolutions, v1.5 strides), loading
//! torchvision state dicts by their own key names, for image classification logits.
//!
//! Keys are torchvision's: `conv1.weight`, `bn1.*`, `layer{1..4}.{i}.conv{1,2,3}.weight`,
//! `layer{L}.{i}.bn{1,2,3}.*`, `layer{L}.0.downsample.{0,1}.*`, `fc.{weight,bias}`. BatchNorm runs in
//! eval mode with its running statistics, folded into the convolutions at load time (see
//! [`crate::arch::kernels::conv`]); `*.num_batches_tracked` (int64 counters used only in training) is accepted
//! as an optional key. Input: FP32 `[N, 3, H, W]`, any `H, W >= 1` (the network ends in adaptive
//! average pooling); requests of different sizes are batched separately.

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};
use serde::Deserialize;

use crate::arch::kernels::conv::{ConvBn, ConvSpec};
use crate::arch::kernels::planes::Planes;
use crate::arch::vision::image::{Classifier, ImageArch, Network, CHANNELS};
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};

/// `architecture = "resnet"`: `config = { preset = "resnet50", num_classes = 1000 }`, plus
/// torchvision's `ResNet` constructor arguments for other sizes of the preset's block type
/// (`layers`, `groups`, `width_per_group`), as the small parity fixtures use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub preset: Preset,
    /// Width of `fc` (torchvision's default is ImageNet's 1000).
    #[serde(default = "imagenet_classes")]
    pub num_classes: usize,
    /// Blocks per stage, overriding the preset's (torchvision's `layers`).
    #[serde(default)]
    pub layers: Option<[usize; 4]>,
    /// Groups of every bottleneck 3x3 convolution, overriding the preset's.
    #[serde(default)]
    pub groups: Option<usize>,
    /// Channels per group per 64 planes (torchvision's `width_per_group`), overriding the preset's.
    #[serde(default)]
    pub width_per_group: Option<usize>,
}

fn imagenet_classes() -> usize {
    1000
}

/// The torchvision constructors this architecture reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    #[serde(rename = "resnext50_32x4d")]
    Resnext50_32x4d,
    #[serde(rename = "resnext101_32x8d")]
    Resnext101_32x8d,
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50_2,
    #[serde(rename = "wide_resnet101_2")]
    WideResnet101_2,
}

/// A preset with its overrides applied: torchvision's `ResNet(block, layers, groups=...,
/// width_per_group=...)` arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    layers: [usize; 4],
    bottleneck: bool,
    groups: usize,
    width_per_group: usize,
}

impl Preset {
    /// torchvision's constructor arguments of the preset (torchvision/models/resnet.py).
    fn layout(self) -> Layout {
        let (layers, bottleneck, groups, width_per_group) = match self {
            Preset::Resnet18 => ([2, 2, 2, 2], false, 1, 64),
            Preset::Resnet34 => ([3, 4, 6, 3], false, 1, 64),
            Preset::Resnet50 => ([3, 4, 6, 3], true, 1, 64),
            Preset::Resnet101 => ([3, 4, 23, 3], true, 1, 64),
            Preset::Resnet152 => ([3, 8, 36, 3], true, 1, 64),
            Preset::Resnext50_32x4d => ([3, 4, 6, 3], true, 32, 4),
            Preset::Resnext101_32x8d => ([3, 4, 23, 3], true, 32, 8),
            Preset::WideResnet50_2 => ([3, 4, 6, 3], true, 1, 128),
            Preset::WideResnet101_2 => ([3, 4, 23, 3], true, 1, 128),
        };
        Layout {
            layers,
            bottleneck,
            groups,
            width_per_group,
        }
    }
}

impl ResNetConfig {
    /// The preset's layout with this config's overrides, checked as torchvision checks them.
    fn layout(&self) -> Result<Layout, InvalidConfig> {
        let mut layout = self.preset.layout();
        if let Some(layers) = self.layers {
            if layers.contains(&0) {
                return Err(InvalidConfig::new(
                    "layers",
                    "every stage needs at least 1 block",
                ));
            }
            layout.layers = layers;
        }
        if let Some(groups) = self.groups {
            if groups == 0 {
                return Err(InvalidConfig::new("groups", "must be at least 1"));
            }
            layout.groups = groups;
        }
        if let Some(width) = self.width_per_group {
            if width == 0 {
                return Err(InvalidConfig::new("width_per_group", "must be at least 1"));
            }
            layout.width_per_group = width;
        }
        // torchvision's BasicBlock refuses these too ("BasicBlock only supports groups=1 and
        // base_width=64").
        if !layout.bottleneck && (layout.groups != 1 || layout.width_per_group != 64) {
            return Err(InvalidConfig::new(
                "groups",
                "basic-block presets (resnet18, resnet34) support only groups = 1 and \
                 width_per_group = 64",
            ));
        }
        Ok(layout)
    }
}

impl FamilyConfig for ResNetConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        if self.num_classes == 0 {
            return Err(InvalidConfig::new("num_classes", "must be at least 1"));
        }
        self.layout()?;
        let num_classes = self.num_classes;
        Ok(Box::new(ImageArch::<ResNet>::new(self, num_classes)))
    }
}

/// One residual block; `downsample` is the projection shortcut of a stage's first block.
#[derive(Debug, Clone)]
enum Block {
    Basic {
        conv1: ConvBn,
        conv2: ConvBn,
        downsample: Option<ConvBn>,
    },
    Bottleneck {
        conv1: ConvBn,
        conv2: ConvBn,
        conv3: ConvBn,
        downsample: Option<ConvBn>,
    },
}

impl Block {
    /// Block `vb` of torchvision's `_make_layer`: `inplanes` channels in, `planes · expansion`
    /// out, `stride` on its first 3x3 convolution.
    fn load(
        vb: &VarBuilder,
        layout: &Layout,
        inplanes: usize,
        planes: usize,
        stride: usize,
    ) -> candle_core::Result<Block> {
        let out = planes * if layout.bottleneck { 4 } else { 1 };
        let downsample = if stride != 1 || inplanes != out {
            let spec = ConvSpec::dense(inplanes, out, 1, stride, 0);
            Some(conv_bn(vb, "downsample.0", "downsample.1", spec)?)
        } else {
            None
        };
        let spec =
            |cin, cout, kernel, stride| ConvSpec::dense(cin, cout, kernel, stride, kernel / 2);
        Ok(if layout.bottleneck {
            // torchvision: width = int(planes * (base_width / 64.)) * groups.
            let width = planes * layout.width_per_group / 64 * layout.groups;
            let grouped = ConvSpec {
                groups: layout.groups,
                ..spec(width, width, 3, stride)
            };
            // torchvision v1.5: the stride sits on the 3x3 convolution.
            Block::Bottleneck {
                conv1: conv_bn(vb, "conv1", "bn1", spec(inplanes, width, 1, 1))?,
                conv2: conv_bn(vb, "conv2", "bn2", grouped)?,
                conv3: conv_bn(vb, "conv3", "bn3", spec(width, out, 1, 1))?,
                downsample,
            }
        } else {
            Block::Basic {
                conv1: conv_bn(vb, "conv1", "bn1", spec(inplanes, planes, 3, stride))?,
                conv2: conv_bn(vb, "conv2", "bn2", spec(planes, planes, 3, 1))?,
                downsample,
            }
        })
    }

    fn forward(&self, x: &Planes) -> candle_core::Result<Planes> {
        match self {
            Block::Basic {
                conv1,
                conv2,
                downsample,
            } => {
                let shortcut = match downsample {
                    Some(d) => Some(d.forward(x, None, false)?),
                    None => None,
                };
                let y = conv1.forward(x, None, true)?;
                conv2.forward(&y, Some(shortcut.as_ref().unwrap_or(x)), true)
            }
            Block::Bottleneck {
                conv1,
                conv2,
                conv3,
                downsample,
            } => {
                let shortcut = match downsample {
                    Some(d) => Some(d.forward(x, None, false)?),
                    None => None,
                };
                let y = conv1.forward(x, None, true)?;
                let y = conv2.forward(&y, None, true)?;
                conv3.forward(&y, Some(shortcut.as_ref().unwrap_or(x)), true)
            }
        }
    }
}

/// torchvision's `ResNet` in eval mode.
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    fc: Linear,
}

/// `conv` + `bn` of a block, by torchvision's names (`conv2`/`bn2`, `downsample.0`/`downsample.1`).
fn conv_bn(vb: &VarBuilder, conv: &str, bn: &str, spec: ConvSpec) -> candle_core::Result<ConvBn> {
    ConvBn::load(vb.pp(conv), vb.pp(bn), spec)
}

impl Network for ResNet {
    type Layout = ResNetConfig;

    fn load(vb: VarBuilder, cfg: &ResNetConfig) -> candle_core::Result<ResNet> {
        let stem = conv_bn(&vb, "conv1", "bn1", ConvSpec::dense(CHANNELS, 64, 7, 2, 3))?;
        let layout = cfg
            .layout()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut inplanes = 64;
        let mut stages = Vec::with_capacity(4);
        for (stage, &count) in layout.layers.iter().enumerate() {
            let planes = 64 << stage;
            let first_stride = if stage == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(count);
            for i in 0..count {
                let vb = vb.pp(format!("layer{}.{i}", stage + 1));
                let stride = if i == 0 { first_stride } else { 1 };
                blocks.push(Block::load(&vb, &layout, inplanes, planes, stride)?);
                inplanes = planes * if layout.bottleneck { 4 } else { 1 };
            }
            stages.push(blocks);
        }
        let fc = candle_nn::linear(inplanes, cfg.num_classes, vb.pp("fc"))?;
        Ok(ResNet { stem, stages, fc })
    }
}

impl Classifier for ResNet {
    fn logits(&self, x: &Planes) -> candle_core::Result<Tensor> {
        let mut x = self.stem.forward(x, None, true)?.max_pool_3x3_s2()?;
        for block in self.stages.iter().flatten() {
            x = block.forward(&x)?;
        }
        self.fc.forward(&x.global_avg_pool()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};

    #[test]
    fn torchvision_key_counts() {
        // torchvision's state_dict sizes minus the num_batches_tracked buffers (one per BN).
        for (preset, total, bns) in [
            ("resnet18", 122, 20),
            ("resnet34", 218, 36),
            ("resnet50", 320, 53),
        ] {
            let arch = configure(
                "resnet",
                &table(&format!("preset = \"{preset}\"\nnum_classes = 10")),
            )
            .unwrap();
            let expected = arch.expected().unwrap();
            assert_eq!(expected.params.len(), total - bns, "{preset}");
            let fc = expected
                .params
                .iter()
                .find(|p| p.name == "fc.weight")
                .unwrap();
            let width = if preset == "resnet50" { 2048 } else { 512 };
            assert_eq!(fc.shape, vec![10, width]);
            assert!(expected
                .optional
                .iter()
                .any(|g| g.matches("layer1.0.bn1.num_batches_tracked")));
        }
        let names = param_names("resnet", "preset = \"resnet50\"");
        assert!(names.contains(&"layer1.0.downsample.0.weight".to_string()));
        assert!(names.contains(&"layer4.2.bn3.running_var".to_string()));
    }

    #[test]
    fn config_errors() {
        let err = configure("resnet", &table("preset = \"resnet19\"")).unwrap_err();
        assert!(err.to_string().contains("resnet19"), "{err}");
        let err = configure("resnet", &table("preset = \"resnet18\"\nclasses = 3")).unwrap_err();
        assert!(err.to_string().contains("classes"), "{err}");
        let err =
            configure("resnet", &table("preset = \"resnet18\"\nnum_classes = 0")).unwrap_err();
        assert!(err.to_string().contains("num_classes"), "{err}");
        // torchvision's BasicBlock has no groups or width.
        let err = configure("resnet", &table("preset = \"resnet34\"\ngroups = 2")).unwrap_err();
        assert!(err.to_string().contains("groups = 1"), "{err}");
        let err = configure(
            "resnet",
            &table("preset = \"resnet50\"\nlayers = [1, 0, 1, 1]"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("layers"), "{err}");
        // Overrides change the keys: one block per stage, 4 groups of 8 channels per 64 planes.
        let names = param_names(
            "resnet",
            "preset = \"resnext50_32x4d\"\nlayers = [1, 1, 1, 1]\ngroups = 4\nwidth_per_group = 8",
        );
        assert!(names.contains(&"layer3.0.conv2.weight".to_string()));
        assert!(!names.contains(&"layer3.1.conv2.weight".to_string()));
    }
}
