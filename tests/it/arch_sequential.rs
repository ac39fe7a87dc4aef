//! `sequential` against PyTorch through HTTP: the three stacks of tests/fixtures/catalogue
//! (scripts/catalogue/sequential.py builds each as `nn.Sequential(getattr(nn, type)(**args)...)`
//! with randomised BatchNorm statistics; together they use every layer type wick accepts) give
//! PyTorch's outputs within the case's tolerance, alone and batched; token ids outside the
//! embedding table are a 400; a checkpoint of another stack is refused with the exact keys; a
//! stack whose shapes do not chain is a config error naming the layer and both shapes.

use std::collections::BTreeSet;
use std::path::Path;

use crate::util::catalogue::Case;
use crate::util::{assert_error, config_text, Repo, TestServer};
use serde_json::{json, Value};
use wick::config::Config;

const CASES: [&str; 3] = ["sequential_mnist", "sequential_vision", "sequential_tokens"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_match_pytorch_over_http() {
    let repo = Repo::new();
    let mut models = String::new();
    let cases: Vec<Case> = CASES.iter().map(|c| Case::load(c)).collect();
    for case in &cases {
        case.install(&repo, &case.name);
        models.push_str(&case.model_toml(&case.name, case.config(|_| ())));
    }
    let server = TestServer::start(repo.config("", &models)).await;
    for case in &cases {
        case.check_over_http(&server, &case.name).await;
    }
    // The metadata shows the declared names and inferred shapes.
    let (status, meta) = server.get("/v2/models/sequential_tokens").await;
    assert_eq!(status, 200);
    let meta = meta.json();
    assert_eq!(meta["inputs"][0]["name"], "tokens");
    assert_eq!(meta["inputs"][0]["datatype"], "INT64");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 4, 6]));

    // Token ids outside the 50-row table.
    let bad = json!({"inputs": [{"name": "tokens", "shape": [1, 12], "datatype": "INT64",
        "data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 50]}]});
    let (status, response) = server
        .post_json("/v2/models/sequential_tokens/infer", &bad)
        .await;
    assert_error("id 50", (status, &response), 400, "outside [0, 50)");
    let (status, response) = server
        .post_json(
            "/v2/models/sequential_mnist/infer",
            &json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 27], "datatype": "FP32", "data": vec![0.0; 756]}]}),
        )
        .await;
    assert_error("28x27", (status, &response), 400, "[-1, 1, 28, 28]");
    server.shutdown().await;
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_stack_s_checkpoint_is_refused_with_the_exact_keys() {
    let repo = Repo::new();
    let mnist = Case::load("sequential_mnist");
    let vision = Case::load("sequential_vision");
    // The MNIST weights with 12 classes declared, and the prefixed stack's weights unprefixed.
    mnist.install(&repo, "wider");
    vision.install(&repo, "unprefixed");
    let wider = mnist.config(|t| {
        let layers = t["layers"].as_array_mut().unwrap();
        layers[6]["out_features"] = toml::Value::Integer(12);
    });
    let unprefixed = vision.config(|t| {
        t.remove("prefix");
    });
    let models = format!(
        "{}{}",
        mnist.model_toml("wider", wider),
        vision.model_toml("unprefixed", unprefixed)
    );
    let server = TestServer::start_admin(repo.config("", &models)).await;

    let entry = server.index_entry("wider", 1).await.expect("index entry");
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    let report = &entry["report"];
    assert_eq!(report["missing"], json!([]));
    assert_eq!(report["unexpected"], json!([]));
    let mismatches: Vec<(String, Value, Value)> = report["shape_mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_string(),
                m["checkpoint"].clone(),
                m["model"].clone(),
            )
        })
        .collect();
    assert_eq!(
        mismatches,
        [
            ("6.weight".to_string(), json!([10, 1568]), json!([12, 1568])),
            ("6.bias".to_string(), json!([10]), json!([12])),
        ]
    );

    let entry = server
        .index_entry("unprefixed", 1)
        .await
        .expect("index entry");
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    let report = &entry["report"];
    let missing = keys(&report["missing"]);
    let unexpected = keys(&report["unexpected"]);
    assert!(
        missing.contains("0.weight") && missing.contains("17.bias"),
        "{report}"
    );
    assert_eq!(missing.len(), 17, "{report}");
    // Every stored key is unexpected: the checkpoint names them `features.<i>...`.
    assert!(
        unexpected.iter().all(|k| k.starts_with("features.")),
        "{report}"
    );
    assert!(
        unexpected.contains("features.1.num_batches_tracked"),
        "{report}"
    );
    server.shutdown().await;
}

#[test]
fn a_stack_whose_shapes_do_not_chain_is_a_config_error() {
    let case = Case::load("sequential_mnist");
    let bad = case.config(|t| {
        let layers = t["layers"].as_array_mut().unwrap();
        layers[6]["in_features"] = toml::Value::Integer(6272);
    });
    let text = config_text(Path::new("/models"), "", &case.model_toml("mnist", bad));
    let err = Config::parse(&text, Path::new("wick.toml"), Path::new("/"), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("wick.toml"), "{err}");
    assert!(
        err.contains("layers[6] (Linear) takes [N, *, 6272], but its input is [N, 1568]"),
        "{err}"
    );
}
