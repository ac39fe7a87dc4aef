//! The `torch.save` zip archive: its layout, and reads bounded by the archive itself.
//!
//! Since PyTorch 1.6, `torch.save` writes a zip whose entries all sit in one folder:
//! `<name>/data.pkl` (the pickle), `<name>/data/<key>` (one record per storage, raw
//! little-endian bytes), and small records (`version`, `byteorder`, `.format_version`, ...).
//! Every entry is stored, never compressed. This module accepts exactly that shape: entries must
//! be stored (so no entry can expand beyond the bytes it occupies: no zip bomb), must not overlap
//! (the other zip bomb: many entries sharing one payload), must all live in the one folder, and
//! the archive must be little-endian. A record is read only after its declared size was checked
//! against what the caller expects, and the read stops at that size.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use zip::{CompressionMethod, ZipArchive};

/// Caps on the archive's shape.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entries: usize,
    pub max_pickle_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            // One record per storage: checkpoints with a million storages do not exist.
            max_entries: 1 << 20,
            // data.pkl grows by about a hundred bytes per tensor.
            max_pickle_bytes: 256 << 20,
        }
    }
}

/// Why the archive was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a readable zip archive: {0}")]
    Zip(String),
    #[error("the archive has {count} entries, above the cap of {cap}")]
    TooManyEntries { count: usize, cap: usize },
    #[error(
        "zip entries overlap (several entries claim the same bytes): the shape of a zip bomb, and \
         never written by torch.save"
    )]
    Overlap,
    #[error(
        "entry {name:?} is compressed ({method}, {compressed} bytes expanding to a declared {size}); \
         torch.save stores records uncompressed, and wick refuses compressed entries so that nothing \
         can expand beyond the archive's own size (zip bomb)"
    )]
    Compressed {
        name: String,
        method: String,
        compressed: u64,
        size: u64,
    },
    #[error("entry {name:?} is encrypted")]
    Encrypted { name: String },
    #[error("entry {name:?} is stored uncompressed but declares {size} bytes for {compressed} stored bytes")]
    StoredSize {
        name: String,
        size: u64,
        compressed: u64,
    },
    #[error("entry {name:?} declares {size} bytes, more than the whole archive ({archive} bytes)")]
    LargerThanArchive {
        name: String,
        size: u64,
        archive: u64,
    },
    #[error("no data.pkl in the archive: this zip is not a torch.save checkpoint")]
    NoPickle,
    #[error(
        "this is a TorchScript archive (torch.jit.save: code/ and constants.pkl), not a torch.save \
         checkpoint; save the module's state_dict() with torch.save instead"
    )]
    TorchScript,
    #[error("the archive holds several pickles ({}); torch.save writes exactly one", .0.join(", "))]
    SeveralPickles(Vec<String>),
    #[error("entry {name:?} lies outside the archive's folder {prefix:?}")]
    OutsideFolder { name: String, prefix: String },
    #[error("the archive has the entry {name:?} twice")]
    DuplicateEntry { name: String },
    #[error(
        "the archive records byte order {found:?}; only little-endian archives are supported (the \
         file was saved on a big-endian machine)"
    )]
    ByteOrder { found: String },
    #[error("data.pkl is {size} bytes, above the cap of {cap}")]
    PickleTooLarge { size: u64, cap: u64 },
    #[error("record {name:?} holds {actual} bytes, {expected} expected")]
    RecordSize {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("cannot read entry {name:?}: {message}")]
    Read { name: String, message: String },
}

fn zip_error(e: zip::result::ZipError) -> ArchiveError {
    ArchiveError::Zip(e.to_string())
}

/// The one `<folder>/data.pkl` and its folder, which must be a single non-empty path segment.
/// No pickle but TorchScript's files gets its own error, since that is a common mistake.
fn find_pickle(names: &BTreeMap<String, Entry>) -> Result<(String, Entry), ArchiveError> {
    let pickles: Vec<&String> = names.keys().filter(|n| n.ends_with("data.pkl")).collect();
    match pickles.as_slice() {
        [name] => match (name.strip_suffix("/data.pkl"), names.get(*name)) {
            (Some(prefix), Some(entry)) if !prefix.is_empty() && !prefix.contains('/') => {
                Ok((prefix.to_string(), *entry))
            }
            _ => Err(ArchiveError::NoPickle),
        },
        [] if names
            .keys()
            .any(|n| n.ends_with("constants.pkl") || n.contains("/code/")) =>
        {
            Err(ArchiveError::TorchScript)
        }
        [] => Err(ArchiveError::NoPickle),
        several => Err(ArchiveError::SeveralPickles(
            several.iter().map(|s| s.to_string()).collect(),
        )),
    }
}

/// The storage records (by key) and the `byteorder` record, once every entry was checked to
/// live in `prefix`'s folder.
fn sort_entries(
    names: &BTreeMap<String, Entry>,
    prefix: String,
) -> Result<(BTreeMap<String, Entry>, Option<Entry>), ArchiveError> {
    let folder = format!("{prefix}/");
    let records_folder = format!("{prefix}/data/");
    let mut records = BTreeMap::new();
    let mut byteorder = None;
    for (name, entry) in names {
        let Some(inner) = name.strip_prefix(&folder) else {
            return Err(ArchiveError::OutsideFolder {
                name: name.clone(),
                prefix,
            });
        };
        if let Some(key) = name.strip_prefix(&records_folder) {
            records.insert(key.to_string(), *entry);
        } else if inner == "byteorder" {
            byteorder = Some(*entry);
        }
    }
    Ok((records, byteorder))
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    index: usize,
    size: u64,
    /// False when the archive records no CRC (torch.save with `compute_crc32 = False` writes 0).
    has_crc: bool,
}

/// An opened, checked archive. Reads go through the zip reader (CRC-checked).
pub struct Archive<R> {
    zip: ZipArchive<R>,
    /// The folder every entry lives in (`archive`, or the saved file's stem).
    pub prefix: String,
    pickle: Entry,
    /// Storage key → its record.
    records: BTreeMap<String, Entry>,
}

impl<R: Read + Seek> Archive<R> {
    /// Opens and checks the archive's directory. `archive_len` is the input's size in bytes.
    pub fn open(
        reader: R,
        archive_len: u64,
        limits: &ArchiveLimits,
    ) -> Result<Archive<R>, ArchiveError> {
        let mut zip = ZipArchive::new(reader).map_err(zip_error)?;
        if zip.len() > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                count: zip.len(),
                cap: limits.max_entries,
            });
        }
        if zip.has_overlapping_entries().map_err(zip_error)? {
            return Err(ArchiveError::Overlap);
        }
        let mut names = BTreeMap::new();
        for index in 0..zip.len() {
            let (name, entry) = Self::checked_entry(&mut zip, index, archive_len)?;
            if names.insert(name.clone(), entry).is_some() {
                return Err(ArchiveError::DuplicateEntry { name });
            }
        }
        let (prefix, pickle) = find_pickle(&names)?;
        let (records, byteorder) = sort_entries(&names, prefix.clone())?;
        let mut archive = Archive {
            zip,
            prefix,
            pickle,
            records,
        };
        // Archives from before PyTorch 1.10 have no byteorder record and are little-endian.
        if let Some(entry) = byteorder {
            let order = archive.read_entry(entry, 16, "byteorder")?;
            if order != b"little" {
                return Err(ArchiveError::ByteOrder {
                    found: String::from_utf8_lossy(&order).into_owned(),
                });
            }
        }
        Ok(archive)
    }

    /// Entry `index`'s name and place, refused unless it is stored (not compressed, not
    /// encrypted), its sizes agree, and it fits in the archive.
    fn checked_entry(
        zip: &mut ZipArchive<R>,
        index: usize,
        archive_len: u64,
    ) -> Result<(String, Entry), ArchiveError> {
        let file = zip.by_index_raw(index).map_err(zip_error)?;
        let name = file.name().map_err(zip_error)?.into_owned();
        let (size, compressed) = (file.size(), file.compressed_size());
        let has_crc = file.crc32() != 0;
        if file.encrypted() {
            return Err(ArchiveError::Encrypted { name });
        }
        if file.compression() != CompressionMethod::Stored {
            let method = format!("{:?}", file.compression());
            return Err(ArchiveError::Compressed {
                name,
                method,
                compressed,
                size,
            });
        }
        if size != compressed {
            return Err(ArchiveError::StoredSize {
                name,
                size,
                compressed,
            });
        }
        if size > archive_len {
            return Err(ArchiveError::LargerThanArchive {
                name,
                size,
                archive: archive_len,
            });
        }
        let entry = Entry {
            index,
            size,
            has_crc,
        };
        Ok((name, entry))
    }

    /// Number of storage records.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// The declared byte size of storage `key`'s record, if it exists.
    pub fn record_size(&self, key: &str) -> Option<u64> {
        self.records.get(key).map(|e| e.size)
    }

    /// The bytes of data.pkl (size capped).
    pub fn read_pickle(&mut self, limits: &ArchiveLimits) -> Result<Vec<u8>, ArchiveError> {
        if self.pickle.size > limits.max_pickle_bytes {
            return Err(ArchiveError::PickleTooLarge {
                size: self.pickle.size,
                cap: limits.max_pickle_bytes,
            });
        }
        let name = format!("{}/data.pkl", self.prefix);
        self.read_entry(self.pickle, limits.max_pickle_bytes, &name)
    }

    /// The bytes of storage `key`'s record, which must hold exactly `expected` bytes.
    pub fn read_record(&mut self, key: &str, expected: u64) -> Result<Vec<u8>, ArchiveError> {
        let name = format!("{}/data/{key}", self.prefix);
        let entry = *self.records.get(key).ok_or_else(|| ArchiveError::Read {
            name: name.clone(),
            message: "no such record".into(),
        })?;
        if entry.size != expected {
            return Err(ArchiveError::RecordSize {
                name,
                expected,
                actual: entry.size,
            });
        }
        self.read_entry(entry, expected, &name)
    }

    /// Reads one entry whose declared size is at most `cap` (and, being stored and not
    /// overlapping, at most the archive's size), checking the CRC and the length.
    fn read_entry(&mut self, entry: Entry, cap: u64, name: &str) -> Result<Vec<u8>, ArchiveError> {
        let failed = |message: String| ArchiveError::Read {
            name: name.to_string(),
            message,
        };
        if entry.size > cap {
            return Err(failed(format!(
                "{} bytes, above the cap of {cap}",
                entry.size
            )));
        }
        let capacity =
            usize::try_from(entry.size).map_err(|_| failed("larger than memory".into()))?;
        // Entries are stored, so the raw bytes are the data; without a recorded CRC, the zip
        // reader's check would refuse an honest file that torch.load accepts.
        let file = if entry.has_crc {
            self.zip.by_index(entry.index)
        } else {
            self.zip.by_index_raw(entry.index)
        };
        let mut file = file.map_err(|e| failed(e.to_string()))?;
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(capacity)
            .map_err(|e| failed(e.to_string()))?;
        // The zip reader stops at the entry's stored size and checks the CRC at the end; the
        // extra byte of the limit detects an entry that yields more than it declared.
        file.by_ref()
            .take(entry.size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| failed(e.to_string()))?;
        if bytes.len() as u64 != entry.size {
            return Err(ArchiveError::RecordSize {
                name: name.to_string(),
                expected: entry.size,
                actual: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }
}
