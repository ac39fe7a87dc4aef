//! Unit tests of the reader's pieces on hand-written pickles and archives: opcode semantics,
//! refusals, resource bounds, view arithmetic and the output layout. The real `torch.save`
//! fixtures and the hostile files are exercised end to end in tests/it/convert.rs.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::archive::{Archive, ArchiveError, ArchiveLimits};
use super::objects::{Object, PickleError, StorageRef, TensorRef, Value};
use super::pickle::{parse, PickleLimits};
use super::plan::{gather, plan, PlanError, PlanLimits, PlannedTensor};
use super::torch::{describe, select, SelectError, Selection};
use super::{convert_bytes, ConvertError, Limits};
use crate::state_dict::{FileDtype, HeaderLimits};

fn unpickle(bytes: &[u8]) -> Result<super::objects::Unpickled, PickleError> {
    parse(bytes, &PickleLimits::default())
}

fn binunicode(text: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// PROTO 2 + body + STOP.
fn p2(body: &[u8]) -> Vec<u8> {
    let mut out = b"\x80\x02".to_vec();
    out.extend_from_slice(body);
    out.push(b'.');
    out
}

/// A pickled `OrderedDict` of one tensor `w` over FloatStorage "0" of `numel` elements.
fn tensor_pickle(numel: i32, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut body = b"ccollections\nOrderedDict\n)R".to_vec();
    body.extend(binunicode("w"));
    body.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    body.extend(binunicode("storage"));
    body.extend_from_slice(b"ctorch\nFloatStorage\n");
    body.extend(binunicode("0"));
    body.extend(binunicode("cpu"));
    body.push(b'J');
    body.extend_from_slice(&numel.to_le_bytes());
    body.extend_from_slice(b"tQK");
    body.push(offset);
    for dims in [size, stride] {
        body.push(b'(');
        for d in dims {
            body.extend_from_slice(&[b'K', *d]);
        }
        body.push(b't');
    }
    body.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtRs");
    p2(&body)
}

#[test]
fn reads_the_values_torch_save_writes() {
    let mut body = b"}q\x00(".to_vec();
    body.extend(binunicode("a"));
    body.extend_from_slice(b"K\x07");
    body.extend(binunicode("b"));
    body.extend_from_slice(b"\x8a\x02\x00\x80"); // LONG1 -32768
    body.extend(binunicode("c"));
    body.extend_from_slice(b"G\x3f\xf8\x00\x00\x00\x00\x00\x00"); // 1.5
    body.extend(binunicode("d"));
    body.extend_from_slice(b"(N\x88\x89J\xff\xff\xff\xffM\x01\x01t"); // (None, True, False, -1, 257)
    body.extend(binunicode("e"));
    body.extend_from_slice(b"h\x00"); // the dict itself: a cycle through the memo
    body.push(b'u');
    let u = unpickle(&p2(&body)).unwrap();
    let Some(Object::Dict(entries)) = u.object(u.root) else {
        panic!("{:?}", u.root)
    };
    let values: Vec<Value> = entries.iter().map(|(_, v)| *v).collect();
    assert_eq!(values[0], Value::Int(7));
    assert_eq!(values[1], Value::Int(-32768));
    assert_eq!(values[2], Value::Float(1.5));
    let Some(Object::Tuple(t)) = u.object(values[3]) else {
        panic!()
    };
    assert_eq!(
        t,
        &[
            Value::None,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-1),
            Value::Int(257)
        ]
    );
    assert_eq!(
        values[4], u.root,
        "BINGET shares the object, as Python does"
    );
    // Describing a cyclic structure terminates.
    assert_eq!(describe(&u, u.root), "dict of 5 entries");
}

#[test]
fn protocol_4_framing_short_strings_and_memoize() {
    let mut bytes = b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00".to_vec();
    bytes.extend_from_slice(b"\x8c\x02hi\x94h\x00\x86\x94.");
    let u = unpickle(&bytes).unwrap();
    assert_eq!(u.protocol, 4);
    let Some(Object::Tuple(t)) = u.object(u.root) else {
        panic!()
    };
    assert_eq!(t[0], t[1]);
    assert_eq!(u.str(t[0]), Some("hi"));
}

#[test]
fn refuses_protocols_0_1_and_above_5() {
    assert!(matches!(unpickle(b"N."), Err(PickleError::NoProto)));
    assert!(matches!(
        unpickle(b"\x80\x01N."),
        Err(PickleError::Protocol { protocol: 1, .. })
    ));
    assert!(matches!(
        unpickle(b"\x80\x06N."),
        Err(PickleError::Protocol { protocol: 6, .. })
    ));
}

#[test]
fn refuses_globals_off_the_allowlist_by_name() {
    let cases: [(&[u8], &str); 4] = [
        (b"cos\nsystem\n", "os.system"),
        (b"ctorch\nload\n", "torch.load"),
        (
            b"ctorch._utils \n_rebuild_tensor_v2\n",
            "torch._utils ._rebuild_tensor_v2",
        ),
        (
            b"ccollections\nOrderedDict.fromkeys\n",
            "collections.OrderedDict.fromkeys",
        ),
    ];
    for (body, name) in cases {
        let err = unpickle(&p2(body)).unwrap_err();
        assert!(matches!(err, PickleError::ForbiddenGlobal { .. }), "{err}");
        assert!(err.to_string().contains(&format!("`{name}`")), "{err}");
    }
}

#[test]
fn refuses_every_opcode_torch_save_does_not_write() {
    for opcode in [
        b'o', 0x81, 0x92, 0x82, 0x83, 0x84, b'P', b'2', b'F', b'I', b'L', b'S', b'T', b'U', b'V',
    ]
    .into_iter()
    .chain([b'd', b'l', b'g', b'p', 0x8f, 0x90, 0x91, 0x96, 0x97, 0x98])
    {
        let err = unpickle(&p2(&[b'N', opcode])).unwrap_err();
        assert!(
            matches!(err, PickleError::RefusedOpcode { offset: 3, .. }),
            "{opcode:#x}: {err}"
        );
    }
    assert!(matches!(
        unpickle(&p2(b"\xff")),
        Err(PickleError::UnknownOpcode { opcode: 0xff, .. })
    ));
}

#[test]
fn allowlisted_globals_are_data_not_callables() {
    let err = unpickle(&p2(b"ctorch\nFloatStorage\n(K\x10tR")).unwrap_err();
    assert!(matches!(err, PickleError::NotCallable { .. }), "{err}");
    let err = unpickle(&p2(b"ccollections\nOrderedDict\n(K\x01tR")).unwrap_err();
    assert!(matches!(err, PickleError::Arguments { .. }), "{err}");
    // REDUCE on a value that is not a global at all.
    let err = unpickle(&p2(b"])R")).unwrap_err();
    assert!(matches!(err, PickleError::Type { .. }), "{err}");
}

#[test]
fn codecs_encode_is_latin1_bytes_only() {
    let mut body = b"c_codecs\nencode\n(".to_vec();
    body.extend(binunicode("\u{e9}t\u{e9}"));
    body.extend(binunicode("latin1"));
    body.extend_from_slice(b"tR");
    let u = unpickle(&p2(&body)).unwrap();
    assert_eq!(
        u.object(u.root),
        Some(&Object::Bytes(vec![0xe9, b't', 0xe9]))
    );
    let mut body = b"c_codecs\nencode\n(".to_vec();
    body.extend(binunicode("x"));
    body.extend(binunicode("rot13"));
    body.extend_from_slice(b"tR");
    assert!(matches!(
        unpickle(&p2(&body)),
        Err(PickleError::Arguments { .. })
    ));
}

#[test]
fn lengths_are_checked_before_allocating() {
    // Declared lengths of 4 GiB and 2^64 with nothing behind them.
    for body in [
        &b"X\xff\xff\xff\xff"[..],
        b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
        b"B\xff\xff\xff\x7f",
        b"\x8b\xff\xff\xff\x7f",
    ] {
        let mut bytes = b"\x80\x04".to_vec();
        bytes.extend_from_slice(body);
        assert!(
            matches!(unpickle(&bytes), Err(PickleError::Truncated { .. })),
            "{body:?}"
        );
    }
    assert!(matches!(
        unpickle(b"\x80\x02\x8b\xff\xff\xff\xff"),
        Err(PickleError::Limit { .. })
    ));
    // A GLOBAL line without a newline.
    let mut long = b"\x80\x02c".to_vec();
    long.extend(std::iter::repeat_n(b'a', 4096));
    assert!(matches!(unpickle(&long), Err(PickleError::Limit { .. })));
    // A huge memo index is a map key, not an array size.
    let u = unpickle(b"\x80\x02Nr\xff\xff\xff\xffj\xff\xff\xff\xff\x86.").unwrap();
    assert!(matches!(u.object(u.root), Some(Object::Tuple(t)) if t.len() == 2));
    assert!(matches!(
        unpickle(&p2(b"h\x05")),
        Err(PickleError::MemoMissing { index: 5, .. })
    ));
    // The object cap.
    let many = p2(&[b']'; 100]);
    assert!(matches!(
        parse(&many, &PickleLimits { max_objects: 10 }),
        Err(PickleError::Limit { .. })
    ));
}

#[test]
fn the_stack_never_crosses_a_mark() {
    assert!(matches!(
        unpickle(&p2(b"N(0")),
        Err(PickleError::StackUnderflow { .. })
    ));
    assert!(matches!(
        unpickle(&p2(b"N(\x85")),
        Err(PickleError::StackUnderflow { .. })
    ));
    assert!(matches!(
        unpickle(&p2(b"Nt")),
        Err(PickleError::NoMark { .. })
    ));
    assert!(matches!(
        unpickle(&p2(b"N(")),
        Err(PickleError::BadStop {
            items: 1,
            marks: 1,
            ..
        })
    ));
    assert!(matches!(
        unpickle(&p2(b"}(NK\x01K\x02u")),
        Err(PickleError::Arguments { .. })
    ));
    assert!(matches!(
        unpickle(b"\x80\x02NN."),
        Err(PickleError::BadStop { items: 2, .. })
    ));
    assert!(matches!(
        unpickle(b"\x80\x02N.junk"),
        Err(PickleError::TrailingBytes { count: 4, .. })
    ));
    assert!(matches!(
        unpickle(b"\x80\x02N"),
        Err(PickleError::Truncated { .. })
    ));
}

#[test]
fn containers_are_only_extended_when_they_are_containers() {
    assert!(matches!(
        unpickle(&p2(b")Na")),
        Err(PickleError::Type { op: "APPEND", .. })
    ));
    assert!(matches!(
        unpickle(&p2(b"](NNu")),
        Err(PickleError::Type { op: "SETITEMS", .. })
    ));
    let err = unpickle(&p2(b"ctorch._utils\n_rebuild_tensor_v2\n}b")).unwrap_err();
    assert!(
        matches!(err, PickleError::Type { op: "BUILD", .. }),
        "{err}"
    );
}

#[test]
fn deep_nesting_and_shared_structure_stay_cheap() {
    // 200 000 nested lists: no recursion anywhere (parse, describe, drop).
    let depth = 200_000;
    let mut body = vec![b']'; depth];
    body.extend(std::iter::repeat_n(b'a', depth - 1));
    let u = unpickle(&p2(&body)).unwrap();
    assert_eq!(describe(&u, u.root), "list of 1 items");
    assert!(matches!(
        select(&u, None),
        Err(SelectError::NotADict { .. })
    ));
    // A DAG with 2^60 paths: each object is visited once.
    let mut body = b"]".to_vec();
    for _ in 0..60 {
        body.extend_from_slice(b"q\x00h\x00\x86");
    }
    let u = unpickle(&p2(&body)).unwrap();
    assert_eq!(describe(&u, u.root), "tuple of 2 items");
}

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

fn zip_of(entries: &[(&str, &[u8], CompressionMethod)]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data, method) in entries {
        zip.start_file(
            *name,
            SimpleFileOptions::default().compression_method(*method),
        )
        .unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn open(bytes: &[u8]) -> Result<Archive<Cursor<&[u8]>>, ArchiveError> {
    Archive::open(
        Cursor::new(bytes),
        bytes.len() as u64,
        &ArchiveLimits::default(),
    )
}

#[test]
fn archives_must_have_torch_saves_shape() {
    let stored = CompressionMethod::Stored;
    let pkl = p2(b"}");
    let good = zip_of(&[
        ("m/data.pkl", &pkl, stored),
        ("m/byteorder", b"little", stored),
        ("m/data/0", &[0; 8], stored),
    ]);
    let mut archive = open(&good).unwrap();
    assert_eq!(
        (archive.prefix.as_str(), archive.record_size("0")),
        ("m", Some(8))
    );
    assert_eq!(archive.read_pickle(&ArchiveLimits::default()).unwrap(), pkl);
    assert!(matches!(
        archive.read_record("0", 4),
        Err(ArchiveError::RecordSize { .. })
    ));

    let big_endian = zip_of(&[
        ("m/data.pkl", &pkl, stored),
        ("m/byteorder", b"big", stored),
    ]);
    assert!(matches!(
        open(&big_endian),
        Err(ArchiveError::ByteOrder { .. })
    ));
    let outside = zip_of(&[("m/data.pkl", &pkl, stored), ("evil.py", b"", stored)]);
    assert!(matches!(
        open(&outside),
        Err(ArchiveError::OutsideFolder { .. })
    ));
    let two = zip_of(&[("a/data.pkl", &pkl, stored), ("b/data.pkl", &pkl, stored)]);
    assert!(matches!(open(&two), Err(ArchiveError::SeveralPickles(_))));
    let script = zip_of(&[
        ("m/constants.pkl", &pkl, stored),
        ("m/code/m.py", b"", stored),
    ]);
    assert!(matches!(open(&script), Err(ArchiveError::TorchScript)));
    let deflated = zip_of(&[
        ("m/data.pkl", &pkl, stored),
        ("m/data/0", &[0; 4096], CompressionMethod::Deflated),
    ]);
    assert!(matches!(
        open(&deflated),
        Err(ArchiveError::Compressed { .. })
    ));
    let small = ArchiveLimits {
        max_entries: 1,
        ..ArchiveLimits::default()
    };
    assert!(matches!(
        Archive::open(Cursor::new(&good[..]), good.len() as u64, &small),
        Err(ArchiveError::TooManyEntries { count: 3, cap: 1 })
    ));
    // A corrupted record fails its CRC instead of yielding wrong bytes.
    let mut corrupt = zip_of(&[
        ("m/data.pkl", &pkl, stored),
        ("m/data/0", b"ABCDEFGH", stored),
    ]);
    let at = corrupt.windows(8).position(|w| w == b"ABCDEFGH").unwrap();
    corrupt[at] = b'Z';
    let mut archive = open(&corrupt).unwrap();
    assert!(matches!(
        archive.read_record("0", 8),
        Err(ArchiveError::Read { .. })
    ));
}

#[test]
fn converts_in_memory_with_an_aligned_header() {
    let stored = CompressionMethod::Stored;
    let mut body = b"}(".to_vec();
    for (name, kind, key, numel) in [
        ("a", "ByteStorage", "0", 3u8),
        ("b", "DoubleStorage", "1", 2),
        ("c", "FloatStorage", "2", 1),
    ] {
        body.extend(binunicode(name));
        body.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        body.extend(binunicode("storage"));
        body.extend_from_slice(format!("ctorch\n{kind}\n").as_bytes());
        body.extend(binunicode(key));
        body.extend(binunicode("cpu"));
        body.extend_from_slice(&[
            b'K', numel, b't', b'Q', b'K', 0, b'K', numel, 0x85, b'K', 1, 0x85,
        ]);
        body.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    body.push(b'u');
    let pkl = p2(&body);
    let doubles: Vec<u8> = [1.5f64, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let input = zip_of(&[
        ("x/data.pkl", &pkl, stored),
        ("x/data/0", &[7, 8, 9], stored),
        ("x/data/1", &doubles, stored),
        ("x/data/2", &0.25f32.to_le_bytes(), stored),
    ]);
    let out = convert_bytes(&input, None, &Limits::for_input(input.len() as u64)).unwrap();
    let header = crate::state_dict::header::parse_bytes(&out, &HeaderLimits::default()).unwrap();
    assert_eq!(header.header_len % 8, 0);
    let names: Vec<(&str, u64)> = header
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.start))
        .collect();
    // Largest element first, so every tensor is aligned to its element size.
    assert_eq!(names, [("b", 0), ("c", 16), ("a", 20)]);
    let data = &out[header.data_offset() as usize..];
    assert_eq!(&data[..16], &doubles[..]);
    assert_eq!(&data[20..], &[7, 8, 9]);
    assert_eq!(
        header.metadata.get("source_sha256").map(String::len),
        Some(64)
    );

    let err = convert_bytes(b"\x80\x02N.", None, &Limits::for_input(5)).unwrap_err();
    assert!(matches!(err, ConvertError::BarePickle), "{err}");
    let err = convert_bytes(b"GGUF", None, &Limits::for_input(4)).unwrap_err();
    assert!(matches!(err, ConvertError::NotTorch), "{err}");
}
