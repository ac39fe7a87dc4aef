//! torchvision's image families against torchvision: every preset's full key and shape list
//! (built from wick's config alone, no weights) equals the manifest scripts/catalogue/vision.py
//! wrote from torchvision (tests/fixtures/catalogue/manifests/), a small instance of each
//! family, served through HTTP, gives torchvision's logits within the case's tolerance, and a
//! checkpoint of another preset is refused with exactly the keys the manifests say differ.
//!
//! The resnet cases store only their BatchNorm tensors (F16, widened to F32 by the loader as
//! the case's `weights.note` says); convolution and fc weights are the counter-generated ones
//! listed in case.json's `weights.generated`, rebuilt as in tests/it/arch_resnet.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::arch_resnet::generated;
use crate::util::catalogue::Case;
use crate::util::tensors::{f32_bytes, raw_tensors, read_json, write_safetensors, RawTensor};
use crate::util::{assert_error, fixture, infer_request, Repo, TestServer};
use serde_json::Value;

/// manifests/<preset>.json: torchvision's constructor, every state_dict key with its shape, and
/// the head's shapes at `num_classes = 10`.
fn manifest(preset: &str) -> serde_json::Value {
    read_json(&fixture(&format!("catalogue/manifests/{preset}.json")))
}

/// Checks that `architecture` configured as `preset` (with `extra` config fields) expects
/// exactly the manifest's keys and shapes: every required parameter with torchvision's shape,
/// and every manifest key wick does not ask for covered by an optional glob
/// (`num_batches_tracked`). Then checks the `num_classes = 10` head shapes the manifest lists.
fn assert_matches_manifest(preset: &str) {
    let manifest = manifest(preset);
    let family = manifest["architecture"].as_str().unwrap();
    let configure = |classes: usize| {
        let table: toml::Table = format!("preset = \"{preset}\"\nnum_classes = {classes}")
            .parse()
            .unwrap();
        wick::arch::configure(family, &table)
            .unwrap_or_else(|e| panic!("{preset}: {e}"))
            .expected()
            .unwrap_or_else(|e| panic!("{preset}: {e}"))
    };
    let expected = configure(1000);
    let wanted: BTreeMap<String, Vec<usize>> = expected
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    assert_eq!(
        wanted.len(),
        expected.params.len(),
        "{preset}: duplicate keys"
    );
    let mut torch: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for t in manifest["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap().to_string();
        let shape = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        if wanted.contains_key(&name) {
            torch.insert(name, shape);
        } else {
            assert!(
                expected.optional.iter().any(|g| g.matches(&name)),
                "{preset}: torchvision's {name} {shape:?} is neither expected nor optional"
            );
        }
    }
    let missing: Vec<&String> = wanted.keys().filter(|k| !torch.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{preset}: keys torchvision lacks: {missing:?}"
    );
    for (name, shape) in &wanted {
        assert_eq!(&torch[name], shape, "{preset}: shape of {name}");
    }
    let expected = configure(10);
    for (name, shape) in manifest["num_classes_10"].as_object().unwrap() {
        let p = expected
            .params
            .iter()
            .find(|p| &p.name == name)
            .unwrap_or_else(|| panic!("{preset}: no {name} at num_classes = 10"));
        assert_eq!(
            p.shape,
            serde_json::from_value::<Vec<usize>>(shape.clone()).unwrap()
        );
    }
    println!("{preset}: {} keys match torchvision", wanted.len());
}

#[test]
fn resnet_presets_match_torchvision_manifests() {
    for preset in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    ] {
        assert_matches_manifest(preset);
    }
}

/// The full checkpoint of a resnet case: stored.safetensors (as stored, F16 and I64) plus the
/// generated tensors of case.json, written to `dir`.
fn resnet_checkpoint(case: &Case, dir: &Path) -> PathBuf {
    let mut tensors: Vec<RawTensor> = raw_tensors(&case.weights());
    for g in case.json["weights"]["generated"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let shape: Vec<usize> = serde_json::from_value(g["shape"].clone()).unwrap();
        let exponent = g["exponent"].as_i64().unwrap() as i32;
        let values = generated(name, shape.iter().product(), exponent);
        tensors.push((
            name.to_string(),
            safetensors::Dtype::F32,
            shape,
            f32_bytes(&values),
        ));
    }
    let path = dir.join(format!("{}.safetensors", case.name));
    write_safetensors(&path, &tensors, None);
    path
}

async fn resnet_case(name: &str) {
    let case = Case::load(name);
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    repo.install(name, 1, &resnet_checkpoint(&case, scratch.path()));
    let models = case.model_toml(name, case.config(|_| ()));
    let server = TestServer::start(repo.config("", &models)).await;
    case.check_over_http(&server, name).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnext_small_instance_matches_torchvision() {
    resnet_case("resnext_tiny").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_resnet_small_instance_matches_torchvision() {
    resnet_case("resnet_basic_tiny").await;
}

#[test]
fn vit_presets_match_torchvision_manifests() {
    for preset in ["vit_b_16", "vit_b_32", "vit_l_16"] {
        assert_matches_manifest(preset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vit_small_instance_matches_torchvision() {
    let case = Case::load("vit_tiny");
    let repo = Repo::new();
    case.install(&repo, "vit");
    let models = case.model_toml("vit", case.config(|_| ()));
    let server = TestServer::start(repo.config("", &models)).await;
    case.check_over_http(&server, "vit").await;
    // The position embeddings fix the image size: another size is refused at its shape.
    let wrong = infer_request("input", "FP32", [1, 3, 64, 64], vec![0.0f32; 3 * 64 * 64]);
    let (status, body) = server.post_json("/v2/models/vit/infer", &wrong).await;
    assert_error(
        "a 64x64 image for a 32x32 vit",
        (status, &body),
        400,
        "shape",
    );
    server.shutdown().await;
}

#[test]
fn convnext_presets_match_torchvision_manifests() {
    for preset in ["convnext_tiny", "convnext_small", "convnext_base"] {
        assert_matches_manifest(preset);
    }
}

#[test]
fn mobilenet_v3_presets_match_torchvision_manifests() {
    for preset in ["mobilenet_v3_small", "mobilenet_v3_large"] {
        assert_matches_manifest(preset);
    }
}

#[test]
fn efficientnet_presets_match_torchvision_manifests() {
    for preset in [
        "efficientnet_b0",
        "efficientnet_b1",
        "efficientnet_b2",
        "efficientnet_b3",
        "efficientnet_b4",
    ] {
        assert_matches_manifest(preset);
    }
}

/// Serves a stored case (case.json's config, its F16 model.safetensors) and checks its samples
/// alone and four in flight; returns the server for more checks.
async fn stored_case(name: &str) -> TestServer {
    let case = Case::load(name);
    let repo = Repo::new();
    case.install(&repo, name);
    let models = case.model_toml(name, case.config(|_| ()));
    let server = TestServer::start(repo.config("", &models)).await;
    case.check_over_http(&server, name).await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convnext_small_instance_matches_torchvision() {
    let server = stored_case("convnext_tiny_tiny").await;
    // Stem (/4) and two downsampling layers (/2 each): 16x16 is the smallest image.
    let small = infer_request("input", "FP32", [1, 3, 12, 16], vec![0.5f32; 3 * 12 * 16]);
    let (status, body) = server
        .post_json("/v2/models/convnext_tiny_tiny/infer", &small)
        .await;
    assert_error("a 12x16 image", (status, &body), 400, "at least 16");
    let fits = infer_request("input", "FP32", [1, 3, 16, 16], vec![0.5f32; 3 * 16 * 16]);
    let (status, body) = server
        .post_json("/v2/models/convnext_tiny_tiny/infer", &fits)
        .await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobilenet_v3_small_instance_matches_torchvision() {
    stored_case("mobilenet_v3_small_tiny")
        .await
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobilenet_v3_large_instance_matches_torchvision() {
    stored_case("mobilenet_v3_large_tiny")
        .await
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobilenet_v3_reduced_tail_and_dilated_match_torchvision() {
    // Half-width last stage, dilation 2 in place of its stride 2.
    stored_case("mobilenet_v3_dilated_tiny")
        .await
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efficientnet_small_instance_matches_torchvision() {
    stored_case("efficientnet_tiny").await.shutdown().await;
}

/// A manifest's tensors: name -> shape, without the optional `num_batches_tracked` counters.
fn manifest_shapes(preset: &str) -> BTreeMap<String, Vec<usize>> {
    manifest(preset)["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = serde_json::from_value(t["shape"].clone()).unwrap();
            (t["name"].as_str().unwrap().to_string(), shape)
        })
        .filter(|(name, _)| !name.ends_with("num_batches_tracked"))
        .collect()
}

/// A checkpoint of `preset` as torchvision writes it (every manifest key and shape), zeros in
/// F16 to stay small: strict loading looks at names and shapes before any value.
fn zeros_checkpoint(preset: &str, dir: &Path) -> PathBuf {
    let tensors: Vec<RawTensor> = manifest(preset)["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
            let count: usize = shape.iter().product();
            let (dtype, width) = match t["dtype"].as_str().unwrap() {
                "int64" => (safetensors::Dtype::I64, 8),
                _ => (safetensors::Dtype::F16, 2),
            };
            let name = t["name"].as_str().unwrap().to_string();
            (name, dtype, shape, vec![0u8; count * width])
        })
        .collect();
    let path = dir.join(format!("{preset}.safetensors"));
    write_safetensors(&path, &tensors, None);
    path
}

/// The load report of `model` version 1, which must have been refused.
async fn refused_report(server: &TestServer, model: &str) -> Value {
    let entry = server.index_entry(model, 1).await.expect("index entry");
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    entry["report"].clone()
}

/// Asserts a load report names exactly `missing`, `unexpected` and `mismatched` (key ->
/// (checkpoint shape, model shape)).
fn assert_report(
    report: &Value,
    missing: &BTreeSet<String>,
    unexpected: &BTreeSet<String>,
    mismatched: &BTreeMap<String, (Vec<usize>, Vec<usize>)>,
) {
    let keys = |field: &str| -> BTreeSet<String> {
        report[field]
            .as_array()
            .unwrap_or_else(|| panic!("{report}"))
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(&keys("missing"), missing, "missing");
    assert_eq!(&keys("unexpected"), unexpected, "unexpected");
    let got: BTreeMap<String, (Vec<usize>, Vec<usize>)> = report["shape_mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let shape = |k: &str| serde_json::from_value(m[k].clone()).unwrap();
            (
                m["key"].as_str().unwrap().to_string(),
                (shape("checkpoint"), shape("model")),
            )
        })
        .collect();
    assert_eq!(&got, mismatched, "shape mismatches");
}

/// A checkpoint of preset `have` served as preset `want` of `family`: refused with the key
/// differences between torchvision's two manifests, exactly.
async fn wrong_preset(family: &str, have: &str, want: &str) {
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    repo.install("wrong", 1, &zeros_checkpoint(have, scratch.path()));
    let models = format!(
        "[[models]]\nname = \"wrong\"\narchitecture = \"{family}\"\nconfig = {{ preset = \"{want}\" }}\n"
    );
    let server = TestServer::start_admin(repo.config("", &models)).await;
    let report = refused_report(&server, "wrong").await;
    let (ckpt, model) = (manifest_shapes(have), manifest_shapes(want));
    let missing = model
        .keys()
        .filter(|k| !ckpt.contains_key(*k))
        .cloned()
        .collect();
    let unexpected = ckpt
        .keys()
        .filter(|k| !model.contains_key(*k))
        .cloned()
        .collect();
    let mismatched: BTreeMap<_, _> = model
        .iter()
        .filter_map(|(k, shape)| match ckpt.get(k) {
            Some(c) if c != shape => Some((k.clone(), (c.clone(), shape.clone()))),
            _ => None,
        })
        .collect();
    assert!(
        !mismatched.is_empty() || !report["missing"].as_array().unwrap().is_empty(),
        "{have} and {want} do not differ"
    );
    assert_report(&report, &missing, &unexpected, &mismatched);
    println!(
        "{have} as {want}: {} missing, {} unexpected, {} shape mismatches, as torchvision's manifests say",
        missing.len(),
        unexpected.len(),
        mismatched.len()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobilenet_v3_wrong_preset_is_refused_with_the_exact_keys() {
    wrong_preset("mobilenet_v3", "mobilenet_v3_small", "mobilenet_v3_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn efficientnet_wrong_preset_is_refused_with_the_exact_keys() {
    // b1 is b0 with deeper stages (depth_mult 1.1): the extra blocks are missing.
    wrong_preset("efficientnet", "efficientnet_b0", "efficientnet_b1").await;
    // b2 is also wider (width_mult 1.1): shapes differ too.
    wrong_preset("efficientnet", "efficientnet_b2", "efficientnet_b0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convnext_wrong_stages_are_refused_with_the_exact_keys() {
    // The small case's checkpoint, configured with a third block in the last stage and 7
    // classes: that block's keys are missing and the head has the wrong height.
    let case = Case::load("convnext_tiny_tiny");
    let repo = Repo::new();
    case.install(&repo, "wrong");
    let config = case.config(|t| {
        t.insert("num_classes".into(), 7.into());
        let stages = t["block_setting"].as_array_mut().unwrap();
        let last = stages.last_mut().unwrap().as_table_mut().unwrap();
        last.insert("num_layers".into(), 3.into());
    });
    let server = TestServer::start_admin(repo.config("", &case.model_toml("wrong", config))).await;
    let report = refused_report(&server, "wrong").await;
    let missing = [
        "layer_scale",
        "block.0.weight",
        "block.0.bias",
        "block.2.weight",
        "block.2.bias",
        "block.3.weight",
        "block.3.bias",
        "block.5.weight",
        "block.5.bias",
    ]
    .iter()
    .map(|k| format!("features.5.2.{k}"))
    .collect();
    let mismatched = BTreeMap::from([
        (
            "classifier.2.weight".to_string(),
            (vec![10, 24], vec![7, 24]),
        ),
        ("classifier.2.bias".to_string(), (vec![10], vec![7])),
    ]);
    assert_report(&report, &missing, &BTreeSet::new(), &mismatched);
    server.shutdown().await;
}
