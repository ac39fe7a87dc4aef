//! Tensors on both sides of a test: fixture readers (safetensors and JSON references), request
//! builders, the values of an answer, and the comparisons with a reference.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

/// A tensor read from a fixture.
#[derive(Debug, Clone)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Values {
    pub fn f32(&self) -> &[f32] {
        match self {
            Values::F32(v) => v,
            Values::I64(_) => panic!("expected F32"),
        }
    }

    pub fn i64(&self) -> &[i64] {
        match self {
            Values::I64(v) => v,
            Values::F32(_) => panic!("expected I64"),
        }
    }
}

/// Little-endian F32 values, as safetensors and Triton's binary extension store them.
pub fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Reads every F32/I64 tensor of a safetensors fixture: name -> (shape, values).
pub fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Values)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            safetensors::Dtype::F32 => Values::F32(le_f32s(data)),
            safetensors::Dtype::I64 => Values::I64(
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            other => panic!("fixture dtype {other:?} not handled"),
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    out
}

/// The fixture request of `simple` (`x`, 8 rows of 10) and version 1's answers to it (`y`),
/// both made by PyTorch.
pub fn simple_io() -> (Vec<f32>, Vec<f32>) {
    let io = read_tensors(&super::fixture("simple_io.safetensors"));
    (io["x"].1.f32().to_vec(), io["y"].1.f32().to_vec())
}

/// F32 values as little-endian bytes (the inverse of [`le_f32s`]).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// An F32 [`RawTensor`].
pub fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> RawTensor {
    (
        name.to_string(),
        safetensors::Dtype::F32,
        shape.to_vec(),
        f32_bytes(values),
    )
}

/// Writes `tensors` (and `metadata`, if any) as a safetensors file at `path`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[RawTensor],
    metadata: Option<HashMap<String, String>>,
) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Every tensor of a safetensors file as [`RawTensor`]s, to be edited and written again.
pub fn raw_tensors(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect()
}

/// The version that answered an inference (empty when the response names none).
pub fn model_version(response: &Value) -> String {
    response["model_version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A JSON reference written by a fixture script (e.g. `fixture("arch/bert_small.json")`).
pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of numbers as F32 values.
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Output `name` of a JSON inference response.
pub fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

/// Output `name`'s values of a JSON inference response.
pub fn output_f32(response: &Value, name: &str) -> Vec<f32> {
    f32s(&output(response, name)["data"])
}

/// One input of an inference request.
pub fn input(name: &str, datatype: &str, shape: impl Serialize, data: impl Serialize) -> Value {
    json!({"name": name, "shape": shape, "datatype": datatype, "data": data})
}

/// An inference request with one input.
pub fn infer_request(
    name: &str,
    datatype: &str,
    shape: impl Serialize,
    data: impl Serialize,
) -> Value {
    json!({ "inputs": [input(name, datatype, shape, data)] })
}

/// How far a value may be from its reference.
#[derive(Debug, Clone, Copy)]
pub enum Tolerance {
    /// `|got - want| <= t`.
    Absolute(f32),
    /// `|got - want| <= t·max(|want|, 1)`: absolute for values up to 1, relative beyond (logits
    /// of deep networks, whose rounding grows with their magnitude).
    Relative(f32),
}

impl Tolerance {
    pub fn allows(self, got: f32, want: f32) -> bool {
        let bound = match self {
            Tolerance::Absolute(t) => t,
            Tolerance::Relative(t) => t * want.abs().max(1.0),
        };
        (got - want).abs() <= bound
    }
}

/// Asserts `got` has `want`'s length and every value within `tolerance` of `want`'s. Returns
/// the largest difference.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tolerance: Tolerance, what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            tolerance.allows(*g, *w),
            "{what}[{i}]: wick {g}, reference {w} (diff {}, allowed {tolerance:?})",
            (g - w).abs()
        );
    }
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max)
}

/// Asserts an error answer: `status` `want`, and a JSON body `{"error": message}` whose message
/// contains `needle`. `what` names the request in the failure message.
#[track_caller]
pub fn assert_error(what: &str, (status, body): (u16, &Value), want: u16, needle: &str) {
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error field in {body}"));
    assert_eq!(status, want, "{what}: {message}");
    assert!(
        message.contains(needle),
        "{what}: {message:?} does not mention {needle:?}"
    );
}
