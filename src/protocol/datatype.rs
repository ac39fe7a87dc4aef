//! The Open Inference Protocol's datatypes, and which of them convert into a model's element kind.

use std::fmt;

use crate::model::ElemKind;

/// A KServe v2 / Triton datatype name. Names are case-sensitive, as in Triton.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    pub const ALL: [Datatype; 14] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Bf16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bytes,
    ];

    pub fn parse(text: &str) -> Option<Datatype> {
        Datatype::ALL.into_iter().find(|d| d.name() == text)
    }

    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Bf16 => "BF16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary extension; `None` for variable-length BYTES.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => 2,
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            Datatype::Fp16 | Datatype::Bf16 | Datatype::Fp32 | Datatype::Fp64
        )
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Datatype::Uint8
                | Datatype::Uint16
                | Datatype::Uint32
                | Datatype::Uint64
                | Datatype::Int8
                | Datatype::Int16
                | Datatype::Int32
                | Datatype::Int64
        )
    }

    /// The datatype a model's element kind is advertised as.
    pub fn of_kind(kind: ElemKind) -> Datatype {
        match kind {
            ElemKind::F32 => Datatype::Fp32,
            ElemKind::I64 => Datatype::Int64,
            ElemKind::Bytes => Datatype::Bytes,
        }
    }

    /// Whether values of this datatype may be sent to an input of `kind`, and if so, whether
    /// each value must be checked (`Some(true)`) or the whole type converts losslessly.
    /// `None`: refused whatever the values.
    pub fn converts_to(self, kind: ElemKind) -> Option<bool> {
        use Datatype::*;
        match (self, kind) {
            (Fp32 | Fp16 | Bf16, ElemKind::F32) => Some(false),
            (Uint8 | Int8 | Uint16 | Int16, ElemKind::F32) => Some(false),
            // Integers above 2^24 are not all exact in f32: checked value by value.
            (Uint32 | Int32 | Uint64 | Int64, ElemKind::F32) => Some(true),
            (Uint8 | Int8 | Uint16 | Int16 | Uint32 | Int32 | Int64, ElemKind::I64) => Some(false),
            (Uint64, ElemKind::I64) => Some(true),
            (Bytes, ElemKind::Bytes) => Some(false),
            _ => None,
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for d in Datatype::ALL {
            assert_eq!(Datatype::parse(d.name()), Some(d));
        }
        assert_eq!(Datatype::parse("fp32"), None);
        assert_eq!(Datatype::parse("FP8"), None);
    }

    #[test]
    fn conversion_rules() {
        assert_eq!(Datatype::Fp64.converts_to(ElemKind::F32), None);
        assert_eq!(Datatype::Int64.converts_to(ElemKind::F32), Some(true));
        assert_eq!(Datatype::Fp32.converts_to(ElemKind::I64), None);
        assert_eq!(Datatype::Bool.converts_to(ElemKind::F32), None);
        assert_eq!(Datatype::Int32.converts_to(ElemKind::I64), Some(false));
        assert_eq!(Datatype::Bytes.converts_to(ElemKind::F32), None);
    }
}
