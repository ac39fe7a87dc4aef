//! Hugging Face text-embeddings-inference (TEI) request and response shapes, as data:
//! `POST /embed`, `/tokenize`, `/predict`, `/rerank`, following TEI's router types so a TEI
//! client switches to wick by changing its URL.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Token;

/// `inputs`: one string or a batch of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    Single(String),
    Batch(Vec<String>),
}

impl Inputs {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::Single(s) => vec![s],
            Inputs::Batch(v) => v,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
pub struct EmbedRequest {
    pub inputs: Inputs,
    /// wick truncates as the model is configured (`truncate` in its config); accepted.
    #[serde(default)]
    pub truncate: bool,
    #[serde(default = "yes")]
    pub normalize: bool,
}

#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub inputs: Inputs,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

#[derive(Debug, Serialize)]
pub struct SimpleToken {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

impl From<Token> for SimpleToken {
    fn from(t: Token) -> SimpleToken {
        SimpleToken {
            id: t.id,
            text: t.text,
            special: t.special,
            start: t.span.map(|s| s.0),
            stop: t.span.map(|s| s.1),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    /// A string, a pair `[a, b]`, or a batch `[[a], [a, b], ...]` (see [`predict_rows`]).
    pub inputs: Value,
    #[serde(default)]
    pub truncate: bool,
    #[serde(default)]
    pub raw_scores: bool,
}

/// One row of `/predict`: a text, or a text pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sequence {
    Single(String),
    Pair(String, String),
}

/// TEI's reading of `/predict`'s `inputs`: the rows, and whether it was a batch (the answer
/// is then a list of lists).
pub fn predict_rows(inputs: Value) -> Result<(Vec<Sequence>, bool), String> {
    fn sequence(items: Vec<Value>) -> Result<Sequence, String> {
        let mut texts = items.into_iter().map(|v| match v {
            Value::String(s) => Ok(s),
            _ => Err("sequences are strings".to_string()),
        });
        match (texts.next(), texts.next(), texts.next()) {
            (Some(a), None, None) => Ok(Sequence::Single(a?)),
            (Some(a), Some(b), None) => Ok(Sequence::Pair(a?, b?)),
            _ => Err("a sequence is one string or a pair of strings".to_string()),
        }
    }
    match inputs {
        Value::String(s) => Ok((vec![Sequence::Single(s)], false)),
        Value::Array(items) if items.first().is_some_and(Value::is_string) => {
            Ok((vec![sequence(items)?], false))
        }
        Value::Array(items) => {
            let rows = items
                .into_iter()
                .map(|item| match item {
                    Value::Array(inner) => sequence(inner),
                    _ => Err("a batch is a list of [text] or [text, text_pair]".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((rows, true))
        }
        _ => Err("inputs is a string, a pair of strings or a batch of them".to_string()),
    }
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub score: f32,
    pub label: String,
}

/// One row's predictions, every label, highest score first (as TEI).
pub fn predictions(scores: &[f32], labels: &[String]) -> Vec<Prediction> {
    let mut out: Vec<Prediction> = scores
        .iter()
        .zip(labels)
        .map(|(score, label)| Prediction {
            score: *score,
            label: label.clone(),
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    #[serde(default)]
    pub truncate: bool,
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default)]
    pub return_text: bool,
}

#[derive(Debug, Serialize)]
pub struct Rank {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub score: f32,
}

/// The texts ranked by score, highest first.
pub fn ranks(scores: &[f32], texts: Vec<String>, return_text: bool) -> Vec<Rank> {
    let mut out: Vec<Rank> = scores
        .iter()
        .zip(texts)
        .enumerate()
        .map(|(index, (score, text))| Rank {
            index,
            text: return_text.then_some(text),
            score: *score,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// Scales each `width`-wide row to unit length (TEI's `normalize`).
pub fn normalise_rows(values: &mut [f32], width: usize) {
    for row in values.chunks_mut(width.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predict_inputs_read_as_tei_reads_them() {
        let s = |t: &str| t.to_string();
        assert_eq!(
            predict_rows(json!("a")).unwrap(),
            (vec![Sequence::Single(s("a"))], false)
        );
        assert_eq!(
            predict_rows(json!(["a", "b"])).unwrap(),
            (vec![Sequence::Pair(s("a"), s("b"))], false)
        );
        assert_eq!(
            predict_rows(json!([["a"], ["b", "c"]])).unwrap(),
            (
                vec![Sequence::Single(s("a")), Sequence::Pair(s("b"), s("c"))],
                true
            )
        );
        assert!(predict_rows(json!(["a", "b", "c"])).is_err());
        assert!(predict_rows(json!([["a", 1]])).is_err());
        assert!(predict_rows(json!(5)).is_err());
    }

    #[test]
    fn ranks_and_predictions_sort_by_score() {
        let r = ranks(&[0.1, 0.9], vec!["x".into(), "y".into()], true);
        assert_eq!((r[0].index, r[0].text.as_deref()), (1, Some("y")));
        let r = ranks(&[0.1, 0.9], vec!["x".into(), "y".into()], false);
        assert!(
            serde_json::to_string(&r).unwrap()
                == r#"[{"index":1,"score":0.9},{"index":0,"score":0.1}]"#
        );
        let p = predictions(&[0.2, 0.8], &["no".into(), "yes".into()]);
        assert_eq!(p[0].label, "yes");
    }
}
