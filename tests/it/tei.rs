//! The TEI-compatible routes (`/embed`, `/tokenize`, `/predict`, `/rerank`, at the root and
//! under `/tei/{model}`) with the JSON TEI's documentation shows, against a real server of
//! all-MiniLM-L6-v2, a 3-label NLI classifier and a one-label cross-encoder made from it: the
//! answers equal `/v2` inference's, in TEI's shapes and order.

use std::path::Path;

use serde_json::{json, Value};

use crate::openai::{minilm_repo, MINILM};
use crate::util::tensors::read_json;
use crate::util::text::text_input;
use crate::util::{f32s, fixture, output_f32, raw_tensors, write_safetensors, Repo, TestServer};

fn case_dir() -> std::path::PathBuf {
    fixture("catalogue/bert_classifier")
}

/// `[[models]]` of the bert_classifier case as `name`, with `labels` labels.
fn classifier_toml(name: &str, labels: &[&str]) -> String {
    let case = read_json(&case_dir().join("case.json"));
    let mut table = toml::Table::try_from(&case["config"]).unwrap();
    let id2label: toml::Table = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), toml::Value::String(l.to_string())))
        .collect();
    table.insert(
        "num_labels".into(),
        toml::Value::Integer(labels.len() as i64),
    );
    table.insert("id2label".into(), toml::Value::Table(id2label));
    format!(
        "[[models]]\nname = \"{name}\"\narchitecture = \"bert\"\nconfig = {}\n",
        toml::Value::Table(table)
    )
}

/// bert_classifier's checkpoint with only the first label's classifier row: a cross-encoder.
fn one_label_checkpoint(target: &Path) {
    let mut tensors = raw_tensors(&case_dir().join("model.safetensors"));
    for (name, _, shape, data) in &mut tensors {
        if name.starts_with("classifier.") {
            let row = data.len() / shape[0];
            data.truncate(row);
            shape[0] = 1;
        }
    }
    write_safetensors(target, &tensors, None);
}

fn repo() -> Repo {
    let repo = minilm_repo();
    let dir = case_dir();
    let tokenizer = dir.join("tokenizer.json");
    repo.install_files(
        "nli",
        1,
        &[
            ("model.safetensors", &dir.join("model.safetensors")),
            ("tokenizer.json", &tokenizer),
        ],
    );
    let scratch = tempfile::tempdir().unwrap();
    let weights = scratch.path().join("model.safetensors");
    one_label_checkpoint(&weights);
    repo.install_files(
        "reranker",
        1,
        &[
            ("model.safetensors", &weights),
            ("tokenizer.json", &tokenizer),
        ],
    );
    repo
}

async fn post(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, answer) = server.post_json(path, &body).await;
    assert_eq!(status, 200, "{path} {body}: {answer}");
    answer
}

/// `/v2` outputs of `model` for texts (and pairs).
async fn v2(server: &TestServer, model: &str, texts: &[&str], pairs: Option<&[&str]>) -> Value {
    let mut inputs = vec![text_input("text", texts)];
    if let Some(pairs) = pairs {
        inputs.push(text_input("text_pair", pairs));
    }
    post(
        server,
        &format!("/v2/models/{model}/infer"),
        json!({ "inputs": inputs }),
    )
    .await
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5, "differ by {worst}");
}

fn assert_tei_error(answer: (u16, Value), status: u16, needle: &str) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    let kind = if status == 400 {
        "validation"
    } else {
        body["error_type"].as_str().unwrap()
    };
    assert_eq!(body["error_type"], kind, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_routes_answer_in_tei_shapes() {
    let repo = repo();
    let models = format!(
        "{MINILM}{}{}",
        classifier_toml("nli", &["contradiction", "entailment", "neutral"]),
        classifier_toml("reranker", &["relevant"])
    );
    let server = TestServer::start(repo.config("", &models)).await;
    let texts = ["What is Deep Learning?", "Deep Learning is not..."];

    // /embed: TEI's example body; one embedding model is served, so the root route finds it.
    let single = post(
        &server,
        "/embed",
        json!({"inputs": "What is Deep Learning?"}),
    )
    .await;
    let batch = post(
        &server,
        "/tei/minilm/embed",
        json!({"inputs": texts, "truncate": false}),
    )
    .await;
    let reference = output_f32(&v2(&server, "minilm", &texts, None).await, "embedding");
    assert_eq!(single.as_array().unwrap().len(), 1);
    close(&f32s(&single[0]), &reference[..384]);
    assert_eq!(batch.as_array().unwrap().len(), 2);
    close(&f32s(&batch[1]), &reference[384..]);

    // /tokenize: three text models are served, so the root route asks for a name.
    assert_tei_error(
        server
            .post_json("/tokenize", &json!({"inputs": "hello world"}))
            .await,
        400,
        "/tei/{model}/tokenize",
    );
    let tokens = post(
        &server,
        "/tei/minilm/tokenize",
        json!({"inputs": "hello world"}),
    )
    .await;
    assert_eq!(
        tokens,
        json!([[
            {"id": 101, "text": "[CLS]", "special": true, "start": null, "stop": null},
            {"id": 7592, "text": "hello", "special": false, "start": 0, "stop": 5},
            {"id": 2088, "text": "world", "special": false, "start": 6, "stop": 11},
            {"id": 102, "text": "[SEP]", "special": true, "start": null, "stop": null}
        ]])
    );
    let bare = post(
        &server,
        "/tei/minilm/tokenize",
        json!({"inputs": ["hello world", "hi"], "add_special_tokens": false}),
    )
    .await;
    assert_eq!(bare[0].as_array().unwrap().len(), 2, "{bare}");
    assert_eq!(bare[1][0]["text"], "hi", "{bare}");

    // /predict: a text, a pair, a batch; probabilities (or logits) of every label, best first.
    let (premise, hypothesis) = ("A man is playing a guitar.", "A person plays music.");
    let probabilities = output_f32(
        &v2(&server, "nli", &[premise], Some(&[hypothesis])).await,
        "probabilities",
    );
    let logits = output_f32(
        &v2(&server, "nli", &[premise], Some(&[hypothesis])).await,
        "logits",
    );
    let labels = ["contradiction", "entailment", "neutral"];
    for (raw, want) in [(false, &probabilities), (true, &logits)] {
        let got = post(
            &server,
            "/tei/nli/predict",
            json!({"inputs": [premise, hypothesis], "raw_scores": raw}),
        )
        .await;
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), 3);
        for p in got {
            let i = labels.iter().position(|l| p["label"] == *l).unwrap();
            assert!(
                (p["score"].as_f64().unwrap() as f32 - want[i]).abs() <= 1e-5,
                "{p}"
            );
        }
        let scores: Vec<f64> = got.iter().map(|p| p["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }
    let single = post(
        &server,
        "/tei/nli/predict",
        json!({"inputs": "I like you."}),
    )
    .await;
    assert_eq!(single.as_array().unwrap().len(), 3, "{single}");
    assert!(single[0]["label"].is_string() && single[0]["score"].is_number());
    let batch = post(
        &server,
        "/tei/nli/predict",
        json!({"inputs": [[premise, hypothesis], [hypothesis, premise]]}),
    )
    .await;
    assert_eq!(batch.as_array().unwrap().len(), 2, "{batch}");
    assert_eq!(batch[0].as_array().unwrap().len(), 3, "{batch}");

    // /rerank: the query paired with each text, sigmoid of the one logit, best first.
    let docs = [
        "Deep Learning is a kind of machine learning.",
        "Cheese is made of milk.",
    ];
    let v2_pairs = v2(
        &server,
        "reranker",
        &["What is Deep Learning?"; 2],
        Some(&docs),
    )
    .await;
    let sigmoid = output_f32(&v2_pairs, "probabilities");
    let raw = output_f32(&v2_pairs, "logits");
    let ranked = post(
        &server,
        "/tei/reranker/rerank",
        json!({"query": "What is Deep Learning?", "texts": docs, "return_text": true}),
    )
    .await;
    let ranked = ranked.as_array().unwrap();
    assert_eq!(ranked.len(), 2);
    assert!(ranked[0]["score"].as_f64() >= ranked[1]["score"].as_f64());
    for r in ranked {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["text"], docs[i]);
        assert!(
            (r["score"].as_f64().unwrap() as f32 - sigmoid[i]).abs() <= 1e-6,
            "{r}"
        );
    }
    let raw_ranked = post(
        &server,
        "/tei/reranker/rerank",
        json!({"query": "What is Deep Learning?", "texts": docs, "raw_scores": true}),
    )
    .await;
    for r in raw_ranked.as_array().unwrap() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!(r.get("text").is_none(), "{r}");
        assert!(
            (r["score"].as_f64().unwrap() as f32 - raw[i]).abs() <= 1e-6,
            "{r}"
        );
    }

    // Errors in TEI's shape, with wick's status codes.
    assert_tei_error(
        server
            .post_json("/tei/nli/embed", &json!({"inputs": "x"}))
            .await,
        400,
        "not a text embedding model",
    );
    assert_tei_error(
        server
            .post_json("/tei/nli/rerank", &json!({"query": "q", "texts": ["a"]}))
            .await,
        400,
        "has 3 labels",
    );
    assert_tei_error(
        server.post_json("/predict", &json!({"inputs": "x"})).await,
        400,
        "several text classification models",
    );
    assert_tei_error(
        server
            .post_json("/tei/nli/predict", &json!({"inputs": [["a"], ["a", "b"]]}))
            .await,
        400,
        "mixes single texts and pairs",
    );
    assert_tei_error(
        server
            .post_json("/tei/nope/embed", &json!({"inputs": "x"}))
            .await,
        404,
        "unknown model",
    );
    assert_tei_error(
        server.post_json("/embed", &json!({"input": "x"})).await,
        400,
        "invalid request body",
    );
    server.shutdown().await;
}
