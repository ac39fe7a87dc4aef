//! `linear` and `mlp`: stacks of `nn.Linear` with an activation between them.
//!
//! `linear` is the `SimpleModel` of the PyTorch docs, one `nn.Linear` stored under `linear.`.
//! `mlp` names its layers as the checkpoint does (`layer_names = ["fc1", "fc2", "fc3"]` for a
//! module with attributes `fc1`..`fc3`) or, without `layer_names`, as `nn.Sequential` numbers
//! them, where the activations take the odd indices: `layers.0`, `layers.2`, `layers.4`, ...

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use super::batch::forward_stacked;
use super::{Architecture, FamilyConfig, InvalidConfig};
use crate::model::{
    common_rows, Assets, ElemKind, HostTensor, InputError, IoSpec, Model, Prepared, Signature,
};

/// `architecture = "linear"`: `nn.Linear(in_features, out_features)` stored as `linear.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearConfig {
    pub in_features: usize,
    pub out_features: usize,
    #[serde(default = "yes")]
    pub bias: bool,
}

/// `architecture = "mlp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub in_features: usize,
    /// Widths of the hidden layers, in order.
    pub hidden: Vec<usize>,
    pub out_features: usize,
    #[serde(default)]
    pub activation: Activation,
    /// The checkpoint's name of each `nn.Linear` (one more than `hidden`).
    pub layer_names: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub bias: bool,
}

fn yes() -> bool {
    true
}

/// The activation between layers, as `torch.nn` defines it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Relu,
    /// `nn.GELU()` (exact, erf-based).
    Gelu,
    Tanh,
    Sigmoid,
    /// `nn.SiLU()`.
    Silu,
    Identity,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
            Activation::Silu => x.silu(),
            Activation::Identity => Ok(x.clone()),
        }
    }
}

impl FamilyConfig for LinearConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        Ok(Box::new(Mlp::linear(self)?))
    }
}

impl FamilyConfig for MlpConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        Ok(Box::new(Mlp::new(self)?))
    }
}

/// The configured `linear`/`mlp` architecture.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// (checkpoint prefix, in, out) per layer.
    layers: Vec<(String, usize, usize)>,
    activation: Activation,
    bias: bool,
    signature: Signature,
}

impl Mlp {
    pub fn linear(cfg: LinearConfig) -> Result<Mlp, InvalidConfig> {
        Mlp::from_layers(
            vec![("linear".to_string(), cfg.in_features, cfg.out_features)],
            Activation::Identity,
            cfg.bias,
        )
    }

    pub fn new(cfg: MlpConfig) -> Result<Mlp, InvalidConfig> {
        let mut widths = vec![cfg.in_features];
        widths.extend(&cfg.hidden);
        widths.push(cfg.out_features);
        let count = widths.len() - 1;
        let names = match cfg.layer_names {
            Some(names) if names.len() != count => {
                return Err(InvalidConfig::new(
                    "layer_names",
                    format!(
                        "has {} entries but the MLP has {count} layers (hidden + 1)",
                        names.len()
                    ),
                ));
            }
            Some(names) => names,
            None => (0..count).map(|i| format!("layers.{}", 2 * i)).collect(),
        };
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || n.starts_with('.') || n.ends_with('.'))
        {
            return Err(InvalidConfig::new(
                "layer_names",
                format!("{bad:?} is not a valid key prefix"),
            ));
        }
        let layers = names
            .into_iter()
            .zip(widths.windows(2))
            .map(|(name, w)| (name, w[0], w[1]))
            .collect();
        Mlp::from_layers(layers, cfg.activation, cfg.bias)
    }

    fn from_layers(
        layers: Vec<(String, usize, usize)>,
        activation: Activation,
        bias: bool,
    ) -> Result<Mlp, InvalidConfig> {
        if let Some((layer, _, _)) = layers.iter().find(|(_, i, o)| *i == 0 || *o == 0) {
            return Err(InvalidConfig::new(
                "hidden",
                format!("layer {layer:?} has a zero width"),
            ));
        }
        let (first_in, last_out) = (layers[0].1, layers[layers.len() - 1].2);
        Ok(Mlp {
            signature: Signature {
                inputs: vec![IoSpec::new("input", ElemKind::F32, &[first_in as i64])],
                outputs: vec![IoSpec::new("output", ElemKind::F32, &[last_out as i64])],
            },
            layers,
            activation,
            bias,
        })
    }
}

impl Architecture for Mlp {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn build(&self, vb: VarBuilder<'_>, _: &Assets) -> candle_core::Result<Box<dyn Model>> {
        let layers = self
            .layers
            .iter()
            .map(|(name, i, o)| {
                if self.bias {
                    candle_nn::linear(*i, *o, vb.pp(name))
                } else {
                    candle_nn::linear_no_bias(*i, *o, vb.pp(name))
                }
            })
            .collect::<candle_core::Result<Vec<Linear>>>()?;
        Ok(Box::new(MlpModel {
            layers,
            activation: self.activation,
            signature: self.signature.clone(),
            in_features: self.layers[0].1,
        }))
    }
}

struct MlpModel {
    layers: Vec<Linear>,
    activation: Activation,
    signature: Signature,
    in_features: usize,
}

impl MlpModel {
    fn run(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i < last {
                x = self.activation.apply(&x)?;
            }
        }
        Ok(x)
    }
}

impl Model for MlpModel {
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        let rows = common_rows(&self.signature, &inputs)?;
        Ok(Prepared {
            rows,
            tensors: inputs,
            notes: Default::default(),
        })
    }

    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        forward_stacked(batch, &[self.in_features], |x| self.run(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::configure;
    use crate::arch::testing::{param_names, table};
    use crate::model::HostData;

    #[test]
    fn sequential_names_skip_the_activations() {
        let names = param_names("mlp", "in_features = 4\nhidden = [3, 2]\nout_features = 1");
        assert_eq!(
            names,
            [
                "layers.0.weight",
                "layers.0.bias",
                "layers.2.weight",
                "layers.2.bias",
                "layers.4.weight",
                "layers.4.bias"
            ]
        );
    }

    #[test]
    fn linear_is_simple_model() {
        let arch = configure("linear", &table("in_features = 10\nout_features = 1")).unwrap();
        let params = &arch.expected().unwrap().params;
        assert_eq!(params[0].name, "linear.weight");
        assert_eq!(params[0].shape, vec![1, 10]);
        assert_eq!(params[1].name, "linear.bias");
    }

    #[test]
    fn config_errors() {
        let err = configure(
            "mlp",
            &table("in_features = 4\nhidden = [3]\nout_features = 1\nlayer_names = [\"a\"]"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("layer_names: has 1 entries"),
            "{err}"
        );
        let err = configure(
            "mlp",
            &table("in_features = 4\nhiden = [3]\nout_features = 1"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("hiden"), "{err}");
        let err = configure(
            "mlp",
            &table("in_features = 4\nhidden = []\nout_features = 1\nactivation = \"swish\""),
        )
        .unwrap_err();
        assert!(err.to_string().contains("swish"), "{err}");
    }

    #[test]
    fn forward_matches_hand_computation_and_splits_rows() {
        let arch = configure(
            "mlp",
            &table("in_features = 2\nhidden = [2]\nout_features = 1"),
        )
        .unwrap();
        let dev = candle_core::Device::Cpu;
        let mut ts = std::collections::HashMap::new();
        ts.insert(
            "layers.0.weight".to_string(),
            Tensor::new(&[[1f32, -1.], [2., 0.]], &dev).unwrap(),
        );
        ts.insert(
            "layers.0.bias".to_string(),
            Tensor::new(&[0f32, -1.], &dev).unwrap(),
        );
        ts.insert(
            "layers.2.weight".to_string(),
            Tensor::new(&[[1f32, 1.]], &dev).unwrap(),
        );
        ts.insert(
            "layers.2.bias".to_string(),
            Tensor::new(&[0.5f32], &dev).unwrap(),
        );
        let model = arch.build(ts, &Assets::default()).unwrap();
        let req = |v: Vec<f32>| {
            let rows = v.len() / 2;
            model
                .prepare(vec![Some(HostTensor {
                    shape: vec![rows, 2],
                    data: HostData::F32(v),
                })])
                .unwrap()
        };
        let a = req(vec![1.0, 0.0]);
        let b = req(vec![0.0, 1.0, 3.0, 1.0]);
        let out = model.forward(&[&a, &b]).unwrap();
        // relu([1, 1]) -> 2.5; relu([-1, -1]) -> 0.5; relu([2, 5]) -> 7.5
        assert_eq!(out[0][0].data, HostData::F32(vec![2.5]));
        assert_eq!(out[1][0].data, HostData::F32(vec![0.5, 7.5]));
        assert_eq!(out[1][0].shape, vec![2, 1]);
        let wrong = model.prepare(vec![Some(HostTensor {
            shape: vec![1, 3],
            data: HostData::F32(vec![0.0; 3]),
        })]);
        assert!(wrong.is_err());
    }
}
