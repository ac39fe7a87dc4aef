//! Decoding an inference request (JSON, plus the binary tensor extension's tail) into the host
//! tensors a model's signature asks for.
//!
//! Every size is computed with checked arithmetic and compared with what the body actually holds
//! before anything is allocated from it: the JSON header length must lie within the body, each
//! binary input must be exactly shape × element size, BYTES elements are parsed with bounds
//! checks, and no byte of the tail may be left over. Values convert into the model's element kind
//! only without loss or overflow (see [`Datatype::converts_to`]).

use std::time::Duration;

use crate::arch::{shape_text, ElemKind, HostData, HostTensor, Signature};

use super::datatype::Datatype;
use super::request::{InferRequest, JsonData, JsonValues, Num, Parameters};

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

fn names(specs: &[crate::arch::IoSpec]) -> String {
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
        let fixed_ok = input.shape.len() == spec.dims.len() + 1
            && spec
                .dims
                .iter()
                .zip(&input.shape[1..])
                .all(|(want, got)| *want < 0 || *want as u64 == *got);
        if !fixed_ok {
            return Err(ProtocolError::Shape {
                input: input.name,
                shape: input.shape,
                expected: shape_text(&spec.dims),
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
        let ctx = Ctx {
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
            (Some(data), None) => from_json(&ctx, data, &input.shape, count)?,
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
                from_binary(&ctx, bytes, &input.shape, count)?
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

struct Ctx<'a> {
    input: &'a str,
    datatype: Datatype,
    kind: ElemKind,
    /// Values must be checked one by one (e.g. INT64 into F32).
    check_values: bool,
}

impl Ctx<'_> {
    fn value_error(
        &self,
        index: usize,
        value: impl ToString,
        reason: &'static str,
    ) -> ProtocolError {
        ProtocolError::Value {
            input: self.input.to_string(),
            index,
            value: value.to_string(),
            reason,
        }
    }
}

fn count_error(ctx: &Ctx, shape: &[u64], expected: u64, actual: usize) -> ProtocolError {
    ProtocolError::ElementCount {
        input: ctx.input.to_string(),
        shape: shape.to_vec(),
        expected,
        actual: actual as u64,
    }
}

/// The integer range of an integer datatype.
fn int_range(d: Datatype) -> (i128, i128) {
    match d {
        Datatype::Uint8 => (0, u8::MAX as i128),
        Datatype::Uint16 => (0, u16::MAX as i128),
        Datatype::Uint32 => (0, u32::MAX as i128),
        Datatype::Uint64 => (0, u64::MAX as i128),
        Datatype::Int8 => (i8::MIN as i128, i8::MAX as i128),
        Datatype::Int16 => (i16::MIN as i128, i16::MAX as i128),
        Datatype::Int32 => (i32::MIN as i128, i32::MAX as i128),
        _ => (i64::MIN as i128, i64::MAX as i128),
    }
}

fn from_json(
    ctx: &Ctx,
    data: JsonData,
    shape: &[u64],
    count: u64,
) -> Result<HostData, ProtocolError> {
    if let Some(nested) = &data.nested_shape {
        if nested.len() != shape.len() || nested.iter().zip(shape).any(|(a, b)| *a as u64 != *b) {
            return Err(ProtocolError::NestedShape {
                input: ctx.input.to_string(),
                nested: nested.clone(),
                shape: shape.to_vec(),
            });
        }
    }
    if data.values.len() as u64 != count {
        return Err(count_error(ctx, shape, count, data.values.len()));
    }
    match (data.values, ctx.kind) {
        (JsonValues::Numbers(nums), ElemKind::F32) => {
            let mut out = Vec::with_capacity(nums.len());
            for (i, n) in nums.into_iter().enumerate() {
                out.push(json_to_f32(ctx, i, n)?);
            }
            Ok(HostData::F32(out))
        }
        (JsonValues::Numbers(nums), ElemKind::I64) => {
            let mut out = Vec::with_capacity(nums.len());
            for (i, n) in nums.into_iter().enumerate() {
                let v = json_integer(ctx, i, n)?;
                out.push(
                    i64::try_from(v).map_err(|_| ctx.value_error(i, v, "does not fit in INT64"))?,
                );
            }
            Ok(HostData::I64(out))
        }
        (JsonValues::Strings(strings), ElemKind::Bytes) => Ok(HostData::Bytes(
            strings.into_iter().map(String::into_bytes).collect(),
        )),
        (values, _) => Err(ProtocolError::Data {
            input: ctx.input.to_string(),
            reason: format!(
                "data holds {} but the datatype is {}",
                match values {
                    JsonValues::Numbers(_) => "numbers",
                    JsonValues::Bools(_) => "booleans",
                    JsonValues::Strings(_) => "strings",
                },
                ctx.datatype
            ),
        }),
    }
}

/// A JSON number checked against an integer datatype's range.
fn json_integer(ctx: &Ctx, index: usize, n: Num) -> Result<i128, ProtocolError> {
    let v: i128 = match n {
        Num::U(u) => u as i128,
        Num::I(i) => i as i128,
        Num::F(f) => {
            return Err(ctx.value_error(
                index,
                f,
                match ctx.datatype.is_integer() {
                    true => "is not an integer",
                    false => "is not valid for this datatype",
                },
            ));
        }
    };
    let (lo, hi) = int_range(ctx.datatype);
    if v < lo || v > hi {
        return Err(ctx.value_error(index, v, "is out of range for the declared datatype"));
    }
    Ok(v)
}

fn json_to_f32(ctx: &Ctx, index: usize, n: Num) -> Result<f32, ProtocolError> {
    if ctx.datatype.is_integer() {
        let v = json_integer(ctx, index, n)?;
        return exact_f32(ctx, index, v);
    }
    let v = match n {
        Num::U(u) => u as f64,
        Num::I(i) => i as f64,
        Num::F(f) => f,
    };
    // JSON text is decimal: rounding to the nearest representable value is what every parser
    // does. Overflowing to infinity is refused (serde_json would give inf for 1e39 silently).
    let out = match ctx.datatype {
        Datatype::Fp16 => half::f16::from_f64(v).to_f32(),
        Datatype::Bf16 => half::bf16::from_f64(v).to_f32(),
        _ => v as f32,
    };
    if !out.is_finite() {
        return Err(ctx.value_error(index, n, "overflows the declared float type"));
    }
    Ok(out)
}

fn exact_f32(ctx: &Ctx, index: usize, v: i128) -> Result<f32, ProtocolError> {
    let f = v as f32;
    if ctx.check_values && f as i128 != v {
        return Err(ctx.value_error(index, v, "is not exactly representable in FP32"));
    }
    Ok(f)
}

fn from_binary(
    ctx: &Ctx,
    bytes: &[u8],
    shape: &[u64],
    count: u64,
) -> Result<HostData, ProtocolError> {
    if ctx.datatype == Datatype::Bytes {
        let elements = parse_bytes_elements(ctx, bytes)?;
        if elements.len() as u64 != count {
            return Err(count_error(ctx, shape, count, elements.len()));
        }
        return Ok(HostData::Bytes(elements));
    }
    let size = ctx.datatype.size().unwrap_or(1) as u64;
    let expected = count * size;
    if bytes.len() as u64 != expected {
        return Err(ProtocolError::BinarySize {
            input: ctx.input.to_string(),
            size: bytes.len() as u64,
            shape: shape.to_vec(),
            datatype: ctx.datatype,
            expected,
        });
    }
    match ctx.kind {
        ElemKind::F32 => Ok(HostData::F32(binary_to_f32(ctx, bytes)?)),
        ElemKind::I64 => {
            let ints = binary_integers(ctx.datatype, bytes);
            let mut out = Vec::with_capacity(ints.len());
            for (i, v) in ints.into_iter().enumerate() {
                out.push(
                    i64::try_from(v).map_err(|_| ctx.value_error(i, v, "does not fit in INT64"))?,
                );
            }
            Ok(HostData::I64(out))
        }
        ElemKind::Bytes => unreachable_kind(ctx),
    }
}

fn unreachable_kind(ctx: &Ctx) -> Result<HostData, ProtocolError> {
    // `converts_to` only lets BYTES reach a Bytes input; answer with a client error regardless.
    Err(ProtocolError::DatatypeRefused {
        input: ctx.input.to_string(),
        datatype: ctx.datatype,
        expected: Datatype::Bytes,
        hint: "",
    })
}

fn le<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

fn binary_to_f32(ctx: &Ctx, bytes: &[u8]) -> Result<Vec<f32>, ProtocolError> {
    Ok(match ctx.datatype {
        Datatype::Fp32 => le::<4>(bytes).map(f32::from_le_bytes).collect(),
        Datatype::Fp16 => le::<2>(bytes)
            .map(|b| half::f16::from_le_bytes(b).to_f32())
            .collect(),
        Datatype::Bf16 => le::<2>(bytes)
            .map(|b| half::bf16::from_le_bytes(b).to_f32())
            .collect(),
        d if d.is_integer() => {
            let ints = binary_integers(d, bytes);
            let mut out = Vec::with_capacity(ints.len());
            for (i, v) in ints.into_iter().enumerate() {
                out.push(exact_f32(ctx, i, v)?);
            }
            out
        }
        _ => return unreachable_kind(ctx).map(|_| Vec::new()),
    })
}

/// Little-endian integers of an integer datatype, widened to i128 so every range check is exact.
fn binary_integers(d: Datatype, bytes: &[u8]) -> Vec<i128> {
    match d {
        Datatype::Uint8 => bytes.iter().map(|b| *b as i128).collect(),
        Datatype::Int8 => bytes.iter().map(|b| *b as i8 as i128).collect(),
        Datatype::Uint16 => le::<2>(bytes)
            .map(|b| u16::from_le_bytes(b) as i128)
            .collect(),
        Datatype::Int16 => le::<2>(bytes)
            .map(|b| i16::from_le_bytes(b) as i128)
            .collect(),
        Datatype::Uint32 => le::<4>(bytes)
            .map(|b| u32::from_le_bytes(b) as i128)
            .collect(),
        Datatype::Int32 => le::<4>(bytes)
            .map(|b| i32::from_le_bytes(b) as i128)
            .collect(),
        Datatype::Uint64 => le::<8>(bytes)
            .map(|b| u64::from_le_bytes(b) as i128)
            .collect(),
        Datatype::Int64 => le::<8>(bytes)
            .map(|b| i64::from_le_bytes(b) as i128)
            .collect(),
        _ => Vec::new(),
    }
}

/// BYTES in the binary extension: each element is a little-endian u32 length, then the bytes.
fn parse_bytes_elements(ctx: &Ctx, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(ProtocolError::Data {
                input: ctx.input.to_string(),
                reason: format!("BYTES element {} has a truncated length prefix", out.len()),
            });
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(ProtocolError::Data {
                input: ctx.input.to_string(),
                reason: format!(
                    "BYTES element {} declares {len} bytes but only {} remain",
                    out.len(),
                    rest.len()
                ),
            });
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Ok(out)
}
