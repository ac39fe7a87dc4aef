//! Real servers on port 0 and the small HTTP client the tests talk to them with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;
use wick::app::{self, Server, StartOptions};
use wick::bench::Target;
use wick::config::Config;

use super::{demo_models, Repo};

/// The admin token tests use.
pub const TOKEN: &str = "test-token-1234";

/// A running server and its client.
pub struct TestServer {
    pub server: Option<Server>,
    pub target: Target,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_with(config, StartOptions::default()).await
    }

    /// Starts with the repository API on a loopback port (port 0 unless `config` names one),
    /// protected by [`TOKEN`].
    pub async fn start_admin(mut config: Config) -> TestServer {
        config
            .server
            .admin_listen
            .get_or_insert(SocketAddr::from(([127, 0, 0, 1], 0)));
        let options = StartOptions {
            admin_token: Some(TOKEN.to_string()),
            ..StartOptions::default()
        };
        TestServer::start_with(config, options).await
    }

    /// A server of both demo models (version 1 of each, in a new repository), with
    /// `extra_server` lines in its `[server]` section.
    pub async fn demo(extra_server: &str) -> (TestServer, Repo) {
        let repo = Repo::demo();
        let server = TestServer::start(repo.config(extra_server, &demo_models())).await;
        (server, repo)
    }

    pub async fn start_with(config: Config, options: StartOptions) -> TestServer {
        let server = app::start(config, options).await.expect("server starts");
        let target = Target::parse(&format!("http://{}", server.addr)).unwrap();
        TestServer {
            server: Some(server),
            target,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Shuts down a server that client tasks shared; they must all have finished.
    pub async fn shutdown_shared(server: Arc<TestServer>) {
        let Ok(server) = Arc::try_unwrap(server) else {
            panic!("a client task still holds the server");
        };
        server.shutdown().await;
    }

    /// Sends one request on a new connection: status, headers and body of the answer.
    pub async fn request_full(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> (u16, HeaderMap, Bytes) {
        let mut conn = self.target.connect().await.expect("connect");
        let (status, headers, body) = conn
            .send_full(method, path, headers, body.into())
            .await
            .expect("request");
        (status.as_u16(), headers, body)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> (u16, ResponseBody) {
        let (status, _, body) = self.request_full(method, path, headers, body).await;
        (status, ResponseBody(body))
    }

    pub async fn get(&self, path: &str) -> (u16, ResponseBody) {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> (u16, ResponseBody) {
        self.request(Method::POST, path, &[], body).await
    }

    /// POSTs JSON and parses the JSON answer (panics if the answer is not JSON).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, bytes) = self.post(path, serde_json::to_vec(body).unwrap()).await;
        (status, bytes.json())
    }

    /// Infers FP32 `data` of `shape` on `model`'s input `input`: the status and the answer.
    pub async fn infer_f32(
        &self,
        model: &str,
        input: &str,
        shape: &[usize],
        data: &[f32],
    ) -> (u16, Value) {
        let body = super::infer_request(input, "FP32", shape, data);
        self.post_json(&format!("/v2/models/{model}/infer"), &body)
            .await
    }

    /// POSTs to the admin listener with `token` (None: no Authorization header).
    pub async fn admin(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
        let addr = self.server().admin_addr.expect("admin listener");
        let target = Target::parse(&format!("http://{addr}")).unwrap();
        let mut conn = target.connect().await.expect("connect admin");
        let headers: Vec<(&str, String)> = token
            .map(|t| ("authorization", format!("Bearer {t}")))
            .into_iter()
            .collect();
        let (status, body) = conn
            .send(Method::POST, path, &headers, Bytes::from(body.to_string()))
            .await
            .expect("admin request");
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        (status.as_u16(), value)
    }

    /// The repository index (through the admin API).
    pub async fn index(&self) -> Vec<Value> {
        let (status, value) = self.admin("/v2/repository/index", "", Some(TOKEN)).await;
        assert_eq!(status, 200, "{value}");
        value.as_array().cloned().unwrap_or_default()
    }

    /// The index entry of `model` version `version`.
    pub async fn index_entry(&self, model: &str, version: u64) -> Option<Value> {
        self.index().await.into_iter().find(|e| {
            e["name"] == model
                && e["version"].as_str().and_then(|v| v.parse::<u64>().ok()) == Some(version)
        })
    }

    /// Asserts that `/metrics` contains each of `samples` (e.g.
    /// `wick_rollouts_total{model="simple",outcome="promoted"} 1`), showing the exposition if not.
    pub async fn assert_metrics(&self, samples: &[&str]) {
        let text = self.get("/metrics").await.1.text();
        for sample in samples {
            assert!(text.contains(sample), "no {sample:?} in\n{text}");
        }
    }

    /// The `state` and `reason` of `model` version `version` in the index (empty strings when
    /// it has no entry).
    pub async fn version_state(&self, model: &str, version: u64) -> (String, String) {
        let entry = self.index_entry(model, version).await.unwrap_or_default();
        let field = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
        (field("state"), field("reason"))
    }
}

/// A response body.
pub struct ResponseBody(pub Bytes);

impl ResponseBody {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.0)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.0)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// Reads from `stream` until the server closes it or `limit` passes: what it sent, and after
/// how long it closed (`None`: still open at the limit).
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, Some(started.elapsed())),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (seen, None),
        }
    }
}
