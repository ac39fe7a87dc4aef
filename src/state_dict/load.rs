//! Reading a checkpoint from disk: header first, then the one memory map, copy out, unmap.
//!
//! Order of operations, each step able to refuse the file before the next costs anything:
//! 1. `stat` the path: a regular file (never a FIFO or device), opened non-blocking;
//! 2. read the 8-byte prefix and the JSON header with plain reads and validate them
//!    ([`super::header`]); compare them with the model's expectations ([`super::report`]);
//! 3. only for a clean report: let the safetensors crate re-validate the header, then copy every
//!    planned tensor into candle-owned memory (widening F16/BF16 where the plan says so) through
//!    a bounded window of positioned reads while hashing the file ([`super::stream`]);
//! 4. `fstat` again: a file that changed while it was read is refused (publishers must rename
//!    files into place; see docs/security.md F7). A file truncated while it is read ends the
//!    reads early and is refused the same way; nothing is memory-mapped, so it cannot crash
//!    the process.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use super::header::{self, FormatError, Header, HeaderLimits};
use super::report::{self, ExpectedSpec, LoadReport};
use super::{stream, KeyMapping};

/// Why a checkpoint file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: FormatError },
    #[error("{0}")]
    Mismatch(Box<LoadReport>),
    #[error("{path} changed while it was being read; publish checkpoints by writing elsewhere and renaming them into place")]
    Changed { path: PathBuf },
    #[error("{path}: the safetensors crate refused the file: {message}")]
    Crate { path: PathBuf, message: String },
    #[error("{path} is {size} bytes, above the limit of {limit} for this kind of file")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{path}: tensor {name:?}: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
}

impl LoadError {
    /// A short label for metrics and the repository index.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Io { .. } | LoadError::NotAFile { .. } => "io",
            LoadError::Format {
                source: FormatError::Foreign(_),
                ..
            } => "foreign_format",
            LoadError::Format {
                source: FormatError::TruncatedData { .. } | FormatError::TruncatedHeader { .. },
                ..
            } => "truncated",
            LoadError::Format {
                source: FormatError::Empty,
                ..
            } => "empty",
            LoadError::Format { .. } | LoadError::Crate { .. } => "format",
            LoadError::Mismatch(report) => report.kind(),
            LoadError::Changed { .. } => "changed",
            LoadError::Tensor { .. } => "tensor",
            LoadError::TooLarge { .. } => "too_large",
        }
    }
}

/// Identifies one version of a file's contents: rename-replace changes the inode, an in-place
/// write changes the size or the mtime. Serialised in the `state_dir` (src/repository/state.rs):
/// it stays the same across restarts while the file is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }

    /// Stats `path` (following symlinks).
    pub fn stat(path: &Path) -> std::io::Result<FileIdentity> {
        std::fs::metadata(path).map(|m| FileIdentity::of(&m))
    }
}

/// A checkpoint copied into memory, ready to build a model from.
pub struct LoadedStateDict {
    /// Model-side names to tensors on the CPU, already in the model's dtype.
    pub tensors: HashMap<String, Tensor>,
    /// The clean report (what was ignored, upcast, optional).
    pub report: LoadReport,
    /// Hex sha256 of the whole file, as `sha256sum` prints it.
    pub sha256: String,
    pub identity: FileIdentity,
    /// Bytes held by the copied tensors.
    pub param_bytes: u64,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for LoadedStateDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedStateDict")
            .field("tensors", &self.tensors.len())
            .field("sha256", &self.sha256)
            .field("param_bytes", &self.param_bytes)
            .finish()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` as a regular file without blocking on FIFOs, returning it with its identity.
/// (A FIFO swapped in between the `stat` and the `open` would otherwise block the reader.)
pub fn open_regular(path: &Path) -> Result<(File, FileIdentity), LoadError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok((file, FileIdentity::of(&meta)))
}

/// Reads and validates only the header of `path`.
pub fn read_header(path: &Path) -> Result<(Header, FileIdentity), LoadError> {
    let (mut file, identity) = open_regular(path)?;
    let header = read_header_from(&mut file, path, identity.size)?;
    Ok((header, identity))
}

fn read_header_from(file: &mut File, path: &Path, file_len: u64) -> Result<Header, LoadError> {
    let format = |source| LoadError::Format {
        path: path.to_path_buf(),
        source,
    };
    let limits = HeaderLimits::default();
    let mut prefix = Vec::with_capacity(8);
    file.by_ref()
        .take(8)
        .read_to_end(&mut prefix)
        .map_err(io_error(path))?;
    let n = header::header_len(&prefix, file_len, &limits).map_err(format)?;
    // `n` is capped by `limits` and by the file's size, so this allocation is bounded.
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(io_error(path))?;
    header::parse_header(&json, file_len, &limits).map_err(format)
}

/// The strict check without loading: header validation plus the key/shape/dtype comparison.
/// Returns the report (clean or not); format problems are errors.
pub fn check(
    path: &Path,
    target: &str,
    expected: &ExpectedSpec,
    mapping: &KeyMapping,
) -> Result<(Header, LoadReport), LoadError> {
    let (header, _) = read_header(path)?;
    let (report, _) = report::compare(target, expected, &header, mapping);
    Ok((header, report))
}

/// A small safetensors file read whole (golden outputs, not weights): the validated header and
/// the data section. Files above `max_bytes` are refused before anything but the `stat` and
/// the header; the same header rules as for checkpoints apply (duplicates, caps, exact tiling).
pub fn read_small(path: &Path, max_bytes: u64) -> Result<(Header, Vec<u8>), LoadError> {
    let (mut file, before) = open_regular(path)?;
    if before.size > max_bytes {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size: before.size,
            limit: max_bytes,
        });
    }
    let header = read_header_from(&mut file, path, before.size)?;
    // The header tiles the file exactly (checked above) and the file is at most `max_bytes`.
    let mut data = vec![0u8; header.data_len() as usize];
    stream::read_at(&file, header.data_offset(), &mut data).map_err(|e| changed_or_io(path, e))?;
    let after = FileIdentity::of(&file.metadata().map_err(io_error(path))?);
    if after != before {
        return Err(LoadError::Changed {
            path: path.to_path_buf(),
        });
    }
    Ok((header, data))
}

/// Validates and loads `path` for a model that expects `expected`.
pub fn load(
    path: &Path,
    target: &str,
    expected: &ExpectedSpec,
    mapping: &KeyMapping,
) -> Result<LoadedStateDict, LoadError> {
    let (mut file, before) = open_regular(path)?;
    let header = read_header_from(&mut file, path, before.size)?;
    let (report, plan) = report::compare(target, expected, &header, mapping);
    if !report.is_clean() {
        return Err(LoadError::Mismatch(Box::new(report)));
    }

    // A second opinion from the reference parser on the header of exactly this file, and the
    // header's bytes into the hash.
    let mut hasher = Sha256::new();
    {
        let mut head = vec![0u8; header.data_offset() as usize];
        stream::read_at(&file, 0, &mut head).map_err(|e| changed_or_io(path, e))?;
        let parsed: safetensors::tensor::Metadata =
            serde_json::from_slice(&head[8..]).map_err(|e| LoadError::Crate {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if header.data_offset() + parsed.data_len() as u64 != before.size {
            return Err(LoadError::Crate {
                path: path.to_path_buf(),
                message: "the header's tensors do not end where the file does".to_string(),
            });
        }
        for entry in &plan {
            let stored = &header.tensors[entry.file_index];
            let agrees = parsed.info(&stored.name).is_some_and(|info| {
                info.shape == stored.shape
                    && info.data_offsets == (stored.start as usize, stored.end as usize)
            });
            if !agrees {
                return Err(LoadError::Tensor {
                    path: path.to_path_buf(),
                    name: stored.name.clone(),
                    message: "the safetensors crate and wick's header parser disagree".to_string(),
                });
            }
        }
        hasher.update(&head);
    }
    let tensors = stream::stream(&file, &header, &plan, &mut hasher).map_err(|e| match e {
        stream::StreamError::Io(source) => changed_or_io(path, source),
        stream::StreamError::Tensor { index, message } => LoadError::Tensor {
            path: path.to_path_buf(),
            name: header.tensors[index].name.clone(),
            message,
        },
    })?;
    let sha256 = hex(&hasher.finalize());
    let param_bytes = tensors
        .values()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();

    let after = FileIdentity::of(&file.metadata().map_err(io_error(path))?);
    if after != before {
        return Err(LoadError::Changed {
            path: path.to_path_buf(),
        });
    }
    Ok(LoadedStateDict {
        tensors,
        report,
        sha256,
        identity: before,
        param_bytes,
        metadata: header.metadata,
    })
}

/// A read that ended early means the file shrank while it was read.
fn changed_or_io(path: &Path, source: std::io::Error) -> LoadError {
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        LoadError::Changed {
            path: path.to_path_buf(),
        }
    } else {
        LoadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}
