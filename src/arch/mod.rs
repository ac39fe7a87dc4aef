//! Code-defined architectures and the registry that maps a name in config.toml to one.
//!
//! An architecture family is a file here with a serde `XConfig` (unknown keys refused), a
//! `load(vb, &cfg)` that asks a candle `VarBuilder` for each parameter by the name PyTorch gives
//! it, and a `forward`. The registry turns `architecture = "mlp"` plus its `config` table into a
//! [`Configured`] architecture: its input/output [`Signature`], the parameter list it expects
//! (recorded once, see [`crate::state_dict::recording`]), the extra files a version needs, and a
//! builder for a runnable [`Model`]. Nothing here touches files, sockets or tokio: weights and
//! assets arrive as values.

pub mod bert;
pub mod bert_encoder;
pub mod conv;
pub mod fused;
pub mod mlp;
pub mod resnet;
pub mod tensor;
pub mod text;
pub mod winograd;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use candle_nn::VarBuilder;

pub use tensor::{HostData, HostTensor};

use crate::state_dict::{record, ExpectedSpec, Glob, RecordError};

/// Element types at the model's boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemKind {
    F32,
    I64,
    /// Variable-length byte strings (UTF-8 text for text models).
    Bytes,
}

/// One input or output of a model. `dims` excludes the leading batch dimension; `-1` marks a
/// dimension that varies per request (e.g. sequence length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub kind: ElemKind,
    pub dims: Vec<i64>,
    pub optional: bool,
}

impl IoSpec {
    pub fn new(name: &str, kind: ElemKind, dims: &[i64]) -> IoSpec {
        IoSpec {
            name: name.to_string(),
            kind,
            dims: dims.to_vec(),
            optional: false,
        }
    }

    pub fn optional(mut self) -> IoSpec {
        self.optional = true;
        self
    }
}

/// What a model takes and returns; every tensor is batched along its first dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

/// Per-request information a model returns beside its outputs (e.g. "this text was truncated").
pub type Notes = BTreeMap<String, serde_json::Value>;

/// One request's inputs after validation by the model: ready to be batched.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Rows this request contributes to a batch.
    pub rows: usize,
    /// Aligned with the signature's inputs (or the model's own internal layout).
    pub tensors: Vec<Option<HostTensor>>,
    pub notes: Notes,
}

/// A request the model cannot run, with a message for the client (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Files a version needs beside `model.safetensors`, by file name.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A runnable model with weights.
pub trait Model: Send + Sync {
    /// Checks one request's inputs (aligned with the signature, `None` for an absent optional
    /// input) and turns them into what `forward` batches. Runs on the request path, before the
    /// request is queued: keep it cheap and make every client mistake an `InputError` here.
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError>;

    /// Runs several prepared requests as one batch and returns each request's outputs, aligned
    /// with the signature's outputs. An `Err` fails the whole batch; the engine then retries its
    /// requests one by one so one bad request cannot fail the others.
    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>>;
}

/// One architecture family with its typed config applied.
pub trait Architecture: Send + Sync {
    /// The registry name (`"mlp"`).
    fn name(&self) -> &'static str;
    fn signature(&self) -> &Signature;
    /// Checkpoint keys that may be present without being used.
    fn optional_keys(&self) -> Vec<Glob> {
        Vec::new()
    }
    /// Files every version must have beside the weights (e.g. `tokenizer.json`).
    fn required_assets(&self) -> &'static [&'static str] {
        &[]
    }
    /// Builds the model from weights. `assets` is empty when the registry records the parameter
    /// list, so builders must only parse assets that are present.
    fn build(&self, vb: VarBuilder<'_>, assets: &Assets) -> candle_core::Result<Box<dyn Model>>;
    /// A request of zeros used to warm up a freshly loaded version.
    fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        zeros_request(self.signature())
    }
}

/// A request with one row of zeros for every required input (variable dimensions set to 1).
pub fn zeros_request(signature: &Signature) -> Vec<Option<HostTensor>> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            if spec.optional {
                return None;
            }
            let mut shape = vec![1usize];
            shape.extend(
                spec.dims
                    .iter()
                    .map(|d| if *d < 0 { 1 } else { *d as usize }),
            );
            Some(HostTensor::zeros(spec.kind, shape))
        })
        .collect()
}

/// An architecture plus its cached parameter list.
pub struct Configured {
    inner: Box<dyn Architecture>,
    expected: OnceLock<Result<Arc<ExpectedSpec>, String>>,
}

impl fmt::Debug for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Configured")
            .field("name", &self.inner.name())
            .finish()
    }
}

impl Configured {
    pub fn new(inner: Box<dyn Architecture>) -> Configured {
        Configured {
            inner,
            expected: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.inner.name()
    }

    pub fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    pub fn required_assets(&self) -> &'static [&'static str] {
        self.inner.required_assets()
    }

    pub fn warmup_inputs(&self) -> Vec<Option<HostTensor>> {
        self.inner.warmup_inputs()
    }

    /// The parameters this architecture asks for, recorded on first use.
    pub fn expected(&self) -> Result<Arc<ExpectedSpec>, String> {
        self.expected
            .get_or_init(|| {
                let params = record(|vb| self.inner.build(vb, &Assets::default()).map(drop))
                    .map_err(|e: RecordError| e.to_string())?;
                Ok(Arc::new(ExpectedSpec {
                    params,
                    optional: self.inner.optional_keys(),
                }))
            })
            .clone()
    }

    pub fn build(
        &self,
        vb: VarBuilder<'_>,
        assets: &Assets,
    ) -> candle_core::Result<Box<dyn Model>> {
        self.inner.build(vb, assets)
    }
}

/// Why an architecture could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    #[error("unknown architecture {name:?}; known: {}", KNOWN.join(", "))]
    UnknownArchitecture { name: String },
    #[error("invalid config for architecture {architecture:?}: {message}")]
    InvalidConfig {
        architecture: String,
        message: String,
    },
}

/// Every architecture name the registry knows.
pub const KNOWN: &[&str] = &["linear", "mlp", "resnet", "bert"];

/// The registry: `architecture = "..."` and its `config` table to a configured architecture.
pub fn configure(name: &str, config: &toml::Table) -> Result<Arc<Configured>, ConfigureError> {
    let invalid = |message: String| ConfigureError::InvalidConfig {
        architecture: name.to_string(),
        message,
    };
    let inner: Box<dyn Architecture> = match name {
        "linear" => Box::new(mlp::Mlp::linear(parse(config).map_err(invalid)?).map_err(invalid)?),
        "mlp" => Box::new(mlp::Mlp::new(parse(config).map_err(invalid)?).map_err(invalid)?),
        "resnet" => {
            Box::new(resnet::ResNetArch::new(parse(config).map_err(invalid)?).map_err(invalid)?)
        }
        "bert" => Box::new(bert::BertArch::new(parse(config).map_err(invalid)?).map_err(invalid)?),
        _ => {
            return Err(ConfigureError::UnknownArchitecture {
                name: name.to_string(),
            });
        }
    };
    Ok(Arc::new(Configured::new(inner)))
}

/// Deserialises an architecture's typed config from its TOML table.
pub fn parse<T: serde::de::DeserializeOwned>(table: &toml::Table) -> Result<T, String> {
    toml::Value::Table(table.clone())
        .try_into::<T>()
        .map_err(|e| e.to_string().trim_end().to_string())
}

/// `[-1, 64]`-style text of a batched shape (`-1` = any).
pub fn shape_text(dims: &[i64]) -> String {
    let mut parts = vec!["-1".to_string()];
    parts.extend(dims.iter().map(|d| d.to_string()));
    format!("[{}]", parts.join(", "))
}

/// Checks the parts of a request every model needs checked: required inputs present, kinds and
/// fixed dimensions as the signature says, and every present input with the same number of
/// rows. Returns that row count.
pub fn common_rows(
    signature: &Signature,
    inputs: &[Option<HostTensor>],
) -> Result<usize, InputError> {
    let mut rows: Option<(usize, &str)> = None;
    for (spec, input) in signature.inputs.iter().zip(inputs) {
        match input {
            None if !spec.optional => {
                return Err(InputError(format!(
                    "missing required input {:?}",
                    spec.name
                )));
            }
            None => {}
            Some(t) => {
                if t.data.kind() != spec.kind {
                    return Err(InputError(format!(
                        "input {:?} must hold {:?} values",
                        spec.name, spec.kind
                    )));
                }
                let fixed_ok = t.shape.len() == spec.dims.len() + 1
                    && spec
                        .dims
                        .iter()
                        .zip(&t.shape[1..])
                        .all(|(want, got)| *want < 0 || *want as usize == *got);
                if !fixed_ok {
                    return Err(InputError(format!(
                        "input {:?} has shape {:?}; the model takes {}",
                        spec.name,
                        t.shape,
                        shape_text(&spec.dims)
                    )));
                }
                let r = t.shape.first().copied().unwrap_or(0);
                match rows {
                    None => rows = Some((r, &spec.name)),
                    Some((other, other_name)) if other != r => {
                        return Err(InputError(format!(
                            "inputs {other_name:?} and {:?} have different batch sizes ({other} and {r})",
                            spec.name
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    match rows {
        Some((0, name)) => Err(InputError(format!("input {name:?} has a batch of 0 rows"))),
        Some((r, _)) => Ok(r),
        None => Err(InputError("the request has no inputs".to_string())),
    }
}

/// The batching strategy of fixed-shape models (linear, mlp, resnet): concatenate the one F32
/// input of every request along the batch dimension, run `f` once, split its output rows back.
pub fn forward_stacked(
    batch: &[&Prepared],
    input_dims: &[usize],
    f: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
) -> candle_core::Result<Vec<Vec<HostTensor>>> {
    let total_rows: usize = batch.iter().map(|p| p.rows).sum();
    let row_len: usize = input_dims.iter().product();
    let mut flat = Vec::with_capacity(total_rows * row_len);
    for prepared in batch {
        match prepared.tensors.first() {
            Some(Some(HostTensor {
                data: HostData::F32(values),
                ..
            })) => flat.extend_from_slice(values),
            _ => candle_core::bail!("a prepared request lacks its F32 input"),
        }
    }
    let mut shape = Vec::with_capacity(input_dims.len() + 1);
    shape.push(total_rows);
    shape.extend_from_slice(input_dims);
    let x = candle_core::Tensor::from_vec(flat, shape, &candle_core::Device::Cpu)?;
    let y = f(&x)?;
    split_rows(&y, batch.iter().map(|p| p.rows))
}

/// Splits a batched F32 output back into per-request tensors of `rows` rows each.
pub fn split_rows(
    y: &candle_core::Tensor,
    rows: impl Iterator<Item = usize>,
) -> candle_core::Result<Vec<Vec<HostTensor>>> {
    let dims = y.dims().to_vec();
    let row_len: usize = dims[1..].iter().product();
    let values = y.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::new();
    let mut offset = 0usize;
    for r in rows {
        let end = offset + r * row_len;
        let part = values
            .get(offset..end)
            .ok_or_else(|| {
                candle_core::Error::Msg("model returned fewer rows than it was given".into())
            })?
            .to_vec();
        let mut shape = dims.clone();
        shape[0] = r;
        out.push(vec![HostTensor {
            shape,
            data: HostData::F32(part),
        }]);
        offset = end;
    }
    Ok(out)
}

/// Helpers shared by the architectures' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A TOML table from text.
    pub fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    /// The parameter names an architecture asks for, in request order.
    pub fn param_names(name: &str, config: &str) -> Vec<String> {
        super::configure(name, &table(config))
            .unwrap()
            .expected()
            .unwrap()
            .params
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// Deterministic values in [-1, 1) that are exact in f32.
    pub fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    /// The largest absolute difference between two tensors of one shape.
    pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
