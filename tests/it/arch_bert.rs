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
