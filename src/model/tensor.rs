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

impl HostTensor {
    /// Values per row (the product of the dimensions after the first).
    fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Cuts the tensor into consecutive pieces of `sizes` rows (which must add up to its rows).
    pub fn split_rows(self, sizes: &[usize]) -> Vec<HostTensor> {
        let row_len = self.row_len();
        let shape_of = |rows: usize| {
            let mut shape = self.shape.clone();
            if let Some(first) = shape.first_mut() {
                *first = rows;
            }
            shape
        };
        let mut out = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &rows in sizes {
            let range = start * row_len..(start + rows) * row_len;
            let data = match &self.data {
                HostData::F32(v) => HostData::F32(v.get(range).unwrap_or_default().to_vec()),
                HostData::I64(v) => HostData::I64(v.get(range).unwrap_or_default().to_vec()),
                HostData::Bytes(v) => HostData::Bytes(v.get(range).unwrap_or_default().to_vec()),
            };
            out.push(HostTensor {
                shape: shape_of(rows),
                data,
            });
            start += rows;
        }
        out
    }

    /// Joins tensors of one kind and row shape along their rows, in order; `None` if they do
    /// not agree.
    pub fn concat_rows(parts: Vec<HostTensor>) -> Option<HostTensor> {
        let mut parts = parts.into_iter();
        let mut joined = parts.next()?;
        for part in parts {
            if part.shape.get(1..) != joined.shape.get(1..) {
                return None;
            }
            match (&mut joined.data, part.data) {
                (HostData::F32(a), HostData::F32(b)) => a.extend(b),
                (HostData::I64(a), HostData::I64(b)) => a.extend(b),
                (HostData::Bytes(a), HostData::Bytes(b)) => a.extend(b),
                _ => return None,
            }
            if let (Some(a), Some(b)) = (joined.shape.first_mut(), part.shape.first()) {
                *a += b;
            }
        }
        Some(joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_and_join_back_exactly() {
        let t = HostTensor {
            shape: vec![5, 2],
            data: HostData::F32((0..10).map(|v| v as f32).collect()),
        };
        let parts = t.clone().split_rows(&[2, 2, 1]);
        assert_eq!(parts[2].shape, vec![1, 2]);
        assert_eq!(parts[1].data, HostData::F32(vec![4.0, 5.0, 6.0, 7.0]));
        assert_eq!(HostTensor::concat_rows(parts), Some(t));
        let text = HostTensor {
            shape: vec![3],
            data: HostData::Bytes(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
        };
        assert_eq!(
            HostTensor::concat_rows(text.clone().split_rows(&[1, 2])),
            Some(text)
        );
        let mismatch = vec![
            HostTensor::zeros(ElemKind::F32, vec![1, 2]),
            HostTensor::zeros(ElemKind::F32, vec![1, 3]),
        ];
        assert_eq!(HostTensor::concat_rows(mismatch), None);
    }
}
