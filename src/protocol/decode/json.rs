//! The JSON part of an inference request, parsed straight into what the model needs.
//!
//! serde visitors with the model's signature and the limits as context: an input's name, shape
//! and datatype are checked as soon as they are read, its `data` is converted into a typed
//! buffer value by value (see [`super::super::values::Sink`]), and every list and map is capped
//! while it is read: a shape is refused at its ninth dimension, `data` at its first value past
//! the declared count, `parameters` past 64 entries, `outputs` past the model's outputs. Nothing
//! is kept as generic JSON; memory follows what the request declares, and the declaration is
//! checked against the server's limits before it is believed. When `data` comes before the
//! fields that describe it (JSON objects are unordered), its text is kept raw and parsed once
//! they are known.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::model::{HostData, Signature};

use super::super::datatype::Datatype;
use super::super::error::{clip, ProtocolError};
use super::super::values::{Ctx, Sink};
use super::data::DataSeed;
use super::outputs::OutputsSeed;
use super::DecodeLimits;
use crate::protocol::params::{ParamValue, Parameters, ParamsSeed};

/// The most bytes of an `id`, a name or a datatype the decoder accepts.
pub(super) const MAX_ID_BYTES: usize = 4096;
pub(super) const MAX_NAME_BYTES: usize = 1024;

/// What the JSON said, checked and converted.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<ParsedInput>,
    pub outputs: Option<Vec<RequestedOutput>>,
    seen_inputs: bool,
}

/// One input, resolved against the signature.
#[derive(Debug)]
pub(super) struct ParsedInput {
    /// Index into the signature's inputs.
    pub index: usize,
    pub shape: Vec<u64>,
    pub data: InputData,
}

#[derive(Debug)]
pub(super) enum InputData {
    /// Values given as JSON `data`.
    Values(HostData),
    /// `binary_data_size` bytes in the binary tail; the sink waits for them.
    Binary { size: u64, sink: Sink },
}

#[derive(Debug)]
pub(super) struct RequestedOutput {
    pub index: usize,
    pub parameters: Parameters,
}

/// What is shared by the visitors of one request.
pub(super) struct Context<'a> {
    pub signature: &'a Signature,
    pub limits: &'a DecodeLimits,
    /// Elements and strings left in the request's budget.
    pub elements_left: u64,
    pub strings_left: u64,
    /// At most this many values are reserved up front for one input (a shape can promise more
    /// than the body holds).
    pub reserve_hint: u64,
    pub slot: &'a Slot,
}

/// Where a visitor leaves the typed error it fails with: serde_json keeps only an error's
/// message, so the visitor stores the [`ProtocolError`] here and [`Slot::take`] recovers it.
#[derive(Default)]
pub(crate) struct Slot(RefCell<Option<ProtocolError>>);

impl Slot {
    /// A serde error for `error`, which is kept here.
    pub fn fail<E: de::Error>(&self, error: ProtocolError) -> E {
        let message = error.to_string();
        *self.0.borrow_mut() = Some(error);
        E::custom(message)
    }

    /// The typed error behind a serde_json error: a visitor's own, or a JSON syntax error.
    pub fn take(&self, error: serde_json::Error) -> ProtocolError {
        self.0
            .borrow_mut()
            .take()
            .unwrap_or_else(|| ProtocolError::Json(clip(&error.to_string())))
    }
}

/// The whole request object.
pub(super) struct RequestSeed<'c, 'a> {
    pub cx: &'c mut Context<'a>,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_, '_> {
    type Value = Parsed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_, '_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut parsed = Parsed::default();
        let mut seen = Seen::default();
        while let Some(key) =
            map.next_key_seed(KeySeed(&["id", "parameters", "inputs", "outputs"]))?
        {
            match key {
                Some("id") => {
                    seen.once("id", self.cx.slot)?;
                    parsed.id = Some(map.next_value_seed(TextSeed {
                        field: "id",
                        max: MAX_ID_BYTES,
                        slot: self.cx.slot,
                    })?);
                }
                Some("parameters") => {
                    seen.once("parameters", self.cx.slot)?;
                    parsed.parameters = map.next_value_seed(ParamsSeed {
                        limit: self.cx.limits.max_parameters,
                        slot: self.cx.slot,
                    })?;
                }
                Some("inputs") => {
                    seen.once("inputs", self.cx.slot)?;
                    parsed.inputs = map.next_value_seed(InputsSeed { cx: &mut *self.cx })?;
                    parsed.seen_inputs = true;
                }
                Some("outputs") => {
                    seen.once("outputs", self.cx.slot)?;
                    parsed.outputs = Some(map.next_value_seed(OutputsSeed {
                        signature: self.cx.signature,
                        limits: self.cx.limits,
                        slot: self.cx.slot,
                    })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !parsed.seen_inputs {
            return Err(self.cx.slot.fail(ProtocolError::NoInputs));
        }
        Ok(parsed)
    }
}

/// Refuses a field given twice (`"inputs"` twice is an error, not "last one wins").
#[derive(Default)]
pub(super) struct Seen(Vec<&'static str>);

impl Seen {
    pub(super) fn once<E: de::Error>(&mut self, field: &'static str, slot: &Slot) -> Result<(), E> {
        if self.0.contains(&field) {
            return Err(slot.fail(ProtocolError::DuplicateField(field)));
        }
        self.0.push(field);
        Ok(())
    }
}

/// An object key, matched against the known ones without allocating (`None`: unknown).
pub(super) struct KeySeed(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<&'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<&'static str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|k| *k == v))
    }
}

/// A string of at most `max` bytes.
pub(super) struct TextSeed<'s> {
    pub field: &'static str,
    pub max: usize,
    pub slot: &'s Slot,
}

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TextSeed<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string ({})", self.field)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.len() > self.max {
            return Err(self.slot.fail(ProtocolError::TooLong {
                field: self.field,
                limit: self.max,
            }));
        }
        Ok(v.to_string())
    }
}

struct InputsSeed<'c, 'a> {
    cx: &'c mut Context<'a>,
}

impl<'de> DeserializeSeed<'de> for InputsSeed<'_, '_> {
    type Value = Vec<ParsedInput>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_, '_> {
    type Value = Vec<ParsedInput>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of inputs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut inputs: Vec<ParsedInput> = Vec::new();
        let mut taken = vec![false; self.cx.signature.inputs.len()];
        // Each element is checked against the signature as it is read: an unknown or repeated
        // input stops the request at once, so the list can never outgrow the signature.
        while let Some(input) = seq.next_element_seed(InputSeed {
            cx: &mut *self.cx,
            taken: &mut taken,
        })? {
            inputs.push(input);
        }
        Ok(inputs)
    }
}

pub(super) struct InputSeed<'c, 'a, 't> {
    pub cx: &'c mut Context<'a>,
    pub taken: &'t mut Vec<bool>,
}

impl<'de> DeserializeSeed<'de> for InputSeed<'_, '_, '_> {
    type Value = ParsedInput;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ParsedInput, D::Error> {
        d.deserialize_map(self)
    }
}

/// The fields of one input as they arrive.
#[derive(Default)]
struct InputFields {
    index: Option<usize>,
    shape: Option<Vec<u64>>,
    datatype: Option<Datatype>,
    parameters: Option<Parameters>,
    data: Option<HostData>,
    /// `data` that came before the fields describing it.
    raw: Option<Box<RawValue>>,
}

impl<'de> Visitor<'de> for InputSeed<'_, '_, '_> {
    type Value = ParsedInput;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an input object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<ParsedInput, A::Error> {
        const FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];
        let mut fields = InputFields::default();
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(KeySeed(FIELDS))? {
            match key {
                Some("name") => {
                    seen.once("name", self.cx.slot)?;
                    let index = map.next_value_seed(NameSeed {
                        signature: self.cx.signature,
                        slot: self.cx.slot,
                    })?;
                    if std::mem::replace(&mut self.taken[index], true) {
                        return Err(self.cx.slot.fail(ProtocolError::DuplicateInput(
                            self.cx.signature.inputs[index].name.clone(),
                        )));
                    }
                    fields.index = Some(index);
                }
                Some("shape") => {
                    seen.once("shape", self.cx.slot)?;
                    fields.shape = Some(map.next_value_seed(ShapeSeed {
                        limit: self.cx.limits.max_rank,
                        input: self.input_name(&fields),
                        slot: self.cx.slot,
                    })?);
                }
                Some("datatype") => {
                    seen.once("datatype", self.cx.slot)?;
                    let text = map.next_value_seed(TextSeed {
                        field: "datatype",
                        max: 16,
                        slot: self.cx.slot,
                    })?;
                    let datatype = Datatype::parse(&text).ok_or_else(|| {
                        self.cx.slot.fail(ProtocolError::UnknownDatatype {
                            input: self.input_name(&fields),
                            datatype: clip(&text),
                        })
                    })?;
                    fields.datatype = Some(datatype);
                }
                Some("parameters") => {
                    seen.once("parameters", self.cx.slot)?;
                    fields.parameters = Some(map.next_value_seed(ParamsSeed {
                        limit: self.cx.limits.max_parameters,
                        slot: self.cx.slot,
                    })?);
                }
                Some("data") => {
                    seen.once("data", self.cx.slot)?;
                    match (fields.index, &fields.shape, fields.datatype) {
                        (Some(index), Some(shape), Some(datatype)) => {
                            let slot = self.cx.slot;
                            let mut sink = self
                                .sink(index, shape, datatype)
                                .map_err(|e| slot.fail(e))?;
                            map.next_value_seed(DataSeed {
                                sink: &mut sink,
                                max_depth: self.cx.limits.max_rank,
                                slot,
                            })?;
                            fields.data = Some(sink.finish().map_err(|e| slot.fail(e))?);
                        }
                        _ => fields.raw = Some(map.next_value()?),
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let slot = self.cx.slot;
        self.resolve(fields).map_err(|e| slot.fail(e))
    }
}

impl InputSeed<'_, '_, '_> {
    fn input_name(&self, fields: &InputFields) -> String {
        fields
            .index
            .map(|i| self.cx.signature.inputs[i].name.clone())
            .unwrap_or_default()
    }

    /// Checks an input's declaration and makes the sink its values go to.
    pub(super) fn sink(
        &mut self,
        index: usize,
        shape: &[u64],
        datatype: Datatype,
    ) -> Result<Sink, ProtocolError> {
        let spec = &self.cx.signature.inputs[index];
        let Some(check_values) = datatype.converts_to(spec.kind) else {
            return Err(ProtocolError::DatatypeRefused {
                hint: super::refusal_hint(datatype, spec.kind),
                input: spec.name.clone(),
                datatype,
                expected: Datatype::of_kind(spec.kind),
            });
        };
        if !spec.accepts_shape(shape.iter().copied()) {
            return Err(ProtocolError::Shape {
                input: spec.name.clone(),
                shape: shape.to_vec(),
                expected: spec.shape_text(),
            });
        }
        if let Some(&rows) = shape.first() {
            if rows > self.cx.limits.max_rows {
                return Err(ProtocolError::Rows {
                    input: spec.name.clone(),
                    rows,
                    limit: self.cx.limits.max_rows,
                });
            }
        }
        let count = shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .filter(|c| *c <= self.cx.elements_left)
            .ok_or(ProtocolError::TooManyElements {
                elements: shape.iter().fold(1u64, |a, d| a.saturating_mul(*d)),
                limit: self.cx.limits.max_elements,
            })?;
        self.cx.elements_left -= count;
        if datatype == Datatype::Bytes {
            if count > self.cx.strings_left {
                return Err(ProtocolError::TooManyStrings {
                    limit: self.cx.limits.max_strings,
                });
            }
            self.cx.strings_left -= count;
        }
        Ok(Sink::new(
            Ctx {
                input: spec.name.clone(),
                datatype,
                kind: spec.kind,
                check_values,
                shape: shape.to_vec(),
                expected: count,
                max_bytes: spec.max_bytes,
                indices: spec.indices,
            },
            self.cx.reserve_hint,
        ))
    }

    /// The input once all its fields are read.
    fn resolve(&mut self, fields: InputFields) -> Result<ParsedInput, ProtocolError> {
        let index = fields.index.ok_or(ProtocolError::MissingField("name"))?;
        let shape = fields.shape.ok_or(ProtocolError::MissingField("shape"))?;
        let datatype = fields
            .datatype
            .ok_or(ProtocolError::MissingField("datatype"))?;
        let parameters = fields.parameters.unwrap_or_default();
        let name = &self.cx.signature.inputs[index].name;
        if parameters.keys().any(|k| k.starts_with("shared_memory")) {
            return Err(ProtocolError::Unsupported("shared memory"));
        }
        let binary_size = match parameters.get("binary_data_size") {
            None => None,
            Some(ParamValue::Uint(size)) => Some(*size),
            Some(_) => {
                return Err(ProtocolError::Parameter {
                    name: "binary_data_size".into(),
                    reason: "must be an unsigned integer".into(),
                })
            }
        };
        let both = || ProtocolError::Data {
            input: name.clone(),
            reason: "has both `data` and `binary_data_size`".into(),
        };
        let data = match (fields.data, fields.raw, binary_size) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => return Err(both()),
            (Some(values), None, None) => InputData::Values(values),
            (None, Some(raw), None) => {
                let mut sink = self.sink(index, &shape, datatype)?;
                let mut de = serde_json::Deserializer::from_str(raw.get());
                let slot = Slot::default();
                DataSeed {
                    sink: &mut sink,
                    max_depth: self.cx.limits.max_rank,
                    slot: &slot,
                }
                .deserialize(&mut de)
                .map_err(|e| slot.take(e))?;
                InputData::Values(sink.finish()?)
            }
            (None, None, Some(size)) => {
                let sink = self.sink(index, &shape, datatype)?;
                if let Some(element) = datatype.size() {
                    let expected = sink.ctx.expected.saturating_mul(element as u64);
                    if size != expected {
                        return Err(ProtocolError::BinarySize {
                            input: name.clone(),
                            size,
                            shape,
                            datatype,
                            expected,
                        });
                    }
                }
                InputData::Binary { size, sink }
            }
            (None, None, None) => {
                return Err(ProtocolError::Data {
                    input: name.clone(),
                    reason: "has neither `data` nor `binary_data_size`".into(),
                })
            }
            (Some(_), Some(_), None) => return Err(ProtocolError::DuplicateField("data")),
        };
        Ok(ParsedInput { index, shape, data })
    }
}

/// An input's name, looked up in the signature.
struct NameSeed<'a> {
    signature: &'a Signature,
    slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an input name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        self.signature
            .inputs
            .iter()
            .position(|s| s.name == v)
            .ok_or_else(|| {
                self.slot.fail(ProtocolError::UnknownInput {
                    name: clip(v),
                    known: super::names(&self.signature.inputs),
                })
            })
    }
}

/// A shape: unsigned dimensions, refused at the first one past the rank limit.
struct ShapeSeed<'s> {
    limit: usize,
    input: String,
    slot: &'s Slot,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = Vec<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u64>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ShapeSeed<'_> {
    type Value = Vec<u64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of unsigned dimensions")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
        let mut dims = Vec::with_capacity(self.limit.min(8));
        while let Some(d) = seq.next_element::<u64>()? {
            if dims.len() == self.limit {
                return Err(self.slot.fail(ProtocolError::Rank {
                    input: self.input,
                    limit: self.limit,
                }));
            }
            dims.push(d);
        }
        Ok(dims)
    }
}
