//! Shared helpers of the integration tests: real servers on port 0 over temporary repositories,
//! a small HTTP client, and fixture readers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use wick::app::{self, Server, StartOptions};
use wick::bench::Target;
use wick::config::Config;

/// `tests/fixtures/<name>` (or any path under the crate root with `..`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `models/<name>/<version>/model.safetensors` of the committed demo repository.
pub fn demo_model(name: &str, version: u64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
        .join(version.to_string())
        .join("model.safetensors")
}

/// The two demo models exactly as config.toml configures them.
pub const DEMO_MODELS: &str = r#"
[[models]]
name = "simple"
architecture = "linear"
config = { in_features = 10, out_features = 1 }

[[models]]
name = "digits"
architecture = "mlp"
config = { in_features = 64, hidden = [128, 64], out_features = 10, activation = "relu", layer_names = ["fc1", "fc2", "fc3"] }
load = { strip_prefix = "model.", ignore = ["optimizer.*"] }
"#;

/// Only the `simple` demo model (PyTorch's `nn.Linear(10, 1)` tutorial model).
pub const SIMPLE: &str = r#"
[[models]]
name = "simple"
architecture = "linear"
config = { in_features = 10, out_features = 1 }
"#;

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

/// A temporary model repository.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A repository holding the demo models' version 1.
    pub fn demo() -> Repo {
        let repo = Repo::new();
        repo.install("simple", 1, &demo_model("simple", 1));
        repo.install("digits", 1, &demo_model("digits", 1));
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.path().join(model).join(version.to_string())
    }

    /// Publishes `file` as `model/version` the way the README says: write elsewhere, rename.
    pub fn install(&self, model: &str, version: u64, file: &Path) {
        let staging = self.path().join(format!(".staging-{model}-{version}"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::copy(file, staging.join("model.safetensors")).unwrap();
        std::fs::create_dir_all(self.path().join(model)).unwrap();
        std::fs::rename(&staging, self.version_dir(model, version)).unwrap();
    }

    /// Publishes a version folder holding several files (`(name in the folder, source)`), e.g.
    /// `model.safetensors` and `tokenizer.json`, with the same write-elsewhere-then-rename.
    pub fn install_files(&self, model: &str, version: u64, files: &[(&str, &Path)]) {
        let staging = self.path().join(format!(".staging-{model}-{version}"));
        std::fs::create_dir_all(&staging).unwrap();
        for (name, source) in files {
            std::fs::copy(source, staging.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        }
        std::fs::create_dir_all(self.path().join(model)).unwrap();
        std::fs::rename(&staging, self.version_dir(model, version)).unwrap();
    }

    /// Writes `config_models` under a `[server]` section for this repository.
    pub fn config(&self, extra_server: &str, config_models: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nrepository = {:?}\npoll_interval_ms = 100\n{extra_server}\n{config_models}",
            self.path().display().to_string()
        );
        Config::parse(&text, Path::new("test.toml"), self.path(), &|_| None).expect("test config")
    }
}

/// A running server and its client.
pub struct TestServer {
    pub server: Option<Server>,
    pub target: Target,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_with(config, StartOptions::default()).await
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

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> (u16, HeaderBytes) {
        let mut conn = self.target.connect().await.expect("connect");
        let (status, body) = conn
            .send(method, path, headers, body.into())
            .await
            .expect("request");
        (status.as_u16(), HeaderBytes(body))
    }

    pub async fn get(&self, path: &str) -> (u16, HeaderBytes) {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> (u16, HeaderBytes) {
        self.request(Method::POST, path, &[], body).await
    }

    /// POSTs JSON and parses the JSON answer (panics if the answer is not JSON).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, bytes) = self.post(path, serde_json::to_vec(body).unwrap()).await;
        (status, bytes.json())
    }

    /// Infers `rows` of FP32 data on `model` and returns the output values.
    pub async fn infer_f32(
        &self,
        model: &str,
        input: &str,
        shape: &[usize],
        data: &[f32],
    ) -> (u16, Value) {
        let body = serde_json::json!({
            "inputs": [{"name": input, "shape": shape, "datatype": "FP32", "data": data}]
        });
        self.post_json(&format!("/v2/models/{model}/infer"), &body)
            .await
    }
}

/// A response body.
pub struct HeaderBytes(pub Bytes);

impl HeaderBytes {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.0)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.0)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

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

/// Reads every F32/I64 tensor of a safetensors fixture: name -> (shape, values).
pub fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Values)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            safetensors::Dtype::F32 => Values::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
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

/// Output `name`'s values of a JSON inference response.
pub fn output_f32(response: &Value, name: &str) -> Vec<f32> {
    let outputs = response["outputs"].as_array().expect("outputs");
    let output = outputs
        .iter()
        .find(|o| o["name"] == name)
        .expect("output present");
    output["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
pub mod process;
pub mod slow;

/// The admin token tests use.
pub const TOKEN: &str = "test-token-1234";

impl TestServer {
    /// Starts with the repository API on a loopback port, protected by [`TOKEN`].
    pub async fn start_admin(config: Config) -> TestServer {
        let options = StartOptions {
            admin_token: Some(TOKEN.to_string()),
            ..StartOptions::default()
        };
        TestServer::start_with(config, options).await
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
}
