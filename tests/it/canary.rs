//! Canary rollouts through a running server: the candidate's share of requests naming no version
//! is within the binomial interval and sticks to the request id; a candidate that fails requests
//! is rolled back automatically with no failed request outside the canary share and is not
//! loaded again while its files are unchanged; a healthy candidate is promoted and the previous
//! version retired under the version policy; a text model's canary is judged on its OpenAI
//! and TEI traffic too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_nn::VarBuilder;
use http::Method;
use serde_json::json;
use wick::arch::{Architecture, Configured};
use wick::model::{Assets, HostData, HostTensor, InputError, Model, Prepared, Signature};
use wick::repository::rollout::routes_to_candidate;

use crate::util::{
    demo_model, eventually, f32_tensor, fixture, infer_request, model_version, simple_io,
    write_safetensors, Repo, TestServer, SIMPLE, WAIT,
};

/// `simple` with a canary rollout (`rollout` is the inside of the TOML inline table).
fn simple_with_rollout(rollout: &str) -> String {
    format!("{SIMPLE}rollout = {{ {rollout} }}\n")
}

/// One inference of the fixture request with `x-request-id: id`: status and answering version.
async fn infer_with_id(server: &TestServer, x: &[f32], id: &str) -> (u16, String) {
    let body = serde_json::to_vec(&infer_request("input", "FP32", [8, 10], x)).unwrap();
    let (status, answer) = server
        .request(
            Method::POST,
            "/v2/models/simple/infer",
            &[("x-request-id", id.to_string())],
            body,
        )
        .await;
    let version = if status == 200 {
        model_version(&answer.json())
    } else {
        String::new()
    };
    (status, version)
}

/// Starts a server of `models` over a repository serving `simple` version 1, then publishes
/// `candidate` as version 2 and waits until its canary runs.
async fn canary_server(
    models: &str,
    arch: Option<Arc<Configured>>,
    candidate: &Path,
) -> (TestServer, Repo) {
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    let mut config = repo.config("", models);
    if let Some(arch) = arch {
        config.models[0].architecture = arch;
    }
    let server = TestServer::start_admin(config).await;
    repo.install("simple", 2, candidate);
    let started = eventually(WAIT, || async {
        let (state, reason) = server.version_state("simple", 2).await;
        state == "READY" && reason.starts_with("canary")
    })
    .await;
    assert!(started, "{:?}", server.index().await);
    (server, repo)
}

#[tokio::test]
async fn the_canary_share_is_binomial_and_sticks_to_the_request_id() {
    // Bounds the test cannot reach: only the routing is observed.
    let models = simple_with_rollout(
        "canary_percent = 20, promote_after_s = 3600, max_error_rate = 1.0, max_p99_ratio = 1000.0",
    );
    let (server, _repo) = canary_server(&models, None, &fixture("simple_v2.safetensors")).await;
    let x = simple_io().0;
    let mut candidate = Vec::new();
    for i in 0..1000 {
        let id = format!("req-{i}");
        let (status, version) = infer_with_id(&server, &x, &id).await;
        assert_eq!(status, 200);
        assert!(version == "1" || version == "2", "{version}");
        candidate.push(version == "2");
    }
    let share = candidate.iter().filter(|c| **c).count();
    // 99% interval of Binomial(1000, 0.2): 200 ± 2.576 · sqrt(1000 · 0.2 · 0.8) ≈ 200 ± 33.
    assert!((167..=233).contains(&share), "{share} of 1000");
    // A retry with the same id goes where the first attempt went.
    for (i, went) in candidate.iter().enumerate().take(100) {
        let (_, version) = infer_with_id(&server, &x, &format!("req-{i}")).await;
        assert_eq!(version == "2", *went, "req-{i}");
    }
    // Naming a version bypasses the canary.
    let (status, answer) = server.infer_f32("simple", "input", &[8, 10], &x).await;
    assert_eq!(status, 200, "{answer}");
    server
        .assert_metrics(&[r#"wick_rollout_candidate_version{model="simple"} 2"#])
        .await;
    server.shutdown().await;
}

/// A test architecture: the real `linear` model, whose forward pass fails when an output leaves
/// [-1000, 1000] (as a model that diverged might, with an error instead of garbage).
struct Diverging {
    inner: Arc<Configured>,
}

impl Diverging {
    fn configured() -> Arc<Configured> {
        let table: toml::Table = "in_features = 10\nout_features = 1".parse().unwrap();
        let inner = wick::arch::configure("linear", &table).unwrap();
        Arc::new(Configured::new("linear", Box::new(Diverging { inner })))
    }
}

impl Architecture for Diverging {
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn build(&self, vb: VarBuilder<'_>, assets: &Assets) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(DivergingModel {
            inner: self.inner.architecture().build(vb, assets)?,
        }))
    }
}

struct DivergingModel {
    inner: Box<dyn Model>,
}

impl Model for DivergingModel {
    fn prepare(&self, inputs: Vec<Option<HostTensor>>) -> Result<Prepared, InputError> {
        self.inner.prepare(inputs)
    }

    fn forward(&self, batch: &[&Prepared]) -> candle_core::Result<Vec<Vec<HostTensor>>> {
        let outputs = self.inner.forward(batch)?;
        for tensor in outputs.iter().flatten() {
            if let HostData::F32(values) = &tensor.data {
                if values.iter().any(|v| v.abs() > 1000.0) {
                    candle_core::bail!("the output diverged");
                }
            }
        }
        Ok(outputs)
    }
}

/// A `simple` checkpoint whose weights are all 1000: zeros (the warm-up) give 0, real inputs
/// give outputs in the thousands.
fn huge_weights(dir: &Path) -> PathBuf {
    let path = dir.join("huge.safetensors");
    write_safetensors(
        &path,
        &[
            f32_tensor("linear.weight", &[1, 10], &[1000.0; 10]),
            f32_tensor("linear.bias", &[1], &[0.0]),
        ],
        None,
    );
    path
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_and_traffic_returns_to_the_stable_version() {
    let staging = tempfile::tempdir().unwrap();
    let models = simple_with_rollout(
        "canary_percent = 20, promote_after_s = 3600, max_error_rate = 0.01, max_p99_ratio = 1000.0, min_requests = 5",
    );
    let (server, _repo) = canary_server(
        &models,
        Some(Diverging::configured()),
        &huge_weights(staging.path()),
    )
    .await;
    let x = simple_io().0;
    let mut failed = Vec::new();
    let mut rolled_back = false;
    for i in 0..3000 {
        let id = format!("req-{i}");
        let (status, version) = infer_with_id(&server, &x, &id).await;
        if status != 200 {
            failed.push(id);
        } else {
            assert_eq!(version, "1");
        }
        if i % 20 == 0 && server.version_state("simple", 2).await.0 == "UNAVAILABLE" {
            rolled_back = true;
            break;
        }
    }
    assert!(rolled_back, "{:?}", server.index().await);
    // Every failed request was one the canary share sent to the candidate.
    assert!(failed.len() >= 5, "{failed:?}");
    for id in &failed {
        assert!(
            routes_to_candidate(id.as_bytes(), 20.0),
            "{id} failed outside the canary"
        );
    }
    let (_, reason) = server.version_state("simple", 2).await;
    assert!(
        reason.contains("rolled back") && reason.contains("error rate"),
        "{reason}"
    );
    // The stable version takes everything again, including the ids that went to the candidate.
    for id in &failed {
        assert_eq!(infer_with_id(&server, &x, id).await, (200, "1".to_string()));
    }
    // The rolled-back version is not loaded again while its files are unchanged.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(server.version_state("simple", 2).await.0, "UNAVAILABLE");
    server
        .assert_metrics(&[
            r#"wick_rollouts_total{model="simple",outcome="error_rate"} 1"#,
            r#"wick_rollout_candidate_version{model="simple"} 0"#,
        ])
        .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_and_the_old_version_retired() {
    let models = simple_with_rollout(
        "canary_percent = 50, promote_after_s = 1, max_p99_ratio = 1000.0, min_requests = 5",
    );
    let (server, _repo) = canary_server(&models, None, &fixture("simple_v2.safetensors")).await;
    let x = simple_io().0;
    let mut i = 0;
    let promoted = eventually(WAIT, || {
        i += 1;
        let id = format!("req-{i}");
        let server = &server;
        let x = &x;
        async move {
            let (status, _) = infer_with_id(server, x, &id).await;
            assert_eq!(status, 200);
            server.version_state("simple", 1).await.0 == "UNAVAILABLE"
        }
    })
    .await;
    assert!(promoted, "{:?}", server.index().await);
    let (_, reason) = server.version_state("simple", 1).await;
    assert!(reason.contains("version policy"), "{reason}");
    for i in 0..50 {
        assert_eq!(
            infer_with_id(&server, &x, &format!("after-{i}")).await,
            (200, "2".to_string())
        );
    }
    server
        .assert_metrics(&[r#"wick_rollouts_total{model="simple",outcome="promoted"} 1"#])
        .await;
    server.shutdown().await;
}

/// The small BERT of tests/fixtures/arch as version `version` of model `text`.
fn install_small_bert(repo: &Repo, version: u64) {
    repo.install_files(
        "text",
        version,
        &[
            (
                "model.safetensors",
                &fixture("arch/bert_small/model.safetensors"),
            ),
            ("tokenizer.json", &fixture("arch/bert_small/tokenizer.json")),
        ],
    );
}

#[tokio::test]
async fn a_text_canary_is_judged_on_its_openai_and_tei_traffic() {
    promoted_on_text_traffic(
        "canary_percent = 50, promote_after_s = 1, max_p99_ratio = 1000.0, min_requests = 5",
        "canary",
    )
    .await;
}

/// Serves the small BERT as model `text` with `rollout`, publishes an equal version 2, and
/// sends only OpenAI and TEI requests until version 2 is promoted: it can be only if those
/// routes feed the rollout (`phase`: how the index reason of a running rollout starts).
pub(crate) async fn promoted_on_text_traffic(rollout: &str, phase: &str) {
    let models = format!(
        "[[models]]\nname = \"text\"\narchitecture = \"bert\"\n\
         config = {{ vocab_size = 132, hidden_size = 64, num_hidden_layers = 2, num_attention_heads = 4, \
         intermediate_size = 128, max_position_embeddings = 64 }}\n\
         load = {{ strip_prefix = \"bert.\", ignore = [\"classifier.*\"] }}\n\
         rollout = {{ {rollout} }}\n"
    );
    let repo = Repo::new();
    install_small_bert(&repo, 1);
    let server = TestServer::start_admin(repo.config("", &models)).await;
    install_small_bert(&repo, 2);
    let started = eventually(WAIT, || async {
        let (state, reason) = server.version_state("text", 2).await;
        state == "READY" && reason.starts_with(phase)
    })
    .await;
    assert!(started, "{:?}", server.index().await);
    // Only these routes carry traffic: the candidate can be promoted only if they count it.
    let mut i = 0;
    let promoted = eventually(WAIT, || {
        i += 1;
        let server = &server;
        let (path, body) = if i % 2 == 0 {
            (
                "/v1/embeddings",
                json!({"model": "text", "input": "a short text"}),
            )
        } else {
            ("/embed", json!({"inputs": "a short text"}))
        };
        async move {
            let (status, answer) = server
                .request(
                    Method::POST,
                    path,
                    &[("x-request-id", format!("text-{i}"))],
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
            assert_eq!(status, 200, "{path}: {}", answer.text());
            server.version_state("text", 1).await.0 == "UNAVAILABLE"
        }
    })
    .await;
    assert!(promoted, "{:?}", server.index().await);
    server.shutdown().await;
}
