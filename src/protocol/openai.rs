//! OpenAI's embeddings API as data: the request of `POST /v1/embeddings`, its response, the
//! model list of `GET /v1/models`, and the error object, with the pure steps between them
//! (`dimensions` truncation with re-normalisation, base64 packing of little-endian f32).
//! Shapes follow OpenAI's API reference as the official `openai` Python package reads them.

use serde::{Deserialize, Serialize};

/// `input`: a string, a list of strings, a list of token ids, or a list of lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub input: EmbeddingInput,
    pub model: String,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    pub dimensions: Option<usize>,
    /// Accepted and ignored (OpenAI uses it for abuse monitoring).
    #[serde(default)]
    pub user: Option<String>,
}

/// One embedding: floats, or their little-endian f32 bytes in base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingResponse {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelEntry>,
}

pub fn model_list(names: impl IntoIterator<Item = String>) -> ModelList {
    ModelList {
        object: "list",
        data: names
            .into_iter()
            .map(|id| ModelEntry {
                id,
                object: "model",
                created: 0,
                owned_by: "wick",
            })
            .collect(),
    }
}

/// OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    })
    .to_string()
}

/// Builds the response from `[rows, width]` embeddings. `dimensions` keeps the first values of
/// each row; when the model normalises its embeddings, the kept part is normalised again (what
/// OpenAI's shortened embeddings are: unit vectors).
pub fn embedding_response(
    model: &str,
    values: &[f32],
    rows: usize,
    dimensions: Option<usize>,
    renormalise: bool,
    format: EncodingFormat,
    tokens: u64,
) -> EmbeddingResponse {
    let width = values.len() / rows.max(1);
    let keep = dimensions.unwrap_or(width).min(width);
    let data = values
        .chunks(width.max(1))
        .take(rows)
        .enumerate()
        .map(|(index, row)| {
            let mut row = row[..keep].to_vec();
            if renormalise && keep < width {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
            let embedding = match format {
                EncodingFormat::Float => Vector::Float(row),
                EncodingFormat::Base64 => Vector::Base64(base64(
                    &row.iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect::<Vec<u8>>(),
                )),
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    EmbeddingResponse {
        object: "list",
        data,
        model: model.to_string(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn dimensions_truncate_then_renormalise() {
        let values = [3.0, 4.0, 12.0, 0.0, 0.0, 1.0];
        let r = embedding_response("m", &values, 2, Some(2), true, EncodingFormat::Float, 5);
        let rows: Vec<Vec<f32>> = r
            .data
            .iter()
            .map(|e| match &e.embedding {
                Vector::Float(v) => v.clone(),
                Vector::Base64(_) => unreachable!(),
            })
            .collect();
        assert_eq!(rows, vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
        let kept = embedding_response("m", &values, 2, Some(2), false, EncodingFormat::Float, 5);
        assert!(matches!(&kept.data[0].embedding, Vector::Float(v) if v == &vec![3.0, 4.0]));
        let b = embedding_response("m", &[1.0], 1, None, true, EncodingFormat::Base64, 1);
        assert!(matches!(&b.data[0].embedding, Vector::Base64(s) if s == "AACAPw=="));
        assert_eq!((b.usage.prompt_tokens, b.usage.total_tokens), (1, 1));
    }

    #[test]
    fn inputs_of_every_shape_parse() {
        let parse = |s: &str| serde_json::from_str::<EmbeddingRequest>(s).map(|r| r.input);
        assert!(matches!(
            parse(r#"{"model":"m","input":"a"}"#),
            Ok(EmbeddingInput::Text(_))
        ));
        assert!(
            matches!(parse(r#"{"model":"m","input":["a","b"]}"#), Ok(EmbeddingInput::Texts(v)) if v.len() == 2)
        );
        assert!(matches!(
            parse(r#"{"model":"m","input":[1,2]}"#),
            Ok(EmbeddingInput::Ids(_))
        ));
        assert!(matches!(
            parse(r#"{"model":"m","input":[[1],[2,3]]}"#),
            Ok(EmbeddingInput::IdLists(_))
        ));
        assert!(parse(r#"{"model":"m","input":{"x":1}}"#).is_err());
    }
}
