//! Server and model metadata responses (`GET /v2`, `GET /v2/models/{m}[/versions/{v}]`).

use serde::Serialize;

use crate::model::{Notes, Signature};

use super::datatype::Datatype;

/// Protocol extensions wick implements, as advertised by `GET /v2`.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
];

#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "wick",
        version: env!("CARGO_PKG_VERSION"),
        extensions: EXTENSIONS,
    }
}

#[derive(Debug, Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    /// The batch dimension comes first as `-1`, as Triton reports it for batching models.
    pub shape: Vec<i64>,
}

#[derive(Debug, Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// What the answering version resolved at load time ([`crate::model::Model::parameters`]),
    /// e.g. a text encoder's pooling; absent when it has nothing to say.
    #[serde(skip_serializing_if = "Notes::is_empty")]
    pub parameters: Notes,
}

/// `versions` lists the ready versions, highest first; `parameters` are the described version's.
pub fn model_metadata(
    name: &str,
    versions: &[u64],
    signature: &Signature,
    parameters: Notes,
) -> ModelMetadata {
    let tensors = |specs: &[crate::model::IoSpec]| {
        specs
            .iter()
            .map(|s| {
                let mut shape = vec![-1];
                shape.extend(&s.dims);
                TensorMetadata {
                    name: s.name.clone(),
                    datatype: Datatype::of_kind(s.kind).name(),
                    shape,
                }
            })
            .collect()
    };
    ModelMetadata {
        name: name.to_string(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: "wick_safetensors",
        inputs: tensors(&signature.inputs),
        outputs: tensors(&signature.outputs),
        parameters,
    }
}
