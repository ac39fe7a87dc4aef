//! Encoding inference responses: JSON, or JSON followed by binary tensors.
//!
//! The JSON is written by hand: it is on the hot path, and serde_json would turn NaN and
//! infinities into `null` without a word (docs/security.md F6). Non-finite outputs are written as the
//! tokens `NaN`, `Infinity` and `-Infinity`, as Triton and TF Serving do and as Python's `json`
//! and tritonclient read them. Floats use the shortest representation that round-trips (ryu).

use crate::model::{HostData, HostTensor, Notes, Signature};

use super::datatype::Datatype;
use super::decode::OutputChoice;

/// Who answered: echoed in every response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseMeta<'a> {
    pub model_name: &'a str,
    pub model_version: u64,
    pub id: Option<&'a str>,
    pub weights_sha256: &'a str,
    pub notes: &'a Notes,
}

/// An encoded response body.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// `Some(json length)` when binary tensors follow the JSON (then the response carries
    /// `Inference-Header-Content-Length` and `Content-Type: application/octet-stream`).
    pub json_len: Option<usize>,
}

/// Writes `outputs` (aligned with the signature's outputs) as chosen by `choices`.
pub fn encode_response(
    meta: &ResponseMeta<'_>,
    signature: &Signature,
    outputs: &[HostTensor],
    choices: &[OutputChoice],
) -> Encoded {
    let mut json =
        Vec::with_capacity(256 + 16 * outputs.iter().map(|o| o.data.len()).sum::<usize>());
    let mut tail: Vec<u8> = Vec::new();
    let mut any_binary = false;

    json.extend_from_slice(b"{\"model_name\":");
    write_str(&mut json, meta.model_name);
    json.extend_from_slice(b",\"model_version\":\"");
    json.extend_from_slice(itoa::Buffer::new().format(meta.model_version).as_bytes());
    json.push(b'"');
    if let Some(id) = meta.id {
        json.extend_from_slice(b",\"id\":");
        write_str(&mut json, id);
    }
    json.extend_from_slice(b",\"parameters\":{\"weights_sha256\":");
    write_str(&mut json, meta.weights_sha256);
    for (key, value) in meta.notes {
        json.push(b',');
        write_str(&mut json, key);
        json.push(b':');
        // Notes are plain JSON values produced by the model code; serialising them cannot fail.
        let _ = serde_json::to_writer(&mut json, value);
    }
    json.extend_from_slice(b"},\"outputs\":[");
    for (n, choice) in choices.iter().enumerate() {
        let (Some(spec), Some(tensor)) = (
            signature.outputs.get(choice.index),
            outputs.get(choice.index),
        ) else {
            continue;
        };
        if n > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"{\"name\":");
        write_str(&mut json, &spec.name);
        json.extend_from_slice(b",\"datatype\":\"");
        json.extend_from_slice(Datatype::of_kind(tensor.data.kind()).name().as_bytes());
        json.extend_from_slice(b"\",\"shape\":[");
        for (i, d) in tensor.shape.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(itoa::Buffer::new().format(*d).as_bytes());
        }
        json.push(b']');
        if choice.binary {
            any_binary = true;
            let before = tail.len();
            write_binary(&mut tail, &tensor.data);
            json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            json.extend_from_slice(itoa::Buffer::new().format(tail.len() - before).as_bytes());
            json.extend_from_slice(b"}}");
        } else {
            json.extend_from_slice(b",\"data\":[");
            write_values(&mut json, &tensor.data);
            json.extend_from_slice(b"]}");
        }
    }
    json.extend_from_slice(b"]}");
    if any_binary {
        let json_len = json.len();
        json.extend_from_slice(&tail);
        Encoded {
            body: json,
            json_len: Some(json_len),
        }
    } else {
        Encoded {
            body: json,
            json_len: None,
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Escaping strings is serde_json's job; writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_values(out: &mut Vec<u8>, data: &HostData) {
    match data {
        HostData::F32(_) | HostData::F32Rows(_) => {
            let values = data.f32s().unwrap_or_default();
            let mut buf = ryu::Buffer::new();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if v.is_finite() {
                    out.extend_from_slice(buf.format_finite(*v).as_bytes());
                } else if v.is_nan() {
                    out.extend_from_slice(b"NaN");
                } else if *v > 0.0 {
                    out.extend_from_slice(b"Infinity");
                } else {
                    out.extend_from_slice(b"-Infinity");
                }
            }
        }
        HostData::I64(_) | HostData::Ids(_) | HostData::IdsRows(_) => {
            let values = data.ints().map(|v| v.iter()).into_iter().flatten();
            let mut buf = itoa::Buffer::new();
            for (i, v) in values.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(buf.format(v).as_bytes());
            }
        }
        HostData::Bytes(values) => {
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, &String::from_utf8_lossy(v));
            }
        }
    }
}

/// A tensor's values as the binary extension (and gRPC's `raw_output_contents`) carry them:
/// little-endian elements; BYTES elements each after a 4-byte little-endian length.
pub fn raw_bytes(data: &HostData) -> Vec<u8> {
    let mut out = Vec::new();
    write_binary(&mut out, data);
    out
}

fn write_binary(out: &mut Vec<u8>, data: &HostData) {
    match data {
        HostData::F32(_) | HostData::F32Rows(_) => {
            let values = data.f32s().unwrap_or_default();
            out.reserve(values.len() * 4);
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        HostData::I64(_) | HostData::Ids(_) | HostData::IdsRows(_) => {
            out.reserve(data.len() * 8);
            for v in data.ints().map(|v| v.iter()).into_iter().flatten() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        HostData::Bytes(values) => {
            for v in values {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ElemKind, IoSpec};

    fn sig() -> Signature {
        Signature {
            inputs: vec![],
            outputs: vec![
                IoSpec::new("a", ElemKind::F32, &[2]),
                IoSpec::new("b", ElemKind::I64, &[1]),
            ],
        }
    }

    #[test]
    fn json_with_non_finite_values_and_notes() {
        let outputs = vec![
            HostTensor {
                shape: vec![2, 2],
                data: HostData::F32(vec![0.1, f32::NAN, f32::INFINITY, -f32::INFINITY]),
            },
            HostTensor {
                shape: vec![2, 1],
                data: HostData::I64(vec![-3, 9]),
            },
        ];
        let mut notes = Notes::new();
        notes.insert("truncated".into(), serde_json::json!(true));
        let meta = ResponseMeta {
            model_name: "m",
            model_version: 3,
            id: Some("r\"1"),
            weights_sha256: "ab",
            notes: &notes,
        };
        let choices = [
            OutputChoice {
                index: 0,
                binary: false,
            },
            OutputChoice {
                index: 1,
                binary: false,
            },
        ];
        let enc = encode_response(&meta, &sig(), &outputs, &choices);
        assert_eq!(enc.json_len, None);
        let text = String::from_utf8(enc.body).unwrap();
        assert_eq!(
            text,
            r#"{"model_name":"m","model_version":"3","id":"r\"1","parameters":{"weights_sha256":"ab","truncated":true},"outputs":[{"name":"a","datatype":"FP32","shape":[2,2],"data":[0.1,NaN,Infinity,-Infinity]},{"name":"b","datatype":"INT64","shape":[2,1],"data":[-3,9]}]}"#
        );
    }

    #[test]
    fn binary_outputs_follow_the_json_in_order() {
        let outputs = vec![
            HostTensor {
                shape: vec![1, 2],
                data: HostData::F32(vec![1.0, 2.0]),
            },
            HostTensor {
                shape: vec![1, 1],
                data: HostData::I64(vec![7]),
            },
        ];
        let notes = Notes::new();
        let meta = ResponseMeta {
            model_name: "m",
            model_version: 1,
            id: None,
            weights_sha256: "ab",
            notes: &notes,
        };
        let choices = [
            OutputChoice {
                index: 1,
                binary: true,
            },
            OutputChoice {
                index: 0,
                binary: false,
            },
        ];
        let enc = encode_response(&meta, &sig(), &outputs, &choices);
        let n = enc.json_len.unwrap();
        let header: serde_json::Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(header["outputs"][0]["name"], "b");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(header["outputs"][1]["data"], serde_json::json!([1.0, 2.0]));
        assert_eq!(&enc.body[n..], &7i64.to_le_bytes());
    }
}
