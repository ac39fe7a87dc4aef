//! Values of a declared datatype, as JSON numbers or little-endian bytes, converted into the
//! model's element kind without loss or overflow (see [`Datatype::converts_to`]): integers are
//! range-checked against their declared type, integers into FP32 must be exactly representable,
//! JSON floats must not overflow their declared type, BYTES elements are parsed with bounds
//! checks. Binary data is decoded with `chunks_exact` from sizes already checked against the
//! shape, never through `Tensor::from_raw_buffer` (docs/security.md F1).

use crate::model::{ElemKind, HostData};

use super::datatype::Datatype;
use super::decode::ProtocolError;
use super::request::{JsonData, JsonValues, Num};

pub(super) struct Ctx<'a> {
    pub input: &'a str,
    pub datatype: Datatype,
    pub kind: ElemKind,
    /// Values must be checked one by one (e.g. INT64 into F32).
    pub check_values: bool,
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

pub(super) fn from_json(
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
    if data.values.is_empty() {
        // `[]` has no scalar to tell its kind: it is an empty tensor of the declared type (the
        // model then refuses an empty batch with its own reason).
        return Ok(HostData::empty(ctx.kind));
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

pub(super) fn from_binary(
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
