//! The arguments of each layer type as `torch.nn` names them, with PyTorch's defaults, and
//! their checks: what [`super::layers::LayerSpec::parse`] reads a `layers` entry into.
//!
//! Unknown arguments are refused (`deny_unknown_fields`), and so are the arguments wick cannot
//! honour in eval mode: a `padding_mode` other than zeros, `return_indices`, BatchNorm without
//! running statistics, `max_norm`.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::layers::{Activation, ConvGeometry, LayerSpec, PoolGeometry};

/// One `int` or a tuple of them, as PyTorch's `_pair`/`_single` arguments accept.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Ints {
    One(usize),
    Many(Vec<usize>),
}

impl Ints {
    /// The argument for `n` spatial dimensions.
    fn expand(&self, n: usize, what: &str) -> Result<Vec<usize>, String> {
        match self {
            Ints::One(v) => Ok(vec![*v; n]),
            Ints::Many(v) if v.len() == n => Ok(v.clone()),
            Ints::Many(v) => Err(format!("{what} needs 1 or {n} values, got {}", v.len())),
        }
    }
}

/// `padding`: integers, or PyTorch's `"valid"` (none) or `"same"` (stride 1 only).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Padding {
    Ints(Ints),
    Mode(String),
}

impl Default for Padding {
    fn default() -> Padding {
        Padding::Ints(Ints::One(0))
    }
}

fn yes() -> bool {
    true
}

fn bn_eps() -> f64 {
    1e-5
}

fn zeros_mode() -> String {
    "zeros".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinearArgs {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConvArgs {
    in_channels: usize,
    out_channels: usize,
    kernel_size: Ints,
    stride: Option<Ints>,
    #[serde(default)]
    padding: Padding,
    dilation: Option<Ints>,
    #[serde(default = "one")]
    groups: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default = "zeros_mode")]
    padding_mode: String,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchNormArgs {
    num_features: usize,
    #[serde(default = "bn_eps")]
    eps: f64,
    /// Training only.
    #[serde(default)]
    #[allow(dead_code)]
    momentum: Option<f64>,
    #[serde(default = "yes")]
    affine: bool,
    #[serde(default = "yes")]
    track_running_stats: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LayerNormArgs {
    normalized_shape: Ints,
    #[serde(default = "bn_eps")]
    eps: f64,
    #[serde(default = "yes")]
    elementwise_affine: bool,
    #[serde(default = "yes")]
    bias: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupNormArgs {
    num_groups: usize,
    num_channels: usize,
    #[serde(default = "bn_eps")]
    eps: f64,
    #[serde(default = "yes")]
    affine: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbeddingArgs {
    num_embeddings: usize,
    embedding_dim: usize,
    /// Only changes training (no gradient at that row); the forward pass is a plain lookup.
    #[serde(default)]
    #[allow(dead_code)]
    padding_idx: Option<i64>,
    max_norm: Option<f64>,
    #[serde(default)]
    scale_grad_by_freq: bool,
    #[serde(default)]
    sparse: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DropoutArgs {
    #[serde(default)]
    #[allow(dead_code)]
    p: Option<f64>,
    #[serde(default)]
    #[allow(dead_code)]
    inplace: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InplaceArgs {
    #[serde(default)]
    #[allow(dead_code)]
    inplace: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoArgs {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LeakyArgs {
    #[serde(default = "leaky_slope")]
    negative_slope: f64,
    #[serde(default)]
    #[allow(dead_code)]
    inplace: bool,
}

fn leaky_slope() -> f64 {
    0.01
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GeluArgs {
    #[serde(default = "gelu_none")]
    approximate: String,
}

fn gelu_none() -> String {
    "none".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SoftmaxArgs {
    /// Required: PyTorch's `dim=None` picks a dimension by a deprecated rule.
    dim: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MaxPoolArgs {
    kernel_size: Ints,
    stride: Option<Ints>,
    #[serde(default = "zero_ints")]
    padding: Ints,
    dilation: Option<Ints>,
    #[serde(default)]
    return_indices: bool,
    #[serde(default)]
    ceil_mode: bool,
}

fn zero_ints() -> Ints {
    Ints::One(0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AvgPoolArgs {
    kernel_size: Ints,
    stride: Option<Ints>,
    #[serde(default = "zero_ints")]
    padding: Ints,
    #[serde(default)]
    ceil_mode: bool,
    #[serde(default = "yes")]
    count_include_pad: bool,
    divisor_override: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdaptiveArgs {
    output_size: Ints,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlattenArgs {
    #[serde(default = "one_i")]
    start_dim: i64,
    #[serde(default = "minus_one")]
    end_dim: i64,
}

fn one_i() -> i64 {
    1
}

fn minus_one() -> i64 {
    -1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnflattenArgs {
    dim: i64,
    unflattened_size: Vec<i64>,
}

pub(super) fn args<T: DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
}

pub(super) fn positive(value: usize, what: &str) -> Result<usize, String> {
    if value == 0 {
        Err(format!("{what} must be at least 1"))
    } else {
        Ok(value)
    }
}

pub(super) fn all_positive(values: Vec<usize>, what: &str) -> Result<Vec<usize>, String> {
    if values.contains(&0) {
        Err(format!("{what} must be at least 1"))
    } else {
        Ok(values)
    }
}

pub(super) fn pair(v: &[usize]) -> [usize; 2] {
    match v {
        [one] => [1, *one],
        [h, w, ..] => [*h, *w],
        [] => [1, 1],
    }
}

pub(super) fn conv(a: ConvArgs, dims: usize) -> Result<LayerSpec, String> {
    if a.padding_mode != "zeros" {
        return Err(format!(
            "padding_mode {:?} is not supported (only \"zeros\")",
            a.padding_mode
        ));
    }
    let groups = positive(a.groups, "groups")?;
    let cin = positive(a.in_channels, "in_channels")?;
    let cout = positive(a.out_channels, "out_channels")?;
    if !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
        return Err(format!(
            "in_channels ({cin}) and out_channels ({cout}) must be divisible by groups ({groups})"
        ));
    }
    let kernel = all_positive(a.kernel_size.expand(dims, "kernel_size")?, "kernel_size")?;
    let stride = match a.stride {
        Some(s) => all_positive(s.expand(dims, "stride")?, "stride")?,
        None => vec![1; dims],
    };
    let dilation = match a.dilation {
        Some(d) => all_positive(d.expand(dims, "dilation")?, "dilation")?,
        None => vec![1; dims],
    };
    let padding = match a.padding {
        Padding::Ints(p) => p.expand(dims, "padding")?,
        Padding::Mode(m) if m == "valid" => vec![0; dims],
        Padding::Mode(m) if m == "same" => {
            if stride.iter().any(|s| *s != 1) {
                return Err("padding = \"same\" needs stride 1 (as in PyTorch)".to_string());
            }
            let total: Vec<usize> = (0..dims).map(|i| dilation[i] * (kernel[i] - 1)).collect();
            if total.iter().any(|t| t % 2 != 0) {
                // PyTorch pads such a kernel more on one side; wick's kernels pad symmetrically.
                return Err(
                    "padding = \"same\" with an even (dilated) kernel pads unevenly; give the padding as numbers"
                        .to_string(),
                );
            }
            total.iter().map(|t| t / 2).collect()
        }
        Padding::Mode(m) => {
            return Err(format!(
                "padding must be numbers, \"valid\" or \"same\", got {m:?}"
            ))
        }
    };
    let [kh, kw] = pair(&kernel);
    let expand0 = |v: &[usize], fill| {
        if dims == 1 {
            [fill, v[0]]
        } else {
            [v[0], v[1]]
        }
    };
    Ok(LayerSpec::Conv {
        geometry: ConvGeometry {
            cin,
            cout,
            kernel: [kh, kw],
            stride: expand0(&stride, 1),
            padding: expand0(&padding, 0),
            dilation: expand0(&dilation, 1),
            groups,
            dims,
        },
        bias: a.bias,
    })
}

impl LinearArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        Ok(LayerSpec::Linear {
            in_features: positive(a.in_features, "in_features")?,
            out_features: positive(a.out_features, "out_features")?,
            bias: a.bias,
        })
    }
}

impl BatchNormArgs {
    pub(super) fn spec(self, dims: usize) -> Result<LayerSpec, String> {
        let a = self;
        if !a.track_running_stats {
            return Err(
                "track_running_stats = false normalises with each batch's own \
                                statistics, so a row's answer would depend on its batch-mates"
                    .to_string(),
            );
        }
        Ok(LayerSpec::BatchNorm {
            features: positive(a.num_features, "num_features")?,
            eps: a.eps,
            affine: a.affine,
            dims,
        })
    }
}

impl LayerNormArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        let shape = match a.normalized_shape {
            Ints::One(v) => vec![v],
            Ints::Many(v) => v,
        };
        if shape.is_empty() {
            return Err("normalized_shape must name at least one dimension".to_string());
        }
        Ok(LayerSpec::LayerNorm {
            shape: all_positive(shape, "normalized_shape")?,
            eps: a.eps,
            weight: a.elementwise_affine,
            bias: a.elementwise_affine && a.bias,
        })
    }
}

impl GroupNormArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        let groups = positive(a.num_groups, "num_groups")?;
        if !a.num_channels.is_multiple_of(groups) {
            return Err(format!(
                "num_channels ({}) must be divisible by num_groups ({groups})",
                a.num_channels
            ));
        }
        Ok(LayerSpec::GroupNorm {
            groups,
            channels: positive(a.num_channels, "num_channels")?,
            eps: a.eps,
            affine: a.affine,
        })
    }
}

impl EmbeddingArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        if a.max_norm.is_some() {
            return Err("max_norm renormalises the table during the forward pass; \
                                apply it to the checkpoint instead"
                .to_string());
        }
        let _ = (a.scale_grad_by_freq, a.sparse);
        Ok(LayerSpec::Embedding {
            count: positive(a.num_embeddings, "num_embeddings")?,
            dim: positive(a.embedding_dim, "embedding_dim")?,
        })
    }
}

impl LeakyArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        Ok(LayerSpec::Act(Activation::LeakyRelu(
            a.negative_slope as f32,
        )))
    }
}

impl GeluArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        Ok(LayerSpec::Act(match a.approximate.as_str() {
            "none" => Activation::GeluErf,
            "tanh" => Activation::GeluTanh,
            other => {
                return Err(format!(
                    "approximate must be \"none\" or \"tanh\", got {other:?}"
                ))
            }
        }))
    }
}

impl SoftmaxArgs {
    pub(super) fn spec(self, log: bool) -> Result<LayerSpec, String> {
        let a = self;
        Ok(LayerSpec::Softmax { dim: a.dim, log })
    }
}

impl MaxPoolArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        if a.return_indices {
            return Err(
                "return_indices = true returns a tuple, which a Sequential cannot pass on"
                    .to_string(),
            );
        }
        let kernel = all_positive(a.kernel_size.expand(2, "kernel_size")?, "kernel_size")?;
        let stride = match a.stride {
            Some(s) => all_positive(s.expand(2, "stride")?, "stride")?,
            None => kernel.clone(),
        };
        let dilation = match a.dilation {
            Some(d) => all_positive(d.expand(2, "dilation")?, "dilation")?,
            None => vec![1, 1],
        };
        let padding = a.padding.expand(2, "padding")?;
        for i in 0..2 {
            // PyTorch: "pad should be at most half of effective kernel size".
            if padding[i] * 2 > (kernel[i] - 1) * dilation[i] + 1 {
                return Err(format!(
                    "padding {padding:?} must be at most half the (dilated) kernel {kernel:?}"
                ));
            }
        }
        Ok(LayerSpec::MaxPool(PoolGeometry {
            kernel: pair(&kernel),
            stride: pair(&stride),
            padding: pair(&padding),
            dilation: pair(&dilation),
            ceil_mode: a.ceil_mode,
        }))
    }
}

impl AvgPoolArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        let kernel = all_positive(a.kernel_size.expand(2, "kernel_size")?, "kernel_size")?;
        let stride = match a.stride {
            Some(s) => all_positive(s.expand(2, "stride")?, "stride")?,
            None => kernel.clone(),
        };
        let padding = a.padding.expand(2, "padding")?;
        if padding[0] * 2 > kernel[0] || padding[1] * 2 > kernel[1] {
            return Err(format!(
                "padding {padding:?} must be at most half the kernel {kernel:?}"
            ));
        }
        if a.divisor_override == Some(0) {
            return Err("divisor_override must be at least 1".to_string());
        }
        Ok(LayerSpec::AvgPool {
            geometry: PoolGeometry {
                kernel: pair(&kernel),
                stride: pair(&stride),
                padding: pair(&padding),
                dilation: [1, 1],
                ceil_mode: a.ceil_mode,
            },
            count_include_pad: a.count_include_pad,
            divisor: a.divisor_override,
        })
    }
}

impl AdaptiveArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        let size = all_positive(a.output_size.expand(2, "output_size")?, "output_size")?;
        Ok(LayerSpec::AdaptiveAvgPool { size: pair(&size) })
    }
}

impl FlattenArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        Ok(LayerSpec::Flatten {
            start: a.start_dim,
            end: a.end_dim,
        })
    }
}

impl UnflattenArgs {
    pub(super) fn spec(self) -> Result<LayerSpec, String> {
        let a = self;
        Ok(LayerSpec::Unflatten {
            dim: a.dim,
            sizes: a.unflattened_size,
        })
    }
}
