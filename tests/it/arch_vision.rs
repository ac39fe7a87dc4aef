//! torchvision's image families against torchvision: every preset's full key and shape list
//! (built from wick's config alone, no weights) equals the manifest scripts/catalogue/vision.py
//! wrote from torchvision (tests/fixtures/catalogue/manifests/), and a small instance of each
//! family, served through HTTP, gives torchvision's logits within the case's tolerance.
//!
//! The resnet cases store only their BatchNorm tensors (F16, widened to F32 by the loader as
//! the case's `weights.note` says); convolution and fc weights are the counter-generated ones
//! listed in case.json's `weights.generated`, rebuilt as in tests/it/arch_resnet.rs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::arch_resnet::generated;
use crate::util::catalogue::Case;
use crate::util::tensors::{f32_bytes, raw_tensors, read_json, write_safetensors, RawTensor};
use crate::util::{assert_error, fixture, infer_request, Repo, TestServer};

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
