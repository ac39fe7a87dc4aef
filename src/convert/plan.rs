//! The check of every tensor against its storage record, and the copy of a view into
//! contiguous bytes.
//!
//! A tensor is a strided view of a storage that other tensors may share (views, tied weights,
//! stride-0 broadcasts). [`plan`] checks each view against the storage it names and the archive
//! record that holds it (declared sizes, bounds, overflow) and against the output caps that keep
//! the result loadable by wick, before a byte is read. [`gather`] then copies a view into
//! row-major bytes: what `tensor.contiguous()` holds after `torch.load`.

use std::collections::BTreeMap;

use crate::state_dict::{FileDtype, HeaderLimits};

use super::objects::{StorageRef, TensorRef};
use super::torch::Selection;

/// Why the state dict's tensors cannot be written as they are declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{count} tensors, above the cap of {cap}")]
    TooManyTensors { count: usize, cap: usize },
    #[error("tensor {name:?} has rank {rank}, above the cap of {cap}")]
    Rank {
        name: String,
        rank: usize,
        cap: usize,
    },
    #[error("tensor {name:?} has a dimension of {dim}, above the cap of {cap}")]
    Dim { name: String, dim: u64, cap: u64 },
    #[error("tensor {name:?}: shape {shape:?} of {dtype} overflows a 64-bit byte count")]
    Overflow {
        name: String,
        shape: Vec<u64>,
        dtype: FileDtype,
    },
    #[error("storage {key:?} is declared twice differently: {first_numel} × {first_dtype} and {second_numel} × {second_dtype}")]
    StorageConflict {
        key: String,
        first_dtype: FileDtype,
        first_numel: u64,
        second_dtype: FileDtype,
        second_numel: u64,
    },
    #[error("tensor {name:?} uses storage {key:?}, but the archive has no record data/{key}")]
    MissingRecord { name: String, key: String },
    #[error(
        "storage {key:?} declares {numel} × {dtype} ({}), but its record in the archive holds {record} bytes",
        .bytes.map_or("more than 2^64 bytes".to_string(), |b| format!("{b} bytes"))
    )]
    StorageSize {
        key: String,
        dtype: FileDtype,
        numel: u64,
        bytes: Option<u64>,
        record: u64,
    },
    #[error(transparent)]
    OutOfBounds(Box<ViewOutOfBounds>),
    #[error(
        "the tensors would take {bytes} bytes in the output, above the cap of {cap} (the input's size × 4 \
         + 256 MiB): views that repeat data (stride 0, overlapping views) would be copied out in full"
    )]
    OutputTooLarge { bytes: u64, cap: u64 },
}

/// A view that reaches past the end of its storage (boxed: it is the largest error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tensor {name:?} (offset {offset}, shape {shape:?}, stride {stride:?}) reaches element {} of \
     storage {key:?}, which has {numel} elements",
    .last.map_or("beyond 2^64".to_string(), |l| l.to_string())
)]
pub struct ViewOutOfBounds {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
    /// The last element the view reads, if that is representable.
    pub last: Option<u64>,
    pub numel: u64,
}

/// Caps on the output, so that what wick writes, wick loads.
#[derive(Debug, Clone, Copy)]
pub struct PlanLimits {
    pub header: HeaderLimits,
    pub max_output_bytes: u64,
}

/// One output tensor: a checked view of one storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: FileDtype,
    pub shape: Vec<usize>,
    pub stride: Vec<u64>,
    pub offset: u64,
    pub storage: String,
    /// Bytes in the output (elements × element size).
    pub bytes: u64,
}

/// Everything needed to write the output, checked against the archive.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tensors: Vec<PlannedTensor>,
    /// Storage key → (dtype, byte length of its record).
    pub storages: BTreeMap<String, (FileDtype, u64)>,
    pub output_bytes: u64,
}

/// Checks every tensor of `selection` against its storage and the archive's record sizes
/// (`record_size(key)`), and against the output caps. Nothing is read.
pub fn plan(
    selection: &Selection,
    record_size: &dyn Fn(&str) -> Option<u64>,
    limits: &PlanLimits,
) -> Result<Plan, PlanError> {
    let caps = &limits.header;
    if selection.tensors.len() > caps.max_tensors {
        return Err(PlanError::TooManyTensors {
            count: selection.tensors.len(),
            cap: caps.max_tensors,
        });
    }
    let mut storages = Storages::default();
    let mut tensors = Vec::with_capacity(selection.tensors.len());
    let mut total = 0u64;
    for (name, t) in &selection.tensors {
        let (shape, numel, bytes) = check_shape(name, t, caps)?;
        storages.check(name, &t.storage, record_size)?;
        if numel > 0 {
            check_bounds(name, t)?;
        }
        total = total.saturating_add(bytes);
        tensors.push(PlannedTensor {
            name: name.clone(),
            dtype: t.storage.dtype,
            shape,
            stride: t.stride.clone(),
            offset: t.offset,
            storage: t.storage.key.clone(),
            bytes,
        });
    }
    if total > limits.max_output_bytes {
        return Err(PlanError::OutputTooLarge {
            bytes: total,
            cap: limits.max_output_bytes,
        });
    }
    Ok(Plan {
        tensors,
        storages: storages.records,
        output_bytes: total,
    })
}

/// Tensor `name`'s shape within the header caps, its element count and its output bytes.
fn check_shape(
    name: &str,
    t: &TensorRef,
    caps: &HeaderLimits,
) -> Result<(Vec<usize>, u64, u64), PlanError> {
    if t.shape.len() > caps.max_rank {
        return Err(PlanError::Rank {
            name: name.to_string(),
            rank: t.shape.len(),
            cap: caps.max_rank,
        });
    }
    if let Some(&dim) = t.shape.iter().find(|d| **d > caps.max_dim) {
        return Err(PlanError::Dim {
            name: name.to_string(),
            dim,
            cap: caps.max_dim,
        });
    }
    let overflow = || PlanError::Overflow {
        name: name.to_string(),
        shape: t.shape.clone(),
        dtype: t.storage.dtype,
    };
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |acc, d| acc.checked_mul(*d))
        .ok_or_else(overflow)?;
    let bytes = numel
        .checked_mul(t.storage.dtype.size())
        .ok_or_else(overflow)?;
    let shape = t
        .shape
        .iter()
        .map(|d| usize::try_from(*d).map_err(|_| overflow()))
        .collect::<Result<_, _>>()?;
    Ok((shape, numel, bytes))
}

/// The storages seen so far: each one's first declaration, and its record's dtype and size.
#[derive(Default)]
struct Storages<'a> {
    declared: BTreeMap<&'a str, &'a StorageRef>,
    records: BTreeMap<String, (FileDtype, u64)>,
}

impl<'a> Storages<'a> {
    /// Storage `s`, used by tensor `name`: the first use must match its archive record, every
    /// later one the first declaration.
    fn check(
        &mut self,
        name: &str,
        s: &'a StorageRef,
        record_size: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<(), PlanError> {
        // One storage, one declaration: torch refuses to save differently typed views of one
        // storage, so a disagreement here is a forged file.
        match self.declared.get(s.key.as_str()) {
            Some(first) if *first != s => Err(PlanError::StorageConflict {
                key: s.key.clone(),
                first_dtype: first.dtype,
                first_numel: first.numel,
                second_dtype: s.dtype,
                second_numel: s.numel,
            }),
            Some(_) => Ok(()),
            None => {
                let record = record_size(&s.key).ok_or_else(|| PlanError::MissingRecord {
                    name: name.to_string(),
                    key: s.key.clone(),
                })?;
                let storage_bytes = s.numel.checked_mul(s.dtype.size());
                if storage_bytes != Some(record) {
                    return Err(PlanError::StorageSize {
                        key: s.key.clone(),
                        dtype: s.dtype,
                        numel: s.numel,
                        bytes: storage_bytes,
                        record,
                    });
                }
                self.declared.insert(&s.key, s);
                self.records.insert(s.key.clone(), (s.dtype, record));
                Ok(())
            }
        }
    }
}

/// A non-empty view must end inside its storage.
fn check_bounds(name: &str, t: &TensorRef) -> Result<(), PlanError> {
    let s = &t.storage;
    let last = last_element(t);
    if last.is_none_or(|last| last >= s.numel) {
        return Err(PlanError::OutOfBounds(Box::new(ViewOutOfBounds {
            name: name.to_string(),
            key: s.key.clone(),
            offset: t.offset,
            shape: t.shape.clone(),
            stride: t.stride.clone(),
            last,
            numel: s.numel,
        })));
    }
    Ok(())
}

/// The storage index of a non-empty view's last element: offset + Σ (size − 1) × stride.
fn last_element(t: &TensorRef) -> Option<u64> {
    t.shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (size, stride)| {
            size.checked_sub(1)?.checked_mul(*stride)?.checked_add(acc)
        })
}

/// Appends the bytes of `t` in row-major order, read from its storage's bytes. Contiguous inner
/// dimensions are copied as one block; bounds were checked by [`plan`], and every access is
/// still checked so a mistake becomes an error instead of a panic.
pub fn gather(storage: &[u8], t: &PlannedTensor, out: &mut Vec<u8>) -> Result<(), String> {
    let elem = t.dtype.size();
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |acc, d| acc.checked_mul(*d as u64));
    if numel.ok_or("element count overflows")? == 0 {
        return Ok(());
    }
    // Fold the innermost dimensions that are laid out contiguously into one block.
    let mut block = 1u64;
    let mut outer = t.shape.len();
    for (size, stride) in t.shape.iter().zip(&t.stride).rev() {
        if *size == 1 || *stride == block {
            block = block.saturating_mul(*size as u64);
            outer = outer.saturating_sub(1);
        } else {
            break;
        }
    }
    let shape = t.shape.get(..outer).unwrap_or_default();
    let stride = t.stride.get(..outer).unwrap_or_default();
    let block_bytes = block.checked_mul(elem).ok_or("block size overflows")?;
    let mut index = vec![0usize; outer];
    loop {
        let first = index
            .iter()
            .zip(stride)
            .try_fold(t.offset, |acc, (i, s)| {
                (*i as u64).checked_mul(*s)?.checked_add(acc)
            })
            .and_then(|e| e.checked_mul(elem))
            .ok_or("element offset overflows")?;
        let start = usize::try_from(first).map_err(|_| "offset beyond memory")?;
        let end =
            start.checked_add(usize::try_from(block_bytes).map_err(|_| "block beyond memory")?);
        let bytes = end
            .and_then(|end| storage.get(start..end))
            .ok_or("view outside its storage")?;
        out.extend_from_slice(bytes);
        // Odometer over the outer dimensions, last fastest.
        let mut dim = outer;
        loop {
            let Some(d) = dim.checked_sub(1) else {
                return Ok(());
            };
            dim = d;
            let (Some(i), Some(size)) = (index.get_mut(d), shape.get(d)) else {
                return Ok(());
            };
            *i = i.saturating_add(1);
            if *i < *size {
                break;
            }
            *i = 0;
        }
    }
}
