//! `wick convert`: PyTorch `.pth` checkpoints to safetensors, offline, without executing anything.
//!
//! The server never reads a pickle; this module is called only by the CLI. The pipeline, each
//! step able to refuse the file before the next one costs anything:
//! 1. [`archive`]: the `torch.save` zip (stored entries in one folder, no overlaps, little-endian);
//! 2. [`pickle`] (with `machine` and [`objects`]): data.pkl through a bounded machine that only
//!    builds data from an allowlist;
//! 3. [`torch`]: the state dict at the top level or under `--key`; [`plan`]: every view checked
//!    against its storage record and the output caps (nothing read yet);
//! 4. [`write`]: the safetensors layout, storages read one at a time and their views gathered
//!    into a temporary file, which is checked with wick's own header validation (and with
//!    `--check-config`, the strict check of `wick check`) before it is renamed into place.
//!
//! The source's sha256 is recorded in `__metadata__` (`source_sha256`).

// Everything here reads hostile bytes: a panic would be a denial of service, so the lints that
// catch the usual ways to panic are errors (tests may still use them).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

pub mod archive;
mod machine;
pub mod objects;
pub mod pickle;
pub mod plan;
pub mod torch;
pub mod write;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::{BufReader, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::state_dict::{self, FileIdentity, HeaderLimits};

use archive::{Archive, ArchiveError, ArchiveLimits};
use objects::PickleError;
use pickle::PickleLimits;
use plan::{Plan, PlanError, PlanLimits};
use torch::{Dropped, SelectError};
use write::{Layout, Sink, TempOutput, WriteError};

/// What `wick convert` was asked to do (also its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertOptions {
    /// The torch.save file to read (.pth/.pt/.bin).
    pub input: PathBuf,
    /// The safetensors file to write (atomically: it appears only when complete).
    pub output: PathBuf,
    /// The checkpoint entry that holds the state dict (`model` for `{'model': ..., ...}`).
    #[arg(long)]
    pub key: Option<String>,
    /// With `model`: run `wick check` on the result against this config before writing it.
    #[arg(long, requires = "model")]
    pub check_config: Option<PathBuf>,
    #[arg(long, requires = "check_config")]
    pub model: Option<String>,
}

/// Every cap of the reader, in one place (the fuzz target tightens them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub archive: ArchiveLimits,
    pub pickle: PickleLimits,
    pub plan: PlanLimits,
}

impl Limits {
    /// The default caps for an input of `input_len` bytes. The output may be at most four
    /// times the input plus 256 MiB: tied weights double data legitimately, while a stride-0
    /// view of one element could otherwise ask for terabytes.
    pub fn for_input(input_len: u64) -> Limits {
        Limits {
            archive: ArchiveLimits::default(),
            pickle: PickleLimits::default(),
            plan: PlanLimits {
                header: HeaderLimits::default(),
                max_output_bytes: input_len.saturating_mul(4).saturating_add(256 << 20),
            },
        }
    }
}

/// Why a file could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "this is the legacy torch.save format (PyTorch before 1.6, or _use_new_zipfile_serialization=False), \
         which wick does not read; re-save it once with a current PyTorch: \
         torch.save(torch.load(IN, weights_only=True), OUT)"
    )]
    Legacy,
    #[error("this is a bare pickle, not a torch.save zip archive; wick reads only torch.save checkpoints")]
    BarePickle,
    #[error("this is not a torch.save checkpoint (it is not a zip archive)")]
    NotTorch,
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Pickle(#[from] PickleError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("storage {key:?}: {message}")]
    Gather { key: String, message: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the output is not valid: {0}")]
    Output(String),
    #[error("{path} changed while it was being converted")]
    Changed { path: PathBuf },
    #[error("the output {path} is the input file")]
    SameFile { path: PathBuf },
}

/// Recognises the input from its first bytes.
fn sniff(prefix: &[u8]) -> Result<(), ConvertError> {
    // The legacy format starts with a pickled magic number, 0x1950a86a20f9469cfc6c (LONG1).
    const LEGACY: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
    match prefix {
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] => Ok(()),
        p if p.starts_with(LEGACY) => Err(ConvertError::Legacy),
        [0x80, proto, ..] if (2..=5).contains(proto) => Err(ConvertError::BarePickle),
        _ => Err(ConvertError::NotTorch),
    }
}

/// A checkpoint read and checked up to the point where bytes get copied.
pub struct Prepared<R> {
    archive: Archive<R>,
    pub plan: Plan,
    pub layout: Layout,
    pub summary: Summary,
}

/// What the conversion found, for the printed summary.
#[derive(Debug, Clone)]
pub struct Summary {
    pub prefix: String,
    pub protocol: u8,
    pub records: usize,
    pub location: String,
    pub dropped: Vec<Dropped>,
}

/// Reads and checks a checkpoint: archive, pickle, state dict, plan, output layout.
pub fn prepare<R: Read + Seek>(
    mut reader: R,
    input_len: u64,
    key: Option<&str>,
    metadata: &BTreeMap<String, String>,
    limits: &Limits,
) -> Result<Prepared<R>, ConvertError> {
    let mut prefix = Vec::with_capacity(16);
    reader
        .by_ref()
        .take(16)
        .read_to_end(&mut prefix)
        .map_err(|e| ArchiveError::Zip(e.to_string()))?;
    sniff(&prefix)?;
    reader
        .rewind()
        .map_err(|e| ArchiveError::Zip(e.to_string()))?;
    let mut archive = Archive::open(reader, input_len, &limits.archive)?;
    let bytes = archive.read_pickle(&limits.archive)?;
    let unpickled = pickle::parse(&bytes, &limits.pickle)?;
    drop(bytes);
    let selection = torch::select(&unpickled, key)?;
    let plan = plan::plan(&selection, &|k| archive.record_size(k), &limits.plan)?;
    let layout = write::layout(&plan.tensors, metadata)?;
    let summary = Summary {
        prefix: archive.prefix.clone(),
        protocol: unpickled.protocol,
        records: archive.record_count(),
        location: selection.location,
        dropped: selection.dropped,
    };
    Ok(Prepared {
        archive,
        plan,
        layout,
        summary,
    })
}

impl<R: Read + Seek> Prepared<R> {
    /// Writes the header and every tensor into `sink`, reading each storage once.
    pub fn write_into(&mut self, sink: &mut dyn Sink) -> Result<(), ConvertError> {
        let output = |e: std::io::Error| ConvertError::Output(e.to_string());
        sink.write_at(0, &self.layout.head).map_err(output)?;
        // Each storage's users, found once (a linear scan per storage would be quadratic).
        let mut users: BTreeMap<&str, Vec<(&plan::PlannedTensor, u64)>> = BTreeMap::new();
        for (tensor, start) in self.plan.tensors.iter().zip(&self.layout.starts) {
            users
                .entry(tensor.storage.as_str())
                .or_default()
                .push((tensor, *start));
        }
        let mut buffer = Vec::new();
        for (key, (_, bytes)) in &self.plan.storages {
            let storage = self.archive.read_record(key, *bytes)?;
            for (tensor, start) in users.get(key.as_str()).into_iter().flatten() {
                buffer.clear();
                plan::gather(&storage, tensor, &mut buffer).map_err(|message| {
                    ConvertError::Gather {
                        key: key.clone(),
                        message,
                    }
                })?;
                sink.write_at(*start, &buffer).map_err(output)?;
            }
        }
        Ok(())
    }
}

/// Converts an in-memory checkpoint to in-memory safetensors bytes (tests and fuzzing).
pub fn convert_bytes(
    input: &[u8],
    key: Option<&str>,
    limits: &Limits,
) -> Result<Vec<u8>, ConvertError> {
    let metadata = BTreeMap::from([(
        "source_sha256".to_string(),
        state_dict::hex(&Sha256::digest(input)),
    )]);
    let mut prepared = prepare(
        Cursor::new(input),
        input.len() as u64,
        key,
        &metadata,
        limits,
    )?;
    let len = usize::try_from(prepared.layout.file_len)
        .map_err(|_| ConvertError::Output("too large".into()))?;
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|e| ConvertError::Output(e.to_string()))?;
    out.resize(len, 0);
    prepared.write_into(&mut out)?;
    state_dict::header::parse_bytes(&out, &limits.plan.header)
        .map_err(|e| ConvertError::Output(e.to_string()))?;
    Ok(out)
}

/// `wick convert IN OUT [--key K] [--check-config C --model M]`. Prints a summary to `out`.
/// `Ok(false)` means the strict check refused the result (and nothing was written).
pub fn run(options: &ConvertOptions, out: &mut dyn Write) -> anyhow::Result<bool> {
    let input = &options.input;
    let check = match (&options.check_config, &options.model) {
        (Some(path), Some(model)) => {
            // Fail fast: a bad config or model name costs nothing to find out.
            let config = Config::load(path, &|name| std::env::var(name).ok())?;
            if config.model(model).is_none() {
                let known: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
                anyhow::bail!(
                    "no model {model:?} in {} (models: {})",
                    path.display(),
                    known.join(", ")
                );
            }
            Some((config, model.as_str()))
        }
        (None, None) => None,
        _ => anyhow::bail!("--check-config and --model go together"),
    };
    convert_file(options, check.as_ref().map(|(c, m)| (c, *m)), out)
        .map_err(|e| e.context(format!("cannot convert {}", input.display())))
}

/// The output's `__metadata__`: where it came from (the input's name and sha256, the `--key`)
/// and what made it.
fn provenance(input: &Path, key: Option<&str>, sha256: &str) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("source_sha256".to_string(), sha256.to_string()),
        (
            "converted_by".to_string(),
            format!("wick {} convert", env!("CARGO_PKG_VERSION")),
        ),
    ]);
    if let Some(name) = input.file_name() {
        metadata.insert("source_file".into(), name.to_string_lossy().into_owned());
    }
    if let Some(key) = key {
        metadata.insert("source_key".into(), key.to_string());
    }
    metadata
}

fn convert_file(
    options: &ConvertOptions,
    check: Option<(&Config, &str)>,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let input = &options.input;
    let io_err = |source| ConvertError::Io {
        path: input.clone(),
        source,
    };
    let (mut file, before) = state_dict::load::open_regular(input).map_err(|e| match e {
        state_dict::LoadError::NotAFile { path } => ConvertError::NotAFile { path },
        state_dict::LoadError::Io { path, source } => ConvertError::Io { path, source },
        other => io_err(std::io::Error::other(other.to_string())),
    })?;
    if let Ok(existing) = FileIdentity::stat(&options.output) {
        if (existing.dev, existing.ino) == (before.dev, before.ino) {
            return Err(ConvertError::SameFile {
                path: options.output.clone(),
            }
            .into());
        }
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_err)?;
    let sha256 = state_dict::hex(&hasher.finalize());
    file.rewind().map_err(io_err)?;

    let metadata = provenance(input, options.key.as_deref(), &sha256);
    let limits = Limits::for_input(before.size);
    let reader = BufReader::with_capacity(1 << 20, file);
    let mut prepared = prepare(
        reader,
        before.size,
        options.key.as_deref(),
        &metadata,
        &limits,
    )?;

    let mut temp = TempOutput::create(&options.output)?;
    prepared.write_into(&mut temp)?;
    temp.finish(prepared.layout.file_len)?;
    // What wick writes, wick must load: the serving path's own header validation.
    state_dict::read_header(temp.path()).map_err(|e| ConvertError::Output(e.to_string()))?;
    if FileIdentity::stat(input).ok() != Some(before) {
        return Err(ConvertError::Changed {
            path: input.clone(),
        }
        .into());
    }
    print_summary(out, options, &prepared, &sha256)?;

    // The check reads the temporary file, so a refused result is never published.
    if let Some((config, model)) = check {
        if !crate::commands::check(config, model, temp.path(), false, out)? {
            writeln!(
                out,
                "the strict check failed: {} was not written",
                options.output.display()
            )?;
            return Ok(false);
        }
    }
    temp.commit()?;
    writeln!(
        out,
        "wrote {} ({} bytes)",
        options.output.display(),
        prepared.layout.file_len
    )?;
    Ok(true)
}

fn print_summary<R>(
    out: &mut dyn Write,
    options: &ConvertOptions,
    p: &Prepared<R>,
    sha256: &str,
) -> std::io::Result<()> {
    let s = &p.summary;
    writeln!(
        out,
        "read {}: torch.save archive {:?}, pickle protocol {}, {} storage record(s), sha256 {sha256}",
        options.input.display(),
        s.prefix,
        s.protocol,
        s.records
    )?;
    let mut by_dtype: BTreeMap<String, usize> = BTreeMap::new();
    for t in &p.plan.tensors {
        let count = by_dtype.entry(t.dtype.to_string()).or_default();
        *count = count.saturating_add(1);
    }
    let dtypes: Vec<String> = by_dtype.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
    writeln!(
        out,
        "state dict at {}: {} tensors ({}), {} bytes of tensor data",
        s.location,
        p.plan.tensors.len(),
        dtypes.join(", "),
        p.plan.output_bytes
    )?;
    if !s.dropped.is_empty() {
        writeln!(
            out,
            "dropped {} entr{} that are not tensors of the state dict:",
            s.dropped.len(),
            if s.dropped.len() == 1 { "y" } else { "ies" }
        )?;
        let width = s
            .dropped
            .iter()
            .map(|d| d.name.chars().count())
            .max()
            .unwrap_or(0)
            .min(40);
        for d in &s.dropped {
            writeln!(out, "  {:<width$}  {}", d.name, d.what)?;
        }
    }
    Ok(())
}
