//! examples/custom_architecture.rs, served: its `two_tower` family (a port of a hand-written
//! `nn.Module` with two inputs and two outputs) registered beside wick's own, loaded strictly
//! from the checkpoint PyTorch saved (tests/fixtures/catalogue/custom_two_tower, made by
//! scripts/catalogue/sequential.py), gives PyTorch's logits and embeddings through HTTP, alone
//! and batched, for two image sizes. The example's file is compiled into this test as a module,
//! so the test runs exactly the code the README points to.

use std::path::Path;
use std::sync::Arc;

use crate::util::catalogue::Case;
use crate::util::{assert_error, config_text, Repo, TestServer};
use serde_json::json;
use wick::config::Config;

#[path = "../../examples/custom_architecture.rs"]
#[allow(dead_code)]
mod example;

fn config(repo: &Repo, models: &str, registry: wick::arch::Registry) -> Config {
    let text = config_text(repo.path(), "", models);
    Config::parse_with(
        &text,
        Path::new("test.toml"),
        repo.path(),
        &|_| None,
        Arc::new(registry),
    )
    .expect("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_family_matches_pytorch_over_http() {
    let case = Case::load("custom_two_tower");
    let repo = Repo::new();
    case.install(&repo, "two_tower");
    let models = case.model_toml("two_tower", case.config(|_| ()));
    let server = TestServer::start(config(&repo, &models, example::registry().unwrap())).await;
    case.check_over_http(&server, "two_tower").await;

    let (status, meta) = server.get("/v2/models/two_tower").await;
    assert_eq!(status, 200);
    let meta = meta.json();
    assert_eq!(meta["inputs"][1]["name"], "features");
    assert_eq!(meta["outputs"][1]["shape"], json!([-1, 8]));

    // The model's own rules: both inputs, the same rows, the declared widths.
    let path = "/v2/models/two_tower/infer";
    let image =
        json!({"name": "image", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": vec![0.5; 48]});
    let features = |rows: usize, width: usize| json!({"name": "features", "shape": [rows, width], "datatype": "FP32", "data": vec![0.1; rows * width]});
    let (status, body) = server.post_json(path, &json!({"inputs": [image]})).await;
    assert_error("no features", (status, &body), 400, "features");
    let (status, body) = server
        .post_json(path, &json!({"inputs": [image, features(2, 6)]}))
        .await;
    assert_error("rows", (status, &body), 400, "batch sizes");
    let (status, body) = server
        .post_json(path, &json!({"inputs": [image, features(1, 5)]}))
        .await;
    assert_error("width", (status, &body), 400, "[-1, 6]");
    server.shutdown().await;
}

#[test]
fn families_are_registered_by_name() {
    let case = Case::load("custom_two_tower");
    let repo = Repo::new();
    let models = case.model_toml("two_tower", case.config(|_| ()));
    // wick alone does not know the family, and says which it knows.
    let text = config_text(repo.path(), "", &models);
    let err = Config::parse(&text, Path::new("test.toml"), repo.path(), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown architecture \"two_tower\""), "{err}");
    assert!(err.contains("sequential"), "{err}");
    // Registered, its config is checked like any family's.
    let bad = case.model_toml(
        "two_tower",
        case.config(|t| {
            t.insert("num_classes".into(), toml::Value::Integer(0));
        }),
    );
    let text = config_text(repo.path(), "", &bad);
    let registry = Arc::new(example::registry().unwrap());
    let err = Config::parse_with(
        &text,
        Path::new("test.toml"),
        repo.path(),
        &|_| None,
        registry,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("num_classes: must be at least 1"), "{err}");
    // A name can be registered once.
    let err = example::registry()
        .unwrap()
        .with::<example::TwoTowerConfig>("two_tower")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "architecture \"two_tower\" is already registered"
    );
    assert!(wick::arch::Registry::builtin()
        .with::<example::TwoTowerConfig>("resnet")
        .is_err());
}
