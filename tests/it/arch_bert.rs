//! `bert` against Hugging Face transformers through HTTP: a small random BERT saved as a
//! `BertForSequenceClassification` state dict in F16 (keys `bert.*`, `classifier.*`, the legacy
//! `position_ids` buffer, an unused pooler) gives the embeddings PyTorch computed
//! (scripts/make_arch_fixtures.py) for text tokenised server-side and for client token ids, alone
//! and batched; bad inputs are refused with a reason; a checkpoint with a layer missing is refused
//! with the exact keys.

use std::path::{Path, PathBuf};

use crate::util::tensors::read_json;
use crate::util::text::{ids_request, layer_keys, text_request, BERT_LAYER};
use crate::util::{
    assert_close, assert_error, f32s, fixture, infer_request, output_f32, Repo, TestServer,
    Tolerance,
};
use serde_json::{json, Value};

/// What transformers computed (scripts/make_arch_fixtures.py).
fn reference() -> Value {
    read_json(&fixture("arch/bert_small.json"))
}

/// F32 against transformers' F32 forward pass of the same F16 weights.
const TOLERANCE: Tolerance = Tolerance::Absolute(1e-4);

fn model_toml(name: &str, extra_load: &str) -> String {
    let c = &reference()["config"];
    format!(
        "[[models]]\nname = \"{name}\"\narchitecture = \"bert\"\n\
         config = {{ vocab_size = {}, hidden_size = {}, num_hidden_layers = {}, num_attention_heads = {}, \
         intermediate_size = {}, max_position_embeddings = {}, type_vocab_size = {}, layer_norm_eps = {:e}, hidden_act = {} }}\n\
         load = {{ strip_prefix = \"bert.\"{extra_load} }}\n\
         batching = {{ max_batch_size = 16, max_queue_delay_us = 20000 }}\n",
        c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"],
        c["max_position_embeddings"], c["type_vocab_size"], c["layer_norm_eps"].as_f64().unwrap(), c["hidden_act"]
    )
}

const IGNORE_HEAD: &str = ", ignore = [\"classifier.*\"]";

fn install(repo: &Repo, name: &str, weights: &Path) {
    let tokenizer = fixture("arch/bert_small/tokenizer.json");
    repo.install_files(
        name,
        1,
        &[
            ("model.safetensors", weights),
            ("tokenizer.json", &tokenizer),
        ],
    );
}

fn weights() -> PathBuf {
    fixture("arch/bert_small/model.safetensors")
}

/// The server and the repository it serves from (dropped together at the end of a test).
async fn small_server() -> (TestServer, Repo) {
    let repo = Repo::new();
    install(&repo, "small", &weights());
    let server = TestServer::start(repo.config("", &model_toml("small", IGNORE_HEAD))).await;
    (server, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_embeddings_match_pytorch_alone_and_batched() {
    let (server, _repo) = small_server().await;
    let reference = reference();
    let cases = reference["texts"].as_array().unwrap();
    let hidden = reference["config"]["hidden_size"].as_u64().unwrap() as usize;
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();

    // All texts in one request: rows of 6 to 64 tokens padded and grouped inside the model.
    let (status, response) = server
        .post_json("/v2/models/small/infer", &text_request(&texts))
        .await;
    assert_eq!(status, 200, "{response}");
    let batched = output_f32(&response, "embedding");
    let truncated: Vec<Value> = cases.iter().map(|c| c["truncated"].clone()).collect();
    assert_eq!(response["parameters"]["truncated"], json!(truncated));
    let tokens: Vec<usize> = cases
        .iter()
        .map(|c| c["ids"].as_array().unwrap().len())
        .collect();
    assert_eq!(response["parameters"]["tokens"], json!(tokens));
    assert_eq!(
        truncated.last(),
        Some(&json!(true)),
        "the fixture's last text is longer than the model"
    );

    for (i, case) in cases.iter().enumerate() {
        let want = f32s(&case["embedding"]);
        assert_close(
            &batched[i * hidden..(i + 1) * hidden],
            &want,
            TOLERANCE,
            &format!("batched text {i}"),
        );
        let (status, alone) = server
            .post_json("/v2/models/small/infer", &text_request(&texts[i..=i]))
            .await;
        assert_eq!(status, 200, "{alone}");
        let alone = output_f32(&alone, "embedding");
        assert_close(&alone, &want, TOLERANCE, &format!("text {i}"));
        // The server's tokenisation is the fixture's: the same ids sent as INT64 give the same
        // embedding.
        let (status, by_ids) = server
            .post_json(
                "/v2/models/small/infer",
                &ids_request(&json!([case["ids"]]), None, None),
            )
            .await;
        assert_eq!(status, 200, "{by_ids}");
        assert_eq!(
            output_f32(&by_ids, "embedding"),
            alone,
            "text {i}: text and its token ids disagree"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ids_with_mask_and_types_match_pytorch() {
    let (server, _repo) = small_server().await;
    let case = &reference()["ids_case"];
    let request = ids_request(
        &case["input_ids"],
        Some(&case["attention_mask"]),
        Some(&case["token_type_ids"]),
    );
    // Twice at once: the engine batches them and the model pads across requests.
    let (a, b) = tokio::join!(
        server.post_json("/v2/models/small/infer", &request),
        server.post_json("/v2/models/small/infer", &request)
    );
    let want: Vec<f32> = case["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f32s)
        .collect();
    for (status, response) in [a, b] {
        assert_eq!(status, 200, "{response}");
        assert_close(
            &output_f32(&response, "embedding"),
            &want,
            TOLERANCE,
            "ids case",
        );
        let out = response["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "embedding")
            .unwrap()
            .clone();
        assert_eq!(out["shape"], json!([2, want.len() / 2]));
        assert!(
            response["parameters"].get("truncated").is_none(),
            "{response}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_a_reason() {
    let (server, _repo) = small_server().await;
    let vocab = reference()["config"]["vocab_size"].as_u64().unwrap();
    let too_long: Vec<i64> = vec![5; 65];
    let cases = [
        (
            json!({"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            {"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [[5]]}]}),
            "not both",
        ),
        (
            ids_request(&json!([[2, vocab, 3]]), None, None),
            "vocab_size",
        ),
        (ids_request(&json!([[2, -1, 3]]), None, None), "vocab_size"),
        (
            ids_request(&json!([[2, 5, 3]]), Some(&json!([[1, 2, 1]])), None),
            "0 or 1",
        ),
        (
            ids_request(
                &json!([[2, 5, 3], [2, 6, 3]]),
                Some(&json!([[1, 1, 1], [0, 0, 0]])),
                None,
            ),
            "row 1 attends to no token",
        ),
        (
            ids_request(&json!([[2, 5, 3]]), None, Some(&json!([[0, 2, 0]]))),
            "type_vocab_size",
        ),
        (
            ids_request(&json!([too_long]), None, None),
            "max_position_embeddings",
        ),
        (
            infer_request("text", "BYTES", [0], json!([])),
            "batch of 0 rows",
        ),
        (
            json!({"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            {"name": "attention_mask", "shape": [1, 1], "datatype": "INT64", "data": [[1]]}]}),
            "go with \"input_ids\"",
        ),
        (
            json!({"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [[2, 3]]},
            {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [[1, 1, 1]]}]}),
            "has shape",
        ),
    ];
    for (request, needle) in cases {
        let (status, response) = server.post_json("/v2/models/small/infer", &request).await;
        assert_error(&request.to_string(), (status, &response), 400, needle);
    }
    server.shutdown().await;
}

/// Writes the fixture checkpoint without the keys starting with `drop`.
fn without_keys(drop: &str, dir: &Path) -> PathBuf {
    let bytes = std::fs::read(weights()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with(drop))
        .collect();
    let path = dir.join("pruned.safetensors");
    safetensors::serialize_to_file(kept, None, &path).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_layer_and_an_unmapped_head_are_refused_with_the_exact_keys() {
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    install(
        &repo,
        "pruned",
        &without_keys("bert.encoder.layer.1.", scratch.path()),
    );
    install(&repo, "headed", &weights());
    install(&repo, "good", &weights());
    let models = format!(
        "{}{}{}",
        model_toml("pruned", IGNORE_HEAD),
        model_toml("headed", ""),
        model_toml("good", IGNORE_HEAD)
    );
    let server = TestServer::start_admin(repo.config("", &models)).await;

    let entry = server.index_entry("pruned", 1).await.expect("index entry");
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    let mut want = layer_keys("encoder.layer", 1, &BERT_LAYER);
    want.sort();
    assert_eq!(entry["report"]["missing"], json!(want));
    assert_eq!(entry["report"]["unexpected"], json!([]));
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("\"encoder.layer.1.output.LayerNorm.bias\""),
        "{entry}"
    );

    let entry = server.index_entry("headed", 1).await.expect("index entry");
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    assert_eq!(
        entry["report"]["unexpected"],
        json!(["classifier.bias", "classifier.weight"])
    );
    assert_eq!(entry["report"]["missing"], json!([]));

    // The same checkpoint with the head ignored loads: position_ids and the pooler are optional,
    // the F16 tensors are widened.
    let entry = server.index_entry("good", 1).await.expect("index entry");
    assert_eq!(entry["state"], "READY", "{entry}");
    let (status, _) = server.get("/v2/models/good/ready").await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_bounds_every_forward_pass() {
    let repo = Repo::new();
    install(&repo, "small", &weights());
    let toml = model_toml("small", IGNORE_HEAD).replace(
        "batching = { max_batch_size = 16, max_queue_delay_us = 20000 }",
        "batching = { max_batch_size = 16, max_batch_tokens = 64, max_queue_delay_us = 200000 }",
    );
    assert!(toml.contains("max_batch_tokens = 64"), "{toml}");
    let server = std::sync::Arc::new(TestServer::start(repo.config("", &toml)).await);
    let reference = reference();
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<Vec<f32>> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| f32s(&c["embedding"]))
        .collect();
    // Every text at once, as separate requests: batches form, within the budget.
    let tasks: Vec<_> = texts
        .iter()
        .map(|text| {
            let server = std::sync::Arc::clone(&server);
            let request = text_request(&[text.as_str()]);
            tokio::spawn(async move { server.post_json("/v2/models/small/infer", &request).await })
        })
        .collect();
    for (task, expected) in tasks.into_iter().zip(&expected) {
        let (status, response) = task.await.unwrap();
        assert_eq!(status, 200, "{response}");
        assert_close(
            &output_f32(&response, "embedding"),
            expected,
            TOLERANCE,
            "an embedding batched under a token budget",
        );
    }
    // A request larger than the budget alone still runs, in passes of at most 64 padded tokens.
    let (status, response) = server
        .post_json(
            "/v2/models/small/infer",
            &text_request(&texts.iter().map(String::as_str).collect::<Vec<_>>()),
        )
        .await;
    assert_eq!(status, 200, "{response}");
    let metrics = server.get("/metrics").await.1.text();
    let count = |line: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
    };
    // Forward calls of the engine: each within the budget but the one that held the single
    // request bigger than it (it runs alone).
    let within = count(r#"wick_batch_tokens_bucket{le="64.0",model="small"}"#);
    let all = count(r#"wick_batch_tokens_count{model="small"}"#);
    assert!(within >= 2, "{metrics}");
    assert_eq!(all - within, 1, "forward passes above the budget");
    TestServer::shutdown_shared(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_model_stays_responsive_while_another_is_saturated() {
    // Both models' forward passes share one CPU budget: the busy one's batches never make the
    // quiet one's lone requests wait for them.
    let repo = Repo::new();
    install(&repo, "small", &weights());
    repo.install("simple", 1, &crate::util::demo_model("simple", 1));
    let models = format!(
        "{}{}",
        model_toml("small", IGNORE_HEAD),
        crate::util::SIMPLE
    );
    let server = std::sync::Arc::new(TestServer::start(repo.config("", &models)).await);
    let quiet = serde_json::to_vec(&infer_request("input", "FP32", [1, 10], [0.5f32; 10])).unwrap();
    let latency = |n: usize| {
        let server = std::sync::Arc::clone(&server);
        let quiet = quiet.clone();
        async move {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let started = std::time::Instant::now();
                let (status, _) = server.post("/v2/models/simple/infer", quiet.clone()).await;
                assert_eq!(status, 200);
                times.push(started.elapsed());
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            times.sort();
            times
        }
    };
    let idle = latency(20).await;
    let idle_p50 = idle[idle.len() / 2];

    // Saturate the text model: four clients sending batches of its longest texts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let long: Vec<String> = vec!["the quick brown fox jumps over the lazy dog ".repeat(8); 16];
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (std::sync::Arc::clone(&server), std::sync::Arc::clone(&stop));
            let request = text_request(&long.iter().map(String::as_str).collect::<Vec<_>>());
            tokio::spawn(async move {
                let mut served = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, response) =
                        server.post_json("/v2/models/small/infer", &request).await;
                    assert_eq!(status, 200, "{response}");
                    served += 1;
                }
                served
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let loaded = latency(50).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for task in busy {
        served += task.await.unwrap();
    }
    assert!(
        served > 4,
        "the busy model was not busy ({served} requests)"
    );
    let p99 = loaded[loaded.len() * 99 / 100];
    // Generous: a shared machine is noisy. Waiting behind the busy model's batches would cost
    // whole forward passes of 16 long rows each.
    let bound = idle_p50 * 3 + std::time::Duration::from_millis(50);
    assert!(
        p99 <= bound,
        "quiet p99 {p99:?} under load, idle p50 {idle_p50:?}"
    );
    TestServer::shutdown_shared(server).await;
}
