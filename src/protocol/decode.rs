//! Decoding an inference request (JSON, plus the binary tensor extension's tail) into the host
//! tensors a model's signature asks for.
//!
//! Every size is computed with checked arithmetic and compared with what the body actually holds
//! before anything is allocated from it: the JSON header length must lie within the body, each
//! binary input must be exactly shape × element size, BYTES elements are parsed with bounds
//! checks, and no byte of the tail may be left over. Values convert into the model's element kind
//! only without loss or overflow (see [`Datatype::converts_to`]).

use std::time::Duration;

use crate::model::{ElemKind, HostTensor, IoSpec, Signature};

use super::datatype::Datatype;
use super::request::{InferRequest, Parameters};
use super::values;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Elements across all inputs of one request.
    pub max_elements: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_elements: 16 << 20,
        }
    }
}

/// Which output to return, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputChoice {
    /// Index into the signature's outputs.
    pub index: usize,
    pub binary: bool,
}

/// A request, checked and converted.
#[derive(Debug)]
pub struct Decoded {
    pub id: Option<String>,
    /// Aligned with the signature's inputs; `None` for an absent optional input.
    pub inputs: Vec<Option<HostTensor>>,
    pub outputs: Vec<OutputChoice>,
    /// Triton's `timeout` parameter: how long the request may wait in the queue.
    pub timeout: Option<Duration>,
}

/// A request the server cannot accept (HTTP 400), with the data to say why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid JSON in request: {0}")]
    Json(String),
    #[error(
        "Inference-Header-Content-Length {header_len} is larger than the body ({body_len} bytes)"
    )]
    HeaderLength { header_len: u64, body_len: u64 },
    #[error("raw binary requests (Inference-Header-Content-Length: 0) are not supported; send a JSON header first")]
    RawBinary,
    #[error("unknown input {name:?}; the model's inputs are {known}")]
    UnknownInput { name: String, known: String },
    #[error("input {0:?} appears more than once")]
    DuplicateInput(String),
    #[error("unknown output {name:?}; the model's outputs are {known}")]
    UnknownOutput { name: String, known: String },
    #[error("output {0:?} is requested more than once")]
    DuplicateOutput(String),
    #[error("input {input:?}: unknown datatype {datatype:?} (datatypes are upper case, e.g. FP32, INT64, BYTES)")]
    UnknownDatatype { input: String, datatype: String },
    #[error("input {input:?}: datatype {datatype} cannot be converted to the model's {expected} without loss{hint}")]
    DatatypeRefused {
        input: String,
        datatype: Datatype,
        expected: Datatype,
        hint: &'static str,
    },
    #[error("input {input:?}: shape {shape:?} does not match the model's {expected}")]
    Shape {
        input: String,
        shape: Vec<u64>,
        expected: String,
    },
    #[error("input {input:?}: shape {shape:?} holds {expected} elements but data has {actual}")]
    ElementCount {
        input: String,
        shape: Vec<u64>,
        expected: u64,
        actual: u64,
    },
    #[error(
        "input {input:?}: nested data has shape {nested:?} but the declared shape is {shape:?}"
    )]
    NestedShape {
        input: String,
        nested: Vec<usize>,
        shape: Vec<u64>,
    },
    #[error("the request's tensors hold {elements} elements, above the limit of {limit}")]
    TooManyElements { elements: u64, limit: u64 },
    #[error("input {input:?}: value {value} at index {index} {reason}")]
    Value {
        input: String,
        index: usize,
        value: String,
        reason: &'static str,
    },
    #[error("input {input:?}: {reason}")]
    Data { input: String, reason: String },
    #[error("input {input:?}: binary_data_size is {size} bytes but the shape {shape:?} of {datatype} needs {expected}")]
    BinarySize {
        input: String,
        size: u64,
        shape: Vec<u64>,
        datatype: Datatype,
        expected: u64,
    },
    #[error("input {input:?}: binary_data_size {size} runs past the end of the body ({available} bytes left)")]
    BinaryPastEnd {
        input: String,
        size: u64,
        available: u64,
    },
    #[error("the body has {0} bytes after the last binary input")]
    TrailingBinary(u64),
    #[error("parameter {name:?}: {reason}")]
    Parameter { name: String, reason: String },
    #[error("{0} is not supported by wick")]
    Unsupported(&'static str),
}

/// Client-supplied text echoed in an error is cut short: an error must not repeat a 60 KB name.
pub fn clip(mut text: String) -> String {
    const MAX: usize = 128;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn names(specs: &[IoSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{:?}", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits a body into its JSON header and binary tail.
pub fn split_body(body: &[u8], header_len: Option<u64>) -> Result<(&[u8], &[u8]), ProtocolError> {
    match header_len {
        None => Ok((body, &[])),
        Some(0) => Err(ProtocolError::RawBinary),
        Some(n) => {
            let body_len = body.len() as u64;
            if n > body_len {
                return Err(ProtocolError::HeaderLength {
                    header_len: n,
                    body_len,
                });
            }
            Ok(body.split_at(n as usize))
        }
    }
}

/// Decodes a request for a model with `signature`.
pub fn decode(
    body: &[u8],
    header_len: Option<u64>,
    signature: &Signature,
    limits: &DecodeLimits,
) -> Result<Decoded, ProtocolError> {
    let (json, tail) = split_body(body, header_len)?;
    let request: InferRequest =
        serde_json::from_slice(json).map_err(|e| ProtocolError::Json(e.to_string()))?;

    let params = request.parameters.unwrap_or_default();
    let binary_default = bool_param(&params, "binary_data_output")?.unwrap_or(false);
    let timeout = match params.get("timeout") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(us) => Some(Duration::from_micros(us)),
            None => {
                return Err(ProtocolError::Parameter {
                    name: "timeout".into(),
                    reason: "must be an unsigned integer number of microseconds".into(),
                });
            }
        },
    };

    let mut inputs: Vec<Option<HostTensor>> = vec![None; signature.inputs.len()];
    let mut cursor = 0usize;
    let mut elements = 0u64;
    for input in request.inputs {
        let Some(index) = signature.inputs.iter().position(|s| s.name == input.name) else {
            return Err(ProtocolError::UnknownInput {
                name: clip(input.name),
                known: names(&signature.inputs),
            });
        };
        if inputs[index].is_some() {
            return Err(ProtocolError::DuplicateInput(clip(input.name)));
        }
        let spec = &signature.inputs[index];
        let Some(datatype) = Datatype::parse(&input.datatype) else {
            return Err(ProtocolError::UnknownDatatype {
                input: input.name,
                datatype: clip(input.datatype),
            });
        };
        let Some(check_values) = datatype.converts_to(spec.kind) else {
            return Err(ProtocolError::DatatypeRefused {
                hint: refusal_hint(datatype, spec.kind),
                input: input.name,
                datatype,
                expected: Datatype::of_kind(spec.kind),
            });
        };
        if !spec.accepts_shape(input.shape.iter().copied()) {
            return Err(ProtocolError::Shape {
                input: input.name,
                shape: input.shape,
                expected: spec.shape_text(),
            });
        }
        let count = input
            .shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .filter(|c| {
                elements
                    .checked_add(*c)
                    .is_some_and(|t| t <= limits.max_elements)
            })
            .ok_or(ProtocolError::TooManyElements {
                elements: input.shape.iter().fold(1u64, |a, d| a.saturating_mul(*d)),
                limit: limits.max_elements,
            })?;
        elements += count;

        let input_params = input.parameters.unwrap_or_default();
        if input_params.keys().any(|k| k.starts_with("shared_memory")) {
            return Err(ProtocolError::Unsupported("shared memory"));
        }
        let binary_size = match input_params.get("binary_data_size") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| ProtocolError::Parameter {
                name: "binary_data_size".into(),
                reason: "must be an unsigned integer".into(),
            })?),
        };
        let ctx = values::Ctx {
            input: &input.name,
            datatype,
            kind: spec.kind,
            check_values,
        };
        let data = match (input.data, binary_size) {
            (Some(_), Some(_)) => {
                return Err(ProtocolError::Data {
                    input: input.name,
                    reason: "has both `data` and `binary_data_size`".into(),
                });
            }
            (None, None) => {
                return Err(ProtocolError::Data {
                    input: input.name,
                    reason: "has neither `data` nor `binary_data_size`".into(),
                });
            }
            (Some(data), None) => values::from_json(&ctx, data, &input.shape, count)?,
            (None, Some(size)) => {
                let available = (tail.len() - cursor) as u64;
                if size > available {
                    return Err(ProtocolError::BinaryPastEnd {
                        input: input.name,
                        size,
                        available,
                    });
                }
                let bytes = &tail[cursor..cursor + size as usize];
                cursor += size as usize;
                values::from_binary(&ctx, bytes, &input.shape, count)?
            }
        };
        let shape = input.shape.iter().map(|d| *d as usize).collect();
        inputs[index] = Some(HostTensor { shape, data });
    }
    if cursor != tail.len() {
        return Err(ProtocolError::TrailingBinary((tail.len() - cursor) as u64));
    }

    let outputs = choose_outputs(request.outputs, signature, binary_default)?;
    Ok(Decoded {
        id: request.id,
        inputs,
        outputs,
        timeout,
    })
}

fn refusal_hint(datatype: Datatype, kind: ElemKind) -> &'static str {
    match (datatype, kind) {
        (Datatype::Fp64, ElemKind::F32) => " (FP64 to FP32 rounds; send FP32)",
        (d, ElemKind::I64) if d.is_float() => " (floats are not token ids; send INT64)",
        (Datatype::Bool, _) => " (BOOL is not numeric)",
        (Datatype::Bytes, _) => " (BYTES is for text inputs)",
        (_, ElemKind::Bytes) => " (this input takes BYTES strings)",
        _ => "",
    }
}

fn bool_param(params: &Parameters, name: &str) -> Result<Option<bool>, ProtocolError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ProtocolError::Parameter {
                name: name.to_string(),
                reason: "must be true or false".into(),
            }),
    }
}

fn choose_outputs(
    requested: Option<Vec<super::request::RequestOutput>>,
    signature: &Signature,
    binary_default: bool,
) -> Result<Vec<OutputChoice>, ProtocolError> {
    let Some(requested) = requested else {
        return Ok((0..signature.outputs.len())
            .map(|index| OutputChoice {
                index,
                binary: binary_default,
            })
            .collect());
    };
    let mut out: Vec<OutputChoice> = Vec::with_capacity(requested.len());
    for output in requested {
        let Some(index) = signature.outputs.iter().position(|s| s.name == output.name) else {
            return Err(ProtocolError::UnknownOutput {
                name: clip(output.name),
                known: names(&signature.outputs),
            });
        };
        if out.iter().any(|o| o.index == index) {
            return Err(ProtocolError::DuplicateOutput(clip(output.name)));
        }
        let params = output.parameters.unwrap_or_default();
        if params.contains_key("classification") {
            return Err(ProtocolError::Unsupported("the classification extension"));
        }
        if params.keys().any(|k| k.starts_with("shared_memory")) {
            return Err(ProtocolError::Unsupported("shared memory"));
        }
        let binary = bool_param(&params, "binary_data")?.unwrap_or(binary_default);
        out.push(OutputChoice { index, binary });
    }
    Ok(out)
}
