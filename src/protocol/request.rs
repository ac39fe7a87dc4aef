//! The JSON shapes of an inference request, parsed without trusting them.
//!
//! `data` may be flat or nested; a single pass flattens it while checking that the nesting is
//! rectangular and holds one kind of scalar. serde_json's recursion limit (128) bounds the depth;
//! structs refuse duplicate fields (`"inputs"` twice is an error, not "last one wins").

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// A request or tensor parameter value: `$string | $number | $boolean`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
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

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<u64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    #[serde(default)]
    pub data: Option<JsonData>,
}

#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// A JSON number as written: integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::U(v) => write!(f, "{v}"),
            Num::I(v) => write!(f, "{v}"),
            Num::F(v) => write!(f, "{v}"),
        }
    }
}

/// Flattened `data` values, row-major, of one scalar kind.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValues {
    Numbers(Vec<Num>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
}

impl JsonValues {
    pub fn len(&self) -> usize {
        match self {
            JsonValues::Numbers(v) => v.len(),
            JsonValues::Bools(v) => v.len(),
            JsonValues::Strings(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `data` of one input: the flattened values and, when it was nested, the shape the nesting
/// describes (which must then equal the declared shape).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonData {
    pub values: JsonValues,
    /// `Some` when `data` held nested arrays.
    pub nested_shape: Option<Vec<usize>>,
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut builder = Builder::default();
        Level {
            builder: &mut builder,
            depth: 0,
        }
        .deserialize(deserializer)?;
        let values = builder.values.unwrap_or(JsonValues::Numbers(Vec::new()));
        // Every level was visited by at least one array, so every entry is filled; an empty
        // inner level (`[[], []]`) has no scalars and a shape with a zero in it.
        let dims: Vec<usize> = builder.dims.iter().map(|d| d.unwrap_or(0)).collect();
        let nested_shape = (dims.len() > 1).then_some(dims);
        Ok(JsonData {
            values,
            nested_shape,
        })
    }
}

#[derive(Default)]
struct Builder {
    values: Option<JsonValues>,
    /// Length of the arrays seen at each depth (all arrays at one depth must agree). Inner
    /// arrays finish before outer ones, so a depth's entry may be filled late.
    dims: Vec<Option<usize>>,
    /// Depth at which scalars live; all scalars must share it.
    leaf_depth: Option<usize>,
}

/// Nesting deeper than any tensor rank we accept is refused early.
const MAX_NESTING: usize = 16;

impl Builder {
    fn scalar<E: de::Error>(
        &mut self,
        depth: usize,
        push: impl FnOnce(&mut Option<JsonValues>) -> Result<(), &'static str>,
    ) -> Result<(), E> {
        if depth == 0 {
            return Err(E::custom("`data` must be an array"));
        }
        // An array already seen at this depth (or deeper) means scalars and arrays are mixed.
        if self.dims.len() > depth {
            return Err(E::custom(
                "`data` mixes scalars and arrays at one level (ragged nesting)",
            ));
        }
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(E::custom(
                    "`data` mixes scalars and arrays at one level (ragged nesting)",
                ));
            }
            Some(_) => {}
        }
        push(&mut self.values).map_err(E::custom)
    }
}

fn push_number(values: &mut Option<JsonValues>, n: Num) -> Result<(), &'static str> {
    match values.get_or_insert_with(|| JsonValues::Numbers(Vec::new())) {
        JsonValues::Numbers(v) => {
            v.push(n);
            Ok(())
        }
        _ => Err("`data` mixes numbers with booleans or strings"),
    }
}

struct Level<'a> {
    builder: &'a mut Builder,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers, booleans or strings (flat or nested)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.builder
            .scalar(self.depth, |vals| push_number(vals, Num::U(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.builder
            .scalar(self.depth, |vals| push_number(vals, Num::I(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.builder
            .scalar(self.depth, |vals| push_number(vals, Num::F(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.builder.scalar(self.depth, |vals| {
            match vals.get_or_insert_with(|| JsonValues::Bools(Vec::new())) {
                JsonValues::Bools(b) => {
                    b.push(v);
                    Ok(())
                }
                _ => Err("`data` mixes booleans with numbers or strings"),
            }
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.visit_string(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.builder.scalar(self.depth, |vals| {
            match vals.get_or_insert_with(|| JsonValues::Strings(Vec::new())) {
                JsonValues::Strings(s) => {
                    s.push(v);
                    Ok(())
                }
                _ => Err("`data` mixes strings with numbers or booleans"),
            }
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(
            "`data` holds null; JSON has no NaN, send binary tensors for non-finite values",
        ))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(
            "`data` holds an object; expected numbers, booleans or strings",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if depth >= MAX_NESTING {
            return Err(de::Error::custom("`data` is nested too deeply"));
        }
        if let Some(leaf) = self.builder.leaf_depth {
            if depth >= leaf {
                return Err(de::Error::custom(
                    "`data` mixes scalars and arrays at one level (ragged nesting)",
                ));
            }
        }
        let mut count = 0usize;
        while seq
            .next_element_seed(Level {
                builder: &mut *self.builder,
                depth: depth + 1,
            })?
            .is_some()
        {
            count += 1;
        }
        let dims = &mut self.builder.dims;
        if dims.len() <= depth {
            dims.resize(depth + 1, None);
        }
        match dims[depth] {
            None => dims[depth] = Some(count),
            Some(seen) if seen != count => {
                return Err(de::Error::custom(
                    "`data` is ragged: nested arrays at one level have different lengths",
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: &str) -> Result<JsonData, String> {
        serde_json::from_str::<JsonData>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn flat_and_nested() {
        let flat = data("[1, 2.5, -3]").unwrap();
        assert_eq!(
            flat.values,
            JsonValues::Numbers(vec![Num::U(1), Num::F(2.5), Num::I(-3)])
        );
        assert_eq!(flat.nested_shape, None);
        let nested = data("[[1, 2, 3], [4, 5, 6]]").unwrap();
        assert_eq!(nested.values.len(), 6);
        assert_eq!(nested.nested_shape, Some(vec![2, 3]));
        let strings = data(r#"["a", "b"]"#).unwrap();
        assert_eq!(
            strings.values,
            JsonValues::Strings(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn refuses_ragged_mixed_and_null() {
        for bad in [
            "[[1, 2], [3]]",
            "[1, [2]]",
            "[[1], 2]",
            "[1, true]",
            "[1, \"a\"]",
            "[null]",
            "[{}]",
            "1",
            "[[[]], [1]]",
        ] {
            assert!(data(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn refuses_deep_nesting_without_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert!(data(&deep).is_err());
    }

    #[test]
    fn request_refuses_duplicate_fields() {
        let text = r#"{"inputs": [], "inputs": []}"#;
        assert!(serde_json::from_str::<InferRequest>(text).is_err());
        let text = r#"{"inputs": [{"name": "a", "shape": [1], "shape": [2], "datatype": "FP32", "data": [1]}]}"#;
        assert!(serde_json::from_str::<InferRequest>(text).is_err());
        let text = r#"{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]}"#;
        assert!(serde_json::from_str::<InferRequest>(text).is_err());
    }
}
