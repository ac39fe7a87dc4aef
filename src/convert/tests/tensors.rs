//! From unpickled objects to tensors: rebuilding tensor descriptions, choosing the state dict
//! (and reporting what is dropped), checking views against storages, gathering strided views.

use super::{binunicode, p2, tensor_pickle, unpickle};
use crate::convert::objects::{StorageRef, TensorRef};
use crate::convert::plan::{gather, plan, PlanError, PlanLimits, PlannedTensor};
use crate::convert::torch::{select, SelectError, Selection};
use crate::state_dict::{FileDtype, HeaderLimits};

#[test]
fn rebuilds_tensor_descriptions() {
    let u = unpickle(&tensor_pickle(12, 2, &[2, 3], &[1, 2])).unwrap();
    let selection = select(&u, None).unwrap();
    assert_eq!(selection.tensors.len(), 1);
    let (name, t) = &selection.tensors[0];
    assert_eq!(name, "w");
    assert_eq!(
        t.storage,
        StorageRef {
            dtype: FileDtype::F32,
            key: "0".into(),
            numel: 12
        }
    );
    assert_eq!(
        (t.offset, t.shape.clone(), t.stride.clone()),
        (2, vec![2, 3], vec![1, 2])
    );
    // Short argument lists and mismatched ranks are refused.
    let err = unpickle(&tensor_pickle(12, 0, &[2, 3], &[1])).unwrap_err();
    assert!(err.to_string().contains("2 sizes but 1 strides"), "{err}");
}

#[test]
fn selection_reports_what_it_drops_and_where_tensors_are() {
    let mut body = b"}(".to_vec();
    body.extend(binunicode("model"));
    let inner = tensor_pickle(4, 0, &[4], &[1]);
    body.extend_from_slice(&inner[2..inner.len() - 1]);
    body.extend(binunicode("epoch"));
    body.extend_from_slice(b"K\x03u");
    let u = unpickle(&p2(&body)).unwrap();
    let err = select(&u, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no tensors at the top level; try --key model (1 tensors)"
    );
    let selection = select(&u, Some("model")).unwrap();
    assert_eq!(selection.dropped.len(), 1);
    assert_eq!(
        (
            selection.dropped[0].name.as_str(),
            selection.dropped[0].what.as_str()
        ),
        ("epoch", "int 3")
    );
    let err = select(&u, Some("state_dict")).unwrap_err();
    assert!(matches!(err, SelectError::KeyMissing { .. }), "{err}");
    assert!(err.to_string().contains("epoch (int 3)"), "{err}");
}

fn one_tensor(shape: &[u64], stride: &[u64], offset: u64, numel: u64) -> Selection {
    let storage = StorageRef {
        dtype: FileDtype::F32,
        key: "0".into(),
        numel,
    };
    let t = TensorRef {
        storage,
        offset,
        shape: shape.to_vec(),
        stride: stride.to_vec(),
    };
    Selection {
        location: "the top level".into(),
        tensors: vec![("t".into(), t)],
        dropped: vec![],
    }
}

fn limits() -> PlanLimits {
    PlanLimits {
        header: HeaderLimits::default(),
        max_output_bytes: 1 << 20,
    }
}

#[test]
fn plans_check_views_against_storages_and_records() {
    let record = |bytes: u64| move |_: &str| Some(bytes);
    assert!(plan(&one_tensor(&[2, 3], &[3, 1], 0, 6), &record(24), &limits()).is_ok());
    // The record must hold exactly numel × element size.
    let err = plan(&one_tensor(&[2], &[1], 0, 6), &record(16), &limits()).unwrap_err();
    assert!(
        matches!(err, PlanError::StorageSize { record: 16, .. }),
        "{err}"
    );
    let err = plan(&one_tensor(&[2], &[1], 0, u64::MAX), &record(16), &limits()).unwrap_err();
    assert!(err.to_string().contains("more than 2^64 bytes"), "{err}");
    // Last element = 1 + 1×3 + 2×1 = 6, past a 6-element storage.
    let err = plan(&one_tensor(&[2, 3], &[3, 1], 1, 6), &record(24), &limits()).unwrap_err();
    assert!(
        matches!(err, PlanError::OutOfBounds(ref b) if b.last == Some(6)),
        "{err}"
    );
    let err = plan(&one_tensor(&[3], &[u64::MAX], 0, 6), &record(24), &limits()).unwrap_err();
    assert!(
        matches!(err, PlanError::OutOfBounds(ref b) if b.last.is_none()),
        "{err}"
    );
    // Empty views read nothing, whatever their offset.
    assert!(plan(
        &one_tensor(&[0, 5], &[5, 1], 100, 6),
        &record(24),
        &limits()
    )
    .is_ok());
    // A stride-0 view of one element asking for 4 MiB of output.
    let err = plan(&one_tensor(&[1 << 20], &[0], 0, 1), &record(4), &limits()).unwrap_err();
    assert!(
        matches!(err, PlanError::OutputTooLarge { bytes: 4194304, .. }),
        "{err}"
    );
    let err = plan(&one_tensor(&[1; 9], &[1; 9], 0, 1), &record(4), &limits()).unwrap_err();
    assert!(matches!(err, PlanError::Rank { rank: 9, .. }), "{err}");
    let err = plan(&one_tensor(&[2], &[1], 0, 6), &|_: &str| None, &limits()).unwrap_err();
    assert!(matches!(err, PlanError::MissingRecord { .. }), "{err}");
}

#[test]
fn a_storage_declared_twice_differently_is_refused() {
    let mut selection = one_tensor(&[2], &[1], 0, 4);
    let mut other = selection.tensors[0].1.clone();
    other.storage.dtype = FileDtype::I32;
    selection.tensors.push(("u".into(), other));
    let err = plan(&selection, &|_: &str| Some(16), &limits()).unwrap_err();
    assert!(matches!(err, PlanError::StorageConflict { .. }), "{err}");
}

fn planned(shape: &[usize], stride: &[u64], offset: u64) -> PlannedTensor {
    PlannedTensor {
        name: "t".into(),
        dtype: FileDtype::U8,
        shape: shape.to_vec(),
        stride: stride.to_vec(),
        offset,
        storage: "0".into(),
        bytes: shape.iter().product::<usize>() as u64,
    }
}

#[test]
fn gathers_views_in_row_major_order() {
    let storage: Vec<u8> = (0..24).collect();
    // (shape, stride, storage offset, expected bytes)
    type Case = (&'static [usize], &'static [u64], u64, Vec<u8>);
    let cases: [Case; 6] = [
        (&[2, 3], &[3, 1], 0, vec![0, 1, 2, 3, 4, 5]),
        (&[3, 2], &[1, 3], 0, vec![0, 3, 1, 4, 2, 5]), // transposed
        (&[2, 2], &[6, 1], 7, vec![7, 8, 13, 14]),     // a block with an offset
        (&[3, 2], &[0, 1], 4, vec![4, 5, 4, 5, 4, 5]), // stride-0 broadcast
        (&[], &[], 9, vec![9]),                        // 0-dim
        (&[2, 1, 2], &[12, 5, 2], 1, vec![1, 3, 13, 15]),
    ];
    for (shape, stride, offset, expected) in cases {
        let mut out = Vec::new();
        gather(&storage, &planned(shape, stride, offset), &mut out).unwrap();
        assert_eq!(out, expected, "{shape:?} {stride:?} +{offset}");
    }
    let mut out = Vec::new();
    assert!(
        gather(&storage, &planned(&[4], &[10], 0), &mut out).is_err(),
        "bounds are still checked"
    );
}
