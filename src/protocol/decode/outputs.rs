//! The `outputs` list of a request: each name looked up in the signature as it is read, a
//! duplicate refused, at most as many entries as the model has outputs.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::model::Signature;
use crate::protocol::params::ParamsSeed;

use super::super::error::{clip, ProtocolError};
use super::json::{KeySeed, RequestedOutput, Seen, Slot, TextSeed, MAX_NAME_BYTES};
use super::DecodeLimits;

/// The `outputs` list: each name looked up as it is read.
pub(super) struct OutputsSeed<'a> {
    pub signature: &'a Signature,
    pub limits: &'a DecodeLimits,
    pub slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for OutputsSeed<'_> {
    type Value = Vec<RequestedOutput>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OutputsSeed<'_> {
    type Value = Vec<RequestedOutput>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of requested outputs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<RequestedOutput> = Vec::new();
        while let Some(output) = seq.next_element_seed(OutputSeed {
            signature: self.signature,
            limits: self.limits,
            slot: self.slot,
        })? {
            if out.iter().any(|o| o.index == output.index) {
                return Err(self.slot.fail(ProtocolError::DuplicateOutput(
                    self.signature.outputs[output.index].name.clone(),
                )));
            }
            out.push(output);
        }
        Ok(out)
    }
}

struct OutputSeed<'a> {
    signature: &'a Signature,
    limits: &'a DecodeLimits,
    slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for OutputSeed<'_> {
    type Value = RequestedOutput;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RequestedOutput, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OutputSeed<'_> {
    type Value = RequestedOutput;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an output object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestedOutput, A::Error> {
        let mut index = None;
        let mut parameters = None;
        let mut seen = Seen::default();
        while let Some(key) = map.next_key_seed(KeySeed(&["name", "parameters"]))? {
            match key {
                Some("name") => {
                    seen.once("name", self.slot)?;
                    let name = map.next_value_seed(TextSeed {
                        field: "output name",
                        max: MAX_NAME_BYTES,
                        slot: self.slot,
                    })?;
                    index = Some(
                        self.signature
                            .outputs
                            .iter()
                            .position(|s| s.name == name)
                            .ok_or_else(|| {
                                self.slot.fail(ProtocolError::UnknownOutput {
                                    name: clip(&name),
                                    known: super::names(&self.signature.outputs),
                                })
                            })?,
                    );
                }
                Some("parameters") => {
                    seen.once("parameters", self.slot)?;
                    parameters = Some(map.next_value_seed(ParamsSeed {
                        limit: self.limits.max_parameters,
                        slot: self.slot,
                    })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RequestedOutput {
            index: index.ok_or_else(|| self.slot.fail(ProtocolError::MissingField("name")))?,
            parameters: parameters.unwrap_or_default(),
        })
    }
}
