//! Unit tests of the golden gate: the comparison statistics and verdict, and reading golden
//! files (tensors, BYTES inputs from the metadata, refusals).

use std::collections::HashMap;

use super::*;
use crate::model::IoSpec;

fn t(shape: &[usize], values: &[f32]) -> HostTensor {
    HostTensor {
        shape: shape.to_vec(),
        data: HostData::F32(values.to_vec()),
    }
}

#[test]
fn identical_outputs_pass_with_the_defaults() {
    let a = t(&[2, 3], &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
    let c = compare("y", &a, &a).unwrap();
    assert_eq!(c.max_abs_diff, 0.0);
    assert_eq!(c.min_cosine, 1.0);
    assert_eq!(c.argmax_agreement, 1.0);
    assert!(judge(2, vec![c], &GoldenTolerance::default()).passed);
}

#[test]
fn each_statistic_can_fail_on_its_own() {
    let want = t(&[2, 2], &[1.0, 0.0, 0.0, 1.0]);
    // Row 2's argmax flips; the difference is large.
    let got = t(&[2, 2], &[1.0, 0.0, 0.6, 0.5]);
    let c = compare("y", &want, &got).unwrap();
    assert!((c.max_abs_diff - 0.6).abs() < 1e-6, "{c:?}");
    assert_eq!(c.argmax_agreement, 0.5);
    assert!(c.min_cosine < 0.9);
    let loose = GoldenTolerance {
        max_abs: 1.0,
        min_cosine: -1.0,
        argmax_agreement: 0.5,
    };
    assert!(judge(2, vec![c.clone()], &loose).passed);
    for strict in [
        GoldenTolerance {
            max_abs: 0.5,
            ..loose
        },
        GoldenTolerance {
            min_cosine: 0.9,
            ..loose
        },
        GoldenTolerance {
            argmax_agreement: 1.0,
            ..loose
        },
    ] {
        let report = judge(2, vec![c.clone()], &strict);
        assert!(!report.passed, "{strict:?}");
        assert!(report.to_string().contains("golden outputs differ"));
    }
}

#[test]
fn a_scaled_output_keeps_its_cosine_but_not_its_values() {
    let want = t(&[1, 3], &[1.0, 2.0, 3.0]);
    let got = t(&[1, 3], &[2.0, 4.0, 6.0]);
    let c = compare("y", &want, &got).unwrap();
    assert!((c.min_cosine - 1.0).abs() < 1e-12);
    assert_eq!(c.max_abs_diff, 3.0);
    assert!(!judge(1, vec![c], &GoldenTolerance::default()).passed);
}

#[test]
fn nan_and_shape_changes_fail() {
    let want = t(&[1, 2], &[1.0, 2.0]);
    let nan = compare("y", &want, &t(&[1, 2], &[1.0, f32::NAN])).unwrap();
    assert!(nan.max_abs_diff.is_nan());
    let loosest = GoldenTolerance {
        max_abs: 1e30,
        min_cosine: -1.0,
        argmax_agreement: 0.0,
    };
    assert!(!judge(1, vec![nan], &loosest).passed);
    let shape = compare("y", &want, &t(&[2, 1], &[1.0, 2.0])).unwrap();
    assert_eq!(shape.produced_shape, Some(vec![2, 1]));
    let report = judge(1, vec![shape], &loosest);
    assert!(!report.passed);
    assert!(
        report.to_string().contains("golden shape [1, 2]"),
        "{report}"
    );
}

fn signature() -> Signature {
    Signature {
        inputs: vec![
            IoSpec::new("x", ElemKind::F32, &[2]),
            IoSpec::new("text", ElemKind::Bytes, &[]).optional(),
        ],
        outputs: vec![IoSpec::new("y", ElemKind::F32, &[1])],
    }
}

/// Writes a golden file of `(name, shape, values)` F32 tensors and `metadata`.
fn write(
    dir: &Path,
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    metadata: &[(&str, &str)],
) -> std::path::PathBuf {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.to_string(), view)
        })
        .collect();
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = dir.join(GOLDEN_FILE);
    safetensors::serialize_to_file(views, Some(meta), &path).unwrap();
    path
}

#[test]
fn reads_tensors_and_bytes_inputs_aligned_with_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &[
            ("input.x", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            ("output.y", vec![2, 1], vec![0.5, 0.25]),
        ],
        &[("input.text", r#"["a b", "c"]"#), ("format", "pt")],
    );
    let golden = read(&path, &signature()).unwrap();
    assert_eq!(golden.inputs[0], Some(t(&[2, 2], &[1.0, 2.0, 3.0, 4.0])));
    assert_eq!(
        golden.inputs[1],
        Some(HostTensor {
            shape: vec![2],
            data: HostData::Bytes(vec![b"a b".to_vec(), b"c".to_vec()]),
        })
    );
    assert_eq!(golden.outputs, vec![(0, t(&[2, 1], &[0.5, 0.25]))]);
}

/// A golden file to write (F32 `(name, shape, values)` tensors and metadata) and the words
/// its refusal must contain.
type Case<'a> = (
    Vec<(&'a str, Vec<usize>, Vec<f32>)>,
    Vec<(&'a str, &'a str)>,
    &'a str,
);

#[test]
fn refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = vec![
        (
            vec![("input.x", vec![1, 2], vec![0.0; 2])],
            vec![],
            "no output",
        ),
        (
            vec![("output.z", vec![1, 1], vec![0.0])],
            vec![],
            "no output \"z\"",
        ),
        (
            vec![("weights", vec![1, 1], vec![0.0])],
            vec![],
            "neither input",
        ),
        (
            vec![("output.y", vec![1, 1], vec![0.0])],
            vec![("input.text", "not json")],
            "JSON list",
        ),
        (
            vec![("output.y", vec![1, 1], vec![0.0])],
            vec![("input.x", r#"["a"]"#)],
            "BYTES",
        ),
    ];
    for (tensors, metadata, expected) in cases {
        let path = write(dir.path(), &tensors, &metadata);
        let error = read(&path, &signature()).unwrap_err();
        assert_eq!(error.kind(), "golden_file");
        assert!(error.to_string().contains(expected), "{error}");
    }
    std::fs::write(dir.path().join(GOLDEN_FILE), b"\x80\x02 a pickle").unwrap();
    let error = read(&dir.path().join(GOLDEN_FILE), &signature()).unwrap_err();
    assert!(matches!(error, GoldenFailure::File(_)), "{error}");
}
