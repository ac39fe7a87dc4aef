//! The bad-input catalogue of docs/security.md, sent byte for byte to a real server: each gets
//! a 4xx (with `{"error": ...}` whenever the request reached wick's handlers; hyper answers
//! malformed HTTP framing itself, with a bare status), nothing crashes or hangs, and a normal
//! request succeeds afterwards.

use std::io::Write;
use std::time::Duration;

use crate::util::server::read_until_closed;
use crate::util::{infer_request, TestServer};
use tokio::io::AsyncWriteExt;

const INFER: &str = "/v2/models/simple/infer";

/// What a raw exchange produced.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    body: String,
}

/// Sends `bytes` on a fresh connection and reads until the server closes it.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = stream.write_all(bytes).await;
    let (seen, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the server neither answered nor closed within 5 s: {:?}",
        String::from_utf8_lossy(&seen)
    );
    let text = String::from_utf8_lossy(&seen).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Answer { status, body }
}

fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: wick\r\nConnection: close\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.iter().any(|h| {
        h.to_ascii_lowercase().starts_with("content-length")
            || h.to_ascii_lowercase().starts_with("transfer-encoding")
    }) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn post(body: &[u8]) -> Vec<u8> {
    request("POST", INFER, &[], body)
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn valid_json() -> Vec<u8> {
    let data = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    serde_json::to_vec(&infer_request("input", "FP32", [1, 10], data)).unwrap()
}

fn input_with(field: &str) -> Vec<u8> {
    format!(r#"{{"inputs": [{{"name": "input", "shape": [1, 10], "datatype": "FP32", {field}}}]}}"#)
        .into_bytes()
}

/// How a case must be answered.
#[derive(Clone, Copy)]
enum Expect {
    /// A 4xx from wick with a JSON error body.
    Json(u16),
    /// A 4xx, or the connection closed: malformed HTTP that hyper refuses before any handler.
    Framing,
    /// Not an error: a well-formed request that wick answers normally.
    Fine,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_input_catalogue() {
    let (server, _repo) = TestServer::demo(
        "max_body_bytes = 65536\nbody_deadline_ms = 700\nheader_read_timeout_ms = 2000",
    )
    .await;
    let addr = server.server().addr;

    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b' '; 50 << 20]).unwrap();
    let bomb = bomb.finish().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&valid_json()).unwrap();
    let gz = gz.finish().unwrap();
    let spaces = vec![b' '; 100_000];
    let deep = format!(
        r#"{{"inputs": [{{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": {}}}]}}"#,
        "[".repeat(60_000)
    );
    let many_headers: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_name = "n".repeat(60_000);
    let dup_inputs: Vec<String> = (0..500).map(|_| r#"{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [1,2,3,4,5,6,7,8,9,10]}"#.to_string()).collect();
    let many_outputs: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"name": "o{i}"}}"#))
        .collect();

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // Framing and transport.
        ("body over the limit, declared", request("POST", INFER, &["Content-Length: 100000"], &spaces), Expect::Json(413)),
        ("body over the limit, chunked", request("POST", INFER, &["Transfer-Encoding: chunked"], &chunked(&spaces, 4096)), Expect::Json(413)),
        ("100 000 one-byte chunks", request("POST", INFER, &["Transfer-Encoding: chunked"], &chunked(&spaces, 1)), Expect::Json(413)),
        ("a valid body in one-byte chunks", request("POST", INFER, &["Transfer-Encoding: chunked"], &chunked(&valid_json(), 1)), Expect::Fine),
        ("content-length larger than the body", request("POST", INFER, &["Content-Length: 500"], b"{\"inputs\""), Expect::Json(408)),
        ("content-length smaller than the body", request("POST", INFER, &["Content-Length: 5"], &valid_json()), Expect::Json(400)),
        ("chunk size overflow", request("POST", INFER, &["Transfer-Encoding: chunked"], b"FFFFFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n"), Expect::Framing),
        ("content-length and transfer-encoding", request("POST", INFER, &["Content-Length: 4", "Transfer-Encoding: chunked"], b"0\r\n\r\n"), Expect::Framing),
        ("gzip bomb", request("POST", INFER, &["Content-Encoding: gzip", &format!("Content-Length: {}", bomb.len())], &bomb), Expect::Json(413)),
        ("gzip body", request("POST", INFER, &["Content-Encoding: gzip", &format!("Content-Length: {}", gz.len())], &gz), Expect::Fine),
        ("unknown content encoding", request("POST", INFER, &["Content-Encoding: br"], &valid_json()), Expect::Json(400)),
        ("GET with a large body", request("GET", "/v2/health/live", &[], &spaces[..50_000]), Expect::Fine),
        // Header abuse.
        ("10 000 headers", format!("POST {INFER} HTTP/1.1\r\nHost: w\r\n{many_headers}Content-Length: 0\r\n\r\n").into_bytes(), Expect::Framing),
        ("a 1 MB header value", format!("POST {INFER} HTTP/1.1\r\nHost: w\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "v".repeat(1 << 20)).into_bytes(), Expect::Framing),
        ("header length -1", request("POST", INFER, &["Inference-Header-Content-Length: -1"], &valid_json()), Expect::Json(400)),
        ("header length 2^70", request("POST", INFER, &["Inference-Header-Content-Length: 1180591620717411303424"], &valid_json()), Expect::Json(400)),
        ("header length not a number", request("POST", INFER, &["Inference-Header-Content-Length: ten"], &valid_json()), Expect::Json(400)),
        ("header length past the body", request("POST", INFER, &["Inference-Header-Content-Length: 9999"], &valid_json()), Expect::Json(400)),
        // JSON structure.
        ("empty body", post(b""), Expect::Json(400)),
        ("null", post(b"null"), Expect::Json(400)),
        ("top-level array", post(b"[]"), Expect::Json(400)),
        ("truncated JSON", post(&valid_json()[..30]), Expect::Json(400)),
        ("byte order mark", post(&[b"\xEF\xBB\xBF".as_slice(), &valid_json()].concat()), Expect::Json(400)),
        ("invalid UTF-8", post(b"{\"inputs\": [{\"name\": \"\xff\xfe\", \"shape\": [1], \"datatype\": \"FP32\", \"data\": [1]}]}"), Expect::Json(400)),
        ("lone surrogate", post(br#"{"inputs": [{"name": "\ud800", "shape": [1, 10], "datatype": "FP32", "data": [1]}]}"#), Expect::Json(400)),
        ("60 000 nested arrays", post(deep.as_bytes()), Expect::Json(400)),
        ("duplicate keys", post(br#"{"inputs": [], "inputs": []}"#), Expect::Json(400)),
        ("duplicate shape", post(&input_with(r#""shape": [1, 10], "data": [1,2,3,4,5,6,7,8,9,10]"#)), Expect::Json(400)),
        ("data and binary_data_size", post(&input_with(r#""data": [1,2,3,4,5,6,7,8,9,10], "parameters": {"binary_data_size": 40}"#)), Expect::Json(400)),
        ("unknown fields are ignored", post(br#"{"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [1,2,3,4,5,6,7,8,9,10], "extra": {"a": [1]}}], "future": true}"#), Expect::Fine),
        ("a 60 KB input name", post(format!(r#"{{"inputs": [{{"name": "{long_name}", "shape": [1, 10], "datatype": "FP32", "data": [1]}}]}}"#).as_bytes()), Expect::Json(400)),
        ("500 copies of an input", post(format!(r#"{{"inputs": [{}]}}"#, dup_inputs.join(",")).as_bytes()), Expect::Json(400)),
        ("3000 requested outputs", post(format!(r#"{{"inputs": [{{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [1,2,3,4,5,6,7,8,9,10]}}], "outputs": [{}]}}"#, many_outputs.join(",")).as_bytes()), Expect::Json(400)),
        ("nested parameters", post(br#"{"parameters": {"a": {"b": [1, 2]}}, "inputs": []}"#), Expect::Json(400)),
        // Tensor semantics.
        ("lower-case datatype", post(&input_with(r#""data": [1,2,3,4,5,6,7,8,9,10]"#).replace_str("FP32", "fp32")), Expect::Json(400)),
        ("FP8", post(&input_with(r#""data": [1,2,3,4,5,6,7,8,9,10]"#).replace_str("FP32", "FP8")), Expect::Json(400)),
        ("BYTES into a numeric input", post(&input_with(r#""data": ["a","b","c","d","e","f","g","h","i","j"]"#).replace_str("FP32", "BYTES")), Expect::Json(400)),
        ("mixed types", post(&input_with(r#""data": [1, "a", true, null, 5, 6, 7, 8, 9, 10]"#)), Expect::Json(400)),
        ("negative dimension", post(br#"{"inputs": [{"name": "input", "shape": [-1, 10], "datatype": "FP32", "data": [1]}]}"#), Expect::Json(400)),
        ("shape product overflow", post(br#"{"inputs": [{"name": "input", "shape": [4294967296, 4294967296, 10], "datatype": "FP32", "data": [1]}]}"#), Expect::Json(400)),
        ("huge shape, tiny data", post(br#"{"inputs": [{"name": "input", "shape": [100000000, 10], "datatype": "FP32", "data": [1]}]}"#), Expect::Json(400)),
        ("NaN literal", post(&input_with(r#""data": [NaN,2,3,4,5,6,7,8,9,10]"#)), Expect::Json(400)),
        ("booleans for a float input", post(&input_with(r#""data": [true,false,true,false,true,false,true,false,true,false]"#).replace_str("FP32", "BOOL")), Expect::Json(400)),
        ("binary data misaligned and odd", request("POST", INFER, &["Inference-Header-Content-Length: 96"], &[br#"{"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","parameters":{"binary_data_size":41}}]}"#.as_slice(), &[7u8; 41]].concat()), Expect::Json(400)),
        // Routing.
        ("mixed-case path", request("GET", "/V2/health/live", &[], b""), Expect::Json(404)),
        ("trailing slash", request("GET", "/v2/health/live/", &[], b""), Expect::Json(404)),
        ("OPTIONS", request("OPTIONS", INFER, &[], b""), Expect::Json(405)),
        ("TRACE", request("TRACE", "/v2", &[], b""), Expect::Json(405)),
        ("HEAD on a GET route", request("HEAD", "/v2/health/live", &[], b""), Expect::Fine),
        ("repository API on the inference port", request("POST", "/v2/repository/models/simple/unload", &[], b"{}"), Expect::Json(404)),
        ("a valid but unknown name", post(&valid_json()).replace_str(INFER, "/v2/models/model..1/infer"), Expect::Json(404)),
        ("a name of dots (valid, unknown)", post(&valid_json()).replace_str(INFER, "/v2/models/.../infer"), Expect::Json(404)),
        ("a name starting with dots (valid, unknown)", post(&valid_json()).replace_str(INFER, "/v2/models/..my_model/infer"), Expect::Json(404)),
        ("a traversal name", post(&valid_json()).replace_str(INFER, "/v2/models/..%2F..%2Fetc/infer"), Expect::Json(400)),
        ("a NUL in the name", post(&valid_json()).replace_str(INFER, "/v2/models/a%00b/infer"), Expect::Json(400)),
        ("a 4 KB name", post(&valid_json()).replace_str(INFER, &format!("/v2/models/{}/infer", "m".repeat(4096))), Expect::Json(400)),
        ("version 2^64", post(&valid_json()).replace_str(INFER, "/v2/models/simple/versions/18446744073709551616/infer"), Expect::Json(400)),
        ("version ../1", post(&valid_json()).replace_str(INFER, "/v2/models/simple/versions/..%2F1/infer"), Expect::Json(400)),
    ];

    for (name, bytes, expect) in cases {
        let answer = raw(addr, &bytes).await;
        match expect {
            Expect::Json(status) => {
                assert_eq!(answer.status, Some(status), "{name}: {answer:?}");
                let value: serde_json::Value =
                    serde_json::from_str(&answer.body).unwrap_or_else(|e| {
                        panic!("{name}: body is not JSON ({e}): {:?}", answer.body)
                    });
                assert!(value["error"].is_string(), "{name}: {value}");
                assert!(
                    value["error"].as_str().unwrap().len() < 2048,
                    "{name}: the error echoes too much"
                );
            }
            Expect::Framing => {
                assert!(
                    answer.status.is_none_or(|s| (400..500).contains(&s)),
                    "{name}: {answer:?}"
                );
            }
            Expect::Fine => {
                assert_eq!(answer.status, Some(200), "{name}: {answer:?}");
            }
        }
        // The server is alive and serving after every case.
        let (status, _) = server
            .infer_f32("simple", "input", &[1, 10], &[1.0; 10])
            .await;
        assert_eq!(status, 200, "after {name}");
    }
    server.shutdown().await;
}

trait ReplaceStr {
    fn replace_str(&self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceStr for Vec<u8> {
    fn replace_str(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8_lossy(self)
            .replacen(from, to, 1)
            .into_bytes()
    }
}
