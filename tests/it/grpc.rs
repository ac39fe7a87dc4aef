//! gRPC (KServe v2 / Triton's GRPCInferenceService) and HTTP/2 against a real wick.
//!
//! NVIDIA's own `tritonclient[grpc]` drives the gRPC listener and the admin listener's
//! repository RPCs (tests/python/tritonclient_grpc.py: health, metadata, config, statistics,
//! FP32 raw and typed, INT64 and BYTES, every error code, the token); a slow model makes the
//! queue-full and timeout codes deterministic (tests/python/grpc_overload.py); hyper's own
//! HTTP/2 client speaks to the inference listener with prior knowledge.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::openai::{minilm_repo, MINILM};
use crate::util::python::run_python;
use crate::util::slow::slow_config;
use crate::util::{wait_for, Repo, TestServer, DIGITS, TOKEN};

const GRPC: &str = "grpc_listen = \"127.0.0.1:0\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_works_against_wick() {
    let repo = minilm_repo();
    let config = repo.config(GRPC, &format!("{MINILM}{DIGITS}"));
    let server = TestServer::start_admin(config).await;
    let s = server.server();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let (grpc, admin, http) = (
        s.grpc_addr.expect("grpc_listen is set").to_string(),
        s.admin_addr.unwrap().to_string(),
        s.addr.to_string(),
    );
    let stdout = run_python(
        "tritonclient_grpc.py",
        &[&grpc, &admin, TOKEN, fixtures, &http],
        "tritonclient",
    )
    .await;
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // gRPC requests count in the same metrics as HTTP's, with the same outcome labels.
    let metrics = server.get("/metrics").await.1.text();
    for (model, outcome) in [
        ("digits", "success"),
        ("digits", "bad_request"),
        ("digits", "unavailable"),
        ("minilm", "success"),
    ] {
        let counted = metrics.lines().any(|l| {
            l.starts_with("wick_requests_total{")
                && l.contains(&format!("model=\"{model}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        });
        assert!(counted, "{model} {outcome} missing:\n{metrics}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_is_off_unless_configured() {
    let repo = Repo::demo();
    let server = TestServer::start(repo.config("", DIGITS)).await;
    assert_eq!(server.server().grpc_addr, None);
    server.shutdown().await;
}

/// A full queue is RESOURCE_EXHAUSTED, a request's timeout in the queue DEADLINE_EXCEEDED, a
/// message over `max_body_bytes` refused from its length prefix (OUT_OF_RANGE, tonic's code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_overload_codes() {
    let repo = Repo::new();
    let extra = format!("{GRPC}\nmax_body_bytes = 65536");
    let (config, probe) = slow_config(
        &repo,
        &extra,
        Duration::from_millis(10),
        "{ max_batch_size = 1, max_queue_size = 2 }",
    );
    let server = Arc::new(TestServer::start(config).await);
    let grpc = server.server().grpc_addr.unwrap().to_string();
    let held = probe.hold();
    probe.reset();
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 10], "data": vec![0.5f32; 10]}]});
    let spawn = |server: &Arc<TestServer>| {
        let (server, body) = (Arc::clone(server), body.clone());
        tokio::spawn(async move { server.post_json("/v2/models/simple/infer", &body).await })
    };
    let mut admitted = vec![spawn(&server)];
    wait_for("the first request to compute", || probe.calls() == 1).await;
    let stdout = run_python("grpc_overload.py", &["timeout", &grpc], "tritonclient").await;
    assert!(stdout.contains("DEADLINE_EXCEEDED"), "{stdout}");
    let slot = server.server().repository().get("simple").unwrap();
    for _ in 0..2 {
        admitted.push(spawn(&server));
    }
    wait_for("a full queue", || slot.engine.is_full()).await;
    let stdout = run_python("grpc_overload.py", &["full", &grpc], "tritonclient").await;
    assert!(stdout.contains("RESOURCE_EXHAUSTED"), "{stdout}");
    let stdout = run_python("grpc_overload.py", &["big", &grpc], "tritonclient").await;
    assert!(stdout.contains("OUT_OF_RANGE"), "{stdout}");
    drop(held);
    for task in admitted {
        let (status, answer): (u16, Value) = task.await.unwrap();
        assert!(status == 200 || status == 429, "{status} {answer}");
    }
    let metrics = server.get("/metrics").await.1.text();
    assert!(
        metrics.contains(r#"wick_rejections_total{model="simple",reason="timeout"}"#),
        "{metrics}"
    );
    TestServer::shutdown_shared(server).await;
}

/// An HTTP/2 connection (prior knowledge) to the inference listener: hyper's client.
async fn h2_connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

async fn h2_request(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> (http::Response<()>, Bytes) {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(Full::new(body))
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.expect("HTTP/2 response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (http::Response::from_parts(parts, ()), bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_on_the_inference_listener() {
    let repo = Repo::demo();
    let server = TestServer::start(repo.config("", DIGITS)).await;
    let addr = server.server().addr;
    let mut sender = h2_connect(addr).await;
    let (response, _) = h2_request(&mut sender, "GET", "/v2/health/ready", Bytes::new()).await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    // Concurrent inferences multiplexed on the one connection, each with its own answer.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let rows = 1 + i % 3;
            let body = json!({"id": format!("r{i}"), "inputs": [{"name": "input", "datatype": "FP32",
                "shape": [rows, 64], "data": vec![0.25f32; rows * 64]}]});
            let body = Bytes::from(serde_json::to_vec(&body).unwrap());
            let path = "/v2/models/digits/infer";
            let (response, bytes) = h2_request(&mut sender, "POST", path, body).await;
            assert_eq!(response.status(), 200, "{bytes:?}");
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(answer["id"], format!("r{i}"));
            assert_eq!(answer["outputs"][0]["shape"], json!([rows, 10]));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The same limits as HTTP/1.1: an oversized body is refused.
    let big = Bytes::from(vec![b' '; 65 << 20]);
    let (response, _) = h2_request(&mut sender, "POST", "/v2/models/digits/infer", big).await;
    assert_eq!(response.status(), 413);
    let (response, _) = h2_request(&mut sender, "GET", "/v2/health/live", Bytes::new()).await;
    assert_eq!(
        response.status(),
        200,
        "the connection survives a refused request"
    );
    server.shutdown().await;
}

/// `Upgrade: h2c` is not offered (hyper has no h2c upgrade; RFC 9113 deprecates it): the
/// request is answered over HTTP/1.1, as the upgrade mechanism allows.
#[tokio::test]
async fn an_h2c_upgrade_request_is_answered_over_http1() {
    let repo = Repo::demo();
    let server = TestServer::start(repo.config("", DIGITS)).await;
    let mut stream = tokio::net::TcpStream::connect(server.server().addr)
        .await
        .unwrap();
    let request = "GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    server.shutdown().await;
}

/// A gRPC message trickled slower than `body_deadline_ms` is cut there (the stream and the
/// buffer tonic reserved for it are released), as a slow HTTP body is.
#[tokio::test]
async fn a_trickled_grpc_message_is_cut_at_the_body_deadline() {
    let repo = Repo::demo();
    let extra = format!("{GRPC}\nbody_deadline_ms = 300");
    let server = TestServer::start(repo.config(&extra, DIGITS)).await;
    let stream = tokio::net::TcpStream::connect(server.server().grpc_addr.unwrap())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = Trickle(rx);
    let request = http::Request::post("http://localhost/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let started = std::time::Instant::now();
    let pending = tokio::spawn(sender.send_request(request));
    // A message declaring 100 bytes, 10 of them sent, then silence.
    tx.send(Bytes::from_static(&[0, 0, 0, 0, 100]))
        .await
        .unwrap();
    tx.send(Bytes::from(vec![0u8; 10])).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the RPC ends at the body deadline")
        .unwrap()
        .unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body
        .collect()
        .await
        .ok()
        .and_then(|c| c.trailers().cloned());
    let status = parts
        .headers
        .get("grpc-status")
        .or(trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        matches!(status.as_deref(), Some(code) if code != "0"),
        "{status:?} {parts:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(290));
    drop(tx);
    server.shutdown().await;
}

/// A request body sent chunk by chunk as the test hands them over.
struct Trickle(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}
