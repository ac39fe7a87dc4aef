//! Request tracing end to end: a `wick serve` process exports its spans over OTLP/HTTP to a
//! small collector in this test, which decodes what it receives. A client's W3C `traceparent`
//! must become the parent of the request's span, whose stages (decode, queue, compute, encode)
//! hang under it, carrying the model, the version and the weights' sha256.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::process::Process;
use crate::util::{eventually, Repo};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// One exported span, flattened from OTLP's JSON.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
    error: bool,
}

/// An OTLP/HTTP collector on port 0 keeping every span it is sent.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&spans);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let body = read_request(&mut stream).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
                let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                kept.lock().unwrap().extend(flatten(&export));
            });
        }
    });
    (addr, spans)
}

/// The body of one HTTP/1.1 request (by its content-length).
async fn read_request(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the exporter closed before its request ended");
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a content-length");
        if data.len() >= end + 4 + length {
            return data[end + 4..end + 4 + length].to_vec();
        }
    }
}

fn flatten(export: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let service = &resource["resource"]["attributes"];
        assert!(
            service.to_string().contains("\"wick\""),
            "service.name: {service}"
        );
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let attributes = span["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let value = &a["value"];
                        let text = value["stringValue"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| value["intValue"].to_string().replace('"', ""));
                        (a["key"].as_str().unwrap_or_default().to_string(), text)
                    })
                    .collect();
                out.push(Span {
                    name: span["name"].as_str().unwrap_or_default().to_string(),
                    trace_id: span["traceId"].as_str().unwrap_or_default().to_lowercase(),
                    span_id: span["spanId"].as_str().unwrap_or_default().to_lowercase(),
                    parent: span["parentSpanId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase(),
                    attributes,
                    error: span["status"]["code"] == json!(2)
                        || span["status"]["code"] == json!("STATUS_CODE_ERROR"),
                });
            }
        }
    }
    out
}

async fn infer(process: &Process, model: &str, body: Value, traceparent: Option<&str>) -> u16 {
    let target = process.target();
    let mut conn = target.connect().await.unwrap();
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(t) = traceparent {
        headers.push(("traceparent", t.to_string()));
    }
    let (status, _) = conn
        .send(
            http::Method::POST,
            &format!("/v2/models/{model}/infer"),
            &headers,
            body.to_string().into(),
        )
        .await
        .unwrap();
    status.as_u16()
}

fn simple_request() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32",
        "data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_becomes_the_parent_of_the_request_s_spans() {
    let (addr, spans) = collector().await;
    let process = Process::start_logged(
        Repo::demo(),
        &format!("otlp_endpoint = \"http://{addr}\""),
        &crate::util::demo_models(),
        // Export every 50 ms rather than every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    assert_eq!(
        infer(&process, "simple", simple_request(), Some(&traceparent)).await,
        200
    );
    // A request without a traceparent starts a trace of its own; a failed one is marked so.
    assert_eq!(infer(&process, "simple", simple_request(), None).await, 200);
    let wrong = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
        "data": [1, 2, 3]}]});
    assert_eq!(
        infer(&process, "simple", wrong, Some(&traceparent)).await,
        400
    );
    let arrived = eventually(Duration::from_secs(20), || {
        let spans = Arc::clone(&spans);
        async move {
            let spans = spans.lock().unwrap();
            spans.iter().filter(|s| s.name == "infer").count() >= 3
                && spans.iter().filter(|s| s.name == "encode").count() >= 2
        }
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    assert!(arrived, "spans received: {spans:#?}");

    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "infer" && s.trace_id == TRACE_ID)
        .collect();
    assert_eq!(roots.len(), 2, "{spans:#?}");
    let (ok, failed): (Vec<&Span>, Vec<&Span>) = roots.iter().partition(|s| !s.error);
    let (ok, failed) = (ok[0], failed[0]);
    assert_eq!(ok.parent, PARENT_ID);
    assert_eq!(ok.attributes["model"], "simple");
    assert_eq!(ok.attributes["version"], "1");
    let sha = ok.attributes["weights_sha256"].clone();
    assert_eq!(sha.len(), 64, "{sha}");
    assert_eq!(ok.attributes["route"], "/v2/infer");
    assert_eq!(failed.parent, PARENT_ID);
    // Every stage of the successful request, once, directly under its span.
    for stage in ["decode", "queue", "compute", "encode"] {
        let children: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == stage && s.parent == ok.span_id)
            .collect();
        assert_eq!(children.len(), 1, "{stage}: {spans:#?}");
        assert_eq!(children[0].trace_id, TRACE_ID);
    }
    let compute = spans
        .iter()
        .find(|s| s.name == "compute" && s.parent == ok.span_id)
        .unwrap();
    assert_eq!(compute.attributes["batch_requests"], "1");
    assert_eq!(compute.attributes["batch_rows"], "1");
    // The request without a traceparent is a root of a new trace.
    let own = spans
        .iter()
        .find(|s| s.name == "infer" && s.trace_id != TRACE_ID)
        .expect("a trace of its own");
    assert!(own.parent.is_empty() || own.parent == "0000000000000000");
    assert_eq!(own.attributes["weights_sha256"], sha);
}

/// One `ModelInfer` RPC for `simple` over hyper's HTTP/2 client, with `traceparent` metadata;
/// returns its grpc-status.
async fn grpc_infer(addr: &str, traceparent: &str) -> String {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use wick::grpc::pb::{model_infer_request::InferInputTensor, ModelInferRequest};

    let message = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 10],
            ..Default::default()
        }],
        raw_input_contents: vec![(1..=10).flat_map(|v| (v as f32).to_le_bytes()).collect()],
        ..Default::default()
    };
    let encoded = prost::Message::encode_to_vec(&message);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("http://localhost/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("traceparent", traceparent)
        .body(Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.unwrap().trailers().cloned();
    parts
        .headers
        .get("grpc-status")
        .or(trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_carries_the_traceparent_too() {
    let (addr, spans) = collector().await;
    let process = Process::start_logged(
        Repo::demo(),
        &format!("otlp_endpoint = \"http://{addr}\"\ngrpc_listen = \"127.0.0.1:0\""),
        &crate::util::demo_models(),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let parent = "b7ad6b7169203331";
    let traceparent = format!("00-{TRACE_ID}-{parent}-01");
    assert_eq!(grpc_infer(&process.grpc_addr(), &traceparent).await, "0");
    let arrived = eventually(Duration::from_secs(20), || {
        let spans = Arc::clone(&spans);
        async move {
            let spans = spans.lock().unwrap();
            spans.iter().any(|s| s.name == "encode") && spans.iter().any(|s| s.name == "infer")
        }
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    assert!(arrived, "spans received: {spans:#?}");
    let root = spans
        .iter()
        .find(|s| s.name == "infer")
        .expect("the request's span");
    assert_eq!(
        (root.trace_id.as_str(), root.parent.as_str()),
        (TRACE_ID, parent)
    );
    assert_eq!(root.attributes["route"], "grpc/ModelInfer");
    for stage in ["decode", "queue", "compute", "encode"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == stage && s.parent == root.span_id),
            "{stage}: {spans:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_otlp_endpoint_is_a_config_error() {
    let repo = Repo::demo();
    let config = repo.write_config("otlp_endpoint = \"https://collector:4318\"", "");
    let output = crate::util::process::wick()
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.otlp_endpoint: must be an http:// URL"),
        "{stderr}"
    );
}
