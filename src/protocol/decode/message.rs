//! Decoding an inference request that arrived already parsed as a message (the gRPC
//! `ModelInferRequest`): typed value lists or raw little-endian bytes per input.
//!
//! The same checks as the JSON path, by the same code: each input's declaration goes through
//! the JSON decoder's [`InputSeed::sink`] (name, datatype conversion, shape, rows, element and
//! string budgets), raw bytes through the binary extension's [`read_binary`] (sizes, BYTES length
//! prefixes, value conversion), typed values through the same sinks as little-endian bytes, and
//! the request parameters, timeout, priority and outputs through [`finish`] and
//! [`choose_outputs`]. Only the framing differs: nothing here reads JSON.

use crate::model::{HostData, Signature};

use super::super::datatype::Datatype;
use super::super::error::{clip, ProtocolError};
use super::super::params::Parameters;
use super::super::values::clipped;
use super::json::{InputData, InputSeed, Parsed, ParsedInput, RequestedOutput, Slot};
use super::{context, finish, read_binary, DecodeLimits, Decoded};

/// Typed values of one input, one list per protobuf type (`InferTensorContents`); the
/// datatype says which list holds them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Contents<'a> {
    pub bools: &'a [bool],
    pub ints: &'a [i32],
    pub int64s: &'a [i64],
    pub uints: &'a [u32],
    pub uint64s: &'a [u64],
    pub fp32s: &'a [f32],
    pub fp64s: &'a [f64],
    pub bytes: &'a [Vec<u8>],
}

/// Where an input's values are.
#[derive(Debug, Clone, Copy)]
pub enum MessageValues<'a> {
    /// Little-endian elements; BYTES elements each after a 4-byte little-endian length.
    Raw(&'a [u8]),
    Typed(Contents<'a>),
}

#[derive(Debug)]
pub struct MessageInput<'a> {
    pub name: &'a str,
    pub datatype: &'a str,
    pub shape: &'a [i64],
    pub parameters: Parameters,
    pub values: MessageValues<'a>,
}

#[derive(Debug)]
pub struct MessageRequest<'a> {
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<MessageInput<'a>>,
    /// Outputs by name with their parameters; `None` asks for every output.
    pub outputs: Option<Vec<(&'a str, Parameters)>>,
}

/// Decodes a request message against a model's signature, within `limits`.
pub fn decode_message(
    request: MessageRequest<'_>,
    signature: &Signature,
    limits: &DecodeLimits,
) -> Result<Decoded, ProtocolError> {
    capped(&request.parameters, limits)?;
    if request.inputs.is_empty() {
        return Err(ProtocolError::NoInputs);
    }
    let slot = Slot::default();
    let size: u64 = request.inputs.iter().map(|i| values_len(&i.values)).sum();
    let mut cx = context(signature, limits, size, &slot);
    let mut taken = vec![false; signature.inputs.len()];
    let mut parsed = Parsed::default();
    parsed.id = request.id;
    parsed.parameters = request.parameters;
    for input in request.inputs {
        let mut seed = InputSeed {
            cx: &mut cx,
            taken: &mut taken,
        };
        parsed.inputs.push(decode_input(&mut seed, input)?);
    }
    if let Some(outputs) = request.outputs {
        let mut requested = Vec::with_capacity(outputs.len().min(signature.outputs.len()));
        for (name, parameters) in outputs {
            capped(&parameters, limits)?;
            let index = signature
                .outputs
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| ProtocolError::UnknownOutput {
                    name: clip(name),
                    known: super::names(&signature.outputs),
                })?;
            requested.push(RequestedOutput { index, parameters });
        }
        if requested.len() > signature.outputs.len() {
            return Err(ProtocolError::TooMany {
                what: "outputs",
                limit: signature.outputs.len(),
            });
        }
        parsed.outputs = Some(requested);
    }
    finish(parsed, std::io::empty(), signature)
}

fn capped(parameters: &Parameters, limits: &DecodeLimits) -> Result<(), ProtocolError> {
    if parameters.len() > limits.max_parameters {
        return Err(ProtocolError::TooMany {
            what: "parameters",
            limit: limits.max_parameters,
        });
    }
    Ok(())
}

/// Bytes an input's values take (a hint for what is reserved up front).
fn values_len(values: &MessageValues<'_>) -> u64 {
    match values {
        MessageValues::Raw(raw) => raw.len() as u64,
        MessageValues::Typed(c) => {
            let n = c.bools.len()
                + 4 * (c.ints.len() + c.uints.len() + c.fp32s.len())
                + 8 * (c.int64s.len() + c.uint64s.len() + c.fp64s.len())
                + c.bytes.iter().map(|b| b.len() + 4).sum::<usize>();
            n as u64
        }
    }
}

fn decode_input(
    seed: &mut InputSeed<'_, '_, '_>,
    input: MessageInput<'_>,
) -> Result<ParsedInput, ProtocolError> {
    let signature = seed.cx.signature;
    let index = signature
        .inputs
        .iter()
        .position(|s| s.name == input.name)
        .ok_or_else(|| ProtocolError::UnknownInput {
            name: clip(input.name),
            known: super::names(&signature.inputs),
        })?;
    let name = &signature.inputs[index].name;
    if std::mem::replace(&mut seed.taken[index], true) {
        return Err(ProtocolError::DuplicateInput(name.clone()));
    }
    capped(&input.parameters, seed.cx.limits)?;
    if input
        .parameters
        .keys()
        .any(|k| k.starts_with("shared_memory"))
    {
        return Err(ProtocolError::Unsupported("shared memory"));
    }
    let datatype =
        Datatype::parse(input.datatype).ok_or_else(|| ProtocolError::UnknownDatatype {
            input: name.clone(),
            datatype: clip(input.datatype),
        })?;
    if input.shape.len() > seed.cx.limits.max_rank {
        return Err(ProtocolError::Rank {
            input: name.clone(),
            limit: seed.cx.limits.max_rank,
        });
    }
    let shape = input
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| ProtocolError::Data {
            input: name.clone(),
            reason: format!("shape {:?} has a negative dimension", input.shape),
        })?;
    let sink = seed.sink(index, &shape, datatype)?;
    let expected = sink.ctx.expected;
    let data = match input.values {
        MessageValues::Raw(raw) => {
            if let Some(element) = datatype.size() {
                let needed = expected.saturating_mul(element as u64);
                if raw.len() as u64 != needed {
                    return Err(ProtocolError::BinarySize {
                        input: name.clone(),
                        size: raw.len() as u64,
                        shape,
                        datatype,
                        expected: needed,
                    });
                }
            }
            read_binary(&mut &raw[..], raw.len() as u64, sink)?
        }
        MessageValues::Typed(contents) => typed(sink, datatype, contents)?,
    };
    Ok(ParsedInput {
        index,
        shape,
        data: InputData::Values(data),
    })
}

/// Typed values into the input's sink, as the little-endian bytes of its datatype (so they
/// are converted and checked exactly as binary data is).
fn typed(
    mut sink: super::Sink,
    datatype: Datatype,
    c: Contents<'_>,
) -> Result<HostData, ProtocolError> {
    let name = sink.ctx.input.clone();
    let narrow = |v: i64, fits: bool, index: usize| {
        fits.then_some(v).ok_or_else(|| ProtocolError::Value {
            input: name.clone(),
            index,
            value: v.to_string(),
            reason: "does not fit in the datatype",
        })
    };
    let mut bytes = Vec::new();
    let count = match datatype {
        Datatype::Bytes => {
            for element in c.bytes {
                sink.binary_string(clipped(element, sink.ctx.max_bytes).to_vec())?;
            }
            return sink.finish();
        }
        Datatype::Bool => le(&mut bytes, c.bools, |b| [u8::from(*b)]),
        Datatype::Fp32 => le(&mut bytes, c.fp32s, |v| v.to_le_bytes()),
        Datatype::Fp64 => le(&mut bytes, c.fp64s, |v| v.to_le_bytes()),
        Datatype::Int64 => le(&mut bytes, c.int64s, |v| v.to_le_bytes()),
        Datatype::Uint64 => le(&mut bytes, c.uint64s, |v| v.to_le_bytes()),
        Datatype::Int32 => le(&mut bytes, c.ints, |v| v.to_le_bytes()),
        Datatype::Uint32 => le(&mut bytes, c.uints, |v| v.to_le_bytes()),
        Datatype::Int8 | Datatype::Int16 => {
            let width = datatype.size().unwrap_or(1);
            for (i, v) in c.ints.iter().enumerate() {
                let fits = if width == 1 {
                    i8::try_from(*v).is_ok()
                } else {
                    i16::try_from(*v).is_ok()
                };
                narrow(i64::from(*v), fits, i)?;
                bytes.extend_from_slice(&v.to_le_bytes()[..width]);
            }
            c.ints.len()
        }
        Datatype::Uint8 | Datatype::Uint16 => {
            let width = datatype.size().unwrap_or(1);
            for (i, v) in c.uints.iter().enumerate() {
                let fits = if width == 1 {
                    u8::try_from(*v).is_ok()
                } else {
                    u16::try_from(*v).is_ok()
                };
                narrow(i64::from(*v), fits, i)?;
                bytes.extend_from_slice(&v.to_le_bytes()[..width]);
            }
            c.uints.len()
        }
        Datatype::Fp16 | Datatype::Bf16 => {
            return Err(ProtocolError::Data {
                input: name,
                reason: format!("{datatype} values travel in raw_input_contents only"),
            })
        }
    };
    if count as u64 != sink.ctx.expected {
        return Err(ProtocolError::ElementCount {
            input: name,
            shape: sink.ctx.shape.clone(),
            expected: sink.ctx.expected,
            actual: count as u64,
        });
    }
    read_binary(&mut &bytes[..], bytes.len() as u64, sink)
}

/// Appends the little-endian bytes of `values`; returns how many there were.
fn le<T, const N: usize>(out: &mut Vec<u8>, values: &[T], bytes: impl Fn(&T) -> [u8; N]) -> usize {
    out.reserve(values.len() * N);
    for v in values {
        out.extend_from_slice(&bytes(v));
    }
    values.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ElemKind, IoSpec};
    use crate::protocol::params::ParamValue;

    fn signature() -> Signature {
        Signature {
            inputs: vec![
                IoSpec::new("x", ElemKind::F32, &[2]),
                IoSpec::new("text", ElemKind::Bytes, &[])
                    .optional()
                    .max_bytes(8),
            ],
            outputs: vec![IoSpec::new("y", ElemKind::F32, &[1])],
        }
    }

    fn one(name: &str, datatype: &str, shape: &[i64], values: MessageValues) -> Outcome {
        let request = MessageRequest {
            id: Some("r".into()),
            parameters: [("timeout".to_string(), ParamValue::Uint(5))].into(),
            inputs: vec![MessageInput {
                name,
                datatype,
                shape,
                parameters: Parameters::new(),
                values,
            }],
            outputs: None,
        };
        decode_message(request, &signature(), &DecodeLimits::default())
    }

    type Outcome = Result<Decoded, ProtocolError>;

    #[test]
    fn typed_and_raw_values_decode_alike() {
        let typed = Contents {
            ints: &[1, -2, 3, 4],
            ..Contents::default()
        };
        let a = one("x", "INT8", &[2, 2], MessageValues::Typed(typed)).unwrap();
        let raw = [1u8, 0xfe, 3, 4];
        let b = one("x", "INT8", &[2, 2], MessageValues::Raw(&raw)).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(
            a.inputs[0].as_ref().unwrap().data,
            HostData::F32(vec![1., -2., 3., 4.])
        );
        assert_eq!(a.timeout, Some(std::time::Duration::from_micros(5)));
        assert_eq!(a.id.as_deref(), Some("r"));
    }

    #[test]
    fn refusals() {
        let typed = |ints: &'static [i32]| {
            MessageValues::Typed(Contents {
                ints,
                ..Contents::default()
            })
        };
        // Out of INT8's range, a count that disagrees with the shape, a negative dimension,
        // FP16 as typed values, raw bytes of the wrong size, an unknown input.
        let value = one("x", "INT8", &[1, 2], typed(&[1, 300])).unwrap_err();
        assert!(matches!(value, ProtocolError::Value { .. }), "{value}");
        let count = one("x", "INT32", &[1, 2], typed(&[1, 2, 3])).unwrap_err();
        assert!(
            matches!(count, ProtocolError::ElementCount { .. }),
            "{count}"
        );
        assert!(one("x", "INT32", &[-1, 2], typed(&[1, 2])).is_err());
        let half = one(
            "x",
            "FP16",
            &[1, 2],
            MessageValues::Typed(Contents::default()),
        );
        assert!(half.unwrap_err().to_string().contains("raw_input_contents"));
        let size = one("x", "FP32", &[1, 2], MessageValues::Raw(&[0; 7])).unwrap_err();
        assert!(matches!(size, ProtocolError::BinarySize { .. }), "{size}");
        let unknown = one("nope", "FP32", &[1, 2], MessageValues::Raw(&[0; 8])).unwrap_err();
        assert!(
            matches!(unknown, ProtocolError::UnknownInput { .. }),
            "{unknown}"
        );
    }

    #[test]
    fn bytes_are_clipped_typed_and_raw() {
        let long = vec![b"a very long text".to_vec()];
        let typed = Contents {
            bytes: &long,
            ..Contents::default()
        };
        let a = one("text", "BYTES", &[1], MessageValues::Typed(typed)).unwrap();
        let mut raw = 16u32.to_le_bytes().to_vec();
        raw.extend_from_slice(b"a very long text");
        let b = one("text", "BYTES", &[1], MessageValues::Raw(&raw)).unwrap();
        assert_eq!(a.inputs, b.inputs);
        let HostData::Bytes(texts) = &a.inputs[1].as_ref().unwrap().data else {
            panic!("not bytes");
        };
        assert!(texts[0].len() < 16, "clipped to max_bytes plus a character");
        // A length prefix past the end.
        let short = [9u8, 0, 0, 0, b'a'];
        assert!(one("text", "BYTES", &[1], MessageValues::Raw(&short)).is_err());
    }
}
