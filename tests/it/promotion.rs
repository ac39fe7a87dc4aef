//! Safe promotion of new weights: the golden-output gate through a running server (a version
//! whose weights pass every strict check but whose outputs differ from its golden file is
//! refused and the served version keeps answering; a matching one goes live) and offline through
//! `wick check --full` (same verdicts, exit code 1 on a golden failure).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::arch_bert;
use crate::util::process::wick;
use crate::util::{
    config_text, demo_model, eventually, f32_tensor, f32s, fixture, model_version, output_f32,
    raw_tensors, simple_io, write_safetensors, Repo, TestServer, SIMPLE, WAIT,
};

/// Writes `golden.safetensors` in `dir`: F32 `(name, shape, values)` tensors.
fn write_golden(dir: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) -> PathBuf {
    write_golden_with(dir, tensors, HashMap::new())
}

/// [`write_golden`] with file metadata (where BYTES inputs go).
fn write_golden_with(
    dir: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> PathBuf {
    let tensors: Vec<_> = tensors
        .iter()
        .map(|(name, shape, values)| f32_tensor(name, shape, values))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("golden.safetensors");
    write_safetensors(&path, &tensors, Some(metadata));
    path
}

/// A golden file of `simple` holding the fixture request and version 1's outputs, in a folder
/// of its own (to be installed beside some weights).
fn v1_golden() -> (tempfile::TempDir, PathBuf) {
    let (x, y) = simple_io();
    let dir = tempfile::tempdir().unwrap();
    let path = write_golden(
        dir.path(),
        &[
            ("input.input", vec![8, 10], &x),
            ("output.output", vec![8, 1], &y),
        ],
    );
    (dir, path)
}

/// The answer's version and outputs for the fixture request.
async fn answer(server: &TestServer) -> (String, Vec<f32>) {
    let (x, _) = simple_io();
    let (status, value) = server.infer_f32("simple", "input", &[8, 10], &x).await;
    assert_eq!(status, 200, "{value}");
    (model_version(&value), output_f32(&value, "output"))
}

#[tokio::test]
async fn golden_outputs_refuse_a_version_that_loads_but_answers_differently() {
    let (_golden_dir, golden) = v1_golden();
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    let server = TestServer::start_admin(repo.config("", SIMPLE)).await;
    let (version, v1_outputs) = answer(&server).await;
    assert_eq!(version, "1");

    // Version 2: other weights with every key, shape and dtype right, but version 1's golden
    // outputs. It must be refused, and version 1 must keep answering.
    let v2 = fixture("simple_v2.safetensors");
    repo.install_files(
        "simple",
        2,
        &[("model.safetensors", &v2), ("golden.safetensors", &golden)],
    );
    let refused = eventually(WAIT, || async {
        server.version_state("simple", 2).await.0 == "UNAVAILABLE"
    })
    .await;
    assert!(refused, "{:?}", server.index().await);
    let entry = server.index_entry("simple", 2).await.unwrap();
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("golden outputs differ"),
        "{entry}"
    );
    let report = &entry["golden"];
    assert_eq!(report["passed"], false, "{entry}");
    assert_eq!(report["rows"], 8);
    assert_eq!(report["outputs"][0]["output"], "output");
    assert!(
        report["outputs"][0]["max_abs_diff"].as_f64().unwrap() > 1e-4,
        "{entry}"
    );
    assert_eq!(answer(&server).await, ("1".to_string(), v1_outputs.clone()));
    server
        .assert_metrics(&[r#"wick_model_load_failures_total{model="simple",kind="golden"} 1"#])
        .await;

    // Version 3: version 1's weights with the same golden file: it matches and goes live.
    repo.install_files(
        "simple",
        3,
        &[
            ("model.safetensors", &demo_model("simple", 1)),
            ("golden.safetensors", &golden),
        ],
    );
    let live = eventually(WAIT, || async { answer(&server).await.0 == "3" }).await;
    assert!(live, "{:?}", server.index().await);
    let entry = server.index_entry("simple", 3).await.unwrap();
    assert_eq!(entry["state"], "READY");
    assert_eq!(entry["golden"]["passed"], true, "{entry}");
    assert_eq!(answer(&server).await.1, v1_outputs);
    server.shutdown().await;
}

#[tokio::test]
async fn a_changed_golden_file_runs_the_gate_again() {
    let (x, y) = simple_io();
    let repo = Repo::new();
    repo.install("simple", 1, &demo_model("simple", 1));
    let server = TestServer::start_admin(repo.config("", SIMPLE)).await;
    // Version 2 ships with a wrong golden file (every expected output off by one): refused.
    let wrong: Vec<f32> = y.iter().map(|v| v + 1.0).collect();
    let staging = tempfile::tempdir().unwrap();
    let golden = write_golden(
        staging.path(),
        &[
            ("input.input", vec![8, 10], &x),
            ("output.output", vec![8, 1], &wrong),
        ],
    );
    repo.install_files(
        "simple",
        2,
        &[
            ("model.safetensors", &demo_model("simple", 1)),
            ("golden.safetensors", &golden),
        ],
    );
    let refused = eventually(WAIT, || async {
        server.version_state("simple", 2).await.0 == "UNAVAILABLE"
    })
    .await;
    assert!(refused, "{:?}", server.index().await);
    // The publisher fixes only the golden file (renamed into place): the version is retried.
    let fixed = write_golden(
        &staging.path().join("fixed"),
        &[
            ("input.input", vec![8, 10], &x),
            ("output.output", vec![8, 1], &y),
        ],
    );
    std::fs::rename(
        &fixed,
        repo.version_dir("simple", 2).join("golden.safetensors"),
    )
    .unwrap();
    let live = eventually(WAIT, || async { answer(&server).await.0 == "2" }).await;
    assert!(live, "{:?}", server.index().await);
    server.shutdown().await;
}

/// Runs `wick check --full` on `dir` and returns (exit code, stdout).
fn check_full(config: &Path, dir: &Path, json: bool) -> (i32, String) {
    let mut command = wick();
    command.args(["check", "--full", "--model", "simple", "--config"]);
    command.arg(config).arg(dir);
    if json {
        command.arg("--json");
    }
    let output = command.output().expect("run wick");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn check_full_gives_the_server_s_verdicts_offline() {
    let (_golden_dir, golden) = v1_golden();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("wick.toml");
    std::fs::write(&config, config_text(work.path(), "", SIMPLE)).unwrap();
    let folder = |name: &str, weights: &Path, with_golden: bool| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(weights, dir.join("model.safetensors")).unwrap();
        if with_golden {
            std::fs::copy(&golden, dir.join("golden.safetensors")).unwrap();
        }
        dir
    };
    let good = folder("good", &demo_model("simple", 1), true);
    let differs = folder("differs", &fixture("simple_v2.safetensors"), true);
    let unchecked = folder("unchecked", &fixture("simple_v2.safetensors"), false);
    let wrong_keys = folder("wrong_keys", &demo_model("digits", 1), false);

    let (code, text) = check_full(&config, &good, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("would be served") && text.contains("golden outputs match"),
        "{text}"
    );

    let (code, text) = check_full(&config, &differs, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("would be refused (golden)") && text.contains("max abs diff"),
        "{text}"
    );
    let (code, text) = check_full(&config, &differs, true);
    assert_eq!(code, 1, "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["kind"], "golden");
    assert_eq!(value["golden"]["passed"], false);

    let (code, text) = check_full(&config, &unchecked, true);
    assert_eq!(code, 0, "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["ok"], true);
    assert!(value["golden"].is_null());
    assert_eq!(value["sha256"].as_str().map(str::len), Some(64));

    let (code, text) = check_full(&config, &wrong_keys, true);
    assert_eq!(code, 1, "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["kind"], "missing_key", "{text}");
    assert!(!value["report"]["missing"].as_array().unwrap().is_empty());
}

/// A copy of the small BERT's checkpoint in `dir` with the sign of the embeddings' LayerNorm
/// weight flipped: every key, shape and dtype is right, the outputs are not.
fn flipped_bert(dir: &Path) -> PathBuf {
    let mut data = raw_tensors(&arch_bert::weights());
    let target = "bert.embeddings.LayerNorm.weight";
    let entry = data.iter_mut().find(|(n, ..)| n == target).unwrap();
    assert_eq!(entry.1, safetensors::Dtype::F16);
    // F16 little-endian: the sign is the top bit of each value's second byte.
    for pair in entry.3.chunks_exact_mut(2) {
        pair[1] ^= 0x80;
    }
    let path = dir.join("flipped.safetensors");
    write_safetensors(&path, &data, None);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_text_inputs_come_from_the_file_metadata() {
    // The golden request: the reference texts (a BYTES input, so in the metadata) and the
    // embeddings transformers computed for them.
    let reference = arch_bert::reference();
    let cases = reference["texts"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let embeddings: Vec<f32> = cases.iter().flat_map(|c| f32s(&c["embedding"])).collect();
    let hidden = embeddings.len() / texts.len();
    let staging = tempfile::tempdir().unwrap();
    let metadata = HashMap::from([(
        "input.text".to_string(),
        serde_json::to_string(&texts).unwrap(),
    )]);
    let golden = write_golden_with(
        staging.path(),
        &[("output.embedding", vec![texts.len(), hidden], &embeddings)],
        metadata,
    );
    let tokenizer = fixture("arch/bert_small/tokenizer.json");
    let repo = Repo::new();
    let install = |version: u64, weights: &Path| {
        repo.install_files(
            "small",
            version,
            &[
                ("model.safetensors", weights),
                ("tokenizer.json", &tokenizer),
                ("golden.safetensors", &golden),
            ],
        );
    };
    install(1, &flipped_bert(staging.path()));
    let toml = arch_bert::model_toml("small", arch_bert::IGNORE_HEAD);
    let server = TestServer::start_admin(repo.config("", &toml)).await;
    let entry = server.index_entry("small", 1).await.unwrap();
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    assert_eq!(entry["golden"]["passed"], false, "{entry}");
    assert_eq!(entry["golden"]["rows"], texts.len());
    assert!(
        entry["golden"]["outputs"][0]["min_cosine"]
            .as_f64()
            .unwrap()
            < 0.9999
    );

    install(2, &arch_bert::weights());
    let live = eventually(WAIT, || async {
        server.get("/v2/models/small/versions/2/ready").await.0 == 200
    })
    .await;
    assert!(live, "{:?}", server.index().await);
    let entry = server.index_entry("small", 2).await.unwrap();
    assert_eq!(entry["golden"]["passed"], true, "{entry}");
    assert_eq!(entry["golden"]["rows"], texts.len());
    server.shutdown().await;
}
