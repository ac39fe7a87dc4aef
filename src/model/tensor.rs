//! Host tensors: the plain-data form in which inputs reach a model and outputs leave it.
//!
//! They sit between the protocol codecs (which produce and consume them) and candle (which the
//! models use inside `forward`), so neither side depends on the other.

use std::ops::Range;
use std::sync::Arc;

use super::ElemKind;

/// Row-major values of one element kind.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    /// Consecutive rows of a larger F32 tensor shared with the other parts of a split request.
    F32Rows(SharedF32),
    I64(Vec<i64>),
    /// INT64 values of an input that indexes a table (token ids, attention masks, embedding
    /// rows; [`super::IoSpec::indices`]), checked against the table's size as they were decoded
    /// and kept in 4 bytes each: a JSON `0,` is 2 bytes of body, and 8 bytes per value made token
    /// ids the one input that could cost 4× its body (docs/security.md, "Memory per request").
    Ids(Vec<u32>),
    /// Consecutive rows of a larger [`HostData::Ids`] tensor shared with the other parts of a
    /// split request.
    IdsRows(Shared<u32>),
    Bytes(Vec<Vec<u8>>),
}

/// The values of an INT64 tensor, as [`HostData::ints`] lends them.
#[derive(Debug, Clone, Copy)]
pub enum Ints<'a> {
    I64(&'a [i64]),
    Ids(&'a [u32]),
}

impl<'a> Ints<'a> {
    pub fn len(&self) -> usize {
        match self {
            Ints::I64(v) => v.len(),
            Ints::Ids(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = i64> + 'a {
        let (wide, ids): (&[i64], &[u32]) = match *self {
            Ints::I64(v) => (v, &[]),
            Ints::Ids(v) => (&[], v),
        };
        wide.iter()
            .copied()
            .chain(ids.iter().map(|v| i64::from(*v)))
    }
}

/// A window on a buffer that several parts of one request share. Cutting a request into
/// batches ([`HostTensor::split_rows`]) copies nothing this way: the decoded values stay one
/// allocation, freed when the last part is done. Copying the parts instead held the values
/// twice at the peak (docs/security.md, "Memory per request").
#[derive(Debug, Clone, PartialEq)]
pub struct Shared<T> {
    data: Arc<Vec<T>>,
    range: Range<usize>,
}

/// Shared rows of F32 values.
pub type SharedF32 = Shared<f32>;

impl<T> Shared<T> {
    fn whole(values: Vec<T>) -> Shared<T> {
        Shared {
            range: 0..values.len(),
            data: Arc::new(values),
        }
    }

    /// The rows `range` (relative to this window) of the same buffer.
    fn window(&self, range: Range<usize>) -> Shared<T> {
        let base = self.range.start;
        Shared {
            data: Arc::clone(&self.data),
            range: base + range.start..base + range.end,
        }
    }

    pub fn as_slice(&self) -> &[T] {
        self.data.get(self.range.clone()).unwrap_or_default()
    }
}

impl HostData {
    /// The values of an F32 tensor, owned or shared.
    pub fn f32s(&self) -> Option<&[f32]> {
        match self {
            HostData::F32(v) => Some(v),
            HostData::F32Rows(rows) => Some(rows.as_slice()),
            _ => None,
        }
    }

    /// The values of an INT64 tensor, in whichever width they are stored.
    pub fn ints(&self) -> Option<Ints<'_>> {
        match self {
            HostData::I64(v) => Some(Ints::I64(v)),
            HostData::Ids(_) | HostData::IdsRows(_) => self.ids().map(Ints::Ids),
            _ => None,
        }
    }

    /// The values of an INT64 tensor stored as table indices, owned or shared.
    pub fn ids(&self) -> Option<&[u32]> {
        match self {
            HostData::Ids(v) => Some(v),
            HostData::IdsRows(rows) => Some(rows.as_slice()),
            _ => None,
        }
    }

    /// An INT64 tensor's values as table indices: values outside `u32` (which callers have
    /// refused before) become 0.
    pub fn into_ids(self) -> HostData {
        match self {
            HostData::I64(v) => HostData::Ids(
                v.into_iter()
                    .map(|x| u32::try_from(x).unwrap_or(0))
                    .collect(),
            ),
            other => other,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F32Rows(rows) => rows.range.len(),
            HostData::I64(v) => v.len(),
            HostData::Ids(v) => v.len(),
            HostData::IdsRows(rows) => rows.range.len(),
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
            HostData::F32(_) | HostData::F32Rows(_) => ElemKind::F32,
            HostData::I64(_) | HostData::Ids(_) | HostData::IdsRows(_) => ElemKind::I64,
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
    /// F32 values and ids are shared, not copied ([`Shared`]); BYTES elements are moved; other
    /// INT64 values are copied.
    pub fn split_rows(self, sizes: &[usize]) -> Vec<HostTensor> {
        let row_len = self.row_len();
        let shape_of = |rows: usize| {
            let mut shape = self.shape.clone();
            if let Some(first) = shape.first_mut() {
                *first = rows;
            }
            shape
        };
        let mut source = match self.data {
            HostData::F32(v) => Source::F32(Shared::whole(v)),
            HostData::F32Rows(rows) => Source::F32(rows),
            HostData::I64(v) => Source::I64(v),
            HostData::Ids(v) => Source::Ids(Shared::whole(v)),
            HostData::IdsRows(rows) => Source::Ids(rows),
            HostData::Bytes(v) => Source::Bytes(v.into_iter()),
        };
        let mut out = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &rows in sizes {
            let range = start * row_len..(start + rows) * row_len;
            let data = match &mut source {
                Source::F32(shared) => HostData::F32Rows(shared.window(range)),
                Source::I64(v) => HostData::I64(v.get(range).unwrap_or_default().to_vec()),
                Source::Ids(shared) => HostData::IdsRows(shared.window(range)),
                Source::Bytes(elements) => {
                    HostData::Bytes(elements.by_ref().take(range.len()).collect())
                }
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
            match &joined.data {
                HostData::F32Rows(rows) => joined.data = HostData::F32(rows.as_slice().to_vec()),
                HostData::IdsRows(rows) => joined.data = HostData::Ids(rows.as_slice().to_vec()),
                _ => {}
            }
            match (&mut joined.data, part.data) {
                (HostData::F32(a), HostData::F32(b)) => a.extend(b),
                (HostData::F32(a), HostData::F32Rows(b)) => a.extend_from_slice(b.as_slice()),
                (HostData::I64(a), HostData::I64(b)) => a.extend(b),
                (HostData::Ids(a), HostData::Ids(b)) => a.extend(b),
                (HostData::Ids(a), HostData::IdsRows(b)) => a.extend_from_slice(b.as_slice()),
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

/// The rows all of a request's inputs share; `None` when it has none or they disagree (the
/// model then refuses it whole).
pub fn common_request_rows(inputs: &[Option<HostTensor>]) -> Option<usize> {
    let mut rows = inputs.iter().flatten().map(HostTensor::rows);
    let first = rows.next()?;
    rows.all(|r| r == first).then_some(first)
}

/// Cuts a request's inputs, each of `rows` rows, into consecutive parts of at most `max` rows
/// (`max >= 1`): the parts of a request bigger than one batch. Absent optional inputs stay
/// absent in every part.
pub fn cut_request(
    inputs: Vec<Option<HostTensor>>,
    rows: usize,
    max: usize,
) -> Vec<Vec<Option<HostTensor>>> {
    let max = max.max(1);
    let sizes: Vec<usize> = (0..rows)
        .step_by(max)
        .map(|start| max.min(rows - start))
        .collect();
    let mut columns: Vec<Vec<Option<HostTensor>>> = inputs
        .into_iter()
        .map(|input| match input {
            Some(t) => t.split_rows(&sizes).into_iter().map(Some).collect(),
            None => vec![None; sizes.len()],
        })
        .collect();
    (0..sizes.len())
        .map(|part| columns.iter_mut().map(|c| c[part].take()).collect())
        .collect()
}

/// The values [`HostTensor::split_rows`] cuts from.
enum Source {
    F32(SharedF32),
    I64(Vec<i64>),
    Ids(Shared<u32>),
    Bytes(std::vec::IntoIter<Vec<u8>>),
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
        assert_eq!(parts[1].data.f32s(), Some(&[4.0, 5.0, 6.0, 7.0][..]));
        // The parts share the values instead of copying them.
        let shares = |p: &HostTensor| match &p.data {
            HostData::F32Rows(rows) => Arc::strong_count(&rows.data),
            _ => 0,
        };
        assert_eq!(shares(&parts[0]), 3);
        assert_eq!(HostTensor::concat_rows(parts), Some(t));
        let text = HostTensor {
            shape: vec![3],
            data: HostData::Bytes(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]),
        };
        assert_eq!(
            HostTensor::concat_rows(text.clone().split_rows(&[1, 2])),
            Some(text)
        );
        // Ids are shared like F32 values: a request cut into batches holds them once.
        let ids = HostTensor {
            shape: vec![3, 2],
            data: HostData::Ids((0..6).collect()),
        };
        let parts = ids.clone().split_rows(&[2, 1]);
        assert_eq!(parts[1].data.ids(), Some(&[4u32, 5][..]));
        assert!(matches!(&parts[0].data, HostData::IdsRows(r) if Arc::strong_count(&r.data) == 2));
        assert_eq!(HostTensor::concat_rows(parts), Some(ids));
        let mismatch = vec![
            HostTensor::zeros(ElemKind::F32, vec![1, 2]),
            HostTensor::zeros(ElemKind::F32, vec![1, 3]),
        ];
        assert_eq!(HostTensor::concat_rows(mismatch), None);
    }
}
