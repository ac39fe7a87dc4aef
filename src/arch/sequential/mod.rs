//! `sequential`: a model declared in config.toml as an `nn.Sequential`, without writing Rust.
//!
//! ```toml
//! config = { input = { name = "input", shape = [1, 28, 28] }, layers = [
//!   { type = "Conv2d", in_channels = 1, out_channels = 32, kernel_size = 3, padding = 1 },
//!   { type = "ReLU" }, { type = "Flatten" },
//!   { type = "Linear", in_features = 25088, out_features = 10 },
//! ] }
//! ```
//!
//! Layer types and arguments are PyTorch's ([`layers`] parses them). The row shape is inferred
//! through the whole stack when the config is read, so a layer that cannot take its input is a
//! config error naming the layer's index, the layer and both shapes, before any checkpoint is
//! read. Checkpoint keys are exactly what `nn.Sequential(...).state_dict()` writes (`0.weight`,
//! `1.running_mean`, ...), behind an optional `prefix` (`features.`) when the stack was saved
//! inside a parent module; loading is strict like every family's, with BatchNorm's
//! `num_batches_tracked` optional. The input is FP32 of the declared shape, or INT64 token ids
//! when the first layer is an `Embedding`; the output is named `output` unless `output.name`
//! says otherwise. The forward passes are in [`ops`].

mod args;
pub mod layers;
mod norms;
mod ops;
mod shapes;
mod window;

use candle_nn::VarBuilder;
use serde::Deserialize;

use self::layers::{LayerSpec, MAX_LAYERS, MAX_ROW_VALUES};
use self::ops::{Batch, Step};
use self::shapes::shape_text;
use crate::arch::batch::split_rows;
use crate::arch::{Architecture, FamilyConfig, InvalidConfig};
use crate::model::{
    common_rows, Assets, ElemKind, HostData, HostTensor, InputError, IoSpec, Model, Prepared,
    Signature,
};
use crate::state_dict::Glob;

/// What the ids of a token input index, as errors name it.
const EMBEDDING_ROWS: &str = "num_embeddings of the first layer";

/// `architecture = "sequential"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialConfig {
    pub input: InputConfig,
    /// `{ type = "<torch.nn class>", <its arguments> }` in order.
    pub layers: Vec<toml::Value>,
    /// What the checkpoint's keys start with when the stack was a child module
    /// (`"features."`); the trailing dot is optional.
    #[serde(default)]
    pub prefix: String,
    pub output: Option<OutputConfig>,
}

/// The model's input: its name and the shape of one row (batch dimension excluded).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    #[serde(default = "input_name")]
    pub name: String,
    pub shape: Vec<usize>,
}

fn input_name() -> String {
    "input".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub name: String,
}

/// One layer with the row shapes inferred around it.
#[derive(Debug, Clone)]
struct Resolved {
    spec: LayerSpec,
    input: Vec<usize>,
    output: Vec<usize>,
}

/// The configured `sequential` architecture.
#[derive(Debug, Clone)]
pub struct SequentialArch {
    layers: Vec<Resolved>,
    prefix: String,
    tokens: Option<i64>,
    signature: Signature,
}

fn io_name(name: &str, field: &'static str) -> Result<(), InvalidConfig> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(InvalidConfig::new(
            field,
            format!("{name:?} must be 1-64 characters of letters, digits, '_', '-', '.'"),
        ))
    }
}

fn row_values(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|v| *v <= MAX_ROW_VALUES)
}

/// The checkpoint's module path before the layer indices (`features.` → `features`).
fn module_prefix(configured: &str) -> Result<String, InvalidConfig> {
    let prefix = configured.trim_end_matches('.').to_string();
    if prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        Ok(prefix)
    } else {
        Err(InvalidConfig::new(
            "prefix",
            format!("{configured:?} must be a module path such as \"features.\""),
        ))
    }
}

/// Parses every layer and infers the row shape through the stack from `input`; a layer that
/// cannot take its input, or makes an empty or oversized row, is an error naming it. Also
/// returns the vocabulary size when the first layer is an `Embedding` (the input is then ids).
fn resolve_layers(
    entries: &[toml::Value],
    input: &[usize],
) -> Result<(Vec<Resolved>, Option<i64>), InvalidConfig> {
    let mut shape = input.to_vec();
    let mut layers = Vec::with_capacity(entries.len());
    let mut tokens = None;
    for (index, entry) in entries.iter().enumerate() {
        let (kind, spec) = LayerSpec::parse(entry)
            .map_err(|reason| InvalidConfig::new("layers", format!("layers[{index}]: {reason}")))?;
        if let LayerSpec::Embedding { count, .. } = spec {
            if index == 0 {
                tokens = Some(count as i64);
            }
        }
        let output = spec.output_shape(&shape, index == 0).map_err(|m| {
            InvalidConfig::new(
                "layers",
                format!(
                    "layers[{index}] ({kind}) takes {}, but its input is {}",
                    m.0,
                    shape_text(&shape)
                ),
            )
        })?;
        if row_values(&output).is_none() || output.contains(&0) {
            return Err(InvalidConfig::new(
                "layers",
                format!(
                    "layers[{index}] ({kind}) makes {} of {}: empty, or more than {MAX_ROW_VALUES} values per row",
                    shape_text(&output),
                    shape_text(&shape)
                ),
            ));
        }
        layers.push(Resolved {
            spec,
            input: shape,
            output: output.clone(),
        });
        shape = output;
    }
    Ok((layers, tokens))
}

impl SequentialArch {
    pub fn new(cfg: SequentialConfig) -> Result<SequentialArch, InvalidConfig> {
        io_name(&cfg.input.name, "input.name")?;
        let output_name = cfg
            .output
            .map(|o| o.name)
            .unwrap_or_else(|| "output".to_string());
        io_name(&output_name, "output.name")?;
        let prefix = module_prefix(&cfg.prefix)?;
        if cfg.input.shape.is_empty() || cfg.input.shape.contains(&0) {
            return Err(InvalidConfig::new(
                "input.shape",
                "must list the row's dimensions (batch excluded), each at least 1",
            ));
        }
        if row_values(&cfg.input.shape).is_none() {
            return Err(InvalidConfig::new(
                "input.shape",
                format!("a row may hold at most {MAX_ROW_VALUES} values"),
            ));
        }
        if cfg.layers.is_empty() || cfg.layers.len() > MAX_LAYERS {
            return Err(InvalidConfig::new(
                "layers",
                format!("must list 1 to {MAX_LAYERS} layers"),
            ));
        }
        let (layers, tokens) = resolve_layers(&cfg.layers, &cfg.input.shape)?;
        let out_shape = layers.last().map_or(&cfg.input.shape, |l| &l.output);
        let in_kind = if tokens.is_some() {
            ElemKind::I64
        } else {
            ElemKind::F32
        };
        let dims = |s: &[usize]| s.iter().map(|d| *d as i64).collect::<Vec<_>>();
        let signature = Signature {
            inputs: vec![match tokens {
                Some(bound) => IoSpec::new(&cfg.input.name, in_kind, &dims(&cfg.input.shape))
                    .indices(bound as usize, EMBEDDING_ROWS),
                None => IoSpec::new(&cfg.input.name, in_kind, &dims(&cfg.input.shape)),
            }],
            outputs: vec![IoSpec::new(&output_name, ElemKind::F32, &dims(out_shape))],
        };
        Ok(SequentialArch {
            layers,
            prefix,
            tokens,
            signature,
        })
    }
}

impl FamilyConfig for SequentialConfig {
    fn architecture(self) -> Result<Box<dyn Architecture>, InvalidConfig> {
        Ok(Box::new(SequentialArch::new(self)?))
    }
}

impl Architecture for SequentialArch {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Each BatchNorm's `num_batches_tracked` (a training counter), and nothing else.
    fn optional_keys(&self) -> Vec<Glob> {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", self.prefix)
        };
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l.spec, LayerSpec::BatchNorm { .. }))
            .filter_map(|(i, _)| Glob::new(&format!("{prefix}{i}.num_batches_tracked")).ok())
            .collect()
    }

    fn build(&self, vb: VarBuilder<'_>, _: &Assets) -> candle_core::Result<Box<dyn Model>> {
        let vb = if self.prefix.is_empty() {
            vb
        } else {
            vb.pp(&self.prefix)
        };
        let steps = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Step::load(
                    &l.spec,
                    vb.pp(i.to_string()),
                    l.input.clone(),
                    l.output.clone(),
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Box::new(SequentialModel {
            steps,
            tokens: self.tokens,
            output: self
                .layers
                .last()
                .map(|l| l.output.clone())
                .unwrap_or_default(),
            signature: self.signature.clone(),
        }))
    }
}

struct SequentialModel {
    steps: Vec<Step>,
    /// The embedding table's size when the input is token ids.
    tokens: Option<i64>,
    output: Vec<usize>,
    signature: Signature,
}

impl Model for SequentialModel {
    fn prepare(&self, mut inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        let rows = common_rows(&self.signature, &inputs)?;
        if let (Some(bound), Some(Some(t))) = (self.tokens, inputs.first_mut()) {
            // Decoders check ids against the table as they read them; a tensor made another
            // way (a golden file, a warm-up) is checked here, then kept in 4 bytes.
            let outside = t.data.ints().and_then(|ids| {
                ids.iter()
                    .enumerate()
                    .find(|(_, v)| !(0..bound).contains(v))
            });
            if let Some((index, value)) = outside {
                return Err(InputError::OutOfRange {
                    input: self.signature.inputs[0].name.clone(),
                    index,
                    value,
                    bound,
                    what: EMBEDDING_ROWS,
                });
            }
            t.data = std::mem::replace(&mut t.data, HostData::Ids(Vec::new())).into_ids();
        }
        Ok(Prepared {
            rows,
            tensors: inputs,
            notes: Default::default(),
        })
    }

    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        let n: usize = batch.iter().map(|p| p.rows).sum();
        let mut floats = Vec::new();
        let mut ids = Vec::new();
        for prepared in batch {
            let data = prepared
                .tensors
                .first()
                .and_then(|t| t.as_ref())
                .map(|t| &t.data);
            match (data.and_then(HostData::f32s), data.and_then(HostData::ids)) {
                (Some(v), _) => floats.extend_from_slice(v),
                (_, Some(v)) => ids.extend_from_slice(v),
                _ => candle_core::bail!("a prepared request lacks its input"),
            }
        }
        let mut steps = self.steps.iter();
        let mut x = if self.tokens.is_some() {
            match steps.next() {
                Some(first) => first.embed(&ids, n)?,
                None => candle_core::bail!("an empty stack"),
            }
        } else {
            Batch { n, data: floats }
        };
        for step in steps {
            x = step.forward(x)?;
        }
        let mut shape = vec![n];
        shape.extend_from_slice(&self.output);
        let y = candle_core::Tensor::from_vec(x.data, shape, &candle_core::Device::Cpu)?;
        split_rows(&y, batch.iter().map(|p| p.rows))
    }
}

#[cfg(test)]
mod tests;
