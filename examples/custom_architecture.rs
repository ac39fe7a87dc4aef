//! Your own architecture in Rust: a port of a hand-written `nn.Module` with two inputs and two
//! outputs, registered beside wick's families and served by the same server.
//!
//! ```text
//! cargo run --release --example custom_architecture -- my-config.toml
//! ```
//! with a config entry such as
//! ```toml
//! [[models]]
//! name = "two_tower"
//! architecture = "two_tower"
//! config = { num_features = 6, num_classes = 4, embed_dim = 8 }
//! ```
//!
//! The PyTorch module (tests/fixtures/catalogue/custom_two_tower/case.json keeps its source):
//! ```python
//! class TwoTower(nn.Module):
//!     def __init__(self, num_features=6, num_classes=4, embed_dim=8):
//!         super().__init__()
//!         self.image = nn.Sequential(
//!             nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
//!             nn.ReLU(), nn.Conv2d(8, 16, kernel_size=3, padding=1), nn.ReLU(),
//!             nn.AdaptiveAvgPool2d(1), nn.Flatten())
//!         self.features = nn.Sequential(nn.Linear(num_features, 16), nn.LayerNorm(16), nn.GELU())
//!         self.fuse = nn.Linear(32, 32)
//!         self.classifier = nn.Linear(32, num_classes)
//!         self.embed = nn.Linear(32, embed_dim)
//!
//!     def forward(self, image, features):
//!         h = torch.cat([self.image(image), self.features(features)], dim=1)
//!         h = torch.relu(self.fuse(h))
//!         return self.classifier(h), F.normalize(self.embed(h), dim=1)
//! ```
//!
//! A port is four pieces, each below: a serde config (the constructor's arguments), an
//! [`Architecture`] (the signature: names, datatypes and shapes of inputs and outputs; which
//! checkpoint keys may be absent), a network that asks its `VarBuilder` for every parameter by
//! the name PyTorch's `state_dict()` gives it (that list is what strict loading compares a
//! checkpoint against), and a [`Model`] that validates one request (`prepare`, client mistakes
//! become 400s) and runs a batch of them (`forward`). tests/it/custom_architecture.rs serves
//! this file's family and checks it against PyTorch's outputs through HTTP.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, ModuleT, Tensor, D};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, LayerNorm, Linear, Module, VarBuilder};
use serde::Deserialize;
use wick::arch::batch::split_rows;
use wick::arch::{Architecture, DuplicateArchitecture, FamilyConfig, InvalidConfig, Registry};
use wick::model::{
    common_rows, Assets, ElemKind, HostData, HostTensor, InputError, IoSpec, Model, Prepared,
    Signature,
};
use wick::state_dict::Glob;

/// `architecture = "two_tower"`: the module's constructor arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwoTowerConfig {
    pub num_features: usize,
    pub num_classes: usize,
    pub embed_dim: usize,
}

impl FamilyConfig for TwoTowerConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        for (field, value) in [
            ("num_features", self.num_features),
            ("num_classes", self.num_classes),
            ("embed_dim", self.embed_dim),
        ] {
            if value == 0 {
                return Err(InvalidConfig::new(field, "must be at least 1"));
            }
        }
        let signature = Signature {
            inputs: vec![
                // Any image size: the image tower ends in adaptive pooling.
                IoSpec::new("image", ElemKind::F32, &[3, -1, -1]),
                IoSpec::new("features", ElemKind::F32, &[self.num_features as i64]),
            ],
            outputs: vec![
                IoSpec::new("logits", ElemKind::F32, &[self.num_classes as i64]),
                IoSpec::new("embedding", ElemKind::F32, &[self.embed_dim as i64]),
            ],
        };
        Ok(Box::new(TwoTowerArch {
            cfg: self,
            signature,
        }))
    }
}

/// The configured architecture.
pub struct TwoTowerArch {
    cfg: TwoTowerConfig,
    signature: Signature,
}

impl Architecture for TwoTowerArch {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// BatchNorm's training counter may be in the checkpoint without being used.
    fn optional_keys(&self) -> Vec<Glob> {
        Glob::new("image.1.num_batches_tracked")
            .into_iter()
            .collect()
    }

    fn build(&self, vb: VarBuilder<'_>, _: &Assets) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(TwoTowerModel {
            net: TwoTower::load(vb, &self.cfg)?,
            signature: self.signature.clone(),
        }))
    }

    /// Warm up on a small real image rather than the 1×1 zeros of the default.
    fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        vec![
            Some(HostTensor::zeros(ElemKind::F32, vec![1, 3, 8, 8])),
            Some(HostTensor::zeros(
                ElemKind::F32,
                vec![1, self.cfg.num_features],
            )),
        ]
    }
}

/// The network, parameter by parameter under PyTorch's names (`image.0.weight`,
/// `image.1.running_mean`, `features.0.weight`, `fuse.bias`, ...).
struct TwoTower {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    features: Linear,
    norm: LayerNorm,
    fuse: Linear,
    classifier: Linear,
    embed: Linear,
}

impl TwoTower {
    fn load(vb: VarBuilder, cfg: &TwoTowerConfig) -> candle_core::Result<TwoTower> {
        let image = vb.pp("image");
        let strided = Conv2dConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(TwoTower {
            conv1: candle_nn::conv2d_no_bias(3, 8, 3, strided, image.pp("0"))?,
            bn1: candle_nn::batch_norm(8, 1e-5, image.pp("1"))?,
            conv2: candle_nn::conv2d(8, 16, 3, same, image.pp("3"))?,
            features: candle_nn::linear(cfg.num_features, 16, vb.pp("features.0"))?,
            norm: candle_nn::layer_norm(16, 1e-5, vb.pp("features.1"))?,
            fuse: candle_nn::linear(32, 32, vb.pp("fuse"))?,
            classifier: candle_nn::linear(32, cfg.num_classes, vb.pp("classifier"))?,
            embed: candle_nn::linear(32, cfg.embed_dim, vb.pp("embed"))?,
        })
    }

    /// `forward(image [N, 3, H, W], features [N, F])` → `(logits, embedding)`.
    fn forward(&self, image: &Tensor, features: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let x = self.conv1.forward(image)?;
        let x = self.bn1.forward_t(&x, false)?.relu()?;
        let x = self.conv2.forward(&x)?.relu()?;
        // AdaptiveAvgPool2d(1) + Flatten.
        let x = x.mean(D::Minus1)?.mean(D::Minus1)?;
        let f = self.features.forward(features)?;
        let f = self.norm.forward(&f)?.gelu_erf()?;
        let h = Tensor::cat(&[&x, &f], 1)?;
        let h = self.fuse.forward(&h)?.relu()?;
        let logits = self.classifier.forward(&h)?;
        // F.normalize: x / max(‖x‖₂, 1e-12) per row.
        let e = self.embed.forward(&h)?;
        let norm = e.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        Ok((logits, e.broadcast_div(&norm)?))
    }
}

struct TwoTowerModel {
    net: TwoTower,
    signature: Signature,
}

/// `(shape, values)` of a prepared request's input `i`.
fn input(prepared: &Prepared, i: usize) -> candle_core::Result<(&[usize], &[f32])> {
    match prepared.tensors.get(i) {
        Some(Some(HostTensor {
            shape,
            data: HostData::F32(values),
        })) => Ok((shape, values)),
        _ => candle_core::bail!("a prepared request lacks input {i}"),
    }
}

impl Model for TwoTowerModel {
    /// `common_rows` checks what every model needs (both inputs present, FP32, fixed dims as
    /// the signature says, equal row counts); the rest is this model's own rule.
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        let rows = common_rows(&self.signature, &inputs)?;
        if let Some(Some(image)) = inputs.first() {
            if image.shape[2] == 0 || image.shape[3] == 0 {
                return Err(InputError::EmptyDimension {
                    input: "image".to_string(),
                    shape: image.shape.clone(),
                });
            }
        }
        Ok(Prepared {
            rows,
            tensors: inputs,
            notes: Default::default(),
        })
    }

    /// Requests whose images have one size run as one batch; another size starts the next.
    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        let mut outputs = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let size = &input(batch[start], 0)?.0[2..];
            let same = |p: &Prepared| input(p, 0).is_ok_and(|(s, _)| &s[2..] == size);
            let end = start + batch[start..].iter().take_while(|p| same(p)).count().max(1);
            let group = &batch[start..end];
            let (mut images, mut features, mut n) = (Vec::new(), Vec::new(), 0);
            for prepared in group {
                images.extend_from_slice(input(prepared, 0)?.1);
                features.extend_from_slice(input(prepared, 1)?.1);
                n += prepared.rows;
            }
            let image = Tensor::from_vec(images, (n, 3, size[0], size[1]), &Device::Cpu)?;
            let width = features.len() / n;
            let features = Tensor::from_vec(features, (n, width), &Device::Cpu)?;
            let (logits, embedding) = self.net.forward(&image, &features)?;
            let rows = || group.iter().map(|p| p.rows);
            let logits = split_rows(&logits, rows())?;
            let embedding = split_rows(&embedding, rows())?;
            // One Vec per request, aligned with the signature's outputs.
            for (mut l, e) in logits.into_iter().zip(embedding) {
                l.extend(e);
                outputs.push(l);
            }
            start = end;
        }
        Ok(outputs)
    }
}

/// wick's families plus `two_tower`.
pub fn registry() -> Result<Registry, DuplicateArchitecture> {
    Registry::builtin().with::<TwoTowerConfig>("two_tower")
}

fn main() -> anyhow::Result<()> {
    let config = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config.toml"));
    wick::app::serve_until_signalled_with(
        &config,
        wick::telemetry::LogFormat::Text,
        Arc::new(registry()?),
    )
}
