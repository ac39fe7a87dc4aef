//! Copying a checkpoint's tensors out of the file through a bounded window, with positioned
//! reads (`pread`).
//!
//! The data section is walked once, in file order, through a window of at most [`WINDOW`]
//! bytes: each window is read, hashed, decoded into the tensors it overlaps, and reused for the
//! next. Peak memory is the new weights plus one window. Tensors may start anywhere, so a
//! decoder keeps the few bytes of an element split across two windows.
//!
//! Why reads and not a memory map: the weights are copied into candle's own memory either way
//! (candle's CPU tensors own their storage), so a mapping buys nothing once the load is done,
//! and while it lasts a publisher who truncates the file (a second `cp`, `rsync --inplace`)
//! turns the next touch of a mapped page into SIGBUS, which kills the whole process and the
//! version it was serving (docs/security.md F7). A short read is an error like any other: the
//! load is refused and the served version keeps serving. Reads measured as fast as the mapped
//! windows they replaced (docs/security.md, "Why wick reads checkpoints instead of mapping
//! them"); wick has no `unsafe` code.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::header::{FileDtype, Header};
use super::report::{Conversion, PlanEntry};

/// The largest mapping held at once.
pub const WINDOW: usize = 8 << 20;

/// Reads exactly `buf.len()` bytes of `file` at `offset`. A file that ends sooner was truncated
/// while it was read: `UnexpectedEof`.
pub fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Decoded values of one tensor, in the model's dtype.
enum Values {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

/// Turns a tensor's little-endian bytes, arriving in pieces, into values.
struct Decoder {
    from: FileDtype,
    values: Values,
    /// Bytes of an element split across two windows.
    carry: [u8; 8],
    carry_len: usize,
}

impl Decoder {
    fn new(from: FileDtype, entry: &PlanEntry, elements: usize) -> Result<Decoder, String> {
        let values = match (from, entry.conversion, entry.dtype) {
            (FileDtype::F32 | FileDtype::F16 | FileDtype::BF16, _, DType::F32) => {
                Values::F32(Vec::with_capacity(elements))
            }
            (FileDtype::F16, Conversion::Exact, DType::F16) => {
                Values::F16(Vec::with_capacity(elements))
            }
            (FileDtype::BF16, Conversion::Exact, DType::BF16) => {
                Values::BF16(Vec::with_capacity(elements))
            }
            (FileDtype::F64, Conversion::Exact, DType::F64) => {
                Values::F64(Vec::with_capacity(elements))
            }
            (FileDtype::I64, Conversion::Exact, DType::I64) => {
                Values::I64(Vec::with_capacity(elements))
            }
            (FileDtype::U32, Conversion::Exact, DType::U32) => {
                Values::U32(Vec::with_capacity(elements))
            }
            (FileDtype::U8, Conversion::Exact, DType::U8) => {
                Values::U8(Vec::with_capacity(elements))
            }
            (file, conversion, model) => {
                return Err(format!(
                    "no decoder for {file} -> {model:?} ({conversion:?})"
                ));
            }
        };
        Ok(Decoder {
            from,
            values,
            carry: [0; 8],
            carry_len: 0,
        })
    }

    /// Decodes `bytes`, the next piece of the tensor's data.
    fn push(&mut self, mut bytes: &[u8]) {
        let size = self.from.size() as usize;
        if self.carry_len > 0 {
            let take = (size - self.carry_len).min(bytes.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&bytes[..take]);
            self.carry_len += take;
            bytes = &bytes[take..];
            if self.carry_len < size {
                return;
            }
            let element = self.carry;
            self.decode(&element[..size]);
            self.carry_len = 0;
        }
        let whole = bytes.len() / size * size;
        self.decode(&bytes[..whole]);
        let rest = &bytes[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    /// Decodes whole elements.
    fn decode(&mut self, bytes: &[u8]) {
        match (&mut self.values, self.from) {
            (Values::F32(out), FileDtype::F32) => out.extend(le(bytes).map(f32::from_le_bytes)),
            (Values::F32(out), FileDtype::F16) => {
                out.extend(le(bytes).map(|b| half::f16::from_le_bytes(b).to_f32()))
            }
            (Values::F32(out), _) => {
                out.extend(le(bytes).map(|b| half::bf16::from_le_bytes(b).to_f32()))
            }
            (Values::F16(out), _) => out.extend(le(bytes).map(half::f16::from_le_bytes)),
            (Values::BF16(out), _) => out.extend(le(bytes).map(half::bf16::from_le_bytes)),
            (Values::F64(out), _) => out.extend(le(bytes).map(f64::from_le_bytes)),
            (Values::I64(out), _) => out.extend(le(bytes).map(i64::from_le_bytes)),
            (Values::U32(out), _) => out.extend(le(bytes).map(u32::from_le_bytes)),
            (Values::U8(out), _) => out.extend_from_slice(bytes),
        }
    }

    fn finish(self, shape: &[usize]) -> candle_core::Result<Tensor> {
        if self.carry_len != 0 {
            candle_core::bail!("the tensor's data ends inside an element");
        }
        let dev = &Device::Cpu;
        match self.values {
            Values::F32(v) => Tensor::from_vec(v, shape, dev),
            Values::F16(v) => Tensor::from_vec(v, shape, dev),
            Values::BF16(v) => Tensor::from_vec(v, shape, dev),
            Values::F64(v) => Tensor::from_vec(v, shape, dev),
            Values::I64(v) => Tensor::from_vec(v, shape, dev),
            Values::U32(v) => Tensor::from_vec(v, shape, dev),
            Values::U8(v) => Tensor::from_vec(v, shape, dev),
        }
    }
}

/// Little-endian elements of `N` bytes (`bytes.len()` is a multiple of `N`).
fn le<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// Why streaming failed.
#[derive(Debug)]
pub enum StreamError {
    Io(std::io::Error),
    /// A tensor (by header index) could not be decoded or built.
    Tensor {
        index: usize,
        message: String,
    },
}

/// Streams the data section of `file` (validated `header`), feeding `hasher` with every byte in
/// order and decoding the planned tensors. Returns the tensors by model key.
pub fn stream(
    file: &File,
    header: &Header,
    plan: &[PlanEntry],
    hasher: &mut Sha256,
) -> Result<HashMap<String, Tensor>, StreamError> {
    let mut decoders: Vec<Option<(Decoder, &PlanEntry)>> =
        header.tensors.iter().map(|_| None).collect();
    for entry in plan {
        let stored = &header.tensors[entry.file_index];
        let elements = stored.shape.iter().product();
        let decoder =
            Decoder::new(stored.dtype, entry, elements).map_err(|message| StreamError::Tensor {
                index: entry.file_index,
                message,
            })?;
        decoders[entry.file_index] = Some((decoder, entry));
    }

    let (data_start, data_len) = (header.data_offset(), header.data_len());
    let mut buffer = vec![0u8; data_len.min(WINDOW as u64) as usize];
    let mut pos = 0u64;
    let mut next = 0usize;
    while pos < data_len {
        let len = (data_len - pos).min(WINDOW as u64);
        let window = &mut buffer[..len as usize];
        read_at(file, data_start + pos, window).map_err(StreamError::Io)?;
        let window = &*window;
        hasher.update(window);
        let end = pos + len;
        // Tensors are sorted by offset and tile the data section exactly.
        while let Some(tensor) = header.tensors.get(next) {
            if tensor.start >= end && tensor.end > tensor.start {
                break;
            }
            let from = tensor.start.max(pos) - pos;
            let to = tensor.end.min(end) - pos;
            if let Some((decoder, _)) = decoders[next].as_mut() {
                if to > from {
                    decoder.push(&window[from as usize..to as usize]);
                }
            }
            if tensor.end > end {
                break;
            }
            next += 1;
        }
        pos = end;
    }

    let mut tensors = HashMap::with_capacity(plan.len());
    for (index, slot) in decoders.into_iter().enumerate() {
        if let Some((decoder, entry)) = slot {
            let tensor =
                decoder
                    .finish(&header.tensors[index].shape)
                    .map_err(|e| StreamError::Tensor {
                        index,
                        message: e.to_string(),
                    })?;
            tensors.insert(entry.model_key.clone(), tensor);
        }
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_split_across_pieces_decode_exactly() {
        let entry = PlanEntry {
            model_key: "w".into(),
            file_index: 0,
            dtype: DType::F32,
            conversion: Conversion::Exact,
        };
        let values: Vec<f32> = (0..50).map(|i| i as f32 * 1.25 - 7.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for piece in [1, 3, 4, 5, 7, 200] {
            let mut decoder = Decoder::new(FileDtype::F32, &entry, 50).unwrap();
            for chunk in bytes.chunks(piece) {
                decoder.push(chunk);
            }
            let tensor = decoder.finish(&[50]).unwrap();
            assert_eq!(
                tensor.to_vec1::<f32>().unwrap(),
                values,
                "pieces of {piece}"
            );
        }
        let mut decoder = Decoder::new(FileDtype::F32, &entry, 1).unwrap();
        decoder.push(&[1, 2, 3]);
        assert!(decoder.finish(&[1]).is_err());
    }

    #[test]
    fn half_precision_widens() {
        let entry = PlanEntry {
            model_key: "w".into(),
            file_index: 0,
            dtype: DType::F32,
            conversion: Conversion::Upcast,
        };
        let values = [0.5f32, -2.0, 65504.0];
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let mut decoder = Decoder::new(FileDtype::BF16, &entry, 3).unwrap();
        decoder.push(&bytes[..3]);
        decoder.push(&bytes[3..]);
        let got = decoder.finish(&[3]).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, values.map(|v| half::bf16::from_f32(v).to_f32()));
    }
}
