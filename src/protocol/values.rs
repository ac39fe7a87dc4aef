//! Values of a declared datatype, as JSON scalars or little-endian bytes, converted into the
//! model's element kind as they arrive and without loss or overflow (see
//! [`Datatype::converts_to`]): integers are range-checked against their declared type, integers
//! into FP32 must be exactly representable, JSON floats must not overflow their declared type.
//!
//! A [`Sink`] receives one input's values one by one (or in chunks of whole binary elements)
//! and refuses the first value past the count its shape declares, so no client can make it hold
//! more than the declared (and admitted) size. Binary data is converted from owned chunks with
//! `chunks_exact`, never through `Tensor::from_raw_buffer` (docs/security.md F1). BYTES elements
//! are clipped to the input's `max_bytes` (plus one character, so the model still sees that the
//! text was longer than its budget).

use crate::model::{ElemKind, HostData, IndexBound};

use super::datatype::Datatype;
use super::error::{clip, ProtocolError};

/// A JSON number as written: integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::U(v) => write!(f, "{v}"),
            Num::I(v) => write!(f, "{v}"),
            Num::F(v) => write!(f, "{v}"),
        }
    }
}

/// What a sink needs to know about its input.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    pub input: String,
    pub datatype: Datatype,
    pub kind: ElemKind,
    /// Values must be checked one by one (e.g. INT64 into F32).
    pub check_values: bool,
    pub shape: Vec<u64>,
    /// Elements the shape declares.
    pub expected: u64,
    /// BYTES elements longer than this are clipped (text models bound their texts anyway).
    pub max_bytes: Option<usize>,
    /// INT64 inputs that index a table: values are checked against it and stored as `u32`.
    pub indices: Option<IndexBound>,
}

impl Ctx {
    fn value_error(&self, index: u64, value: impl ToString, reason: &'static str) -> ProtocolError {
        ProtocolError::Value {
            input: self.input.clone(),
            index: index as usize,
            value: clip(&value.to_string()),
            reason,
        }
    }

    /// `v` as an index into the input's table, or the error naming the table's size.
    fn index(&self, index: u64, v: i128, table: IndexBound) -> Result<u32, ProtocolError> {
        match u32::try_from(v) {
            Ok(id) if id < table.bound => Ok(id),
            _ => Err(ProtocolError::OutOfRange {
                input: self.input.clone(),
                index: index as usize,
                value: v,
                bound: table.bound,
                what: table.what,
            }),
        }
    }

    fn kind_mismatch(&self, what: &str) -> ProtocolError {
        ProtocolError::Data {
            input: self.input.clone(),
            reason: format!("data holds {what} but the datatype is {}", self.datatype),
        }
    }

    fn too_much(&self) -> ProtocolError {
        ProtocolError::TooMuchData {
            input: self.input.clone(),
            shape: self.shape.clone(),
            expected: self.expected,
        }
    }
}

/// One input's values, converted as they arrive.
#[derive(Debug)]
pub(super) struct Sink {
    pub ctx: Ctx,
    data: HostData,
    count: u64,
}

impl Sink {
    /// A sink for `ctx.expected` values. It reserves at most `reserve_hint` of them up front: a
    /// shape can promise more than the body holds.
    pub fn new(ctx: Ctx, reserve_hint: u64) -> Sink {
        let reserve = ctx.expected.min(reserve_hint) as usize;
        let data = match ctx.kind {
            ElemKind::F32 => HostData::F32(Vec::with_capacity(reserve)),
            ElemKind::I64 if ctx.indices.is_some() => HostData::Ids(Vec::with_capacity(reserve)),
            ElemKind::I64 => HostData::I64(Vec::with_capacity(reserve)),
            ElemKind::Bytes => HostData::Bytes(Vec::with_capacity(reserve.min(1024))),
        };
        Sink {
            ctx,
            data,
            count: 0,
        }
    }

    fn next_index(&mut self) -> Result<u64, ProtocolError> {
        if self.count >= self.ctx.expected {
            return Err(self.ctx.too_much());
        }
        self.count += 1;
        Ok(self.count - 1)
    }

    pub fn number(&mut self, n: Num) -> Result<(), ProtocolError> {
        let index = self.next_index()?;
        match &mut self.data {
            HostData::F32(out) => out.push(json_to_f32(&self.ctx, index, n)?),
            HostData::I64(out) => {
                let v = json_integer(&self.ctx, index, n)?;
                out.push(
                    i64::try_from(v)
                        .map_err(|_| self.ctx.value_error(index, v, "does not fit in INT64"))?,
                );
            }
            HostData::Ids(out) => {
                let v = json_integer(&self.ctx, index, n)?;
                let table = self
                    .ctx
                    .indices
                    .ok_or_else(|| self.ctx.kind_mismatch("numbers"))?;
                out.push(self.ctx.index(index, v, table)?);
            }
            // The decoder fills owned buffers only; shared rows come from splitting later.
            HostData::Bytes(_) | HostData::F32Rows(_) | HostData::IdsRows(_) => {
                return Err(self.kind_mismatch("numbers"))
            }
        }
        Ok(())
    }

    pub fn string(&mut self, text: &str) -> Result<(), ProtocolError> {
        self.next_index()?;
        match &mut self.data {
            HostData::Bytes(out) => {
                out.push(clipped(text.as_bytes(), self.ctx.max_bytes).to_vec());
                Ok(())
            }
            _ => Err(self.kind_mismatch("strings")),
        }
    }

    pub fn boolean(&mut self) -> Result<(), ProtocolError> {
        Err(self.kind_mismatch("booleans"))
    }

    fn kind_mismatch(&self, what: &str) -> ProtocolError {
        self.ctx.kind_mismatch(what)
    }

    /// Whole little-endian elements of a fixed-size datatype (`bytes.len()` is a multiple of
    /// the element size; the caller reads the binary tail in such chunks).
    pub fn binary(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let size = self.ctx.datatype.size().unwrap_or(1);
        let elements = (bytes.len() / size) as u64;
        if self.count + elements > self.ctx.expected {
            return Err(self.ctx.too_much());
        }
        let first = self.count;
        self.count += elements;
        let ctx = &self.ctx;
        match &mut self.data {
            HostData::F32(out) => binary_to_f32(ctx, bytes, first, out),
            HostData::I64(out) => {
                for (i, v) in binary_integers(ctx.datatype, bytes).enumerate() {
                    let index = first + i as u64;
                    out.push(
                        i64::try_from(v)
                            .map_err(|_| ctx.value_error(index, v, "does not fit in INT64"))?,
                    );
                }
                Ok(())
            }
            HostData::Ids(out) => {
                let table = ctx
                    .indices
                    .ok_or_else(|| ctx.kind_mismatch("fixed-size binary values"))?;
                for (i, v) in binary_integers(ctx.datatype, bytes).enumerate() {
                    out.push(ctx.index(first + i as u64, v, table)?);
                }
                Ok(())
            }
            HostData::Bytes(_) | HostData::F32Rows(_) | HostData::IdsRows(_) => {
                Err(self.kind_mismatch("fixed-size binary values"))
            }
        }
    }

    /// One BYTES element of the binary extension (already clipped by the reader).
    pub fn binary_string(&mut self, bytes: Vec<u8>) -> Result<(), ProtocolError> {
        self.next_index()?;
        match &mut self.data {
            HostData::Bytes(out) => {
                out.push(bytes);
                Ok(())
            }
            _ => Err(self.kind_mismatch("BYTES elements")),
        }
    }

    /// Values received so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The values, once exactly the declared count arrived.
    pub fn finish(self) -> Result<HostData, ProtocolError> {
        if self.count != self.ctx.expected {
            return Err(ProtocolError::ElementCount {
                input: self.ctx.input,
                shape: self.ctx.shape,
                expected: self.ctx.expected,
                actual: self.count,
            });
        }
        Ok(self.data)
    }
}

/// A BYTES element clipped to `max_bytes` plus at most one character (on a UTF-8 character
/// boundary, or a byte boundary for non-UTF-8 data): the model still sees that the element was
/// longer than its limit, and nothing beyond it is kept.
pub fn clipped(bytes: &[u8], max_bytes: Option<usize>) -> &[u8] {
    let Some(max) = max_bytes else {
        return bytes;
    };
    let keep = max.saturating_add(4);
    if bytes.len() <= keep {
        return bytes;
    }
    // Any four consecutive positions of UTF-8 text hold a character boundary: the cut lands
    // after `max` bytes.
    let mut end = keep;
    while end > max + 1 && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &bytes[..end]
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

/// A JSON number checked against an integer datatype's range.
fn json_integer(ctx: &Ctx, index: u64, n: Num) -> Result<i128, ProtocolError> {
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

fn json_to_f32(ctx: &Ctx, index: u64, n: Num) -> Result<f32, ProtocolError> {
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

fn exact_f32(ctx: &Ctx, index: u64, v: i128) -> Result<f32, ProtocolError> {
    let f = v as f32;
    if ctx.check_values && f as i128 != v {
        return Err(ctx.value_error(index, v, "is not exactly representable in FP32"));
    }
    Ok(f)
}

fn le<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

fn binary_to_f32(
    ctx: &Ctx,
    bytes: &[u8],
    first: u64,
    out: &mut Vec<f32>,
) -> Result<(), ProtocolError> {
    match ctx.datatype {
        Datatype::Fp32 => out.extend(le::<4>(bytes).map(f32::from_le_bytes)),
        Datatype::Fp16 => out.extend(le::<2>(bytes).map(|b| half::f16::from_le_bytes(b).to_f32())),
        Datatype::Bf16 => out.extend(le::<2>(bytes).map(|b| half::bf16::from_le_bytes(b).to_f32())),
        d if d.is_integer() => {
            for (i, v) in binary_integers(d, bytes).enumerate() {
                out.push(exact_f32(ctx, first + i as u64, v)?);
            }
        }
        d => {
            return Err(ProtocolError::DatatypeRefused {
                input: ctx.input.clone(),
                datatype: d,
                expected: Datatype::Fp32,
                hint: "",
            })
        }
    }
    Ok(())
}

/// Little-endian integers of an integer datatype, widened to i128 so every range check is exact.
fn binary_integers(d: Datatype, bytes: &[u8]) -> Box<dyn Iterator<Item = i128> + '_> {
    match d {
        Datatype::Uint8 => Box::new(bytes.iter().map(|b| *b as i128)),
        Datatype::Int8 => Box::new(bytes.iter().map(|b| *b as i8 as i128)),
        Datatype::Uint16 => Box::new(le::<2>(bytes).map(|b| u16::from_le_bytes(b) as i128)),
        Datatype::Int16 => Box::new(le::<2>(bytes).map(|b| i16::from_le_bytes(b) as i128)),
        Datatype::Uint32 => Box::new(le::<4>(bytes).map(|b| u32::from_le_bytes(b) as i128)),
        Datatype::Int32 => Box::new(le::<4>(bytes).map(|b| i32::from_le_bytes(b) as i128)),
        Datatype::Uint64 => Box::new(le::<8>(bytes).map(|b| u64::from_le_bytes(b) as i128)),
        Datatype::Int64 => Box::new(le::<8>(bytes).map(|b| i64::from_le_bytes(b) as i128)),
        _ => Box::new(std::iter::empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(datatype: Datatype, kind: ElemKind, expected: u64) -> Ctx {
        Ctx {
            input: "x".into(),
            datatype,
            kind,
            check_values: datatype.converts_to(kind).unwrap_or(false),
            shape: vec![expected],
            expected,
            max_bytes: Some(4),
            indices: None,
        }
    }

    #[test]
    fn indices_are_checked_as_they_arrive_and_kept_in_four_bytes() {
        let table = IndexBound {
            bound: 10,
            what: "vocab_size",
        };
        let ids = |datatype| Ctx {
            indices: Some(table),
            ..ctx(datatype, ElemKind::I64, 4)
        };
        let mut sink = Sink::new(ids(Datatype::Int64), 4);
        sink.number(Num::U(0)).unwrap();
        sink.number(Num::U(9)).unwrap();
        let err = sink.number(Num::U(10)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input \"x\": value 10 at index 2 is outside [0, 10) (vocab_size)"
        );
        assert!(matches!(
            sink.number(Num::I(-1)),
            Err(ProtocolError::OutOfRange { index: 3, .. })
        ));
        // Binary INT32 ids: the same check, element by element.
        let mut sink = Sink::new(ids(Datatype::Int32), 4);
        let le: Vec<u8> = [3i32, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        sink.binary(&le).unwrap();
        assert_eq!(sink.finish().unwrap(), HostData::Ids(vec![3, 4, 5, 6]));
        let mut sink = Sink::new(ids(Datatype::Int64), 4);
        let le: Vec<u8> = [1i64, 1 << 40]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(matches!(
            sink.binary(&le),
            Err(ProtocolError::OutOfRange {
                index: 1,
                value: 1_099_511_627_776,
                ..
            })
        ));
    }

    #[test]
    fn the_first_value_past_the_declared_count_is_refused() {
        let mut sink = Sink::new(ctx(Datatype::Fp32, ElemKind::F32, 2), 2);
        sink.number(Num::U(1)).unwrap();
        sink.number(Num::F(2.5)).unwrap();
        assert!(matches!(
            sink.number(Num::U(3)),
            Err(ProtocolError::TooMuchData { expected: 2, .. })
        ));
        let mut sink = Sink::new(ctx(Datatype::Fp32, ElemKind::F32, 2), 2);
        assert!(sink.binary(&[0u8; 12]).is_err());
    }

    #[test]
    fn values_convert_only_without_loss() {
        let mut sink = Sink::new(ctx(Datatype::Uint8, ElemKind::F32, 2), 2);
        assert!(sink.number(Num::U(256)).is_err());
        let mut sink = Sink::new(ctx(Datatype::Fp32, ElemKind::F32, 1), 1);
        assert!(sink.number(Num::F(1e39)).is_err());
        let mut sink = Sink::new(ctx(Datatype::Int64, ElemKind::F32, 1), 1);
        assert!(sink.number(Num::U(16_777_217)).is_err());
        let mut sink = Sink::new(ctx(Datatype::Int64, ElemKind::I64, 2), 2);
        sink.binary(&(-3i64).to_le_bytes()).unwrap();
        sink.number(Num::I(-4)).unwrap();
        assert_eq!(sink.finish().unwrap(), HostData::I64(vec![-3, -4]));
    }

    #[test]
    fn a_short_count_is_refused_at_the_end() {
        let mut sink = Sink::new(ctx(Datatype::Int32, ElemKind::I64, 3), 3);
        sink.number(Num::U(1)).unwrap();
        assert!(matches!(
            sink.finish(),
            Err(ProtocolError::ElementCount {
                expected: 3,
                actual: 1,
                ..
            })
        ));
    }

    #[test]
    fn bytes_elements_are_clipped_past_the_budget() {
        assert_eq!(clipped(b"abcdefghij", Some(4)), b"abcdefgh");
        assert_eq!(clipped(b"abc", Some(4)), b"abc");
        assert_eq!(clipped("éééééé".as_bytes(), Some(4)), "éééé".as_bytes());
        assert_eq!(clipped("aéééééé".as_bytes(), Some(4)), "aééé".as_bytes());
        assert_eq!(clipped(b"abcdefghij", None), b"abcdefghij");
        let mut sink = Sink::new(ctx(Datatype::Bytes, ElemKind::Bytes, 1), 1);
        sink.string(&"x".repeat(1000)).unwrap();
        assert_eq!(
            sink.finish().unwrap(),
            HostData::Bytes(vec![b"xxxxxxxx".to_vec()])
        );
    }
}
