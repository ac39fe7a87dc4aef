//! The pickle machine on hand-written programs: the values `torch.save` writes, protocol
//! framing, the opcode and global allowlists, and the bounds on lengths, marks and nesting.

use super::{binunicode, p2, unpickle};
use crate::convert::objects::{Object, PickleError, Value};
use crate::convert::pickle::{parse, PickleLimits};
use crate::convert::torch::{describe, select, SelectError};

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
