//! The decoder's early refusals and the equivalence of its slice and reader paths.

use super::*;
use crate::model::{ElemKind, HostData, IoSpec, Signature};

fn signature() -> Signature {
    Signature {
        inputs: vec![
            IoSpec::new("x", ElemKind::F32, &[2]),
            IoSpec::new("ids", ElemKind::I64, &[-1]).optional(),
            IoSpec::new("text", ElemKind::Bytes, &[])
                .optional()
                .max_bytes(8),
        ],
        outputs: vec![
            IoSpec::new("y", ElemKind::F32, &[1]),
            IoSpec::new("z", ElemKind::F32, &[1]),
        ],
    }
}

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_elements: 1000,
        max_strings: 10,
        max_parameters: 4,
        max_rank: 8,
        max_rows: 100,
    }
}

fn slice(body: &str) -> Result<Decoded, ProtocolError> {
    decode(body.as_bytes(), None, &signature(), &limits())
}

fn reader(body: &[u8], header_len: Option<u64>) -> Result<Decoded, ProtocolError> {
    // One byte at a time: the worst case for a streaming parser.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }
    decode_reader(
        Trickle(body),
        header_len,
        &signature(),
        &limits(),
        body.len() as u64,
    )
}

fn both(body: &str) -> Result<Decoded, ProtocolError> {
    let a = slice(body);
    let b = reader(body.as_bytes(), None);
    match (&a, &b) {
        (Ok(a), Ok(b)) => assert_eq!(a.inputs, b.inputs, "{body}"),
        // Syntax errors name a position, which the two readers count differently.
        (Err(ProtocolError::Json(_)), Err(ProtocolError::Json(_))) => {}
        (Err(a), Err(b)) => assert_eq!(a, b, "{body}"),
        _ => panic!("slice and reader disagree on {body}: {a:?} vs {b:?}"),
    }
    a
}

#[test]
fn a_request_decodes_into_typed_inputs() {
    let d = both(
        r#"{"id": "7", "parameters": {"timeout": 5, "priority": 2},
            "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3.5, -4]]},
                       {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "é"]}],
            "outputs": [{"name": "z", "parameters": {"binary_data": true}}]}"#,
    )
    .unwrap();
    assert_eq!(d.id.as_deref(), Some("7"));
    assert_eq!(d.timeout, Some(Duration::from_micros(5)));
    assert_eq!(d.priority, Some(2));
    assert_eq!(
        d.inputs[0].as_ref().unwrap().data,
        HostData::F32(vec![1.0, 2.0, 3.5, -4.0])
    );
    assert!(d.inputs[1].is_none());
    assert_eq!(
        d.inputs[2].as_ref().unwrap().data,
        HostData::Bytes(vec![b"a".to_vec(), "é".as_bytes().to_vec()])
    );
    assert_eq!(
        d.outputs,
        vec![OutputChoice {
            index: 1,
            binary: true
        }]
    );
}

#[test]
fn data_before_its_shape_and_datatype_is_parsed_once_they_are_known() {
    let d = both(r#"{"inputs": [{"data": [1, 2, 3, 4], "name": "x", "datatype": "INT32", "shape": [2, 2]}]}"#)
        .unwrap();
    assert_eq!(
        d.inputs[0].as_ref().unwrap().data,
        HostData::F32(vec![1.0, 2.0, 3.0, 4.0])
    );
    let err = both(
        r#"{"inputs": [{"data": [1, 2, 3], "name": "x", "datatype": "FP32", "shape": [1, 2]}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::TooMuchData { expected: 2, .. }),
        "{err}"
    );
}

#[test]
fn a_shape_is_refused_at_its_ninth_dimension() {
    let dims = vec!["1"; 30_000].join(",");
    let body = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [{dims}], "datatype": "FP32", "data": [1]}}]}}"#
    );
    let err = both(&body).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::Rank {
            input: "x".into(),
            limit: 8
        }
    );
    assert!(err.to_string().len() < 200, "{err}");
}

#[test]
fn data_is_refused_at_the_first_value_past_the_declared_count() {
    let values = vec!["0"; 100_000].join(",");
    let body = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [{values}]}}]}}"#
    );
    assert_eq!(
        both(&body).unwrap_err(),
        ProtocolError::TooMuchData {
            input: "x".into(),
            shape: vec![1, 2],
            expected: 2
        }
    );
    // Too few is refused too, once the data ends.
    let err = both(
        r#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::ElementCount {
                expected: 4,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn declared_sizes_are_checked_against_the_limits_before_the_data() {
    let err = both(
        r#"{"inputs": [{"name": "ids", "shape": [50, 30], "datatype": "INT64", "data": []}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::TooManyElements { limit: 1000, .. }),
        "{err}"
    );
    // Strings are counted: a flood of empty strings stops at its declaration.
    let err = both(
        r#"{"inputs": [{"name": "text", "shape": [11], "datatype": "BYTES", "data": ["", ""]}]}"#,
    )
    .unwrap_err();
    assert_eq!(err, ProtocolError::TooManyStrings { limit: 10 });
    // Rows past the model's max_request_rows are refused at the shape.
    let err = both(
        r#"{"inputs": [{"name": "ids", "shape": [101, 1], "datatype": "INT64", "data": [1]}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Rows {
                rows: 101,
                limit: 100,
                ..
            }
        ),
        "{err}"
    );
    // Shape products that overflow u64 are refused, not wrapped.
    let err = both(r#"{"inputs": [{"name": "ids", "shape": [100, 4611686018427387904], "datatype": "INT64", "data": [1]}]}"#)
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::TooManyElements { .. }),
        "{err}"
    );
}

#[test]
fn parameters_and_outputs_are_capped_while_they_are_read() {
    let params = (0..100)
        .map(|i| format!(r#""p{i}": {i}"#))
        .collect::<Vec<_>>()
        .join(",");
    let body = format!(r#"{{"parameters": {{{params}}}, "inputs": []}}"#);
    assert_eq!(
        both(&body).unwrap_err(),
        ProtocolError::TooMany {
            what: "parameters",
            limit: 4
        }
    );
    let outputs = vec![r#"{"name": "y"}"#; 1000].join(",");
    let body = format!(r#"{{"outputs": [{outputs}], "inputs": []}}"#);
    assert_eq!(
        both(&body).unwrap_err(),
        ProtocolError::DuplicateOutput("y".into())
    );
    let err = both(r#"{"outputs": [{"name": "nope"}], "inputs": []}"#).unwrap_err();
    assert!(matches!(err, ProtocolError::UnknownOutput { .. }), "{err}");
    let err = both(r#"{"parameters": {"a": {"nested": 1}}, "inputs": []}"#).unwrap_err();
    assert!(matches!(err, ProtocolError::Json(_)), "{err}");
}

#[test]
fn fields_given_twice_and_oversized_texts_are_refused() {
    assert_eq!(
        both(r#"{"inputs": [], "inputs": []}"#).unwrap_err(),
        ProtocolError::DuplicateField("inputs")
    );
    let err = both(r#"{"inputs": [{"name": "x", "name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}"#)
        .unwrap_err();
    assert_eq!(err, ProtocolError::DuplicateField("name"));
    let id = "i".repeat(5000);
    let err = both(&format!(r#"{{"id": "{id}", "inputs": []}}"#)).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::TooLong {
            field: "id",
            limit: 4096
        }
    );
    let name = "n".repeat(100_000);
    let err = both(&format!(r#"{{"inputs": [{{"name": "{name}"}}]}}"#)).unwrap_err();
    assert!(err.to_string().len() < 400, "{}", err.to_string().len());
    assert_eq!(both("{}").unwrap_err(), ProtocolError::NoInputs);
}

#[test]
fn strings_are_clipped_to_the_input_s_byte_budget() {
    let long = "x".repeat(1 << 20);
    let d = both(&format!(r#"{{"inputs": [{{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["{long}"]}}]}}"#))
        .unwrap();
    // max_bytes 8: the model keeps its budget plus one character, enough to see the cut.
    assert_eq!(
        d.inputs[2].as_ref().unwrap().data,
        HostData::Bytes(vec![b"xxxxxxxxxxxx".to_vec()])
    );
}

fn binary_body(header: &str, tail: &[u8]) -> (Vec<u8>, u64) {
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(tail);
    (body, header.len() as u64)
}

#[test]
fn binary_inputs_read_from_the_tail_into_typed_buffers() {
    let mut tail: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let long = [b'y'; 100];
    for element in [&b"ab"[..], &long[..]] {
        tail.extend_from_slice(&(element.len() as u32).to_le_bytes());
        tail.extend_from_slice(element);
    }
    let header = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {{"binary_data_size": 8}}}},
                     {{"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {{"binary_data_size": {}}}}}]}}"#,
        tail.len() - 8
    );
    let (body, header_len) = binary_body(&header, &tail);
    for decoded in [
        decode(&body, Some(header_len), &signature(), &limits()).unwrap(),
        reader(&body, Some(header_len)).unwrap(),
    ] {
        assert_eq!(
            decoded.inputs[0].as_ref().unwrap().data,
            HostData::F32(vec![1.5, -2.0])
        );
        assert_eq!(
            decoded.inputs[2].as_ref().unwrap().data,
            HostData::Bytes(vec![b"ab".to_vec(), vec![b'y'; 12]])
        );
    }
}

#[test]
fn binary_sizes_must_add_up_exactly() {
    let header = r#"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}"#;
    let (short, len) = binary_body(header, &[0u8; 4]);
    for err in [
        decode(&short, Some(len), &signature(), &limits()).unwrap_err(),
        reader(&short, Some(len)).unwrap_err(),
    ] {
        assert!(matches!(err, ProtocolError::BinaryPastEnd { .. }), "{err}");
    }
    let (long, len) = binary_body(header, &[0u8; 9]);
    for err in [
        decode(&long, Some(len), &signature(), &limits()).unwrap_err(),
        reader(&long, Some(len)).unwrap_err(),
    ] {
        assert_eq!(err, ProtocolError::TrailingBinary(1));
    }
    let wrong = r#"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}"#;
    let (body, len) = binary_body(wrong, &[0u8; 12]);
    let err = decode(&body, Some(len), &signature(), &limits()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::BinarySize { expected: 8, .. }),
        "{err}"
    );
    // A BYTES length prefix alone reserves nothing: it must be backed by bytes.
    let bytes = r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4000000000}}]}"#;
    let (body, len) = binary_body(bytes, &u32::MAX.to_le_bytes());
    let err = reader(&body, Some(len)).unwrap_err();
    assert!(matches!(err, ProtocolError::Data { .. }), "{err}");
}

#[test]
fn nesting_must_match_the_declared_shape() {
    let err = both(
        r#"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1], [2]]}]}"#,
    )
    .unwrap_err();
    assert!(matches!(err, ProtocolError::NestedShape { .. }), "{err}");
    for ragged in [
        "[[1, 2], [3]]",
        "[1, [2]]",
        "[[1], 2]",
        "[1, true]",
        "[null]",
        "[{}]",
        "1",
    ] {
        let body = format!(
            r#"{{"inputs": [{{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": {ragged}}}]}}"#
        );
        assert!(both(&body).is_err(), "{ragged} accepted");
    }
    let deep = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": {}}}]}}"#,
        "[".repeat(100_000)
    );
    assert!(both(&deep).is_err());
}
