//! Header-first validation of a safetensors file, before any tensor byte is touched.
//!
//! The safetensors crate is lenient in ways that matter for a server (docs/security.md F2, F3): it
//! accepts duplicate tensor keys that share offsets (last one wins, so two parsers can disagree on
//! a dtype), unknown fields inside tensor entries, and absurd shapes for empty tensors. This
//! module parses the header itself, rejects all of that, caps sizes, checks that the offsets tile
//! the data section exactly and that the file is exactly as long as the header says (no
//! truncation, no trailing polyglot bytes). It also recognises the formats people drop in by
//! mistake (pickles, `torch.save` zips, GGUF, NumPy) and names them. Everything here is pure: it
//! works on byte slices, so it can be unit-tested and fuzzed without files.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Hard caps that keep a hostile header from costing memory or time.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_header_bytes: u64,
    pub max_tensors: usize,
    pub max_rank: usize,
    pub max_dim: u64,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            // Large language models with thousands of tensors stay far below this.
            max_header_bytes: 16 << 20,
            max_tensors: 100_000,
            max_rank: 8,
            max_dim: 1 << 40,
        }
    }
}

/// Element types a safetensors header may declare (named as the format spells them).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FileDtype {
    BOOL,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
    F8_E4M3,
    F8_E5M2,
}

impl FileDtype {
    fn parse(text: &str) -> Option<FileDtype> {
        use FileDtype::*;
        Some(match text {
            "BOOL" => BOOL,
            "U8" => U8,
            "I8" => I8,
            "U16" => U16,
            "I16" => I16,
            "U32" => U32,
            "I32" => I32,
            "U64" => U64,
            "I64" => I64,
            "F16" => F16,
            "BF16" => BF16,
            "F32" => F32,
            "F64" => F64,
            "F8_E4M3" => F8_E4M3,
            "F8_E5M2" => F8_E5M2,
            _ => return None,
        })
    }

    pub fn size(self) -> u64 {
        use FileDtype::*;
        match self {
            BOOL | U8 | I8 | F8_E4M3 | F8_E5M2 => 1,
            U16 | I16 | F16 | BF16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        use FileDtype::*;
        matches!(self, F16 | BF16 | F32 | F64 | F8_E4M3 | F8_E5M2)
    }
}

impl fmt::Display for FileDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One tensor as the header declares it; offsets are relative to the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: FileDtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

impl TensorEntry {
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
}

/// A validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Length of the JSON header (the `N` of the 8-byte prefix).
    pub header_len: u64,
    /// Tensors in the order the file's data section stores them.
    pub tensors: Vec<TensorEntry>,
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        8 + self.header_len
    }

    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }

    /// The exact file size this header implies.
    pub fn file_len(&self) -> u64 {
        self.data_offset() + self.data_len()
    }
}

/// Formats that are recognisably not safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ForeignFormat {
    /// A zip archive: what `torch.save` writes since PyTorch 1.6 (.pt/.pth/.bin), also TorchScript.
    TorchZip,
    /// A bare pickle stream (legacy `torch.save`, `pickle.dump`).
    Pickle,
    Gguf,
    Numpy,
    Hdf5,
}

impl fmt::Display for ForeignFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForeignFormat::TorchZip => {
                "a zip archive (what torch.save writes for .pt/.pth/.bin files; it contains a pickle)"
            }
            ForeignFormat::Pickle => "a Python pickle (legacy torch.save or pickle.dump)",
            ForeignFormat::Gguf => "a GGUF file",
            ForeignFormat::Numpy => "a NumPy .npy file",
            ForeignFormat::Hdf5 => "an HDF5 file (Keras .h5)",
        })
    }
}

/// Everything that makes bytes not a valid safetensors file. Each variant carries the data to
/// explain itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("file is {len} bytes, too short for a safetensors header")]
    TooShort { len: u64 },
    #[error(
        "this is {0}, not safetensors; wick never loads pickles on the serving path \
         (convert it offline with `wick convert`)"
    )]
    Foreign(ForeignFormat),
    // The two errors about the length prefix never print the declared length: for a file that
    // is not safetensors at all (a symlink to /etc/passwd, say), it is the file's first 8 bytes
    // read as a number, and a load failure must not leak a file's content.
    #[error("not a safetensors file, or a damaged one: its length prefix declares a JSON header above the cap of {cap} bytes")]
    HeaderTooLarge { declared: u64, cap: u64 },
    #[error("file is truncated, or not safetensors: its length prefix declares a JSON header longer than the {available} bytes that follow")]
    TruncatedHeader { declared: u64, available: u64 },
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// serde_json's message, clipped: a header that is JSON but not safetensors' (an unknown
    /// field, say) is named, but no long stretch of a file is repeated.
    #[error("header is not a valid safetensors JSON object: {0}")]
    Json(String),
    #[error("duplicate tensor key(s) in header: {}", quoted(.0))]
    DuplicateKeys(Vec<String>),
    #[error("tensor {name:?} has unknown dtype {dtype:?}")]
    UnknownDtype { name: String, dtype: String },
    #[error("{count} tensors in the header, above the cap of {cap}")]
    TooManyTensors { count: usize, cap: usize },
    #[error("tensor {name:?} has rank {rank}, above the cap of {cap}")]
    RankTooLarge {
        name: String,
        rank: usize,
        cap: usize,
    },
    #[error("tensor {name:?} has dimension {dim}, above the cap of {cap}")]
    DimTooLarge { name: String, dim: u64, cap: u64 },
    #[error("tensor {name:?}: shape {shape:?} of {dtype} overflows a 64-bit byte count")]
    SizeOverflow {
        name: String,
        shape: Vec<u64>,
        dtype: FileDtype,
    },
    #[error("tensor {name:?}: data_offsets [{start}, {end}] hold {actual} bytes, shape {shape:?} of {dtype} needs {expected}")]
    SizeMismatch {
        name: String,
        shape: Vec<usize>,
        dtype: FileDtype,
        start: u64,
        end: u64,
        expected: u64,
        actual: u64,
    },
    #[error("tensor {name:?}: data_offsets [{start}, {end}] leave a gap or overlap (the previous tensor ends at {expected_start})")]
    Offsets {
        name: String,
        start: u64,
        end: u64,
        expected_start: u64,
    },
    #[error(
        "file is truncated: the header describes {expected} bytes in all, the file has {actual}"
    )]
    TruncatedData { expected: u64, actual: u64 },
    #[error("file has {extra} trailing bytes after the last tensor (expected {expected} bytes in all, found {actual})", extra = .actual - .expected)]
    TrailingBytes { expected: u64, actual: u64 },
}

fn quoted(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_error(e: &serde_json::Error) -> FormatError {
    const MAX: usize = 160;
    let mut message = e.to_string();
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    FormatError::Json(message)
}

/// Recognises formats that are not safetensors from their first bytes.
pub fn sniff_foreign(prefix: &[u8]) -> Option<ForeignFormat> {
    match prefix {
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Some(ForeignFormat::TorchZip),
        [0x80, proto, ..] if (2..=5).contains(proto) => Some(ForeignFormat::Pickle),
        [b'G', b'G', b'U', b'F', ..] => Some(ForeignFormat::Gguf),
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => Some(ForeignFormat::Numpy),
        [0x89, b'H', b'D', b'F', ..] => Some(ForeignFormat::Hdf5),
        _ => None,
    }
}

/// Reads the 8-byte prefix: the declared JSON length. `file_len` is the whole file's size.
pub fn header_len(prefix: &[u8], file_len: u64, limits: &HeaderLimits) -> Result<u64, FormatError> {
    if file_len == 0 {
        return Err(FormatError::Empty);
    }
    if let Some(format) = sniff_foreign(prefix) {
        return Err(FormatError::Foreign(format));
    }
    let Some(len_bytes) = prefix.get(..8) else {
        return Err(FormatError::TooShort { len: file_len });
    };
    let mut raw = [0u8; 8];
    raw.copy_from_slice(len_bytes);
    let declared = u64::from_le_bytes(raw);
    if declared > limits.max_header_bytes {
        return Err(FormatError::HeaderTooLarge {
            declared,
            cap: limits.max_header_bytes,
        });
    }
    let available = file_len.saturating_sub(8);
    if declared > available {
        return Err(FormatError::TruncatedHeader {
            declared,
            available,
        });
    }
    Ok(declared)
}

/// Parses and validates the JSON header (`json` is exactly the `N` bytes after the prefix) and
/// checks that a file of `file_len` bytes holds exactly the data it describes.
pub fn parse_header(
    json: &[u8],
    file_len: u64,
    limits: &HeaderLimits,
) -> Result<Header, FormatError> {
    let text = std::str::from_utf8(json).map_err(|_| FormatError::NotUtf8)?;
    // safetensors writers pad the header with spaces to an 8-byte boundary.
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    if !raw.duplicates.is_empty() {
        return Err(FormatError::DuplicateKeys(raw.duplicates));
    }
    if raw.tensors.len() > limits.max_tensors {
        return Err(FormatError::TooManyTensors {
            count: raw.tensors.len(),
            cap: limits.max_tensors,
        });
    }

    let mut tensors = raw
        .tensors
        .into_iter()
        .map(|(name, entry)| tensor_entry(name, entry, limits))
        .collect::<Result<Vec<_>, _>>()?;
    check_tiling(&mut tensors, json.len() as u64, file_len)?;
    Ok(Header {
        header_len: json.len() as u64,
        tensors,
        metadata: raw.metadata,
    })
}

/// One header entry checked against the caps, its dtype known and its byte range exactly the
/// size its shape and dtype give.
fn tensor_entry(
    name: String,
    entry: RawTensor,
    limits: &HeaderLimits,
) -> Result<TensorEntry, FormatError> {
    let dtype = FileDtype::parse(&entry.dtype).ok_or_else(|| FormatError::UnknownDtype {
        name: name.clone(),
        dtype: entry.dtype.clone(),
    })?;
    if entry.shape.len() > limits.max_rank {
        return Err(FormatError::RankTooLarge {
            name,
            rank: entry.shape.len(),
            cap: limits.max_rank,
        });
    }
    if let Some(&dim) = entry.shape.iter().find(|d| **d > limits.max_dim) {
        return Err(FormatError::DimTooLarge {
            name,
            dim,
            cap: limits.max_dim,
        });
    }
    let expected = entry
        .shape
        .iter()
        .try_fold(1u64, |acc, d| acc.checked_mul(*d))
        .and_then(|n| n.checked_mul(dtype.size()));
    let Some(expected) = expected else {
        return Err(FormatError::SizeOverflow {
            name,
            shape: entry.shape,
            dtype,
        });
    };
    let (start, end) = entry.data_offsets;
    let shape: Vec<usize> = entry.shape.iter().map(|d| *d as usize).collect();
    let actual = end.checked_sub(start);
    if actual != Some(expected) {
        return Err(FormatError::SizeMismatch {
            name,
            shape,
            dtype,
            start,
            end,
            expected,
            actual: actual.unwrap_or(0),
        });
    }
    Ok(TensorEntry {
        name,
        dtype,
        shape,
        start,
        end,
    })
}

/// Sorts `tensors` by offset and checks that they tile the data section exactly and that the
/// file (`file_len` bytes, with a `json_len`-byte header) ends where the last one does.
fn check_tiling(
    tensors: &mut [TensorEntry],
    json_len: u64,
    file_len: u64,
) -> Result<(), FormatError> {
    // The data section must be tiled exactly: sorted by offset, each tensor starts where the
    // previous one ended. Zero-sized tensors may share an offset.
    tensors.sort_by_key(|t| (t.start, t.end));
    let mut cursor = 0u64;
    for t in tensors.iter() {
        if t.start != cursor {
            return Err(FormatError::Offsets {
                name: t.name.clone(),
                start: t.start,
                end: t.end,
                expected_start: cursor,
            });
        }
        cursor = t.end;
    }
    let expected = (8 + json_len).saturating_add(cursor);
    if file_len < expected {
        return Err(FormatError::TruncatedData {
            expected,
            actual: file_len,
        });
    }
    if file_len > expected {
        return Err(FormatError::TrailingBytes {
            expected,
            actual: file_len,
        });
    }
    Ok(())
}

/// Validates a whole in-memory file (used by tests and fuzzing; the loader reads the prefix and
/// header from disk first so that a bad file is rejected without mapping it).
pub fn parse_bytes(bytes: &[u8], limits: &HeaderLimits) -> Result<Header, FormatError> {
    let len = bytes.len() as u64;
    let n = header_len(bytes, len, limits)?;
    let json = bytes
        .get(8..8 + n as usize)
        .ok_or(FormatError::TruncatedHeader {
            declared: n,
            available: len.saturating_sub(8),
        })?;
    parse_header(json, len, limits)
}

// ---------------------------------------------------------------------------------------------
// The JSON shape. A hand-written map visitor keeps every key (so duplicates are seen) instead of
// letting a HashMap silently keep the last one.

struct RawHeader {
    tensors: Vec<(String, RawTensor)>,
    metadata: BTreeMap<String, String>,
    duplicates: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object mapping tensor names to {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut tensors = Vec::new();
        let mut metadata: Option<BTreeMap<String, String>> = None;
        let mut seen = HashSet::new();
        let mut duplicates = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                duplicates.push(key.clone());
            }
            if key == "__metadata__" {
                let value: UniqueStringMap = map.next_value()?;
                if metadata.is_some() {
                    // Already recorded as a duplicate above.
                    continue;
                }
                metadata = Some(value.0);
            } else {
                let entry: RawTensor = map
                    .next_value()
                    .map_err(|e| de::Error::custom(format!("tensor {key:?}: {e}")))?;
                tensors.push((key, entry));
            }
        }
        Ok(RawHeader {
            tensors,
            metadata: metadata.unwrap_or_default(),
            duplicates,
        })
    }
}

/// `__metadata__`: string to string, duplicates refused.
struct UniqueStringMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueStringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueStringMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("__metadata__ as an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueStringMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!(
                            "duplicate key {k:?} in __metadata__"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueStringMap(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests;
