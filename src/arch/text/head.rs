//! What a text encoder returns: the head config fields every text family takes beside its own,
//! and the two heads — sentence embeddings (sentence-transformers' Pooling and Normalize
//! modules) and sequence classification (transformers' `*ForSequenceClassification` heads).
//!
//! Head fields (all optional):
//! - `task = "embedding"` (default) or `"classification"`;
//! - embedding: `pooling = "mean" | "cls" | "max"`, `normalize = true | false`; unset, they come
//!   from the version's sentence-transformers files (see [`super::st_files`]), else mean pooling,
//!   normalised;
//! - classification: `num_labels`, `id2label` (config.json's, e.g. `{ "0" = "negative", "1" =
//!   "positive" }`; default `LABEL_0`, `LABEL_1`, ... as transformers names them) and
//!   `problem_type` (`"multi_label_classification"` turns the probabilities into per-label
//!   sigmoids; one label is scored with a sigmoid too, as sentence-transformers' CrossEncoder
//!   scores its rerankers);
//! - `max_seq_length` (texts are cut there, special tokens included) and `truncate` (cut, the
//!   default, or refuse over-long texts).

use std::collections::BTreeMap;

use candle_core::{IndexOp, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::encoder::{Dense, TokenBatch};
use crate::arch::kernels::embed::{pool, Pool};
use crate::arch::kernels::fused::Act;
use crate::arch::InvalidConfig;
use crate::model::{HostData, HostTensor};

/// The head fields of a text family's config table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    #[serde(default)]
    pub task: Task,
    pub pooling: Option<PoolingMode>,
    pub normalize: Option<bool>,
    /// Texts are cut at this many tokens, special tokens included (sentence-transformers'
    /// `max_seq_length`, 256 for all-MiniLM-L6-v2).
    pub max_seq_length: Option<usize>,
    /// Cut texts longer than `max_seq_length` (`true`, the default) or refuse them with 400.
    #[serde(default = "yes")]
    pub truncate: bool,
    pub num_labels: Option<usize>,
    pub id2label: Option<BTreeMap<String, String>>,
    pub problem_type: Option<ProblemType>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Embedding,
    Classification,
}

/// sentence-transformers' pooling modes wick implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingMode {
    Mean,
    Cls,
    Max,
}

impl PoolingMode {
    pub fn pool(self) -> Pool {
        match self {
            PoolingMode::Mean => Pool::Mean,
            PoolingMode::Cls => Pool::Cls,
            PoolingMode::Max => Pool::Max,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Mean => "mean",
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
        }
    }
}

/// transformers' `problem_type`: how logits become probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    SingleLabelClassification,
    MultiLabelClassification,
    Regression,
}

/// How a classifier's logits become `probabilities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scores {
    Softmax,
    Sigmoid,
}

impl HeadConfig {
    /// The labels of a classification head (index = logit), checking `num_labels` against
    /// `id2label`; refuses classification fields on an embedding head and the reverse.
    pub fn labels(&self) -> Result<Vec<String>, InvalidConfig> {
        let only = |field: &'static str, task: &str| {
            InvalidConfig::new(field, format!("only applies with task = \"{task}\""))
        };
        match self.task {
            Task::Embedding => {
                let stray = [
                    ("num_labels", self.num_labels.is_some()),
                    ("id2label", self.id2label.is_some()),
                    ("problem_type", self.problem_type.is_some()),
                ];
                match stray.iter().find(|(_, set)| *set) {
                    Some((field, _)) => Err(only(field, "classification")),
                    None => Ok(Vec::new()),
                }
            }
            Task::Classification => {
                if self.pooling.is_some() {
                    return Err(only("pooling", "embedding"));
                }
                if self.normalize.is_some() {
                    return Err(only("normalize", "embedding"));
                }
                let labels = match (&self.id2label, self.num_labels) {
                    (Some(map), n) => labels_of(map, n)?,
                    // transformers' default for a config without id2label.
                    (None, n) => (0..n.unwrap_or(2)).map(|i| format!("LABEL_{i}")).collect(),
                };
                if labels.is_empty() {
                    return Err(InvalidConfig::new("num_labels", "must be at least 1"));
                }
                Ok(labels)
            }
        }
    }

    /// How the classification probabilities are computed.
    pub fn scores(&self, labels: usize) -> Scores {
        match self.problem_type {
            Some(ProblemType::MultiLabelClassification) => Scores::Sigmoid,
            _ if labels == 1 => Scores::Sigmoid,
            _ => Scores::Softmax,
        }
    }
}

/// `id2label`'s values in index order; its keys must be exactly `"0"`, ..., `"n-1"`.
fn labels_of(
    map: &BTreeMap<String, String>,
    num_labels: Option<usize>,
) -> Result<Vec<String>, InvalidConfig> {
    let n = map.len();
    if let Some(want) = num_labels {
        if want != n {
            return Err(InvalidConfig::new(
                "num_labels",
                format!("{want} does not match the {n} entries of id2label"),
            ));
        }
    }
    (0..n)
        .map(|i| {
            map.get(&i.to_string()).cloned().ok_or_else(|| {
                InvalidConfig::new(
                    "id2label",
                    format!(
                        "keys must be \"0\" to \"{}\"; \"{i}\" is missing (keys: {:?})",
                        n.saturating_sub(1),
                        map.keys().collect::<Vec<_>>()
                    ),
                )
            })
        })
        .collect()
}

/// Where a family's `*ForSequenceClassification` keeps its head, relative to the checkpoint's
/// root: `out(act(dense(h[:, 0])))`.
#[derive(Debug, Clone, Copy)]
pub struct ClassifierLayout {
    pub dense: &'static str,
    pub act: Act,
    pub out: &'static str,
}

/// A loaded classification head.
#[derive(Debug, Clone)]
pub struct Classifier {
    dense: Dense,
    act: Act,
    out: Dense,
    labels: Vec<String>,
    scores: Scores,
}

impl Classifier {
    pub fn load(
        vb: &VarBuilder,
        layout: &ClassifierLayout,
        hidden: usize,
        labels: Vec<String>,
        scores: Scores,
    ) -> candle_core::Result<Classifier> {
        Ok(Classifier {
            dense: Dense::load(vb.pp(layout.dense), hidden, hidden)?,
            act: layout.act,
            out: Dense::load(vb.pp(layout.out), hidden, labels.len())?,
            labels,
            scores,
        })
    }
}

/// The head a text model runs on the encoder's last hidden states.
#[derive(Debug, Clone)]
pub enum Head {
    Embedding { pool: Pool, normalize: bool },
    Classification(Classifier),
}

impl Head {
    /// Values per row of [`Head::apply`]'s result.
    pub fn width(&self, hidden: usize) -> usize {
        match self {
            Head::Embedding { .. } => hidden,
            Head::Classification(c) => c.labels.len(),
        }
    }

    /// `[rows, width]` row-major: pooled embeddings or logits.
    pub fn apply(&self, hidden: &Tensor, batch: &TokenBatch) -> candle_core::Result<Vec<f32>> {
        match self {
            Head::Embedding {
                pool: mode,
                normalize,
            } => pool(hidden, &batch.mask, batch.len, *mode, *normalize),
            Head::Classification(c) => {
                // transformers' heads read the first position (`[CLS]`, `<s>`) whatever the mask.
                let width = hidden.dim(1)?;
                let first = hidden
                    .reshape((batch.rows, batch.len, width))?
                    .i((.., 0))?
                    .contiguous()?;
                let x = c.dense.forward(&first, None, c.act)?;
                c.out
                    .forward(&x, None, Act::Identity)?
                    .flatten_all()?
                    .to_vec1::<f32>()
            }
        }
    }

    /// One request's outputs from its `[rows, width]` values, in signature order: `embedding`;
    /// or `logits`, `probabilities`, `label`.
    pub fn outputs(&self, rows: usize, values: Vec<f32>) -> Vec<HostTensor> {
        let f32s = |values: Vec<f32>| {
            let width = values.len() / rows.max(1);
            HostTensor {
                shape: vec![rows, width],
                data: HostData::F32(values),
            }
        };
        match self {
            Head::Embedding { .. } => vec![f32s(values)],
            Head::Classification(c) => {
                let n = c.labels.len();
                let mut probabilities = values.clone();
                let mut labels = Vec::with_capacity(rows);
                for row in probabilities.chunks_mut(n) {
                    labels.push(c.labels[argmax(row)].clone().into_bytes());
                    match c.scores {
                        Scores::Softmax => softmax(row),
                        Scores::Sigmoid => {
                            row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()))
                        }
                    }
                }
                vec![
                    f32s(values),
                    f32s(probabilities),
                    HostTensor {
                        shape: vec![rows],
                        data: HostData::Bytes(labels),
                    },
                ]
            }
        }
    }
}

/// The index of the first largest value (as `torch.argmax`).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
            if *v > best.1 {
                (i, *v)
            } else {
                best
            }
        })
        .0
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = (*v - max).exp());
    let sum: f32 = row.iter().sum();
    row.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> HeadConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn labels_follow_id2label_and_num_labels() {
        let h = head("task = \"classification\"\nid2label = { \"1\" = \"yes\", \"0\" = \"no\" }");
        assert_eq!(h.labels().unwrap(), vec!["no", "yes"]);
        assert_eq!(h.scores(2), Scores::Softmax);
        let h = head("task = \"classification\"\nnum_labels = 3");
        assert_eq!(h.labels().unwrap(), vec!["LABEL_0", "LABEL_1", "LABEL_2"]);
        assert_eq!(head("task = \"classification\"").labels().unwrap().len(), 2);
        let h = head("task = \"classification\"\nnum_labels = 1");
        assert_eq!(h.scores(1), Scores::Sigmoid);
        let h = head("task = \"classification\"\nproblem_type = \"multi_label_classification\"");
        assert_eq!(h.scores(2), Scores::Sigmoid);
        let bad = [
            (
                "task = \"classification\"\nnum_labels = 3\nid2label = { \"0\" = \"a\" }",
                "num_labels",
            ),
            (
                "task = \"classification\"\nid2label = { \"0\" = \"a\", \"2\" = \"b\" }",
                "\"1\" is missing",
            ),
            ("task = \"classification\"\nnum_labels = 0", "at least 1"),
            ("task = \"classification\"\npooling = \"cls\"", "pooling"),
            ("num_labels = 2", "num_labels"),
            ("id2label = { \"0\" = \"a\" }", "id2label"),
        ];
        for (text, needle) in bad {
            let err = head(text).labels().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn probabilities_and_labels() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let classifier = |scores| Classifier {
            dense: Dense::identity_for_tests(1),
            act: Act::Identity,
            out: Dense::identity_for_tests(1),
            labels: labels.clone(),
            scores,
        };
        let head = Head::Classification(classifier(Scores::Softmax));
        let out = head.outputs(2, vec![1.0, 3.0, 2.0, 0.5, 0.5, -1.0]);
        assert_eq!(out[0].shape, vec![2, 3]);
        let HostData::F32(p) = &out[1].data else {
            panic!()
        };
        let e = [1f32.exp(), 3f32.exp(), 2f32.exp()];
        let sum: f32 = e.iter().sum();
        for (got, want) in p[..3].iter().zip(e.iter().map(|v| v / sum)) {
            assert!((got - want).abs() < 1e-6);
        }
        assert_eq!(
            out[2].data,
            HostData::Bytes(vec![b"b".to_vec(), b"a".to_vec()])
        );
        let head = Head::Classification(classifier(Scores::Sigmoid));
        let HostData::F32(p) = &head.outputs(1, vec![0.0, 2.0, -2.0])[1].data else {
            panic!()
        };
        assert_eq!(p[0], 0.5);
        assert!((p[1] + p[2] - 1.0).abs() < 1e-6);
    }
}
