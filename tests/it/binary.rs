//! Triton's binary tensor extension through a real server: every datatype the models accept
//! round-trips, outputs come back binary when asked, and malformed framing is a 400.

use crate::util::tensors::le_f32s;
use crate::util::{
    assert_close, assert_error, fixture, output_f32, read_tensors, TestServer, Tolerance,
};
use http::Method;
use serde_json::{json, Value};

const IHCL: &str = "inference-header-content-length";

/// Sends a binary-extension request: a JSON header followed by `tail`.
async fn send(
    server: &TestServer,
    header: &Value,
    tail: &[u8],
) -> (u16, http::HeaderMap, bytes::Bytes) {
    let json = serde_json::to_vec(header).unwrap();
    let mut body = json.clone();
    body.extend_from_slice(tail);
    send_raw(server, body, &json.len().to_string()).await
}

async fn send_raw(
    server: &TestServer,
    body: Vec<u8>,
    ihcl: &str,
) -> (u16, http::HeaderMap, bytes::Bytes) {
    server
        .request_full(
            Method::POST,
            "/v2/models/simple/infer",
            &[(IHCL, ihcl.to_string())],
            body,
        )
        .await
}

/// Splits a binary-extension response into its JSON and its tail.
fn split(headers: &http::HeaderMap, body: &[u8]) -> (Value, Vec<u8>) {
    match headers.get(IHCL) {
        Some(n) => {
            let n: usize = n.to_str().unwrap().parse().unwrap();
            (
                serde_json::from_slice(&body[..n]).unwrap(),
                body[n..].to_vec(),
            )
        }
        None => (serde_json::from_slice(body).unwrap(), Vec::new()),
    }
}

/// The inputs of simple_io.safetensors (small integers in every row, so every datatype can hold
/// them exactly) and the JSON FP32 answer to compare with.
fn integer_rows() -> Vec<f32> {
    (0..20).map(|i| ((i * 7) % 11) as f32 - 5.0).collect()
}

fn encode(datatype: &str, values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| -> Vec<u8> {
            match datatype {
                "FP32" => v.to_le_bytes().to_vec(),
                "FP16" => half::f16::from_f32(*v).to_le_bytes().to_vec(),
                "BF16" => half::bf16::from_f32(*v).to_le_bytes().to_vec(),
                "INT8" => (*v as i8).to_le_bytes().to_vec(),
                "INT16" => (*v as i16).to_le_bytes().to_vec(),
                "INT32" => (*v as i32).to_le_bytes().to_vec(),
                "INT64" => (*v as i64).to_le_bytes().to_vec(),
                "UINT8" => (*v as u8).to_le_bytes().to_vec(),
                "UINT16" => (*v as u16).to_le_bytes().to_vec(),
                "UINT32" => (*v as u32).to_le_bytes().to_vec(),
                "UINT64" => (*v as u64).to_le_bytes().to_vec(),
                other => panic!("{other}"),
            }
        })
        .collect()
}

#[tokio::test]
async fn every_accepted_datatype_round_trips() {
    let (server, _repo) = TestServer::demo("").await;
    let signed = integer_rows();
    let unsigned: Vec<f32> = signed.iter().map(|v| v + 5.0).collect();
    for datatype in [
        "FP32", "FP16", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
        "UINT64",
    ] {
        let values = if datatype.starts_with("UINT") {
            &unsigned
        } else {
            &signed
        };
        let (status, reference) = server.infer_f32("simple", "input", &[2, 10], values).await;
        assert_eq!(status, 200);
        let tail = encode(datatype, values);
        let header = json!({
            "inputs": [{"name": "input", "shape": [2, 10], "datatype": datatype, "parameters": {"binary_data_size": tail.len()}}],
            "outputs": [{"name": "output", "parameters": {"binary_data": true}}]
        });
        let (status, headers, body) = send(&server, &header, &tail).await;
        assert_eq!(
            status,
            200,
            "{datatype}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/octet-stream"
        );
        let (json, out) = split(&headers, &body);
        assert_eq!(
            json["outputs"][0]["parameters"]["binary_data_size"], 8,
            "{datatype}"
        );
        assert_eq!(
            le_f32s(&out),
            output_f32(&reference, "output"),
            "{datatype}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn binary_output_follows_tritonclient_defaults() {
    // tritonclient with no requested outputs sets binary_data_output = true.
    let (server, _repo) = TestServer::demo("").await;
    let io = read_tensors(&fixture("simple_io.safetensors"));
    let x = io["x"].1.f32();
    let y = io["y"].1.f32();
    let tail: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "id": "b1",
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [8, 10], "datatype": "FP32", "parameters": {"binary_data_size": tail.len()}}]
    });
    let (status, headers, body) = send(&server, &header, &tail).await;
    assert_eq!(status, 200);
    let (json, out) = split(&headers, &body);
    assert_eq!(json["id"], "b1");
    assert_eq!(json["outputs"][0]["shape"], json!([8, 1]));
    assert_close(
        &le_f32s(&out),
        y,
        Tolerance::Absolute(1e-5),
        "binary output",
    );
    // A binary request may still ask for a JSON output.
    let header = json!({
        "inputs": [{"name": "input", "shape": [8, 10], "datatype": "FP32", "parameters": {"binary_data_size": tail.len()}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": false}}]
    });
    let (status, headers, body) = send(&server, &header, &tail).await;
    assert_eq!(status, 200);
    assert!(headers.get(IHCL).is_none());
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["outputs"][0]["data"].as_array().unwrap().len(), 8);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_framing_is_a_400() {
    let (server, _repo) = TestServer::demo("").await;
    let good_tail = encode("FP32", &integer_rows()[..10]);
    let header = |size: usize| json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    let expect = |status: u16, body: &bytes::Bytes, needle: &str| {
        let value: Value = serde_json::from_slice(body).unwrap();
        assert_error("malformed framing", (status, &value), 400, needle);
    };

    // Header length past the end of the body.
    let json = serde_json::to_vec(&header(40)).unwrap();
    let mut body = json.clone();
    body.extend_from_slice(&good_tail);
    let (status, _, answer) = send_raw(&server, body.clone(), &(body.len() + 1).to_string()).await;
    expect(status, &answer, "larger than the body");
    // Header length that is not a number, negative, or absurd.
    for bad in ["abc", "-1", "1e3", "18446744073709551616"] {
        let (status, _, answer) = send_raw(&server, body.clone(), bad).await;
        expect(status, &answer, "Inference-Header-Content-Length");
    }
    // A header length that cuts the JSON short.
    let (status, _, answer) = send_raw(&server, body.clone(), &(json.len() - 5).to_string()).await;
    expect(status, &answer, "invalid JSON");
    // Size not matching the shape, past the body, trailing bytes, odd and misaligned sizes.
    let (status, _, answer) = send(&server, &header(36), &good_tail[..36]).await;
    expect(status, &answer, "needs 40");
    // A size that disagrees with the shape is refused as such, before the tail is read.
    let (status, _, answer) = send(&server, &header(80), &good_tail).await;
    expect(status, &answer, "needs 40");
    let two_rows = json!({"inputs": [{"name": "input", "shape": [2, 10], "datatype": "FP32", "parameters": {"binary_data_size": 80}}]});
    let (status, _, answer) = send(&server, &two_rows, &good_tail).await;
    expect(status, &answer, "runs past the end");
    let mut long = good_tail.clone();
    long.extend_from_slice(&[1, 2, 3]);
    let (status, _, answer) = send(&server, &header(40), &long).await;
    expect(status, &answer, "3 bytes after the last binary input");
    let (status, _, answer) = send(&server, &header(41), &[&good_tail[..], &[9]].concat()).await;
    expect(status, &answer, "needs 40");
    // Raw binary (header length 0) is refused with a reason.
    let (status, _, answer) = send_raw(&server, good_tail.clone(), "0").await;
    expect(status, &answer, "raw binary");
    // BYTES sent to a numeric input.
    let bytes_header = json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]});
    let (status, _, answer) = send(
        &server,
        &bytes_header,
        &[4, 0, 0, 0, b'a', b'b', b'c', b'd'],
    )
    .await;
    expect(status, &answer, "BYTES");
    // The server is fine afterwards.
    let (status, _, _) = send(&server, &header(40), &good_tail).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}
