//! Text models on the client side: inputs of texts and of token ids, the cosine embeddings are
//! compared with, and the parameter names of an encoder layer a strict load reports.

use serde_json::{json, Value};

use super::tensors::input;

/// A BYTES input: one row per text, tokenised by the server.
pub fn text_input(name: &str, texts: &[&str]) -> Value {
    input(name, "BYTES", [texts.len()], texts)
}

/// An INT64 input of token ids (or a mask, or token types): rows of equal length.
pub fn ids_input(name: &str, rows: &Value) -> Value {
    let rows_len = rows.as_array().unwrap().len();
    let row_len = rows[0].as_array().unwrap().len();
    input(name, "INT64", [rows_len, row_len], rows)
}

/// A request for a text model: one row per text.
pub fn text_request(texts: &[&str]) -> Value {
    json!({ "inputs": [text_input("text", texts)] })
}

/// A request for a text model with client token ids, and optionally an attention mask and
/// token types of the same shape.
pub fn ids_request(ids: &Value, mask: Option<&Value>, types: Option<&Value>) -> Value {
    let mut inputs = vec![ids_input("input_ids", ids)];
    for (name, values) in [("attention_mask", mask), ("token_type_ids", types)] {
        if let Some(values) = values {
            inputs.push(ids_input(name, values));
        }
    }
    json!({ "inputs": inputs })
}

/// The cosine of two embeddings, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The parameterised modules of a Hugging Face BERT layer, in checkpoint order.
pub const BERT_LAYER: [&str; 8] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
];

/// The weight and bias names of layer `i` under `prefix` (e.g. `encoder.layer`), module by
/// module.
pub fn layer_keys(prefix: &str, i: usize, modules: &[&str]) -> Vec<String> {
    modules
        .iter()
        .flat_map(|m| ["weight", "bias"].map(|p| format!("{prefix}.{i}.{m}.{p}")))
        .collect()
}
