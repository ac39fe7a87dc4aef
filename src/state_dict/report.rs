//! The strict comparison of what a model expects with what a checkpoint holds, and its report.
//!
//! Semantics follow PyTorch's `load_state_dict(strict=True)` and go further: every missing key,
//! unexpected key, shape mismatch and dtype problem is collected into one [`LoadReport`] before a
//! single tensor byte is read, and the load is refused if the report is not clean. The report is
//! a value: `Display` prints it like PyTorch's "Error(s) in loading state_dict", serde makes it
//! JSON for `wick check --json` and the repository index.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use candle_core::DType;
use serde::Serialize;

use super::header::{FileDtype, Header, TensorEntry};
use super::mapping::{Glob, KeyMapping, Mapped};

/// One parameter or buffer the model asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// What an architecture expects of a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct ExpectedSpec {
    pub params: Vec<ParamSpec>,
    /// Keys that may be present and are then not used (BatchNorm `num_batches_tracked`, BERT
    /// `position_ids`, an unused pooler): PyTorch itself tolerates them in these places.
    pub optional: Vec<Glob>,
}

/// How a stored tensor becomes the model's tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    Exact,
    /// F16 or BF16 widened to F32: lossless.
    Upcast,
}

/// The dtype policy: equal, or a lossless float widening to F32. Everything else is refused,
/// never converted silently (candle's own VarBuilder would cast I64 to F32 without a word).
pub fn dtype_policy(file: FileDtype, model: DType) -> Result<Conversion, &'static str> {
    use FileDtype as F;
    match (file, model) {
        (F::F32, DType::F32)
        | (F::F64, DType::F64)
        | (F::F16, DType::F16)
        | (F::BF16, DType::BF16)
        | (F::I64, DType::I64)
        | (F::U32, DType::U32)
        | (F::U8, DType::U8) => Ok(Conversion::Exact),
        (F::F16 | F::BF16, DType::F32) => Ok(Conversion::Upcast),
        (f, m) if f.is_float() && is_float(m) => Err("narrowing or lossy float conversion refused"),
        (f, m) if f.is_float() != is_float(m) => Err("integer/float conversion refused"),
        _ => Err("integer conversion refused"),
    }
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShapeMismatch {
    pub key: String,
    pub checkpoint: Vec<usize>,
    pub model: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DtypeProblem {
    pub key: String,
    pub checkpoint: String,
    pub model: String,
    pub reason: String,
}

/// Two checkpoint keys that map to the same model key (e.g. `fc.weight` and `model.fc.weight`
/// with `strip_prefix = "model."`): which one is meant is ambiguous, so both are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Collision {
    pub key: String,
    pub checkpoint_keys: Vec<String>,
}

/// Every difference between a model and a checkpoint, plus what was accepted and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadReport {
    /// What was being loaded, e.g. `mlp "digits"`.
    pub target: String,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub shape_mismatches: Vec<ShapeMismatch>,
    pub dtype_problems: Vec<DtypeProblem>,
    pub collisions: Vec<Collision>,
    /// Accepted, for information: keys dropped by `ignore` patterns.
    pub ignored: Vec<String>,
    /// Accepted, for information: optional keys that were present and are not used.
    pub optional_present: Vec<String>,
    /// Accepted, for information: keys widened from F16/BF16 to F32.
    pub upcast: Vec<String>,
    /// Number of parameters that matched.
    pub matched: usize,
}

impl LoadReport {
    /// Checks the one file tensor `stored` (at `index` in the header) that maps to `param`:
    /// its shape must be equal and its dtype acceptable. Records any problem (or an upcast) and
    /// returns how to load it when there is none.
    fn check_param(
        &mut self,
        param: &ParamSpec,
        index: usize,
        stored: &TensorEntry,
    ) -> Option<PlanEntry> {
        let shape_ok = stored.shape == param.shape;
        if !shape_ok {
            self.shape_mismatches.push(ShapeMismatch {
                key: param.name.clone(),
                checkpoint: stored.shape.clone(),
                model: param.shape.clone(),
            });
        }
        match dtype_policy(stored.dtype, param.dtype) {
            Ok(conversion) if shape_ok => {
                if conversion == Conversion::Upcast {
                    self.upcast.push(param.name.clone());
                }
                Some(PlanEntry {
                    model_key: param.name.clone(),
                    file_index: index,
                    dtype: param.dtype,
                    conversion,
                })
            }
            Ok(_) => None,
            Err(reason) => {
                self.dtype_problems.push(DtypeProblem {
                    key: param.name.clone(),
                    checkpoint: stored.dtype.to_string(),
                    model: format!("{:?}", param.dtype).to_uppercase(),
                    reason: reason.to_string(),
                });
                None
            }
        }
    }

    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.shape_mismatches.is_empty()
            && self.dtype_problems.is_empty()
            && self.collisions.is_empty()
    }

    pub fn problem_count(&self) -> usize {
        self.missing.len()
            + self.unexpected.len()
            + self.shape_mismatches.len()
            + self.dtype_problems.len()
            + self.collisions.len()
    }

    /// The dominant kind of problem, for the failure metric label.
    pub fn kind(&self) -> &'static str {
        if !self.missing.is_empty() {
            "missing_key"
        } else if !self.shape_mismatches.is_empty() {
            "shape"
        } else if !self.dtype_problems.is_empty() {
            "dtype"
        } else if !self.unexpected.is_empty() {
            "unexpected_key"
        } else {
            "collision"
        }
    }
}

fn quote_list(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(
                f,
                "state_dict for {} is compatible: {} tensors matched",
                self.target, self.matched
            );
        }
        write!(f, "Error(s) in loading state_dict for {}:", self.target)?;
        if !self.missing.is_empty() {
            write!(
                f,
                "\n\tMissing key(s) in state_dict: {}.",
                quote_list(&self.missing)
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "\n\tUnexpected key(s) in state_dict: {}.",
                quote_list(&self.unexpected)
            )?;
        }
        for m in &self.shape_mismatches {
            write!(
                f,
                "\n\tsize mismatch for {}: copying a param with shape {:?} from checkpoint, \
                 the shape in current model is {:?}.",
                m.key, m.checkpoint, m.model
            )?;
        }
        for d in &self.dtype_problems {
            write!(
                f,
                "\n\tdtype mismatch for {}: the checkpoint stores {}, the model needs {} ({}).",
                d.key, d.checkpoint, d.model, d.reason
            )?;
        }
        for c in &self.collisions {
            write!(
                f,
                "\n\tambiguous key {}: checkpoint keys {} all map to it.",
                c.key,
                quote_list(&c.checkpoint_keys)
            )?;
        }
        Ok(())
    }
}

/// One tensor to copy: where it is in the file and how it becomes the model's.
#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub model_key: String,
    /// Index into `Header::tensors`.
    pub file_index: usize,
    pub dtype: DType,
    pub conversion: Conversion,
}

/// Compares a validated header with what the model expects. Only header metadata is used.
pub fn compare(
    target: &str,
    expected: &ExpectedSpec,
    header: &Header,
    mapping: &KeyMapping,
) -> (LoadReport, Vec<PlanEntry>) {
    let mut report = LoadReport {
        target: target.to_string(),
        ..LoadReport::default()
    };

    // Model key -> every file tensor that maps to it.
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, tensor) in header.tensors.iter().enumerate() {
        match mapping.map(&tensor.name) {
            Mapped::Ignored => report.ignored.push(tensor.name.clone()),
            Mapped::Key(key) => by_key.entry(key).or_default().push(index),
        }
    }

    let wanted: HashMap<&str, &ParamSpec> = expected
        .params
        .iter()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let mut plan = Vec::with_capacity(expected.params.len());
    for param in &expected.params {
        let Some(indices) = by_key.get(param.name.as_str()) else {
            report.missing.push(param.name.clone());
            continue;
        };
        if indices.len() > 1 {
            report.collisions.push(Collision {
                key: param.name.clone(),
                checkpoint_keys: indices
                    .iter()
                    .map(|i| header.tensors[*i].name.clone())
                    .collect(),
            });
            continue;
        }
        let index = indices[0];
        if let Some(entry) = report.check_param(param, index, &header.tensors[index]) {
            plan.push(entry);
        }
    }

    // Checkpoint keys the model does not ask for: optional (accepted) or unexpected.
    for (key, indices) in by_key.iter().filter(|(key, _)| !wanted.contains_key(*key)) {
        let optional = expected.optional.iter().any(|g| g.matches(key));
        for index in indices {
            let name = header.tensors[*index].name.clone();
            if optional {
                report.optional_present.push(name);
            } else {
                report.unexpected.push(name);
            }
        }
    }
    report.missing.sort();
    report.unexpected.sort();
    report.matched = plan.len();
    (report, plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_dict::header::TensorEntry;

    fn header(entries: &[(&str, FileDtype, &[usize])]) -> Header {
        let mut start = 0;
        let tensors = entries
            .iter()
            .map(|(name, dtype, shape)| {
                let bytes = shape.iter().product::<usize>() as u64 * dtype.size();
                let entry = TensorEntry {
                    name: name.to_string(),
                    dtype: *dtype,
                    shape: shape.to_vec(),
                    start,
                    end: start + bytes,
                };
                start += bytes;
                entry
            })
            .collect();
        Header {
            header_len: 0,
            tensors,
            metadata: Default::default(),
        }
    }

    fn spec(params: &[(&str, &[usize])]) -> ExpectedSpec {
        ExpectedSpec {
            params: params
                .iter()
                .map(|(n, s)| ParamSpec {
                    name: n.to_string(),
                    shape: s.to_vec(),
                    dtype: DType::F32,
                })
                .collect(),
            optional: vec![Glob::new("*.num_batches_tracked").unwrap()],
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let expected = spec(&[
            ("fc1.weight", &[4, 3]),
            ("fc1.bias", &[4]),
            ("fc2.weight", &[2, 4]),
        ]);
        let file = header(&[
            ("fc1.weight", FileDtype::F32, &[4, 2]),
            ("fc1.bias", FileDtype::I64, &[4]),
            ("extra", FileDtype::F32, &[1]),
            ("bn.num_batches_tracked", FileDtype::I64, &[]),
        ]);
        let (report, plan) = compare("mlp \"t\"", &expected, &file, &KeyMapping::default());
        assert!(plan.is_empty());
        assert_eq!(report.missing, vec!["fc2.weight"]);
        assert_eq!(report.unexpected, vec!["extra"]);
        assert_eq!(report.shape_mismatches.len(), 1);
        assert_eq!(report.dtype_problems[0].key, "fc1.bias");
        assert_eq!(report.optional_present, vec!["bn.num_batches_tracked"]);
        assert_eq!(report.problem_count(), 4);
        let text = report.to_string();
        assert!(
            text.starts_with("Error(s) in loading state_dict for mlp \"t\":"),
            "{text}"
        );
        assert!(
            text.contains("Missing key(s) in state_dict: \"fc2.weight\"."),
            "{text}"
        );
        assert!(text.contains("size mismatch for fc1.weight: copying a param with shape [4, 2]"));
        assert!(text.contains(
            "dtype mismatch for fc1.bias: the checkpoint stores I64, the model needs F32"
        ));
    }

    #[test]
    fn maps_and_upcasts() {
        let expected = spec(&[("fc.weight", &[2, 2])]);
        let file = header(&[
            ("model.fc.weight", FileDtype::F16, &[2, 2]),
            ("optimizer.state.0.exp_avg", FileDtype::F32, &[2, 2]),
        ]);
        let mapping = KeyMapping::new(Some("model.".into()), vec!["optimizer.*".into()]).unwrap();
        let (report, plan) = compare("x", &expected, &file, &mapping);
        assert!(report.is_clean(), "{report}");
        assert_eq!(plan[0].conversion, Conversion::Upcast);
        assert_eq!(report.upcast, vec!["fc.weight"]);
        assert_eq!(report.ignored, vec!["optimizer.state.0.exp_avg"]);
    }

    #[test]
    fn ambiguous_mapping_is_refused() {
        let expected = spec(&[("fc.weight", &[1])]);
        let file = header(&[
            ("model.fc.weight", FileDtype::F32, &[1]),
            ("fc.weight", FileDtype::F32, &[1]),
        ]);
        let mapping = KeyMapping::new(Some("model.".into()), vec![]).unwrap();
        let (report, _) = compare("x", &expected, &file, &mapping);
        assert_eq!(report.collisions.len(), 1);
        assert!(!report.is_clean());
    }

    #[test]
    fn dtype_policy_table() {
        assert_eq!(
            dtype_policy(FileDtype::BF16, DType::F32),
            Ok(Conversion::Upcast)
        );
        assert!(dtype_policy(FileDtype::F64, DType::F32).is_err());
        assert!(dtype_policy(FileDtype::I64, DType::F32).is_err());
        assert!(dtype_policy(FileDtype::F32, DType::I64).is_err());
        assert!(dtype_policy(FileDtype::I32, DType::I64).is_err());
        assert_eq!(
            dtype_policy(FileDtype::I64, DType::I64),
            Ok(Conversion::Exact)
        );
    }
}
