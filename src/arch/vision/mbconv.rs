//! The inverted residual block MobileNetV3 (`InvertedResidual`) and EfficientNet (`MBConv`)
//! share, with its squeeze-and-excitation, by torchvision's key names.
//!
//! A block is `block.{i}` layers in order: an optional 1×1 expansion (`Conv2dNormActivation`,
//! present when the expanded width differs from the input's), the depthwise k×k convolution, an
//! optional `SqueezeExcitation` (`fc1`, `fc2`: 1×1 convolutions with bias), and the 1×1
//! projection without activation; the input is added back when the stride is 1 and the widths
//! match. BatchNorm is folded into each convolution ([`ConvBn`]); the depthwise convolution runs
//! on [`crate::arch::kernels::depthwise`]. Stochastic depth is the identity in eval mode.

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use crate::arch::kernels::conv::{ConvBn, ConvSpec};
use crate::arch::kernels::fused::Act;
use crate::arch::kernels::planes::Planes;
use crate::arch::vision::image::linear_from_conv1x1;

/// The gate of a squeeze-and-excitation: MobileNetV3's `Hardsigmoid`, EfficientNet's `Sigmoid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Hardsigmoid,
    Sigmoid,
}

/// torchvision.ops.SqueezeExcitation: `x · gate(fc2(act(fc1(avgpool(x)))))`.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    fc1: Linear,
    fc2: Linear,
    act: Act,
    gate: Gate,
}

impl SqueezeExcite {
    pub fn load(
        vb: VarBuilder,
        channels: usize,
        squeeze: usize,
        (act, gate): (Act, Gate),
    ) -> candle_core::Result<SqueezeExcite> {
        Ok(SqueezeExcite {
            fc1: linear_from_conv1x1(&vb.pp("fc1"), squeeze, channels)?,
            fc2: linear_from_conv1x1(&vb.pp("fc2"), channels, squeeze)?,
            act,
            gate,
        })
    }

    pub fn forward(&self, x: &Planes) -> candle_core::Result<Planes> {
        let s = self.fc1.forward(&x.global_avg_pool()?)?;
        let s = match self.act {
            Act::Relu => s.relu()?,
            Act::Silu => candle_nn::ops::silu(&s)?,
            other => candle_core::bail!("squeeze-excitation with {other:?}"),
        };
        let s = self.fc2.forward(&s)?;
        let gate = match self.gate {
            // nn.Hardsigmoid: relu6(x + 3) / 6.
            Gate::Hardsigmoid => ((s + 3.0)?.clamp(0f32, 6f32)? / 6.0)?,
            Gate::Sigmoid => candle_nn::ops::sigmoid(&s)?,
        };
        x.scale_channels(&gate.contiguous()?)
    }
}

/// The widths and geometry of one block, resolved from the family's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub input: usize,
    pub expanded: usize,
    pub out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    /// Squeeze width of the SE layer, `None` without one.
    pub squeeze: Option<usize>,
    /// Activation of the expansion and depthwise convolutions.
    pub act: Act,
}

/// One inverted residual block in eval mode.
#[derive(Debug, Clone)]
pub struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    se: Option<SqueezeExcite>,
    project: ConvBn,
    act: Act,
    residual: bool,
}

impl InvertedResidual {
    /// Loads `vb.block.{0..}` (`vb` is the block itself, e.g. `features.3` or `features.3.1`)
    /// with BatchNorm epsilon `eps` and the SE's `(activation, gate)`.
    pub fn load(
        vb: VarBuilder,
        b: &BlockSpec,
        eps: f64,
        se: (Act, Gate),
    ) -> candle_core::Result<InvertedResidual> {
        let vb = vb.pp("block");
        let mut i = 0;
        let mut next = |spec| {
            let layer =
                ConvBn::load_eps(vb.pp(format!("{i}.0")), vb.pp(format!("{i}.1")), spec, eps);
            i += 1;
            layer
        };
        let expand = if b.expanded != b.input {
            Some(next(ConvSpec::dense(b.input, b.expanded, 1, 1, 0))?)
        } else {
            None
        };
        let depthwise = next(ConvSpec::depthwise(
            b.expanded, b.kernel, b.stride, b.dilation,
        ))?;
        let squeeze = match b.squeeze {
            Some(squeeze) => {
                let layer = SqueezeExcite::load(vb.pp(i.to_string()), b.expanded, squeeze, se)?;
                i += 1;
                Some(layer)
            }
            None => None,
        };
        let project = ConvBn::load_eps(
            vb.pp(format!("{i}.0")),
            vb.pp(format!("{i}.1")),
            ConvSpec::dense(b.expanded, b.out, 1, 1, 0),
            eps,
        )?;
        Ok(InvertedResidual {
            expand,
            depthwise,
            se: squeeze,
            project,
            act: b.act,
            residual: b.stride == 1 && b.input == b.out,
        })
    }

    pub fn forward(&self, x: &Planes) -> candle_core::Result<Planes> {
        let mut y = match &self.expand {
            Some(e) => e.forward_act(x, None, self.act)?,
            None => x.clone(),
        };
        y = self.depthwise.forward_act(&y, None, self.act)?;
        if let Some(se) = &self.se {
            y = se.forward(&y)?;
        }
        let residual = if self.residual { Some(x) } else { None };
        self.project.forward_act(&y, residual, Act::Identity)
    }
}

/// `nn.Hardswish` on a tensor (MobileNetV3's classifier).
pub fn hardswish(x: &Tensor) -> candle_core::Result<Tensor> {
    x.mul(&((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?)
}
