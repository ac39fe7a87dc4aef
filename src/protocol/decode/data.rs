//! `data` of one input, read value by value into its typed sink.
//!
//! JSON `data` may be flat or nested (`[[1, 2], [3, 4]]`); nesting must be rectangular and hold
//! one kind of scalar, and its depth is capped by the deepest accepted shape. Each scalar goes
//! straight into the [`Sink`], which refuses the first value past the declared count, so no
//! intermediate JSON value is ever built.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::error::ProtocolError;
use super::super::values::{Num, Sink};
use super::json::Slot;

/// `data` of one input, flat or nested, pushed value by value into its sink. Nesting must be
/// rectangular and hold one kind of scalar; the nested shape is compared with the declared one
/// when the outermost array closes.
pub(super) struct DataSeed<'s> {
    pub sink: &'s mut Sink,
    pub max_depth: usize,
    pub slot: &'s Slot,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let mut nesting = Nesting::default();
        Level {
            sink: self.sink,
            nesting: &mut nesting,
            depth: 0,
            max_depth: self.max_depth,
            slot: self.slot,
        }
        .deserialize(d)?;
        // Every level was visited by at least one array, so every entry is filled; an empty
        // inner level (`[[], []]`) has no scalars and a shape with a zero in it.
        let dims: Vec<usize> = nesting.dims.iter().map(|d| d.unwrap_or(0)).collect();
        if dims.len() > 1 {
            let shape = &self.sink.ctx.shape;
            if dims.len() != shape.len() || dims.iter().zip(shape).any(|(a, b)| *a as u64 != *b) {
                return Err(self.slot.fail(ProtocolError::NestedShape {
                    input: self.sink.ctx.input.clone(),
                    nested: dims,
                    shape: shape.clone(),
                }));
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Nesting {
    /// Length of the arrays seen at each depth (all arrays at one depth must agree). Inner
    /// arrays finish before outer ones, so a depth's entry may be filled late.
    dims: Vec<Option<usize>>,
    /// Depth at which scalars live; all scalars must share it.
    leaf_depth: Option<usize>,
}

impl Nesting {
    fn scalar<E: de::Error>(&mut self, depth: usize) -> Result<(), E> {
        if depth == 0 {
            return Err(E::custom("`data` must be an array"));
        }
        // An array already seen at this depth (or deeper) means scalars and arrays are mixed.
        if self.dims.len() > depth || self.leaf_depth.is_some_and(|d| d != depth) {
            return Err(E::custom(
                "`data` mixes scalars and arrays at one level (ragged nesting)",
            ));
        }
        self.leaf_depth = Some(depth);
        Ok(())
    }
}

struct Level<'s, 'n> {
    sink: &'s mut Sink,
    nesting: &'n mut Nesting,
    depth: usize,
    max_depth: usize,
    slot: &'s Slot,
}

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers or strings (flat or nested)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.nesting.scalar(self.depth)?;
        self.sink.number(Num::U(v)).map_err(|e| self.slot.fail(e))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.nesting.scalar(self.depth)?;
        self.sink.number(Num::I(v)).map_err(|e| self.slot.fail(e))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.nesting.scalar(self.depth)?;
        self.sink.number(Num::F(v)).map_err(|e| self.slot.fail(e))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.nesting.scalar(self.depth)?;
        self.sink.boolean().map_err(|e| self.slot.fail(e))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.nesting.scalar(self.depth)?;
        self.sink.string(v).map_err(|e| self.slot.fail(e))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(
            "`data` holds null; JSON has no NaN, send binary tensors for non-finite values",
        ))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(
            "`data` holds an object; expected numbers or strings",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if depth >= self.max_depth {
            return Err(de::Error::custom(
                "`data` is nested deeper than any accepted shape",
            ));
        }
        if self.nesting.leaf_depth.is_some_and(|leaf| depth >= leaf) {
            return Err(de::Error::custom(
                "`data` mixes scalars and arrays at one level (ragged nesting)",
            ));
        }
        let mut count = 0usize;
        while seq
            .next_element_seed(Level {
                sink: &mut *self.sink,
                nesting: &mut *self.nesting,
                depth: depth + 1,
                max_depth: self.max_depth,
                slot: self.slot,
            })?
            .is_some()
        {
            count += 1;
        }
        let dims = &mut self.nesting.dims;
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
