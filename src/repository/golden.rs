//! The golden-output gate: a version folder may carry `golden.safetensors`, request inputs and
//! the outputs its publisher expects; after the warm-up the new version runs those inputs and is
//! refused if any output breaks the model's tolerances (`golden = { max_abs, min_cosine,
//! argmax_agreement }`, src/config/promotion.rs).
//!
//! This module owns reading the golden file (through the same strict, capped safetensors reader
//! as checkpoints, [`crate::state_dict::read_small`]), turning it into a request aligned with the
//! model's signature, and the comparison, which is a pure function unit-tested below. The rules
//! and the file layout are in docs/promotion.md.

use std::path::Path;

use serde::Serialize;

use crate::config::GoldenTolerance;
use crate::model::{ElemKind, HostData, HostTensor, InputError, Model, Signature};
use crate::state_dict::{self, FileDtype, Header, LoadError};

/// The golden file of a version, beside `model.safetensors`.
pub const GOLDEN_FILE: &str = "golden.safetensors";

/// Golden files hold a few requests, not weights: anything bigger is refused unread.
const MAX_GOLDEN_BYTES: u64 = 64 << 20;

/// Rows of the golden request at most (it runs as one forward pass at load time).
const MAX_GOLDEN_ROWS: usize = 4096;

/// Why the golden gate refused a version.
#[derive(Debug, thiserror::Error)]
pub enum GoldenFailure {
    #[error("{GOLDEN_FILE}: {0}")]
    File(LoadError),
    #[error("{GOLDEN_FILE}: {0}")]
    Invalid(String),
    #[error("{GOLDEN_FILE}: the model refused the golden inputs: {0}")]
    Input(InputError),
    #[error("the forward pass on the golden inputs failed: {0}")]
    Forward(candle_core::Error),
    #[error("{0}")]
    Mismatch(GoldenReport),
}

impl GoldenFailure {
    /// The label of `wick_model_load_failures_total{kind}`: `golden` when the version's outputs
    /// are wrong, `golden_file` when the golden file itself cannot be used.
    pub fn kind(&self) -> &'static str {
        match self {
            GoldenFailure::Forward(_) | GoldenFailure::Mismatch(_) => "golden",
            GoldenFailure::File(_) | GoldenFailure::Invalid(_) | GoldenFailure::Input(_) => {
                "golden_file"
            }
        }
    }

    pub fn report(&self) -> Option<&GoldenReport> {
        match self {
            GoldenFailure::Mismatch(report) => Some(report),
            _ => None,
        }
    }
}

/// How one output compared with its golden values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputComparison {
    pub output: String,
    /// The shape the golden file stores.
    pub shape: Vec<usize>,
    /// The shape the version produced, when it differs (then the statistics are not computed
    /// and the output fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produced_shape: Option<Vec<usize>>,
    pub max_abs_diff: f64,
    /// The lowest cosine similarity of a row with its golden row.
    pub min_cosine: f64,
    /// The share of rows whose argmax equals the golden row's.
    pub argmax_agreement: f64,
}

impl OutputComparison {
    fn passes(&self, tolerance: &GoldenTolerance) -> bool {
        self.produced_shape.is_none()
            && self.max_abs_diff <= tolerance.max_abs
            && self.min_cosine >= tolerance.min_cosine
            && self.argmax_agreement >= tolerance.argmax_agreement
    }
}

/// The comparison of every golden output, with the tolerances it was judged by.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoldenReport {
    pub passed: bool,
    pub rows: usize,
    pub tolerance: GoldenTolerance,
    pub outputs: Vec<OutputComparison>,
}

impl std::fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "match" } else { "differ" };
        write!(f, "golden outputs {verdict} ({} rows)", self.rows)?;
        let t = &self.tolerance;
        for o in &self.outputs {
            if let Some(got) = &o.produced_shape {
                write!(
                    f,
                    "; output {:?}: shape {:?}, golden shape {:?}",
                    o.output, got, o.shape
                )?;
                continue;
            }
            write!(
                f,
                "; output {:?}: max abs diff {:.3e} (allowed {:e}), min cosine {:.6} (at least {}), argmax agreement {:.4} (at least {})",
                o.output, o.max_abs_diff, t.max_abs, o.min_cosine, t.min_cosine,
                o.argmax_agreement, t.argmax_agreement
            )?;
        }
        Ok(())
    }
}

/// A golden file read and aligned with a signature.
#[derive(Debug, Clone)]
pub struct Golden {
    /// Aligned with the signature's inputs (`None` where the file has no such input).
    pub inputs: Vec<Option<HostTensor>>,
    /// `(index in the signature's outputs, expected values)`.
    pub outputs: Vec<(usize, HostTensor)>,
}

/// Runs the gate for the version in `dir`: `Ok(None)` when it has no golden file, the passing
/// report when its outputs match, an error otherwise.
pub fn gate(
    model: &dyn Model,
    signature: &Signature,
    dir: &Path,
    tolerance: &GoldenTolerance,
) -> Result<Option<GoldenReport>, GoldenFailure> {
    let path = dir.join(GOLDEN_FILE);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let golden = read(&path, signature)?;
    let prepared = model
        .prepare(golden.inputs.clone())
        .map_err(GoldenFailure::Input)?;
    let rows = prepared.rows;
    let produced = model
        .forward(&[&prepared])
        .map_err(GoldenFailure::Forward)?
        .into_iter()
        .next()
        .unwrap_or_default();
    let outputs = golden
        .outputs
        .iter()
        .map(|(index, expected)| {
            let name = &signature.outputs[*index].name;
            match produced.get(*index) {
                Some(got) => compare(name, expected, got),
                None => Err(GoldenFailure::Invalid(format!(
                    "the model produced no output {name:?}"
                ))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let report = judge(rows, outputs, tolerance);
    if report.passed {
        Ok(Some(report))
    } else {
        Err(GoldenFailure::Mismatch(report))
    }
}

/// Reads `path` and aligns it with `signature`: tensors `input.<name>` and `output.<name>`,
/// BYTES inputs as a JSON list of strings in the metadata under `input.<name>`.
pub fn read(path: &Path, signature: &Signature) -> Result<Golden, GoldenFailure> {
    let (header, data) =
        state_dict::read_small(path, MAX_GOLDEN_BYTES).map_err(GoldenFailure::File)?;
    let invalid = |m: String| GoldenFailure::Invalid(m);
    let mut inputs: Vec<Option<HostTensor>> = vec![None; signature.inputs.len()];
    let mut outputs = Vec::new();
    for entry in &header.tensors {
        let bytes = data
            .get(entry.start as usize..entry.end as usize)
            .ok_or_else(|| invalid(format!("tensor {:?} lies outside the data", entry.name)))?;
        let tensor = host_tensor(entry.dtype, &entry.shape, bytes).ok_or_else(|| {
            invalid(format!(
                "tensor {:?} has dtype {}; golden tensors are F32, F64, I64 or I32",
                entry.name, entry.dtype
            ))
        })?;
        check_rows(&entry.name, &tensor)?;
        if let Some(name) = entry.name.strip_prefix("input.") {
            let index = position(&signature.inputs, name).ok_or_else(|| {
                invalid(format!("{:?}: the model has no input {name:?}", entry.name))
            })?;
            inputs[index] = Some(tensor);
        } else if let Some(name) = entry.name.strip_prefix("output.") {
            let index = position(&signature.outputs, name).ok_or_else(|| {
                invalid(format!(
                    "{:?}: the model has no output {name:?}",
                    entry.name
                ))
            })?;
            outputs.push((index, tensor));
        } else {
            return Err(invalid(format!(
                "tensor {:?} is neither input.<name> nor output.<name>",
                entry.name
            )));
        }
    }
    bytes_inputs(&header, signature, &mut inputs)?;
    if outputs.is_empty() {
        return Err(invalid("it holds no output.<name> tensor".to_string()));
    }
    Ok(Golden { inputs, outputs })
}

fn position(specs: &[crate::model::IoSpec], name: &str) -> Option<usize> {
    specs.iter().position(|s| s.name == name)
}

fn check_rows(name: &str, tensor: &HostTensor) -> Result<(), GoldenFailure> {
    if tensor.shape.is_empty() || tensor.rows() > MAX_GOLDEN_ROWS {
        return Err(GoldenFailure::Invalid(format!(
            "tensor {name:?} has shape {:?}; golden tensors are batched (rows first, at most {MAX_GOLDEN_ROWS})",
            tensor.shape
        )));
    }
    Ok(())
}

/// BYTES inputs from the metadata: `input.<name>` = a JSON list of strings, one per row.
fn bytes_inputs(
    header: &Header,
    signature: &Signature,
    inputs: &mut [Option<HostTensor>],
) -> Result<(), GoldenFailure> {
    for (key, value) in &header.metadata {
        let Some(name) = key.strip_prefix("input.") else {
            // Other metadata (`format = "pt"` from safetensors' Python writer) is not ours.
            continue;
        };
        let invalid = |m: String| GoldenFailure::Invalid(format!("metadata {key:?}: {m}"));
        let index = position(&signature.inputs, name)
            .ok_or_else(|| invalid(format!("the model has no input {name:?}")))?;
        let spec = &signature.inputs[index];
        if spec.kind != ElemKind::Bytes || inputs[index].is_some() {
            return Err(invalid(format!(
                "only BYTES inputs not also stored as a tensor come from the metadata; {name:?} is not one"
            )));
        }
        let list: Vec<String> = serde_json::from_str(value)
            .map_err(|e| invalid(format!("must be a JSON list of strings: {e}")))?;
        let mut shape = vec![list.len()];
        shape.extend(spec.dims.iter().map(|d| (*d).max(1) as usize));
        let tensor = HostTensor {
            shape,
            data: HostData::Bytes(list.into_iter().map(String::into_bytes).collect()),
        };
        // A multi-dimensional BYTES input would need as many strings as its shape has elements.
        if tensor.data.len() != tensor.shape.iter().product::<usize>() {
            return Err(invalid(format!(
                "input {name:?} takes {} values per row",
                spec.shape_text()
            )));
        }
        check_rows(key, &tensor)?;
        inputs[index] = Some(tensor);
    }
    Ok(())
}

/// Decodes little-endian values, widening F64 → F32 and I32 → I64 (the model's boundary kinds).
fn host_tensor(dtype: FileDtype, shape: &[usize], bytes: &[u8]) -> Option<HostTensor> {
    let data = match dtype {
        FileDtype::F32 => HostData::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        FileDtype::F64 => HostData::F32(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        ),
        FileDtype::I64 => HostData::I64(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        FileDtype::I32 => HostData::I64(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        _ => return None,
    };
    Some(HostTensor {
        shape: shape.to_vec(),
        data,
    })
}

fn as_f64(data: &HostData) -> Option<Vec<f64>> {
    match data {
        HostData::F32(_) | HostData::F32Rows(_) => {
            Some(data.f32s()?.iter().map(|x| *x as f64).collect())
        }
        HostData::I64(_) | HostData::Ids(_) | HostData::IdsRows(_) => {
            Some(data.ints()?.iter().map(|x| x as f64).collect())
        }
        HostData::Bytes(_) => None,
    }
}

/// Compares one produced output with its golden values: the largest absolute difference, the
/// lowest per-row cosine similarity and the share of rows whose argmax agrees.
pub fn compare(
    name: &str,
    expected: &HostTensor,
    got: &HostTensor,
) -> Result<OutputComparison, GoldenFailure> {
    let mut out = OutputComparison {
        output: name.to_string(),
        shape: expected.shape.clone(),
        produced_shape: None,
        max_abs_diff: f64::NAN,
        min_cosine: f64::NAN,
        argmax_agreement: 0.0,
    };
    if expected.shape != got.shape {
        out.produced_shape = Some(got.shape.clone());
        return Ok(out);
    }
    let (Some(want), Some(have)) = (as_f64(&expected.data), as_f64(&got.data)) else {
        return Err(GoldenFailure::Invalid(format!(
            "output {name:?} is not numeric and cannot be compared"
        )));
    };
    let rows = expected.rows().max(1);
    let row_len = want.len() / rows;
    out.max_abs_diff = max_abs_diff(&want, &have);
    let (mut min_cos, mut agree) = (f64::INFINITY, 0usize);
    for (a, b) in want.chunks(row_len.max(1)).zip(have.chunks(row_len.max(1))) {
        min_cos = nan_min(min_cos, cosine(a, b));
        if argmax(a) == argmax(b) {
            agree += 1;
        }
    }
    out.min_cosine = if min_cos.is_infinite() { 1.0 } else { min_cos };
    out.argmax_agreement = agree as f64 / rows as f64;
    Ok(out)
}

/// The verdict over every output.
pub fn judge(
    rows: usize,
    outputs: Vec<OutputComparison>,
    tolerance: &GoldenTolerance,
) -> GoldenReport {
    GoldenReport {
        passed: outputs.iter().all(|o| o.passes(tolerance)),
        rows,
        tolerance: *tolerance,
        outputs,
    }
}

/// NaN wins: a NaN anywhere must fail the comparison, never hide behind a smaller number.
fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |m: f64, (x, y)| {
        let d = (x - y).abs();
        if m.is_nan() || d.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    })
}

/// Cosine similarity; two zero rows are identical (1), a zero row against another is 0.
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) => dot / (na * nb),
    }
}

/// The index of the first largest value; `None` if any value is NaN.
fn argmax(row: &[f64]) -> Option<usize> {
    if row.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, x) in row.iter().enumerate() {
        if best.is_none_or(|(_, b)| *x > b) {
            best = Some((i, *x));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests;
