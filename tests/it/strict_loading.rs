//! The strict loader against checkpoints made by PyTorch with known problems: every problem is
//! reported at once, bad formats are named, and `wick check` prints PyTorch's report style.

use std::path::Path;

use crate::util::process;
use crate::util::{demo_model, demo_models, fixture, Repo};
use wick::config::Config;
use wick::state_dict::{self, ForeignFormat, FormatError, LoadError};

fn config() -> Config {
    Repo::new().config("", &demo_models())
}

/// Loads `file` as model `name` of the demo config.
fn load(name: &str, file: &Path) -> Result<state_dict::LoadedStateDict, LoadError> {
    let config = config();
    let model = config.model(name).unwrap();
    let expected = model.architecture.expected().unwrap();
    state_dict::load(file, name, &expected, &model.mapping)
}

fn report_of(file: &str) -> state_dict::LoadReport {
    match load("simple", &fixture(&format!("broken/{file}"))) {
        Err(LoadError::Mismatch(report)) => *report,
        other => panic!("{file}: expected a mismatch report, got {other:?}"),
    }
}

fn format_error_of(file: &str) -> FormatError {
    match load("simple", &fixture(&format!("broken/{file}"))) {
        Err(LoadError::Format { source, .. }) => source,
        other => panic!("{file}: expected a format error, got {other:?}"),
    }
}

#[test]
fn missing_key() {
    let report = report_of("missing_bias.safetensors");
    assert_eq!(report.missing, vec!["linear.bias"]);
    assert_eq!(report.problem_count(), 1);
}

#[test]
fn unexpected_key() {
    let report = report_of("unexpected_key.safetensors");
    assert_eq!(report.unexpected, vec!["linear.scale"]);
    assert_eq!(report.problem_count(), 1);
}

#[test]
fn shape_mismatch() {
    let report = report_of("wrong_shape.safetensors");
    assert_eq!(report.shape_mismatches.len(), 1);
    let m = &report.shape_mismatches[0];
    assert_eq!(
        (m.key.as_str(), m.checkpoint.clone(), m.model.clone()),
        ("linear.weight", vec![1, 11], vec![1, 10])
    );
}

#[test]
fn integer_where_float_is_expected() {
    let report = report_of("int_bias.safetensors");
    assert_eq!(report.dtype_problems.len(), 1);
    let d = &report.dtype_problems[0];
    assert_eq!(
        (d.key.as_str(), d.checkpoint.as_str(), d.model.as_str()),
        ("linear.bias", "I64", "F32")
    );
}

#[test]
fn three_problems_are_all_reported() {
    let report = report_of("three_problems.safetensors");
    assert_eq!(report.missing, vec!["linear.bias"]);
    assert_eq!(report.unexpected, vec!["extra.weight"]);
    assert_eq!(report.shape_mismatches[0].key, "linear.weight");
    assert_eq!(report.problem_count(), 3);
    let text = report.to_string();
    assert!(
        text.starts_with("Error(s) in loading state_dict for simple:"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[test]
fn duplicate_keys_are_refused_even_when_the_crate_accepts_them() {
    // The safetensors crate itself accepts this file (same offsets): prove it, then prove we do not.
    let bytes = std::fs::read(fixture("broken/duplicate_key.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .expect("the crate accepts same-offset duplicates");
    assert_eq!(
        st.tensor("linear.bias").unwrap().dtype(),
        safetensors::Dtype::I32,
        "last one wins in the crate"
    );
    assert_eq!(
        format_error_of("duplicate_key.safetensors"),
        FormatError::DuplicateKeys(vec!["linear.bias".into()])
    );
}

#[test]
fn truncated_and_trailing_bytes() {
    assert!(matches!(
        format_error_of("truncated.safetensors"),
        FormatError::TruncatedData {
            expected: 188,
            actual: 185
        }
    ));
    assert!(matches!(
        format_error_of("trailing_bytes.safetensors"),
        FormatError::TrailingBytes {
            expected: 188,
            actual: 210
        }
    ));
    assert_eq!(format_error_of("empty.safetensors"), FormatError::Empty);
}

#[test]
fn pickles_named_safetensors_are_refused_by_format() {
    assert_eq!(
        format_error_of("pickle_zip.safetensors"),
        FormatError::Foreign(ForeignFormat::TorchZip)
    );
    assert_eq!(
        format_error_of("pickle_raw.safetensors"),
        FormatError::Foreign(ForeignFormat::Pickle)
    );
    let message = format_error_of("pickle_zip.safetensors").to_string();
    assert!(
        message.contains("torch.save") && message.contains("wick convert"),
        "{message}"
    );
}

#[test]
fn half_precision_is_widened_losslessly() {
    let loaded = load("simple", &fixture("broken/f16.safetensors")).unwrap();
    let mut upcast = loaded.report.upcast.clone();
    upcast.sort();
    assert_eq!(upcast, ["linear.bias", "linear.weight"]);
    assert_eq!(
        loaded.tensors["linear.weight"].dtype(),
        candle_core::DType::F32
    );
}

#[test]
fn a_flattened_training_checkpoint_loads_with_strip_prefix_and_ignore() {
    // models/digits/1 is {'model': ..., 'optimizer': Adam state, 'epoch': 60} flattened by
    // scripts/make_fixtures.py; config.toml maps it with strip_prefix/ignore.
    let loaded = load("digits", &demo_model("digits", 1)).unwrap();
    assert_eq!(loaded.tensors.len(), 6);
    assert!(loaded
        .report
        .ignored
        .iter()
        .all(|k| k.starts_with("optimizer.")));
    assert_eq!(loaded.report.ignored.len(), 18);
    assert!(
        loaded.metadata["training"].contains("\"epoch\": \"60\""),
        "{:?}",
        loaded.metadata
    );
    // Without the mapping the same file is refused with every key named.
    let config = config();
    let model = config.model("digits").unwrap();
    let expected = model.architecture.expected().unwrap();
    match state_dict::load(
        &demo_model("digits", 1),
        "digits",
        &expected,
        &Default::default(),
    ) {
        Err(LoadError::Mismatch(report)) => {
            assert_eq!(report.missing.len(), 6);
            assert_eq!(report.unexpected.len(), 24);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn sha256_is_the_files_digest() {
    use sha2::Digest;
    let path = demo_model("simple", 1);
    let loaded = load("simple", &path).unwrap();
    let expected = state_dict::hex(&sha2::Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(loaded.sha256, expected);
}

fn wick(args: &[&str]) -> (i32, String) {
    let out = process::wick()
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `wick check --config config.toml --model MODEL [--json] FILE`.
fn check(model: &str, json: bool, file: &Path) -> (i32, String) {
    let mut args = vec!["check", "--config", "config.toml", "--model", model];
    if json {
        args.push("--json");
    }
    args.push(file.to_str().unwrap());
    wick(&args)
}

#[test]
fn wick_check_prints_pytorch_style_and_exits_1() {
    let file = fixture("broken/three_problems.safetensors");
    let (code, out) = check("simple", false, &file);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Error(s) in loading state_dict for linear \"simple\":"),
        "{out}"
    );
    assert!(
        out.contains("\tMissing key(s) in state_dict: \"linear.bias\"."),
        "{out}"
    );
    assert!(
        out.contains("\tUnexpected key(s) in state_dict: \"extra.weight\"."),
        "{out}"
    );
    assert!(out.contains("\tsize mismatch for linear.weight: copying a param with shape [2, 10] from checkpoint, the shape in current model is [1, 10]."), "{out}");

    let (code, out) = check("simple", true, &file);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(
        json["report"]["missing"],
        serde_json::json!(["linear.bias"])
    );
    assert_eq!(
        json["report"]["shape_mismatches"][0]["checkpoint"],
        serde_json::json!([2, 10])
    );

    let (code, out) = check("digits", false, &demo_model("digits", 1));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("compatible"), "{out}");

    let (code, out) = check("simple", true, &fixture("broken/pickle_zip.safetensors"));
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["kind"], "foreign_format");
}

#[test]
fn wick_inspect_lists_tensors() {
    let file = demo_model("simple", 1);
    let (code, out) = wick(&["inspect", "--json", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["tensors"][0]["name"], "linear.bias");
    assert_eq!(json["tensors"][1]["shape"], serde_json::json!([1, 10]));
    assert_eq!(json["tensors"][1]["bytes"], 40);
    assert_eq!(json["file_bytes"], 188);
    let (code, out) = wick(&["inspect", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("linear.weight") && out.contains("F32") && out.contains("[1, 10]"),
        "{out}"
    );
    let (code, _) = wick(&[
        "inspect",
        fixture("broken/pickle_raw.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
}
