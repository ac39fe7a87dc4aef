//! Decoding an inference request (JSON, plus the binary tensor extension's tail) straight into
//! the host tensors a model's signature asks for.
//!
//! The decoder reads from a slice (small bodies, parsed in place on the request's task) or from
//! any [`Read`] (large or compressed bodies, parsed on the decode pool while their chunks are
//! freed as they are consumed, so a body and its decoded tensors are never both whole in
//! memory). Either way the JSON is read by visitors that check as they go ([`json`]): shapes,
//! element counts, string counts, parameters and outputs are capped while they are read, and
//! values are converted into typed buffers one by one ([`super::values`]). Binary inputs are then
//! read from the tail in chunks into the same typed buffers; no byte of the tail may be left
//! over. Every size is computed with checked arithmetic.

mod clip_strings;
mod data;
mod json;
mod message;
mod outputs;

use std::io::{BufReader, Read};
use std::time::Duration;

use serde::de::DeserializeSeed;

use crate::model::{ElemKind, HostTensor, IoSpec, Signature};

use super::datatype::Datatype;
use super::error::ProtocolError;
use super::params::{ParamValue, Parameters};
use super::values::{clipped, Sink};

use clip_strings::ClipStrings;
pub(crate) use json::Slot;
use json::{Context, InputData, Parsed, RequestSeed};
pub use message::{decode_message, Contents, MessageInput, MessageRequest, MessageValues};

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Elements across all inputs of one request.
    pub max_elements: u64,
    /// BYTES elements (strings) across all inputs of one request: each costs a small
    /// allocation whatever its length, so a flood of empty strings is capped by count.
    pub max_strings: u64,
    /// Entries of one `parameters` object.
    pub max_parameters: usize,
    /// Dimensions of a shape (and the nesting depth of `data`).
    pub max_rank: usize,
    /// Rows (the first dimension) of an input: the model's `max_request_rows`.
    pub max_rows: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_elements: 16 << 20,
            max_strings: 65_536,
            max_parameters: 64,
            max_rank: 8,
            max_rows: u64::MAX,
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
    /// Triton's `priority` parameter (`None` when absent or 0: the model's default).
    pub priority: Option<u64>,
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

/// Decodes a whole body held in memory.
pub fn decode(
    body: &[u8],
    header_len: Option<u64>,
    signature: &Signature,
    limits: &DecodeLimits,
) -> Result<Decoded, ProtocolError> {
    let (json, tail) = split_body(body, header_len)?;
    let slot = Slot::default();
    let mut cx = context(signature, limits, body.len() as u64, &slot);
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = RequestSeed { cx: &mut cx }
        .deserialize(&mut de)
        .and_then(|p| de.end().map(|()| p))
        .map_err(|e| slot.take(e))?;
    finish(parsed, tail, signature)
}

/// Decodes a body from a reader (chunks being received, or a decompressor over them).
/// `size_hint` bounds what is reserved up front: the body's size as far as it is known.
pub fn decode_reader<R: Read>(
    mut reader: R,
    header_len: Option<u64>,
    signature: &Signature,
    limits: &DecodeLimits,
    size_hint: u64,
) -> Result<Decoded, ProtocolError> {
    if header_len == Some(0) {
        return Err(ProtocolError::RawBinary);
    }
    let slot = Slot::default();
    let mut cx = context(signature, limits, size_hint, &slot);
    let parsed = {
        let head = (&mut reader).take(header_len.unwrap_or(u64::MAX));
        let head = ClipStrings::new(head, longest_string(signature));
        let mut de =
            serde_json::Deserializer::from_reader(BufReader::with_capacity(64 << 10, head));
        RequestSeed { cx: &mut cx }
            .deserialize(&mut de)
            .and_then(|p| de.end().map(|()| p))
            .map_err(|e| slot.take(e))?
    };
    finish(parsed, reader, signature)
}

/// Characters of a JSON string worth reading: past this, every visitor has already clipped it
/// (a BYTES input's `max_bytes` plus a character) or refused it (an id, a name, a parameter;
/// 4 KiB at most), so [`ClipStrings`] may drop the rest. Unbounded when a BYTES input keeps
/// whole elements.
fn longest_string(signature: &Signature) -> usize {
    let mut longest = json::MAX_ID_BYTES.max(super::params::MAX_PARAM_BYTES);
    for spec in signature
        .inputs
        .iter()
        .filter(|s| s.kind == ElemKind::Bytes)
    {
        match spec.max_bytes {
            Some(max) => longest = longest.max(max),
            None => return usize::MAX,
        }
    }
    // Room for the character `clipped` keeps beyond a budget, and for the check past a limit.
    longest.saturating_add(8)
}

fn context<'a>(
    signature: &'a Signature,
    limits: &'a DecodeLimits,
    size_hint: u64,
    slot: &'a Slot,
) -> Context<'a> {
    Context {
        signature,
        limits,
        elements_left: limits.max_elements,
        strings_left: limits.max_strings,
        // Every JSON value takes at least two bytes (`0,`); binary ones at least one.
        reserve_hint: size_hint / 2 + 1,
        slot,
    }
}

/// Reads the binary inputs from the tail, checks nothing is left over, and assembles the
/// request.
fn finish<R: Read>(
    parsed: Parsed,
    mut tail: R,
    signature: &Signature,
) -> Result<Decoded, ProtocolError> {
    let params = &parsed.parameters;
    let binary_default = bool_param(params, "binary_data_output")?.unwrap_or(false);
    let timeout = match params.get("timeout") {
        None => None,
        Some(ParamValue::Uint(0)) => None,
        Some(ParamValue::Uint(us)) => Some(Duration::from_micros(*us)),
        Some(_) => {
            return Err(ProtocolError::Parameter {
                name: "timeout".into(),
                reason: "must be an unsigned integer number of microseconds".into(),
            });
        }
    };
    let priority = match params.get("priority") {
        None | Some(ParamValue::Uint(0)) => None,
        Some(ParamValue::Uint(p)) => Some(*p),
        Some(_) => {
            return Err(ProtocolError::Parameter {
                name: "priority".into(),
                reason: "must be an unsigned integer (1 is the highest priority)".into(),
            });
        }
    };

    let mut inputs: Vec<Option<HostTensor>> = vec![None; signature.inputs.len()];
    for input in parsed.inputs {
        let data = match input.data {
            InputData::Values(data) => data,
            InputData::Binary { size, sink } => read_binary(&mut tail, size, sink)?,
        };
        let shape = input.shape.iter().map(|d| *d as usize).collect();
        inputs[input.index] = Some(HostTensor { shape, data });
    }
    // The body is already bounded: counting what is left over costs at most its size.
    let extra = std::io::copy(&mut tail, &mut std::io::sink())
        .map_err(|e| ProtocolError::Read(e.to_string()))?;
    if extra != 0 {
        return Err(ProtocolError::TrailingBinary(extra));
    }

    let outputs = choose_outputs(parsed.outputs, signature, binary_default)?;
    Ok(Decoded {
        id: parsed.id,
        inputs,
        outputs,
        timeout,
        priority,
    })
}

/// Fills `buf` from `reader` as far as it can; returns how much it read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Read(e.to_string())),
        }
    }
    Ok(filled)
}

/// The chunk in which binary tensors are read: a multiple of every element size.
const CHUNK: usize = 64 << 10;

/// Reads one binary input of `size` bytes from the tail into its sink.
fn read_binary<R: Read>(
    tail: &mut R,
    size: u64,
    mut sink: Sink,
) -> Result<crate::model::HostData, ProtocolError> {
    let past_end = |sink: &Sink| ProtocolError::BinaryPastEnd {
        input: sink.ctx.input.clone(),
        size,
    };
    let mut left = size;
    if sink.ctx.datatype == Datatype::Bytes {
        let max = sink.ctx.max_bytes;
        while left > 0 {
            let mut prefix = [0u8; 4];
            if left < 4 || read_full(tail, &mut prefix)? != 4 {
                return Err(ProtocolError::Data {
                    input: sink.ctx.input.clone(),
                    reason: format!(
                        "BYTES element {} has a truncated length prefix",
                        sink.count()
                    ),
                });
            }
            left -= 4;
            let len = u32::from_le_bytes(prefix) as u64;
            if len > left {
                return Err(ProtocolError::Data {
                    input: sink.ctx.input.clone(),
                    reason: format!(
                        "BYTES element {} declares {len} bytes but only {left} remain",
                        sink.count()
                    ),
                });
            }
            left -= len;
            // Keep what the model can use (its byte budget plus one character); skip the rest.
            // The element grows as its bytes arrive: a length prefix alone reserves nothing.
            let keep = clip_len(len, max);
            let mut element = Vec::new();
            let got = (&mut *tail)
                .take(keep)
                .read_to_end(&mut element)
                .map_err(|e| ProtocolError::Read(e.to_string()))?;
            if got as u64 != keep {
                return Err(past_end(&sink));
            }
            skip(tail, len - keep).map_err(|()| past_end(&sink))?;
            let kept = clipped(&element, max).len();
            element.truncate(kept);
            sink.binary_string(element)?;
        }
        return sink.finish();
    }
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        if read_full(tail, &mut buf[..n])? != n {
            return Err(past_end(&sink));
        }
        sink.binary(&buf[..n])?;
        left -= n as u64;
    }
    sink.finish()
}

/// How many bytes of a BYTES element of `len` bytes are worth reading.
fn clip_len(len: u64, max: Option<usize>) -> u64 {
    match max {
        Some(max) => len.min(max as u64 + 4),
        None => len,
    }
}

/// Skips `n` bytes of the tail.
fn skip<R: Read>(tail: &mut R, n: u64) -> Result<(), ()> {
    let copied = std::io::copy(&mut tail.take(n), &mut std::io::sink()).map_err(|_| ())?;
    if copied == n {
        Ok(())
    } else {
        Err(())
    }
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
    requested: Option<Vec<json::RequestedOutput>>,
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
        let params = &output.parameters;
        if params.contains_key("classification") {
            return Err(ProtocolError::Unsupported("the classification extension"));
        }
        if params.keys().any(|k| k.starts_with("shared_memory")) {
            return Err(ProtocolError::Unsupported("shared memory"));
        }
        let binary = bool_param(params, "binary_data")?.unwrap_or(binary_default);
        out.push(OutputChoice {
            index: output.index,
            binary,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
