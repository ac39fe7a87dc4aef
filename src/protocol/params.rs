//! Request and tensor `parameters`: `$string | $number | $boolean` values by name, read with a
//! cap on their number and size so a request cannot spend memory on them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::decode::Slot;
use super::error::{clip, ProtocolError};

/// The most bytes of a parameter's name or string value.
pub const MAX_PARAM_BYTES: usize = 4096;

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(String),
}

impl ParamValue {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            ParamValue::Uint(u) => Some(*u),
            _ => None,
        }
    }
}

pub type Parameters = BTreeMap<String, ParamValue>;

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = ParamValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, a number or a boolean")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParamValue, E> {
        Ok(ParamValue::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamValue, E> {
        Ok(ParamValue::Uint(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamValue, E> {
        Ok(ParamValue::Int(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamValue, E> {
        Ok(ParamValue::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamValue, E> {
        if v.len() > MAX_PARAM_BYTES {
            return Err(E::custom(format!(
                "a parameter's string value is longer than {MAX_PARAM_BYTES} bytes"
            )));
        }
        Ok(ParamValue::Str(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ParamValue, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// A `parameters` object of at most `limit` entries with short names, no name twice.
pub(crate) struct ParamsSeed<'s> {
    pub limit: usize,
    pub slot: &'s Slot,
}

impl<'de> DeserializeSeed<'de> for ParamsSeed<'_> {
    type Value = Parameters;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parameters, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed<'_> {
    type Value = Parameters;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a parameters object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parameters, A::Error> {
        let mut out = Parameters::new();
        while let Some(name) = map.next_key_seed(NameSeed(self.slot))? {
            if out.len() == self.limit {
                return Err(self.slot.fail(ProtocolError::TooMany {
                    what: "parameters",
                    limit: self.limit,
                }));
            }
            let value: ParamValue = map.next_value()?;
            if out.contains_key(&name) {
                return Err(self.slot.fail(ProtocolError::Parameter {
                    name: clip(&name),
                    reason: "appears more than once".into(),
                }));
            }
            out.insert(name, value);
        }
        Ok(out)
    }
}

struct NameSeed<'s>(&'s Slot);

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a parameter name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.len() > MAX_PARAM_BYTES {
            return Err(self.0.fail(ProtocolError::TooLong {
                field: "a parameter name",
                limit: MAX_PARAM_BYTES,
            }));
        }
        Ok(v.to_string())
    }
}
