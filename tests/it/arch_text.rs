//! The text catalogue through HTTP: every text case of tests/fixtures/catalogue (made by
//! scripts/make_catalogue_fixtures.py with transformers 5.24 / sentence-transformers 6.2)
//! served from a temporary repository by a real server. Embeddings within cosine 0.99999 of
//! sentence-transformers and logits within 1e-4 of transformers, for texts, text pairs and token
//! ids, alone and batched; the pooling, normalisation and length a version takes from its
//! sentence-transformers files are the ones reported in its metadata; checkpoints of the wrong
//! head or family are refused with the exact keys.

use std::path::{Path, PathBuf};

use crate::util::tensors::{output, read_json};
use crate::util::text::{cosine, ids_input, layer_keys, text_input, BERT_LAYER};
use crate::util::{
    assert_close, assert_error, f32s, fixture, output_f32, Repo, TestServer, Tolerance,
};
use serde_json::{json, Value};

const EMBEDDING: [&str; 6] = [
    "bert_cls",
    "bert_max",
    "roberta_mean",
    "xlm_roberta_cls",
    "distilbert_mean",
    "mpnet_mean",
];

const CLASSIFICATION: [&str; 4] = [
    "bert_classifier",
    "roberta_classifier",
    "distilbert_classifier",
    "mpnet_classifier",
];

fn case_dir(case: &str) -> PathBuf {
    fixture("catalogue").join(case)
}

fn case_json(case: &str) -> Value {
    read_json(&case_dir(case).join("case.json"))
}

/// Logits and probabilities against transformers'.
const LOGITS: Tolerance = Tolerance::Absolute(1e-4);

/// Publishes the case folder (every file but case.json) as version 1 of `model`.
fn install(repo: &Repo, model: &str, case: &str) {
    let dir = case_dir(case);
    let case = case_json(case);
    let files: Vec<(&str, PathBuf)> = case["upstream"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f.as_str().unwrap();
            (name, dir.join(name))
        })
        .collect();
    let files: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
    repo.install_files(model, 1, &files);
}

/// A `[[models]]` entry: `architecture`, and the case's config without `drop`, changed by
/// `set`.
fn model_toml(model: &str, case: &Value, drop: &[&str], set: &[(&str, toml::Value)]) -> String {
    let mut table = toml::Table::try_from(&case["config"]).unwrap();
    for field in drop {
        table.remove(*field);
    }
    for (field, value) in set {
        table.insert(field.to_string(), value.clone());
    }
    format!(
        "[[models]]\nname = \"{model}\"\narchitecture = {}\nconfig = {}\n\
         batching = {{ max_batch_size = 32, max_queue_delay_us = 20000 }}\n",
        case["architecture"],
        toml::Value::Table(table)
    )
}

async fn infer(server: &TestServer, model: &str, inputs: Vec<Value>) -> Value {
    let (status, response) = server
        .post_json(
            &format!("/v2/models/{model}/infer"),
            &json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(status, 200, "{model}: {response}");
    response
}

/// Serves every embedding case twice: with the case's config, and with pooling, normalize and
/// max_seq_length left to the version's sentence-transformers files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_sentence_transformers_over_http() {
    let repo = Repo::new();
    let mut models = String::new();
    for case in EMBEDDING {
        let json = case_json(case);
        install(&repo, case, case);
        models.push_str(&model_toml(case, &json, &[], &[]));
        let defaults = format!("{case}_defaults");
        install(&repo, &defaults, case);
        let drop = ["pooling", "normalize", "max_seq_length"];
        models.push_str(&model_toml(&defaults, &json, &drop, &[]));
    }
    let server = TestServer::start(repo.config("", &models)).await;
    for case in EMBEDDING {
        let json = case_json(case);
        let items = json["texts"].as_array().unwrap();
        let all: Vec<&str> = items.iter().map(|t| t["text"].as_str().unwrap()).collect();
        let width = json["config"]
            .get("hidden_size")
            .or(json["config"].get("dim"))
            .unwrap()
            .as_u64()
            .unwrap() as usize;
        let mut worst = 1f64;
        for model in [case.to_string(), format!("{case}_defaults")] {
            // The settings the version serves with, and where each came from.
            let (status, meta) = server.get(&format!("/v2/models/{model}")).await;
            assert_eq!(status, 200);
            let params = meta.json()["parameters"].clone();
            for field in ["pooling", "normalize", "max_seq_length"] {
                assert_eq!(
                    params[field], json["upstream"]["defaults_from_files"][field],
                    "{model}: {params}"
                );
            }
            let expected_source = if model == case {
                "config"
            } else {
                "1_Pooling/config.json"
            };
            assert_eq!(
                params["settings_from"]["pooling"], expected_source,
                "{model}"
            );

            // Every text in one request: mixed lengths padded and grouped inside the model.
            let response = infer(&server, &model, vec![text_input("text", &all)]).await;
            let batched = output_f32(&response, "embedding");
            let truncated: Vec<Value> = items.iter().map(|t| t["truncated"].clone()).collect();
            assert_eq!(
                response["parameters"]["truncated"],
                json!(truncated),
                "{model}"
            );
            let tokens: Vec<usize> = items
                .iter()
                .map(|t| t["ids"].as_array().unwrap().len())
                .collect();
            assert_eq!(response["parameters"]["tokens"], json!(tokens), "{model}");
            for (i, item) in items.iter().enumerate() {
                let want = f32s(&item["embedding"]);
                let c = cosine(&batched[i * width..(i + 1) * width], &want);
                assert!(c >= 0.99999, "{model} text {i} batched: cosine {c}");
                worst = worst.min(c);
            }
            // One text alone, and its reference token ids sent as INT64.
            let item = &items[4];
            let alone = infer(&server, &model, vec![text_input("text", &all[4..5])]).await;
            let alone = output_f32(&alone, "embedding");
            let by_ids = infer(
                &server,
                &model,
                vec![ids_input("input_ids", &json!([item["ids"]]))],
            )
            .await;
            assert_close(
                &output_f32(&by_ids, "embedding"),
                &alone,
                Tolerance::Absolute(1e-6),
                &format!("{model}: by ids, against the text"),
            );
            let c = cosine(&alone, &f32s(&item["embedding"]));
            assert!(c >= 0.99999, "{model} text 4 alone: cosine {c}");
            // Client ids padded with pad_token_id, with their attention mask.
            let case_ids = &json["ids_case"];
            let response = infer(
                &server,
                &model,
                vec![
                    ids_input("input_ids", &case_ids["input_ids"]),
                    ids_input("attention_mask", &case_ids["attention_mask"]),
                ],
            )
            .await;
            let got = output_f32(&response, "embedding");
            for (r, want) in case_ids["embedding"].as_array().unwrap().iter().enumerate() {
                let c = cosine(&got[r * width..(r + 1) * width], &f32s(want));
                assert!(c >= 0.99999, "{model} ids case row {r}: cosine {c}");
                worst = worst.min(c);
            }
        }
        println!("{case}: lowest cosine over HTTP 1 - {:.2e}", 1.0 - worst);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logits_match_transformers_over_http_with_pairs() {
    let repo = Repo::new();
    let mut models = String::new();
    for case in CLASSIFICATION {
        install(&repo, case, case);
        models.push_str(&model_toml(case, &case_json(case), &[], &[]));
    }
    let server = TestServer::start(repo.config("", &models)).await;
    for case in CLASSIFICATION {
        let json = case_json(case);
        let (_, meta) = server.get(&format!("/v2/models/{case}")).await;
        let meta = meta.json();
        assert_eq!(
            meta["parameters"]["labels"],
            json!(["contradiction", "entailment", "neutral"])
        );
        let outputs: Vec<&Value> = meta["outputs"].as_array().unwrap().iter().collect();
        assert_eq!(
            outputs,
            [
                &json!({"name": "logits", "datatype": "FP32", "shape": [-1, 3]}),
                &json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}),
                &json!({"name": "label", "datatype": "BYTES", "shape": [-1]}),
            ]
        );
        let items = json["items"].as_array().unwrap();
        let mut worst = 0f32;
        for item in items {
            let mut inputs = vec![text_input("text", &[item["text"].as_str().unwrap()])];
            if let Some(pair) = item["text_pair"].as_str() {
                inputs.push(text_input("text_pair", &[pair]));
            }
            let response = infer(&server, case, inputs).await;
            let got = output_f32(&response, "logits");
            let what = format!("{case} {item}: logits");
            let err = assert_close(&got, &f32s(&item["logits"]), LOGITS, &what);
            worst = worst.max(err);
            let got = output_f32(&response, "probabilities");
            let what = format!("{case} {item}: probabilities");
            assert_close(&got, &f32s(&item["probabilities"]), LOGITS, &what);
            assert_eq!(output(&response, "label")["data"], json!([item["label"]]));
            assert_eq!(
                response["parameters"]["truncated"],
                json!([item["truncated"]])
            );
        }
        // Every pair in one request.
        let pairs: Vec<&Value> = items
            .iter()
            .filter(|i| i["text_pair"].is_string())
            .collect();
        let firsts: Vec<&str> = pairs.iter().map(|i| i["text"].as_str().unwrap()).collect();
        let seconds: Vec<&str> = pairs
            .iter()
            .map(|i| i["text_pair"].as_str().unwrap())
            .collect();
        let response = infer(
            &server,
            case,
            vec![
                text_input("text", &firsts),
                text_input("text_pair", &seconds),
            ],
        )
        .await;
        let logits = output_f32(&response, "logits");
        for (k, item) in pairs.iter().enumerate() {
            let what = format!("{case} batched pair {k}");
            assert_close(
                &logits[k * 3..(k + 1) * 3],
                &f32s(&item["logits"]),
                LOGITS,
                &what,
            );
        }
        let labels: Vec<&Value> = pairs.iter().map(|i| &i["label"]).collect();
        assert_eq!(output(&response, "label")["data"], json!(labels));
        // A pair and a single as client token ids, padded together.
        let case_ids = &json["ids_case"];
        let mut inputs = vec![
            ids_input("input_ids", &case_ids["input_ids"]),
            ids_input("attention_mask", &case_ids["attention_mask"]),
        ];
        if case_ids.get("token_type_ids").is_some() {
            inputs.push(ids_input("token_type_ids", &case_ids["token_type_ids"]));
        }
        let response = infer(&server, case, inputs).await;
        let want: Vec<f32> = case_ids["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(f32s)
            .collect();
        let what = format!("{case} ids case");
        let err = assert_close(&output_f32(&response, "logits"), &want, LOGITS, &what);
        println!(
            "{case}: largest logit error over HTTP {:.2e}",
            worst.max(err)
        );
    }

    // Inputs that do not go together are refused with a reason.
    let bad = [
        (
            vec![text_input("text_pair", &["b"])],
            "\"text_pair\" goes with \"text\"",
        ),
        (
            vec![
                text_input("text", &["a", "b"]),
                text_input("text_pair", &["c"]),
            ],
            "different batch sizes",
        ),
        (
            vec![
                ids_input("input_ids", &json!([[0, 5, 2]])),
                ids_input("token_type_ids", &json!([[0, 1, 0]])),
            ],
            "outside [0, 1) (type_vocab_size)",
        ),
        (
            vec![
                text_input("text", &["a"]),
                ids_input("input_ids", &json!([[0, 5, 2]])),
            ],
            "not both",
        ),
    ];
    for (inputs, needle) in bad {
        let (status, response) = server
            .post_json(
                "/v2/models/roberta_classifier/infer",
                &json!({ "inputs": inputs }),
            )
            .await;
        assert_error("roberta_classifier", (status, &response), 400, needle);
    }
    // DistilBERT and MPNet have no token types: the input does not exist.
    let (status, response) = server
        .post_json(
            "/v2/models/mpnet_classifier/infer",
            &json!({"inputs": [ids_input("input_ids", &json!([[0, 5, 2]])), ids_input("token_type_ids", &json!([[0, 0, 0]]))]}),
        )
        .await;
    assert_error(
        "mpnet_classifier",
        (status, &response),
        400,
        "unknown input \"token_type_ids\"",
    );
    server.shutdown().await;
}

/// The keys of a safetensors file.
fn keys(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut keys: Vec<String> = meta.tensors().keys().cloned().collect();
    keys.sort();
    keys
}

/// The modules of a DistilBERT layer, in checkpoint order.
const DISTILBERT_LAYER: [&str; 8] = [
    "attention.q_lin",
    "attention.k_lin",
    "attention.v_lin",
    "attention.out_lin",
    "sa_layer_norm",
    "ffn.lin1",
    "ffn.lin2",
    "output_layer_norm",
];

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_head_or_family_is_refused_with_the_exact_keys() {
    let repo = Repo::new();
    let classifier = case_json("bert_classifier");
    let embedder = case_json("bert_cls");
    let distil = case_json("distilbert_mean");
    install(&repo, "classifier_as_embedding", "bert_classifier");
    install(&repo, "embedding_as_classifier", "bert_cls");
    install(&repo, "distilbert_as_bert", "distilbert_mean");
    let c = &distil["config"];
    let as_bert = json!({"architecture": "bert", "config": {
        "vocab_size": c["vocab_size"], "hidden_size": c["dim"], "num_hidden_layers": c["n_layers"],
        "num_attention_heads": c["n_heads"], "intermediate_size": c["hidden_dim"],
        "max_position_embeddings": c["max_position_embeddings"]}});
    let models = [
        model_toml(
            "classifier_as_embedding",
            &classifier,
            &["task", "num_labels", "id2label"],
            &[],
        ),
        model_toml(
            "embedding_as_classifier",
            &embedder,
            &["pooling", "normalize"],
            &[("task", "classification".into()), ("num_labels", 3.into())],
        ),
        model_toml("distilbert_as_bert", &as_bert, &[], &[]),
    ]
    .concat();
    let server =
        TestServer::start_admin(repo.config("admin_listen = \"127.0.0.1:0\"", &models)).await;

    // A BertForSequenceClassification checkpoint served as embeddings: every key it has is
    // unexpected (`bert.`-prefixed, the pooler and classifier included), every body key missing.
    let file = keys(&case_dir("bert_classifier").join("model.safetensors"));
    let body: Vec<String> = file
        .iter()
        .filter_map(|k| k.strip_prefix("bert."))
        .filter(|k| !k.starts_with("pooler."))
        .map(String::from)
        .collect();
    let entry = server
        .index_entry("classifier_as_embedding", 1)
        .await
        .unwrap();
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    assert_eq!(entry["report"]["missing"], json!(sorted(body.clone())));
    assert_eq!(entry["report"]["unexpected"], json!(file));

    // The reverse: a BertModel checkpoint served as a classifier lacks the `bert.` body and the
    // classifier; its own keys (unprefixed, so not even the optional buffers match) are unexpected.
    let file = keys(&case_dir("bert_cls").join("model.safetensors"));
    let mut missing: Vec<String> = file.iter().map(|k| format!("bert.{k}")).collect();
    missing.extend([
        "classifier.weight".to_string(),
        "classifier.bias".to_string(),
    ]);
    let entry = server
        .index_entry("embedding_as_classifier", 1)
        .await
        .unwrap();
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    assert_eq!(entry["report"]["missing"], json!(sorted(missing)));
    assert_eq!(entry["report"]["unexpected"], json!(file));

    // A DistilBertModel checkpoint served as `bert`: the embeddings share their names, the
    // layers do not, and BERT's token-type table is missing.
    let (mut missing, mut unexpected) = (
        vec!["embeddings.token_type_embeddings.weight".to_string()],
        vec![],
    );
    for i in 0..2 {
        missing.extend(layer_keys("encoder.layer", i, &BERT_LAYER));
        unexpected.extend(layer_keys("transformer.layer", i, &DISTILBERT_LAYER));
    }
    let entry = server.index_entry("distilbert_as_bert", 1).await.unwrap();
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    assert_eq!(entry["report"]["missing"], json!(sorted(missing)));
    assert_eq!(entry["report"]["unexpected"], json!(sorted(unexpected)));
    assert_eq!(entry["report"]["shape_mismatches"], json!([]));
    server.shutdown().await;
}
