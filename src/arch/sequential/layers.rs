//! The layers a `sequential` config may declare, each `{ type = "...", ... }` entry parsed
//! with PyTorch's argument names and defaults ([`super::args`]) into a [`LayerSpec`].
//!
//! Every entry is read the way `getattr(torch.nn, type)(**arguments)` reads it (the mapping
//! scripts/catalogue/sequential.py uses to build the reference models). Shapes exclude the batch
//! dimension; `dim` arguments count it, as in PyTorch ([`super::shapes`]).

use super::args::*;

/// Activations applied value by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    LeakyRelu(f32),
    GeluErf,
    GeluTanh,
    Silu,
    Tanh,
    Sigmoid,
}

/// Geometry of a convolution (`Conv1d` is a `Conv2d` over a height of 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub cin: usize,
    pub cout: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// 1 for Conv1d (weight `[cout, cin/groups, k]`), 2 for Conv2d.
    pub dims: usize,
}

/// Geometry of a max or average pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
}

/// One declared layer with its arguments resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    Conv {
        geometry: ConvGeometry,
        bias: bool,
    },
    /// BatchNorm1d (`dims` 1) or BatchNorm2d (`dims` 2).
    BatchNorm {
        features: usize,
        eps: f64,
        affine: bool,
        dims: usize,
    },
    LayerNorm {
        shape: Vec<usize>,
        eps: f64,
        weight: bool,
        bias: bool,
    },
    GroupNorm {
        groups: usize,
        channels: usize,
        eps: f64,
        affine: bool,
    },
    Embedding {
        count: usize,
        dim: usize,
    },
    /// Dropout and Identity: nothing in eval mode.
    NoOp,
    Act(Activation),
    Softmax {
        dim: i64,
        log: bool,
    },
    MaxPool(PoolGeometry),
    AvgPool {
        geometry: PoolGeometry,
        count_include_pad: bool,
        divisor: Option<usize>,
    },
    AdaptiveAvgPool {
        size: [usize; 2],
    },
    Flatten {
        start: i64,
        end: i64,
    },
    Unflatten {
        dim: i64,
        sizes: Vec<i64>,
    },
}

/// The most layers one stack may declare (a list cap: config files are input too).
pub const MAX_LAYERS: usize = 1024;
/// The most values one row may hold at any point of the stack (256 MiB of F32).
pub const MAX_ROW_VALUES: usize = 1 << 26;

impl LayerSpec {
    /// Parses one `layers` entry: `type` picks the `torch.nn` class, the rest are its arguments.
    /// Returns the type name (for messages) and the layer.
    pub fn parse(entry: &toml::Value) -> Result<(String, LayerSpec), String> {
        let Some(table) = entry.as_table() else {
            return Err("must be a table such as { type = \"ReLU\" }".to_string());
        };
        let mut table = table.clone();
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(_) => return Err("`type` must be a string".to_string()),
            None => return Err("missing `type` (a torch.nn class name)".to_string()),
        };
        let spec = LayerSpec::from_args(&kind, table)?;
        Ok((kind, spec))
    }

    fn from_args(kind: &str, table: toml::Table) -> Result<LayerSpec, String> {
        match kind {
            "Linear" => args::<LinearArgs>(table)?.spec(),
            "Conv1d" => conv(args(table)?, 1),
            "Conv2d" => conv(args(table)?, 2),
            "BatchNorm1d" => args::<BatchNormArgs>(table)?.spec(1),
            "BatchNorm2d" => args::<BatchNormArgs>(table)?.spec(2),
            "LayerNorm" => args::<LayerNormArgs>(table)?.spec(),
            "GroupNorm" => args::<GroupNormArgs>(table)?.spec(),
            "Embedding" => args::<EmbeddingArgs>(table)?.spec(),
            "Dropout" => args::<DropoutArgs>(table).map(|_| LayerSpec::NoOp),
            // nn.Identity takes any arguments and ignores them.
            "Identity" => Ok(LayerSpec::NoOp),
            "ReLU" => args::<InplaceArgs>(table).map(|_| LayerSpec::Act(Activation::Relu)),
            "SiLU" => args::<InplaceArgs>(table).map(|_| LayerSpec::Act(Activation::Silu)),
            "Tanh" => args::<NoArgs>(table).map(|_| LayerSpec::Act(Activation::Tanh)),
            "Sigmoid" => args::<NoArgs>(table).map(|_| LayerSpec::Act(Activation::Sigmoid)),
            "LeakyReLU" => args::<LeakyArgs>(table)?.spec(),
            "GELU" => args::<GeluArgs>(table)?.spec(),
            "Softmax" => args::<SoftmaxArgs>(table)?.spec(false),
            "LogSoftmax" => args::<SoftmaxArgs>(table)?.spec(true),
            "MaxPool2d" => args::<MaxPoolArgs>(table)?.spec(),
            "AvgPool2d" => args::<AvgPoolArgs>(table)?.spec(),
            "AdaptiveAvgPool2d" => args::<AdaptiveArgs>(table)?.spec(),
            "Flatten" => args::<FlattenArgs>(table)?.spec(),
            "Unflatten" => args::<UnflattenArgs>(table)?.spec(),
            other => Err(format!(
                "unknown layer type {other:?}; known: {}",
                KNOWN.join(", ")
            )),
        }
    }
}

/// Every `type` a layer may have.
pub const KNOWN: &[&str] = &[
    "Linear",
    "Conv1d",
    "Conv2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
    "Embedding",
    "Dropout",
    "Identity",
    "ReLU",
    "LeakyReLU",
    "GELU",
    "SiLU",
    "Tanh",
    "Sigmoid",
    "Softmax",
    "LogSoftmax",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "Flatten",
    "Unflatten",
];
