//! The safetensors output: its layout, and an atomic file that appears only when complete.
//!
//! The layout follows the safetensors crate's writer: tensors ordered by element size (largest
//! first) then name, so every tensor starts at an offset aligned to its element size; the JSON
//! header is padded with spaces to a multiple of 8 bytes. Tensor bytes are written at their
//! final offsets as each storage is read, so memory holds one storage at a time.
//!
//! The file is written beside its destination under a hidden temporary name, synced, checked,
//! and renamed over the destination only when the caller commits it: a failed or refused
//! conversion leaves nothing behind, and a reader never sees a half-written file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::plan::PlannedTensor;

/// Why the output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the output's size overflows 64 bits")]
    Overflow,
    #[error("cannot encode the header: {0}")]
    Json(String),
}

/// Where each tensor goes in the output file.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The 8-byte length prefix and the padded JSON header.
    pub head: Vec<u8>,
    /// For each planned tensor (same order as the plan): its start offset in the whole file.
    pub starts: Vec<u64>,
    pub file_len: u64,
}

/// Computes the header and every tensor's place. `metadata` becomes `__metadata__`.
pub fn layout(
    tensors: &[PlannedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Layout, WriteError> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|a, b| {
        let key = |i: &usize| {
            tensors
                .get(*i)
                .map(|t| (std::cmp::Reverse(t.dtype.size()), t.name.as_str()))
        };
        key(a).cmp(&key(b))
    });
    let mut relative = vec![0u64; tensors.len()];
    let mut entries = Map::new();
    entries.insert("__metadata__".into(), json!(metadata));
    let mut cursor = 0u64;
    for i in order {
        let (Some(t), Some(slot)) = (tensors.get(i), relative.get_mut(i)) else {
            continue;
        };
        let end = cursor.checked_add(t.bytes).ok_or(WriteError::Overflow)?;
        *slot = cursor;
        entries.insert(
            t.name.clone(),
            json!({ "dtype": t.dtype.to_string(), "shape": t.shape, "data_offsets": [cursor, end] }),
        );
        cursor = end;
    }
    let mut json =
        serde_json::to_vec(&Value::Object(entries)).map_err(|e| WriteError::Json(e.to_string()))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut head = (json.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(&json);
    let data_start = head.len() as u64;
    let starts = relative
        .iter()
        .map(|r| r.checked_add(data_start).ok_or(WriteError::Overflow))
        .collect::<Result<Vec<_>, _>>()?;
    let file_len = data_start.checked_add(cursor).ok_or(WriteError::Overflow)?;
    Ok(Layout {
        head,
        starts,
        file_len,
    })
}

/// Somewhere bytes can be written at absolute offsets.
pub trait Sink {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
}

/// An in-memory output of a known size (tests and fuzzing).
impl Sink for Vec<u8> {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::other("offset beyond memory"))?;
        let range = start.checked_add(bytes.len()).map(|end| start..end);
        let target = range
            .and_then(|r| self.get_mut(r))
            .ok_or_else(|| io::Error::other("write past the end"))?;
        target.copy_from_slice(bytes);
        Ok(())
    }
}

/// The output file under a temporary name until [`TempOutput::commit`]; dropped uncommitted,
/// it removes itself.
pub struct TempOutput {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl TempOutput {
    /// Creates `.<name>.wick-convert-<pid>-<n>.tmp` beside `target` (never an existing file).
    pub fn create(target: &Path) -> Result<TempOutput, WriteError> {
        let io_err = |source| WriteError::Io {
            path: target.to_path_buf(),
            source,
        };
        let name = target
            .file_name()
            .ok_or_else(|| io_err(io::Error::other("the output path has no file name")))?
            .to_string_lossy()
            .into_owned();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut attempt = 0u32;
        loop {
            let temp = dir.join(format!(
                ".{name}.wick-convert-{}-{attempt}.tmp",
                std::process::id()
            ));
            match File::options().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(TempOutput {
                        file,
                        temp,
                        target: target.to_path_buf(),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt = attempt.saturating_add(1)
                }
                Err(source) => return Err(WriteError::Io { path: temp, source }),
            }
        }
    }

    /// The temporary file's path (for checks before committing).
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Sets the final length (so the file is exactly as long as its header says) and flushes
    /// the data to disk.
    pub fn finish(&mut self, len: u64) -> Result<(), WriteError> {
        let io_err = |source| WriteError::Io {
            path: self.temp.clone(),
            source,
        };
        self.file.set_len(len).map_err(io_err)?;
        self.file.sync_all().map_err(io_err)
    }

    /// Renames the file over the target and syncs the directory so the rename is durable.
    pub fn commit(mut self) -> Result<(), WriteError> {
        std::fs::rename(&self.temp, &self.target).map_err(|source| WriteError::Io {
            path: self.target.clone(),
            source,
        })?;
        self.committed = true;
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Durability of the rename; a failure here cannot undo it, so it is not an error.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Sink for TempOutput {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
