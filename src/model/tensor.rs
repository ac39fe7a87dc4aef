//! Host tensors: the plain-data form in which inputs reach a model and outputs leave it.
//!
//! They sit between the protocol codecs (which produce and consume them) and candle (which the
//! models use inside `forward`), so neither side depends on the other.

use super::ElemKind;

/// Row-major values of one element kind.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bytes(Vec<Vec<u8>>),
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No values, of `kind`.
    pub fn empty(kind: ElemKind) -> HostData {
        match kind {
            ElemKind::F32 => HostData::F32(Vec::new()),
            ElemKind::I64 => HostData::I64(Vec::new()),
            ElemKind::Bytes => HostData::Bytes(Vec::new()),
        }
    }

    pub fn kind(&self) -> ElemKind {
        match self {
            HostData::F32(_) => ElemKind::F32,
            HostData::I64(_) => ElemKind::I64,
            HostData::Bytes(_) => ElemKind::Bytes,
        }
    }
}

/// A shaped tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn zeros(kind: ElemKind, shape: Vec<usize>) -> HostTensor {
        let n = shape.iter().product();
        let data = match kind {
            ElemKind::F32 => HostData::F32(vec![0.0; n]),
            ElemKind::I64 => HostData::I64(vec![0; n]),
            ElemKind::Bytes => HostData::Bytes(vec![Vec::new(); n]),
        };
        HostTensor { shape, data }
    }

    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}
