//! The CLI subcommands that are not the server itself: `check` (and `check --full`, the whole
//! load gate offline), `inspect` and `health`.
//!
//! Each writes its human output to the writer it is given (stdout in `main`, a buffer in tests)
//! and returns whether the check passed, so `main` only maps that to an exit code.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::config::{Config, ModelConfig};
use crate::model::naming::parse_version;
use crate::repository::pipeline::{target, Containment};
use crate::repository::{load_version, LoadFailure, Loaded};
use crate::state_dict::{self, LoadError};

/// `wick check --config C --model NAME FILE`: the strict check of FILE against the model's
/// architecture, without loading it. Returns `Ok(true)` when the checkpoint would load.
pub fn check(
    config: &Config,
    model: &str,
    file: &Path,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let model_config = find_model(config, model)?;
    let expected = model_config
        .architecture
        .expected()
        .map_err(|e| anyhow::anyhow!("cannot record the architecture's parameters: {e}"))?;
    let label = target(model_config, 0).replace(" version 0", "");
    let result = state_dict::check(file, &label, &expected, &model_config.mapping);
    match result {
        Ok((header, report)) => {
            let clean = report.is_clean();
            if as_json {
                let value = json!({
                    "ok": clean,
                    "file": file.display().to_string(),
                    "tensors": header.tensors.len(),
                    "report": report,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                writeln!(out, "{report}")?;
                if clean {
                    if !report.ignored.is_empty() {
                        writeln!(
                            out,
                            "  ignored by the key mapping: {}",
                            report.ignored.len()
                        )?;
                    }
                    if !report.optional_present.is_empty() {
                        writeln!(
                            out,
                            "  optional, present and unused: {}",
                            report.optional_present.join(", ")
                        )?;
                    }
                    if !report.upcast.is_empty() {
                        writeln!(out, "  widened to F32: {}", report.upcast.len())?;
                    }
                }
            }
            Ok(clean)
        }
        Err(error) => {
            if as_json {
                let value = json!({
                    "ok": false,
                    "file": file.display().to_string(),
                    "kind": error.kind(),
                    "error": error.to_string(),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                writeln!(
                    out,
                    "Error(s) in loading state_dict for {label}:\n\t{error}"
                )?;
            }
            Ok(false)
        }
    }
}

fn find_model<'a>(config: &'a Config, model: &str) -> anyhow::Result<&'a ModelConfig> {
    config.model(model).ok_or_else(|| {
        let known: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
        anyhow::anyhow!(
            "no model {model:?} in the config (models: {})",
            known.join(", ")
        )
    })
}

/// `wick check --full --config C --model NAME DIR`: the gate a version folder goes through when
/// the server loads it (strict keys, copy, build, warm-up, golden outputs), run offline so a
/// publisher can check a folder before renaming it into the repository. Returns `Ok(true)` when
/// the server would serve it.
pub fn check_full(
    config: &Config,
    model: &str,
    dir: &Path,
    as_json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let model_config = find_model(config, model)?;
    // The folder is the publisher's own, outside any repository yet: no containment rule applies.
    let containment = Containment {
        root: dir.to_path_buf(),
        allow_external: true,
    };
    let version = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_version)
        .unwrap_or(0);
    let result = load_version(model_config, version, dir, &containment);
    let label = target(model_config, version).replace(" version 0", "");
    if as_json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&full_json(dir, &result))?
        )?;
        return Ok(result.is_ok());
    }
    match &result {
        Ok(loaded) => {
            writeln!(out, "{label}: {} would be served", dir.display())?;
            writeln!(out, "  sha256 {}", loaded.version.sha256)?;
            writeln!(out, "  {}", loaded.report)?;
            match &loaded.golden {
                Some(golden) => writeln!(out, "  {golden}")?,
                None => writeln!(out, "  no golden.safetensors: outputs not checked")?,
            }
            writeln!(out, "  ready in {} ms", loaded.duration.as_millis())?;
        }
        Err(failure) => {
            writeln!(
                out,
                "{label}: {} would be refused ({}):\n\t{failure}",
                dir.display(),
                failure.kind()
            )?;
        }
    }
    Ok(result.is_ok())
}

/// The `--json` form of [`check_full`]'s verdict.
fn full_json(dir: &Path, result: &Result<Loaded, LoadFailure>) -> serde_json::Value {
    match result {
        Ok(loaded) => json!({
            "ok": true,
            "dir": dir.display().to_string(),
            "sha256": loaded.version.sha256,
            "report": loaded.report,
            "golden": loaded.golden,
            "load_ms": loaded.duration.as_millis() as u64,
        }),
        Err(failure) => json!({
            "ok": false,
            "dir": dir.display().to_string(),
            "kind": failure.kind(),
            "error": failure.to_string(),
            "report": failure.report(),
            "golden": failure.golden(),
        }),
    }
}

/// `wick inspect FILE`: tensors, dtypes, shapes, bytes and metadata, from the header alone.
pub fn inspect(file: &Path, as_json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let (header, identity) = match state_dict::read_header(file) {
        Ok(ok) => ok,
        Err(
            error @ (LoadError::Format { .. } | LoadError::NotAFile { .. } | LoadError::Io { .. }),
        ) => {
            if as_json {
                writeln!(
                    out,
                    "{}",
                    json!({ "ok": false, "kind": error.kind(), "error": error.to_string() })
                )?;
            } else {
                writeln!(out, "{error}")?;
            }
            return Ok(false);
        }
        Err(other) => return Err(other.into()),
    };
    let mut tensors = header.tensors.clone();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let total: u64 = tensors.iter().map(|t| t.bytes()).sum();
    if as_json {
        let list: Vec<_> = tensors
            .iter()
            .map(|t| json!({ "name": t.name, "dtype": t.dtype.to_string(), "shape": t.shape, "bytes": t.bytes() }))
            .collect();
        let value = json!({
            "ok": true,
            "file": file.display().to_string(),
            "file_bytes": identity.size,
            "header_bytes": header.header_len,
            "tensor_bytes": total,
            "metadata": header.metadata,
            "tensors": list,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(true);
    }
    let width = tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<width$}  {:<7}  {:<20}  {:>12}",
        "name", "dtype", "shape", "bytes"
    )?;
    for t in &tensors {
        writeln!(
            out,
            "{:<width$}  {:<7}  {:<20}  {:>12}",
            t.name,
            t.dtype.to_string(),
            format!("{:?}", t.shape),
            t.bytes()
        )?;
    }
    writeln!(
        out,
        "{} tensors, {} bytes of tensor data, {} bytes in the file",
        tensors.len(),
        total,
        identity.size
    )?;
    for (key, value) in &header.metadata {
        writeln!(out, "metadata {key} = {value}")?;
    }
    Ok(true)
}

/// Reads a config file with the process's `WICK_*` environment applied.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, &|name| std::env::var(name).ok())?)
}

/// `wick health [--url U]`: `url` defaults to the address of `WICK_LISTEN` (what the container's
/// HEALTHCHECK runs), else 127.0.0.1:8080.
pub fn health_main(url: Option<&str>, timeout: Duration) -> anyhow::Result<bool> {
    let url = url.map(str::to_string).unwrap_or_else(|| {
        let listen = std::env::var("WICK_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
        format!("http://{}", listen.replace("0.0.0.0", "127.0.0.1"))
    });
    crate::app::runtime(1)?.block_on(health(&url, timeout))
}

/// `wick health`: exits 0 when `url` answers 200 within `timeout`.
pub async fn health(url: &str, timeout: Duration) -> anyhow::Result<bool> {
    let target = crate::bench::Target::parse(url)?;
    let status = tokio::time::timeout(timeout, target.get_status("/v2/health/ready")).await;
    match status {
        Ok(Ok(code)) => Ok(code == 200),
        Ok(Err(_)) | Err(_) => Ok(false),
    }
}
