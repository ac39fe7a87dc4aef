//! The Open Inference Protocol on a real socket: every endpoint, and every way a request can be
//! wrong, each answered with the right status and a JSON `{"error": ...}` body.

use crate::util::{assert_error, infer_request, Repo, TestServer};
use http::Method;
use serde_json::{json, Value};

/// The demo server with a 64 KiB body limit.
async fn demo() -> (TestServer, Repo) {
    TestServer::demo("max_body_bytes = 65536").await
}

fn simple_request(data: Value, shape: Value, datatype: &str) -> Value {
    infer_request("input", datatype, shape, data)
}

fn ten() -> Vec<f32> {
    (0..10).map(|i| i as f32 * 0.5).collect()
}

/// A valid request for `simple`: one row.
fn one_row() -> Value {
    simple_request(json!(ten()), json!([1, 10]), "FP32")
}

/// POSTs `body` to `path` and asserts a JSON error answer with `status` whose message contains
/// `needle`.
async fn expect_error(server: &TestServer, path: &str, body: Vec<u8>, status: u16, needle: &str) {
    let (got, bytes) = server.post(path, body).await;
    assert_error(path, (got, &bytes.json()), status, needle);
}

#[tokio::test]
async fn health_and_metadata_endpoints() {
    let (server, _repo) = demo().await;
    assert_eq!(server.get("/v2/health/live").await.0, 200);
    assert_eq!(server.get("/v2/health/ready").await.0, 200);

    let (status, body) = server.get("/v2").await;
    assert_eq!(status, 200);
    let meta = body.json();
    assert_eq!(meta["name"], "wick");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    for path in ["/v2/models/digits", "/v2/models/digits/versions/1"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}");
        let meta = body.json();
        assert_eq!(meta["name"], "digits");
        assert_eq!(meta["versions"], json!(["1"]));
        assert_eq!(
            meta["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
        );
        assert_eq!(
            meta["outputs"],
            json!([{"name": "output", "datatype": "FP32", "shape": [-1, 10]}])
        );
    }
    assert_eq!(server.get("/v2/models/digits/ready").await.0, 200);
    assert_eq!(
        server.get("/v2/models/digits/versions/1/ready").await.0,
        200
    );
    assert_eq!(
        server.get("/v2/models/digits/versions/7/ready").await.0,
        404
    );
    assert_eq!(server.get("/v2/models/nope/ready").await.0, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn infer_answers_with_version_sha_and_id() {
    let (server, _repo) = demo().await;
    let mut body = one_row();
    body["id"] = json!("req-42");
    let bytes = serde_json::to_vec(&body).unwrap();
    // No Content-Type header at all, as tritonclient sends it.
    let mut conn = server.target.connect().await.unwrap();
    let (status, answer) = conn
        .send(
            Method::POST,
            "/v2/models/simple/infer",
            &[],
            bytes.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["model_name"], "simple");
    assert_eq!(answer["model_version"], "1");
    assert_eq!(answer["id"], "req-42");
    let sha = answer["parameters"]["weights_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(answer["outputs"][0]["name"], "output");
    assert_eq!(answer["outputs"][0]["datatype"], "FP32");
    assert_eq!(answer["outputs"][0]["shape"], json!([1, 1]));

    // Every response carries a request id: the client's own, or a generated one.
    let (_, headers, _) = conn
        .send_full(
            Method::POST,
            "/v2/models/simple/infer",
            &[("x-request-id", "trace-77".to_string())],
            bytes.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(headers.get("x-request-id").unwrap(), "trace-77");
    assert_eq!(
        headers
            .get("x-wick-weights-sha256")
            .unwrap()
            .to_str()
            .unwrap(),
        sha
    );
    let (_, first, _) = conn
        .send_full(Method::GET, "/v2/health/live", &[], Default::default())
        .await
        .unwrap();
    let (_, second, _) = conn
        .send_full(Method::GET, "/v2/nope", &[], Default::default())
        .await
        .unwrap();
    let (a, b) = (
        first.get("x-request-id").unwrap(),
        second.get("x-request-id").unwrap(),
    );
    assert_ne!(a, b, "generated request ids must differ");

    // The same through the versioned path; the header carries the sha too.
    let (status, answer) = server
        .post_json("/v2/models/simple/versions/1/infer", &body)
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["parameters"]["weights_sha256"], sha);
    server.shutdown().await;
}

#[tokio::test]
async fn nested_data_and_lossless_datatype_conversion() {
    let (server, _repo) = demo().await;
    let flat = json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let nested = json!([
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    ]);
    let mut outputs = Vec::new();
    for (data, datatype) in [
        (&flat, "FP32"),
        (&nested, "FP32"),
        (&nested, "INT32"),
        (&nested, "UINT8"),
    ] {
        let request = simple_request(data.clone(), json!([2, 10]), datatype);
        let (status, answer) = server.post_json("/v2/models/simple/infer", &request).await;
        assert_eq!(status, 200, "{request} -> {answer}");
        outputs.push(answer["outputs"].clone());
    }
    for other in &outputs[1..] {
        assert_eq!(&outputs[0], other);
    }
    assert_eq!(outputs[0][0]["shape"], json!([2, 1]));
    server.shutdown().await;
}

#[tokio::test]
async fn output_selection_and_unknown_outputs() {
    let (server, _repo) = demo().await;
    let mut body = one_row();
    body["outputs"] = json!([{"name": "output"}]);
    let (status, answer) = server.post_json("/v2/models/simple/infer", &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 1);
    body["outputs"] = json!([{"name": "logits"}]);
    expect_error(
        &server,
        "/v2/models/simple/infer",
        serde_json::to_vec(&body).unwrap(),
        400,
        "unknown output \"logits\"",
    )
    .await;
    body["outputs"] = json!([{"name": "output"}, {"name": "output"}]);
    expect_error(
        &server,
        "/v2/models/simple/infer",
        serde_json::to_vec(&body).unwrap(),
        400,
        "more than once",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_400_with_a_reason() {
    let (server, _repo) = demo().await;
    let path = "/v2/models/simple/infer";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "invalid JSON"),
        (b"".to_vec(), "invalid JSON"),
        (b"[]".to_vec(), "invalid JSON"),
        (br#"{"inputs": [], "inputs": []}"#.to_vec(), "duplicate field"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([1, 9]), "FP32")).unwrap(), "does not match the model's [-1, 10]"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([10]), "FP32")).unwrap(), "does not match"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([2, 10]), "FP32")).unwrap(), "holds 20 elements but data has 10"),
        (serde_json::to_vec(&simple_request(json!([[1, 2], [3]]), json!([1, 10]), "FP32")).unwrap(), "ragged"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([1, 10]), "FP64")).unwrap(), "FP64 cannot be converted"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([1, 10]), "fp32")).unwrap(), "unknown datatype"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([1, 10]), "BOOL")).unwrap(), "BOOL"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([1, 10]), "BYTES")).unwrap(), "BYTES"),
        (serde_json::to_vec(&simple_request(json!([1e39, 0, 0, 0, 0, 0, 0, 0, 0, 0]), json!([1, 10]), "FP32")).unwrap(), "overflows"),
        (serde_json::to_vec(&simple_request(json!([1.5, 0, 0, 0, 0, 0, 0, 0, 0, 0]), json!([1, 10]), "INT32")).unwrap(), "not an integer"),
        (serde_json::to_vec(&simple_request(json!([256, 0, 0, 0, 0, 0, 0, 0, 0, 0]), json!([1, 10]), "UINT8")).unwrap(), "out of range"),
        (serde_json::to_vec(&simple_request(json!([16777217, 0, 0, 0, 0, 0, 0, 0, 0, 0]), json!([1, 10]), "INT64")).unwrap(), "not exactly representable"),
        (serde_json::to_vec(&simple_request(json!(vec!["a"; 10]), json!([1, 10]), "FP32")).unwrap(), "data holds strings"),
        (serde_json::to_vec(&simple_request(json!(vec![Value::Null; 10]), json!([1, 10]), "FP32")).unwrap(), "null"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([-1, 10]), "FP32")).unwrap(), "invalid JSON"),
        (serde_json::to_vec(&simple_request(json!([]), json!([0, 10]), "FP32")).unwrap(), "0 rows"),
        (serde_json::to_vec(&simple_request(json!(ten()), json!([4294967296u64, 4294967296u64]), "FP32")).unwrap(), "does not match"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "data": ten()}]})).unwrap(), "unknown input \"x\""),
        (serde_json::to_vec(&json!({"inputs": []})).unwrap(), "missing required input"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32"}]})).unwrap(), "neither"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": ten(), "parameters": {"binary_data_size": 40}}]})).unwrap(), "both"),
        (serde_json::to_vec(&json!({"parameters": {"timeout": "soon"}, "inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": ten()}]})).unwrap(), "timeout"),
        (serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}}]})).unwrap(), "shared memory"),
    ];
    for (body, needle) in cases {
        expect_error(&server, path, body, 400, needle).await;
    }
    // Deep nesting is refused by the parser's depth limit, without a stack overflow.
    let deep = format!(
        r#"{{"inputs": [{{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": {}}}]}}"#,
        "[".repeat(200_000)
    );
    let (status, body) = server.post(path, deep).await;
    assert_eq!(status, 413, "{}", body.text()); // 200 KB is over this server's 64 KB limit
    let deep = format!(
        r#"{{"inputs": [{{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": {}}}]}}"#,
        "[".repeat(10_000)
    );
    expect_error(&server, path, deep.into_bytes(), 400, "invalid JSON").await;
    // The server still answers normally afterwards.
    let (status, _) = server.post_json(path, &one_row()).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn routing_errors() {
    let (server, _repo) = demo().await;
    let body = serde_json::to_vec(&one_row()).unwrap();
    expect_error(
        &server,
        "/v2/models/nope/infer",
        body.clone(),
        404,
        "unknown model \"nope\"",
    )
    .await;
    expect_error(
        &server,
        "/v2/models/simple/versions/2/infer",
        body.clone(),
        404,
        "unknown version 2",
    )
    .await;
    for bad in ["0", "01", "-1", "1.0", "latest", "99999999999999999999"] {
        expect_error(
            &server,
            &format!("/v2/models/simple/versions/{bad}/infer"),
            body.clone(),
            400,
            "invalid version",
        )
        .await;
    }
    for bad in [
        "..",
        "%2e%2e",
        "..%2F..%2Fetc",
        "a%00b",
        "%EF%BD%8Dodel",
        "-x",
    ] {
        let (status, answer) = server
            .post(&format!("/v2/models/{bad}/infer"), body.clone())
            .await;
        assert!(status == 400 || status == 404, "{bad}: {status}");
        assert!(answer.json()["error"].is_string());
    }
    let (status, answer) = server.get("/v2/models/simple/infer").await;
    assert_eq!(status, 405);
    assert!(answer.json()["error"].is_string());
    let (status, answer) = server
        .request(Method::DELETE, "/v2/health/live", &[], "")
        .await;
    assert_eq!(status, 405);
    assert!(answer.json()["error"].is_string());
    let (status, answer) = server.get("/v3/whatever").await;
    assert_eq!(status, 404);
    assert!(answer.json()["error"].is_string());
    // The repository API is never served on the inference listener.
    let (status, _) = server.post("/v2/repository/index", "").await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let (server, _repo) = demo().await;
    let big = vec![b' '; 100_000];
    expect_error(
        &server,
        "/v2/models/simple/infer",
        big,
        413,
        "larger than the limit",
    )
    .await;
    let (status, _) = server
        .post_json("/v2/models/simple/infer", &one_row())
        .await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn non_finite_outputs_are_explicit_tokens() {
    // Finite inputs whose activations overflow in the MLP: the answer names the non-finite
    // values as tokens Python's json reads, never `null` (serde_json's silent default).
    let (server, _repo) = demo().await;
    let huge = vec![3.0e38f32; 64];
    let body = infer_request("input", "FP32", [1, 64], huge);
    let (status, bytes) = server
        .post(
            "/v2/models/digits/infer",
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    let text = bytes.text();
    assert!(text.contains("Infinity") || text.contains("NaN"), "{text}");
    assert!(!text.contains("null"), "{text}");
    server.shutdown().await;
}
