//! The official `openai` Python package against `/v1/embeddings` and `/v1/models` of a real
//! wick serving all-MiniLM-L6-v2 (see tests/python/openai_compat.py for what it checks:
//! float and base64, `dimensions`, token ids, usage, errors, and embeddings equal to `/v2`
//! inference's), and the same endpoint's limits and metrics from Rust.

use serde_json::json;

use crate::util::python::run_python;
use crate::util::{demo_model, Repo, TestServer, DIGITS};

/// all-MiniLM-L6-v2 with sentence-transformers' settings (mean pooling, normalised).
pub const MINILM: &str = r#"
[[models]]
name = "minilm"
architecture = "bert"
config = { vocab_size = 30522, hidden_size = 384, num_hidden_layers = 6, num_attention_heads = 12, intermediate_size = 1536, max_position_embeddings = 512, type_vocab_size = 2, layer_norm_eps = 1e-12, hidden_act = "gelu", max_seq_length = 256, pooling = "mean", normalize = true }
batching = { max_batch_size = 8, max_queue_delay_us = 2000, max_request_rows = 8 }
"#;

/// A repository with MiniLM (from models/minilm/1, fetched by scripts/fetch_minilm.sh) and the
/// digits MLP.
pub fn minilm_repo() -> Repo {
    let repo = Repo::new();
    let dir = crate::minilm::minilm_dir();
    repo.install_files(
        "minilm",
        1,
        &[
            ("model.safetensors", &dir.join("model.safetensors")),
            ("tokenizer.json", &dir.join("tokenizer.json")),
        ],
    );
    repo.install("digits", 1, &demo_model("digits", 1));
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_package_gets_v2_embeddings() {
    let repo = minilm_repo();
    let server = TestServer::start(repo.config("", &format!("{MINILM}{DIGITS}"))).await;
    let url = server.server().addr.to_string();
    let stdout = run_python("openai_compat.py", &[&url], "openai").await;
    assert!(stdout.contains("all checks passed"), "{stdout}");

    // The same admission limits as /v2: more rows than max_request_rows is a 400 before any
    // tokenising, in OpenAI's error shape.
    let nine: Vec<String> = (0..9).map(|i| format!("text {i}")).collect();
    let (status, body) = server
        .post_json("/v1/embeddings", &json!({"model": "minilm", "input": nine}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_request_rows"),
        "{body}"
    );
    let (status, body) = server
        .post_json("/v1/embeddings", &json!({"model": 5}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid request body"));

    // Counted as requests of the model, like /v2 inference.
    let (_, metrics) = server.get("/metrics").await;
    let metrics = metrics.text();
    let successes = metrics
        .lines()
        .find(|l| {
            l.starts_with("wick_requests_total{")
                && l.contains("model=\"minilm\"")
                && l.contains("outcome=\"success\"")
        })
        .unwrap_or_else(|| panic!("no minilm success counter in\n{metrics}"));
    let count: f64 = successes.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 10.0, "{successes}");
    server.shutdown().await;
}
