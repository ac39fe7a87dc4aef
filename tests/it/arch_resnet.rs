//! `resnet` against torchvision through HTTP: resnet18 and resnet50 checkpoints with torchvision's
//! key names, randomised BatchNorm weights and calibrated running statistics give the logits
//! torchvision computed (scripts/make_arch_fixtures.py), and strict loading names every key of a
//! checkpoint loaded into the wrong preset.
//!
//! The fixtures hold torchvision's key list and the BatchNorm tensors; convolution and fc weights
//! come from the counter-based generator the script documents, rebuilt here, so the 45 MB and
//! 94 MB checkpoints cost a few hundred kB to commit.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::util::tensors::{f32_bytes, read_json, RawTensor};
use crate::util::{
    assert_close, assert_error, fixture, infer_request, output_f32, read_tensors,
    write_safetensors, Repo, TestServer, Tolerance, Values,
};
use serde_json::{json, Value};

/// torchvision's logits reach tens: their rounding grows with them.
const TOLERANCE: Tolerance = Tolerance::Relative(1e-4);

/// splitmix64 over `seed + i·γ`, as in scripts/make_arch_fixtures.py.
pub(crate) fn generated(name: &str, count: usize, exponent: i32) -> Vec<f32> {
    let mut seed: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        seed ^= u64::from(b);
        seed = seed.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let scale = 2f32.powi(-exponent);
    (1..=count as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 48) as i64 - 32768) as f32 / 32768.0 * scale
        })
        .collect()
}

/// Rebuilds the torchvision checkpoint of `preset` (every key of its state_dict, F32 and I64)
/// into `dir/<preset>.safetensors`.
fn checkpoint(preset: &str, dir: &Path) -> PathBuf {
    let manifest = read_json(&fixture(&format!("arch/{preset}_manifest.json")));
    let stored = read_tensors(&fixture(&format!("arch/{preset}_bn.safetensors")));
    let mut tensors: Vec<RawTensor> = Vec::new();
    for entry in manifest["tensors"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap().to_string();
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let (dtype, bytes) = if entry["source"] == "generated" {
            let count = shape.iter().product();
            let values = generated(&name, count, entry["exponent"].as_i64().unwrap() as i32);
            (safetensors::Dtype::F32, f32_bytes(&values))
        } else {
            match &stored[&name] {
                (s, Values::F32(v)) if *s == shape => (safetensors::Dtype::F32, f32_bytes(v)),
                (s, Values::I64(v)) if *s == shape => (
                    safetensors::Dtype::I64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                (s, _) => panic!("{name}: fixture shape {s:?}, manifest {shape:?}"),
            }
        };
        tensors.push((name, dtype, shape, bytes));
    }
    let path = dir.join(format!("{preset}.safetensors"));
    write_safetensors(&path, &tensors, None);
    path
}

fn models(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, preset)| {
            format!("[[models]]\nname = \"{name}\"\narchitecture = \"resnet\"\nconfig = {{ preset = \"{preset}\", num_classes = 10 }}\nbatching = {{ max_batch_size = 8, max_queue_delay_us = 20000 }}\n")
        })
        .collect()
}

fn infer_body(shape: &[usize], data: &[f32]) -> Value {
    infer_request("input", "FP32", shape, data)
}

/// Serves the rebuilt checkpoint and compares both fixture inputs, alone and batched together
/// with a request of another image size.
async fn parity(preset: &str) {
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    repo.install(preset, 1, &checkpoint(preset, scratch.path()));
    let server = TestServer::start(repo.config("", &models(&[(preset, preset)]))).await;
    let io = read_tensors(&fixture(&format!("arch/{preset}_io.safetensors")));
    let path = format!("/v2/models/{preset}/infer");
    for case in ["a", "b"] {
        let (shape, input) = &io[&format!("input_{case}")];
        let (_, want) = &io[&format!("output_{case}")];
        let (status, response) = server
            .post_json(&path, &infer_body(shape, input.f32()))
            .await;
        assert_eq!(status, 200, "{response}");
        let what = format!("{preset} output_{case}");
        let worst = assert_close(
            &output_f32(&response, "logits"),
            want.f32(),
            TOLERANCE,
            &what,
        );
        println!("{what}: largest difference from torchvision {worst:e}");
        let out = response["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "logits")
            .unwrap();
        assert_eq!(out["shape"], json!([shape[0], 10]));
    }
    // Concurrent requests of two image sizes: batched by size inside one forward call.
    let (sa, ia) = &io["input_a"];
    let (sb, ib) = &io["input_b"];
    let (body_a, body_b) = (infer_body(sa, ia.f32()), infer_body(sb, ib.f32()));
    let (r0, r1, r2) = tokio::join!(
        server.post_json(&path, &body_a),
        server.post_json(&path, &body_b),
        server.post_json(&path, &body_a)
    );
    for (i, (status, response)) in [r0, r1, r2].iter().enumerate() {
        assert_eq!(*status, 200, "{response}");
        let want = if i % 2 == 0 {
            io["output_a"].1.f32()
        } else {
            io["output_b"].1.f32()
        };
        let what = format!("{preset} concurrent {i}");
        let worst = assert_close(&output_f32(response, "logits"), want, TOLERANCE, &what);
        println!("{what}: largest difference from torchvision {worst:e}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnet18_matches_torchvision() {
    parity("resnet18").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnet50_matches_torchvision() {
    parity("resnet50").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_input_is_validated() {
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    repo.install("r18", 1, &checkpoint("resnet18", scratch.path()));
    let server = TestServer::start(repo.config("", &models(&[("r18", "resnet18")]))).await;
    let (status, response) = server
        .post_json(
            "/v2/models/r18/infer",
            &infer_body(&[1, 4, 8, 8], &[0.0; 256]),
        )
        .await;
    assert_error("4 channels", (status, &response), 400, "[-1, 3, -1, -1]");
    let (status, response) = server
        .post_json("/v2/models/r18/infer", &infer_body(&[1, 3, 0, 8], &[]))
        .await;
    assert_eq!(status, 400, "{response}");
    // The smallest image the network accepts: every stage reduces 1x1 to 1x1.
    let (status, response) = server
        .post_json(
            "/v2/models/r18/infer",
            &infer_body(&[1, 3, 1, 1], &[0.5; 3]),
        )
        .await;
    assert_eq!(status, 200, "{response}");
    server.shutdown().await;
}

/// The keys of the BasicBlocks resnet34 has and resnet18 lacks.
fn resnet34_only_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (stage, from, to) in [(1, 2, 3), (2, 2, 4), (3, 2, 6), (4, 2, 3)] {
        for block in from..to {
            for conv in ["conv1", "conv2"] {
                keys.insert(format!("layer{stage}.{block}.{conv}.weight"));
            }
            for bn in ["bn1", "bn2"] {
                for p in ["weight", "bias", "running_mean", "running_var"] {
                    keys.insert(format!("layer{stage}.{block}.{bn}.{p}"));
                }
            }
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_preset_is_refused_with_the_exact_keys() {
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    let r18 = checkpoint("resnet18", scratch.path());
    repo.install("as34", 1, &r18);
    repo.install("as50", 1, &r18);
    let config = repo.config("", &models(&[("as34", "resnet34"), ("as50", "resnet50")]));
    let server = TestServer::start_admin(config).await;

    let entry = server.index_entry("as34", 1).await.expect("index entry");
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    let report = &entry["report"];
    let missing: BTreeSet<String> = report["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(missing, resnet34_only_keys());
    assert_eq!(report["unexpected"], json!([]));
    assert_eq!(report["shape_mismatches"], json!([]));
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains("\"layer3.5.bn2.running_var\""), "{reason}");

    let entry = server.index_entry("as50", 1).await.expect("index entry");
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    let report = &entry["report"];
    let mismatches: HashMap<String, (Value, Value)> = report["shape_mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_string(),
                (m["checkpoint"].clone(), m["model"].clone()),
            )
        })
        .collect();
    assert_eq!(
        mismatches["fc.weight"],
        (json!([10, 512]), json!([10, 2048]))
    );
    assert_eq!(
        mismatches["layer1.0.conv1.weight"],
        (json!([64, 64, 3, 3]), json!([64, 64, 1, 1]))
    );
    let missing = report["missing"].as_array().unwrap();
    assert!(
        missing.contains(&json!("layer1.0.conv3.weight")),
        "{report}"
    );
    assert!(
        missing.contains(&json!("layer1.0.downsample.0.weight")),
        "{report}"
    );
    assert!(
        missing.contains(&json!("layer3.5.bn3.running_mean")),
        "{report}"
    );

    let (status, _) = server.get("/v2/models/as34/ready").await;
    assert_ne!(status, 200);
    server.shutdown().await;
}
