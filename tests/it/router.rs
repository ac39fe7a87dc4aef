//! Every route and error class of the README's "Talking to it" and "Repository API", at the
//! router: requests go straight into `wick::http::router` (and the admin router) with tower's
//! `oneshot`, without a socket, over a real repository; each row of a table asserts the status,
//! the body (`{"error": ...}` with the reason for every error) and the header that goes with
//! the status (`Retry-After`, `WWW-Authenticate`). What only a connection shows (framing,
//! header timeouts, keep-alive, hyper's own refusals) stays with the real-socket tests in
//! protocol, binary, hostile_input and operations.

use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use wick::config::Config;
use wick::http::{AppState, BodyLimits, Limits};
use wick::protocol::DecodeLimits;
use wick::repository::{Repository, SyncMode};
use wick::telemetry::Metrics;

use crate::util::slow::{slow_config, POISON};
use crate::util::{
    demo_model, demo_models, fixture, infer_request, wait_for, Repo, SIMPLE, TOKEN, WAIT,
};

/// A router's state over a real repository, loaded as `wick serve` loads it, without listeners.
struct App {
    state: AppState,
    repo: Repo,
}

/// The limits of a router here: one body at most 64 KiB (the row messages name it), and
/// received within `body_deadline`; 64 KiB of bodies in flight at once.
fn limits(body_deadline: Duration) -> Limits {
    Limits {
        body: BodyLimits {
            max_bytes: 64 << 10,
            deadline: body_deadline,
        },
        decode: DecodeLimits::default(),
        max_inflight_body_bytes: 64 << 10,
        slow_threads: 2,
    }
}

impl App {
    /// The state `config`'s repository gives the router, with `limits`.
    async fn new(repo: Repo, config: Config, limits: Limits) -> App {
        let metrics = Arc::new(Metrics::new());
        let cpu = wick::engine::cpu::Cpu::new(2);
        let repository = Arc::new(Repository::new(&config, metrics, cpu).expect("compute threads"));
        let app = App {
            state: AppState::new(repository, limits, config.server.strict_readiness),
            repo,
        };
        app.sync().await;
        app
    }

    /// Loads what the repository holds now, as the initial load and the repository API do.
    async fn sync(&self) {
        let repository = Arc::clone(&self.state.repository);
        tokio::task::spawn_blocking(move || repository.sync_all(SyncMode::Immediate))
            .await
            .unwrap();
    }

    /// The demo models, with a 200 ms body deadline.
    async fn demo() -> App {
        let repo = Repo::demo();
        let config = repo.config("", &demo_models());
        App::new(repo, config, limits(Duration::from_millis(200))).await
    }

    fn inference(&self) -> Router {
        wick::http::router(self.state.clone())
    }

    fn admin(&self) -> Router {
        wick::http::admin::router(self.state.clone(), TOKEN)
    }

    /// Stops the compute threads (joining them blocks: off the runtime's workers).
    async fn shutdown(self) {
        let repository = Arc::clone(&self.state.repository);
        tokio::task::spawn_blocking(move || repository.shutdown())
            .await
            .unwrap();
    }
}

/// What a row expects in the body.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// `{"error": message}` (as `application/json`) whose message contains this.
    Error(&'static str),
    /// A body containing this text.
    Contains(&'static str),
    /// No body (health and readiness).
    Empty,
}

use Answer::{Contains, Empty, Error};

/// One request and what it must be answered with.
struct Row {
    request: http::request::Builder,
    body: Body,
    status: u16,
    answer: Answer,
    header: Option<(&'static str, &'static str)>,
}

fn row(method: Method, path: &str, body: impl Into<Body>) -> Row {
    Row {
        request: Request::builder().method(method).uri(path),
        body: body.into(),
        status: 0,
        answer: Answer::Empty,
        header: None,
    }
}

fn get(path: &str) -> Row {
    row(Method::GET, path, Body::empty())
}

fn post(path: &str, body: impl Into<Body>) -> Row {
    row(Method::POST, path, body)
}

/// POSTs a JSON body.
fn post_json(path: &str, body: &Value) -> Row {
    post(path, serde_json::to_vec(body).unwrap())
}

impl Row {
    fn with(mut self, name: &str, value: &str) -> Row {
        self.request = self.request.header(name, value);
        self
    }

    fn token(self, token: &str) -> Row {
        self.with("authorization", &format!("Bearer {token}"))
    }

    fn answers(mut self, status: u16, answer: Answer) -> Row {
        self.status = status;
        self.answer = answer;
        self
    }

    /// The answer also carries this header.
    fn and_header(mut self, name: &'static str, value: &'static str) -> Row {
        self.header = Some((name, value));
        self
    }

    /// [`Row::check`] on a task of its own.
    fn spawn(self, router: &Router) -> tokio::task::JoinHandle<()> {
        let router = router.clone();
        tokio::spawn(async move { self.check(&router).await })
    }

    async fn check(self, router: &Router) {
        let request = self.request.body(self.body).unwrap();
        let what = format!("{} {}", request.method(), request.uri());
        let response = tokio::time::timeout(WAIT, router.clone().oneshot(request))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, self.status, "{what}: {text}");
        match self.answer {
            Answer::Error(needle) => {
                assert_eq!(
                    header(&headers, "content-type"),
                    Some("application/json"),
                    "{what}"
                );
                let value: Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
                let message = value["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no error field in {value}"));
                assert!(
                    message.contains(needle),
                    "{what}: {message:?} does not mention {needle:?}"
                );
            }
            Answer::Contains(needle) => {
                assert!(text.contains(needle), "{what}: {needle:?} not in {text}")
            }
            Answer::Empty => assert!(body.is_empty(), "{what}: {text}"),
        }
        if let Some((name, value)) = self.header {
            assert_eq!(header(&headers, name), Some(value), "{what}: header {name}");
        }
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

async fn check_all(router: &Router, rows: Vec<Row>) {
    for row in rows {
        row.check(router).await;
    }
}

/// A request body that never ends: a client that stopped sending.
struct Stalled;

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A valid request for `simple` with `rows` rows.
fn simple_rows(rows: usize) -> Value {
    infer_request("input", "FP32", [rows, 10], vec![0.5f32; rows * 10])
}

#[tokio::test]
async fn every_inference_route_and_client_error() {
    let app = App::demo().await;
    check_all(&app.inference(), inference_rows()).await;
    app.shutdown().await;
}

/// The demo models' routes, and every client error (the demo's limits: 64 KiB, 200 ms).
fn inference_rows() -> Vec<Row> {
    let one = simple_rows(1);
    let infer = "/v2/models/simple/infer";
    vec![
        // The routes.
        get("/v2/health/live").answers(200, Empty),
        get("/v2/health/ready").answers(200, Empty),
        get("/v2").answers(200, Contains(r#""name":"wick""#)),
        get("/v2/models/digits").answers(200, Contains(r#""shape":[-1,64]"#)),
        get("/v2/models/digits/versions/1").answers(200, Contains(r#""versions":["1"]"#)),
        get("/v2/models/digits/ready").answers(200, Empty),
        get("/v2/models/digits/versions/1/ready").answers(200, Empty),
        post_json(infer, &one).answers(200, Contains(r#""model_version":"1""#)),
        post_json("/v2/models/simple/versions/1/infer", &one)
            .answers(200, Contains(r#""model_name":"simple""#)),
        get("/metrics").answers(200, Contains("# EOF")),
        // 400: the request is wrong.
        post(infer, "{not json").answers(400, Error("invalid JSON")),
        post_json(infer, &infer_request("input", "FP32", [1, 9], [0.5f32; 9]))
            .answers(400, Error("does not match the model's [-1, 10]")),
        post_json(
            "/v2/models/digits/infer",
            &infer_request("input", "FP32", [2049, 64], vec![0f32; 2049 * 64]),
        )
        .answers(400, Error("at most 2048 per request (max_request_rows)")),
        post_json("/v2/models/..%2F..%2Fetc/infer", &one).answers(400, Error("invalid model name")),
        post_json("/v2/models/simple/versions/01/infer", &one)
            .answers(400, Error(r#"invalid version "01""#)),
        get("/v2/models/simple/versions/0").answers(400, Error(r#"invalid version "0""#)),
        get("/v2/models/simple/versions/x/ready").answers(400, Error(r#"invalid version "x""#)),
        post_json(infer, &one)
            .with("content-encoding", "br")
            .answers(400, Error("invalid Content-Encoding header")),
        post_json(infer, &one)
            .with("inference-header-content-length", "ten")
            .answers(400, Error("Inference-Header-Content-Length")),
        // 404: no such model, version or route.
        post_json("/v2/models/nope/infer", &one).answers(404, Error(r#"unknown model "nope""#)),
        get("/v2/models/nope").answers(404, Error(r#"unknown model "nope""#)),
        get("/v2/models/nope/ready").answers(404, Error(r#"unknown model "nope""#)),
        get("/v2/models/nope/versions/1").answers(404, Error(r#"unknown model "nope""#)),
        post_json("/v2/models/simple/versions/7/infer", &one)
            .answers(404, Error(r#"unknown version 7 of model "simple""#)),
        get("/v2/models/simple/versions/7").answers(404, Error("unknown version 7")),
        get("/v2/models/simple/versions/7/ready").answers(404, Error("unknown version 7")),
        get("/v3/whatever").answers(404, Error("no route for /v3/whatever")),
        get("/v2/health/live/").answers(404, Error("no route for /v2/health/live/")),
        post("/v2/repository/index", "")
            .token(TOKEN)
            .answers(404, Error("no route for /v2/repository/index")),
        // 405: a route, but not for this method.
        get(infer).answers(405, Error("method not allowed")),
        row(Method::DELETE, "/v2/health/live", "").answers(405, Error("method not allowed")),
        post("/v2/health/ready", "").answers(405, Error("method not allowed")),
        row(Method::PUT, "/metrics", "").answers(405, Error("method not allowed")),
        // 408: the body did not arrive within body_deadline_ms.
        post(infer, Body::new(Stalled)).answers(408, Error("request body was not received")),
        // 413: over max_body_bytes, declared, sent, or once decompressed.
        post(infer, "")
            .with("content-length", "100000")
            .answers(413, Error("larger than the limit of 65536 bytes")),
        post(infer, vec![b' '; 100_000]).answers(413, Error("larger than the limit of 65536")),
        post(infer, gzip(&vec![b' '; 100_000]))
            .with("content-encoding", "gzip")
            .answers(413, Error("larger than the limit of 65536")),
    ]
}

#[tokio::test]
async fn what_is_not_ready_answers_503() {
    // simple serves version 1 while its version 2 failed to load; digits has no version at all.
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    let config = repo.config("", &demo_models());
    let app = App::new(repo, config, limits(WAIT)).await;
    let broken = fixture("broken/wrong_shape.safetensors");
    app.repo.install("simple", 2, &broken);
    app.sync().await;
    let router = app.inference();
    let rows = vec![
        get("/v2/health/live").answers(200, Empty),
        get("/v2/health/ready").answers(503, Empty),
        get("/v2/models/digits/ready").answers(503, Empty),
        get("/v2/models/digits").answers(200, Contains(r#""versions":[]"#)),
        post_json(
            "/v2/models/digits/infer",
            &infer_request("input", "FP32", [1, 64], vec![0f32; 64]),
        )
        .answers(503, Error(r#"model "digits" has no ready version"#))
        .and_header("retry-after", "1"),
        post_json("/v2/models/simple/infer", &simple_rows(1))
            .answers(200, Contains(r#""model_version":"1""#)),
        post_json("/v2/models/simple/versions/2/infer", &simple_rows(1))
            .answers(
                503,
                Error(r#"version 2 of model "simple" is not ready (Unavailable)"#),
            )
            .and_header("retry-after", "1"),
        get("/v2/models/simple/versions/2").answers(503, Error("is not ready")),
        get("/v2/models/simple/versions/2/ready").answers(503, Empty),
    ];
    check_all(&router, rows).await;

    // Shutdown has begun: still live, no longer ready, while requests are still served.
    app.state.draining.store(true, Ordering::Release);
    let rows = vec![
        get("/v2/health/live").answers(200, Empty),
        get("/v2/models/simple/ready").answers(503, Empty),
        get("/v2/models/simple/versions/1/ready").answers(503, Empty),
        post_json("/v2/models/simple/infer", &simple_rows(1)).answers(200, Contains("outputs")),
    ];
    check_all(&router, rows).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_busy_server_answers_503_and_429_with_retry_after_and_a_failure_500() {
    let repo = Repo::new();
    let (config, probe) = slow_config(
        &repo,
        "",
        Duration::ZERO,
        "{ max_batch_size = 1, max_queue_size = 2 }",
    );
    let app = App::new(repo, config, limits(WAIT)).await;
    let router = app.inference();
    let slot = app.state.repository.get("simple").unwrap();
    let infer = "/v2/models/simple/infer";
    let spawn = || {
        post_json(infer, &simple_rows(1))
            .answers(200, Contains("outputs"))
            .spawn(&router)
    };

    // A client sending a body of the whole in-flight budget, slowly: the next body is refused.
    let stalled = post(infer, Body::new(Stalled))
        .with("content-length", "65536")
        .answers(408, Error("not received"))
        .spawn(&router);
    wait_for("the budget to be taken", || {
        app.state.inflight.in_use() == 64 << 10
    })
    .await;
    post_json(infer, &simple_rows(1))
        .answers(503, Error("(max_inflight_body_bytes); retry later"))
        .and_header("retry-after", "1")
        .check(&router)
        .await;
    stalled.abort();
    let _ = stalled.await;
    wait_for("the budget to be free", || app.state.inflight.in_use() == 0).await;

    // The compute thread is held inside a forward pass: nothing leaves the queue.
    probe.reset();
    let held = probe.hold();
    let mut admitted = vec![spawn()];
    wait_for("the first forward pass", || probe.calls() == 1).await;
    let mut timeout = simple_rows(1);
    timeout["parameters"] = json!({"timeout": 1000});
    post_json(infer, &timeout)
        .answers(503, Error("past its timeout of 1000 µs"))
        .and_header("retry-after", "1")
        .check(&router)
        .await;
    // Fill the queue (the timed-out request may still hold a place until the thread skips it).
    while slot.engine.queue_len() < 2 {
        let queued = slot.engine.queue_len();
        admitted.push(spawn());
        wait_for("the request to queue", || slot.engine.queue_len() > queued).await;
    }
    post_json(infer, &simple_rows(1))
        .answers(429, Error("has 2 requests queued, its max_queue_size"))
        .and_header("retry-after", "1")
        .check(&router)
        .await;

    drop(held);
    for request in admitted {
        request.await.unwrap();
    }
    // A forward pass that fails is wick's failure, not the client's: a 500 without details.
    let mut poisoned = simple_rows(1);
    poisoned["inputs"][0]["data"][0] = json!(POISON);
    post_json(infer, &poisoned)
        .answers(500, Error("inference failed; see the server log"))
        .check(&router)
        .await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_repository_api_needs_the_token_and_answers_every_status() {
    // `broken` has one version, which does not load.
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    repo.install("broken", 1, &fixture("broken/wrong_shape.safetensors"));
    let models = format!("{SIMPLE}{}", SIMPLE.replace("\"simple\"", "\"broken\""));
    let config = repo.config("", &models);
    let app = App::new(repo, config, limits(WAIT)).await;
    check_all(&app.admin(), repository_api_rows()).await;
    // The unload took effect on the inference side.
    post_json("/v2/models/simple/infer", &simple_rows(1))
        .answers(503, Error("no ready version"))
        .check(&app.inference())
        .await;
    app.shutdown().await;
}

/// A request to the repository API with the token.
fn authorized(path: &str, body: &'static str) -> Row {
    post(path, body).token(TOKEN)
}

/// The repository API's routes and errors, over `simple` (loads) and `broken` (does not).
fn repository_api_rows() -> Vec<Row> {
    let index = "/v2/repository/index";
    let load = "/v2/repository/models/simple/load";
    // 401 before anything else, whatever the path.
    let refused = [
        post(index, ""),
        post(index, "").token("wrong"),
        post(index, "").with("authorization", &format!("Basic {TOKEN}")),
        post("/v2/repository/nope", ""),
    ];
    let refused = refused.into_iter().map(|row| {
        row.answers(401, Error("missing or wrong bearer token"))
            .and_header("www-authenticate", "Bearer")
    });
    let rows = vec![
        // The routes.
        authorized(index, "").answers(
            200,
            Contains(r#""name":"simple","version":"1","state":"READY""#),
        ),
        authorized(index, r#"{"ready": true}"#).answers(200, Contains(r#""name":"simple""#)),
        authorized(load, "").answers(200, Empty),
        authorized(load, r#"{"parameters":{"version":"1"}}"#).answers(200, Empty),
        // 400: a refused request, or a load that fails.
        authorized(load, r#"{"parameters":{"config":"{}"}}"#)
            .answers(400, Error("loading a model from a config")),
        authorized(
            load,
            r#"{"parameters":{"file:1/model.safetensors":"AAAA"}}"#,
        )
        .answers(400, Error("loading a model from a config or files")),
        authorized(load, r#"{"parameters":{"version":"01"}}"#)
            .answers(400, Error(r#"invalid version "01""#)),
        authorized(load, "{not json").answers(400, Error("invalid JSON")),
        authorized("/v2/repository/models/..%2Fx/load", "")
            .answers(400, Error("invalid model name")),
        authorized("/v2/repository/models/broken/load", "")
            .answers(400, Error("size mismatch for linear.weight")),
        // 404, 405, 413.
        authorized("/v2/repository/models/nope/load", "")
            .answers(404, Error(r#"unknown model "nope""#)),
        authorized("/v2/repository/models/nope/unload", "")
            .answers(404, Error(r#"unknown model "nope""#)),
        authorized("/v2/repository/nope", "")
            .answers(404, Error("no route for /v2/repository/nope")),
        get(index)
            .token(TOKEN)
            .answers(405, Error("method not allowed")),
        post(index, vec![b' '; 100_000])
            .token(TOKEN)
            .answers(413, Error("larger than the limit of 65536")),
        // Last, as it changes what is served.
        authorized("/v2/repository/models/simple/unload", "").answers(200, Empty),
    ];
    refused.chain(rows).collect()
}
