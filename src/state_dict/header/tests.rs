//! Unit tests of the header validator: every way a safetensors header can be wrong.

use super::*;

/// Builds a file from a header JSON and a data section.
fn file(json: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(data);
    out
}

fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
    parse_bytes(bytes, &HeaderLimits::default())
}

#[test]
fn accepts_a_valid_file() {
    let bytes = file(
        r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}  "#,
        &[0u8; 16],
    );
    let header = parse(&bytes).unwrap();
    assert_eq!(header.tensors.len(), 2);
    assert_eq!(header.tensors[0].name, "a");
    assert_eq!(header.tensors[1].shape, vec![2]);
    assert_eq!(header.metadata["format"], "pt");
    assert_eq!(header.file_len(), bytes.len() as u64);
}

#[test]
fn refuses_same_offset_duplicates_the_crate_accepts() {
    let bytes = file(
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"I32","shape":[4],"data_offsets":[0,16]}}"#,
        &[0u8; 16],
    );
    assert_eq!(
        parse(&bytes).unwrap_err(),
        FormatError::DuplicateKeys(vec!["a".into()])
    );
}

#[test]
fn refuses_unknown_fields_and_dtypes() {
    let bytes = file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"evil":1}}"#,
        &[0u8; 4],
    );
    let err = parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("evil"), "{err}");
    let bytes = file(
        r#"{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}"#,
        &[0u8; 4],
    );
    assert!(matches!(
        parse(&bytes),
        Err(FormatError::UnknownDtype { .. })
    ));
}

#[test]
fn refuses_truncation_and_trailing_bytes() {
    let json = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let good = file(json, &[0u8; 16]);
    assert!(parse(&good).is_ok());
    assert!(matches!(
        parse(&good[..good.len() - 1]),
        Err(FormatError::TruncatedData { .. })
    ));
    let mut long = good.clone();
    long.extend_from_slice(b"PK\x03\x04");
    assert!(matches!(
        parse(&long),
        Err(FormatError::TrailingBytes { .. })
    ));
    assert!(matches!(
        parse(&good[..20]),
        Err(FormatError::TruncatedHeader { .. })
    ));
}

#[test]
fn refuses_gaps_overlaps_and_size_lies() {
    let gap = file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
        &[0u8; 12],
    );
    assert!(matches!(parse(&gap), Err(FormatError::Offsets { .. })));
    let lie = file(
        r#"{"a":{"dtype":"F64","shape":[4],"data_offsets":[0,16]}}"#,
        &[0u8; 16],
    );
    assert!(matches!(parse(&lie), Err(FormatError::SizeMismatch { .. })));
    let reversed = file(
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}}"#,
        &[0u8; 4],
    );
    assert!(parse(&reversed).is_err());
}

#[test]
fn caps_shapes() {
    let overflow = file(
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#,
        &[],
    );
    assert!(matches!(
        parse(&overflow),
        Err(FormatError::SizeOverflow { .. })
    ));
    let zero_absurd = file(
        r#"{"a":{"dtype":"F32","shape":[0,9223372036854775807,4],"data_offsets":[0,0]}}"#,
        &[],
    );
    assert!(matches!(
        parse(&zero_absurd),
        Err(FormatError::DimTooLarge { .. })
    ));
    let deep = file(
        r#"{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    assert!(matches!(
        parse(&deep),
        Err(FormatError::RankTooLarge { .. })
    ));
}

#[test]
fn names_foreign_formats() {
    assert_eq!(
        parse(b"PK\x03\x04rest-of-a-zip-file").unwrap_err(),
        FormatError::Foreign(ForeignFormat::TorchZip)
    );
    assert_eq!(
        parse(b"\x80\x02}q\x00.").unwrap_err(),
        FormatError::Foreign(ForeignFormat::Pickle)
    );
    assert!(parse(b"GGUF\x03\x00\x00\x00....").is_err());
    assert_eq!(parse(b"").unwrap_err(), FormatError::Empty);
    assert_eq!(
        parse(b"\x01\x00").unwrap_err(),
        FormatError::TooShort { len: 2 }
    );
    let huge = u64::MAX.to_le_bytes();
    assert!(matches!(
        parse(&huge),
        Err(FormatError::HeaderTooLarge { .. })
    ));
}

#[test]
fn refuses_non_objects_and_bad_json() {
    for json in [
        "[]",
        "3",
        "{",
        "{\"a\": 1}",
        "{\"__metadata__\": {\"k\": 1}}",
    ] {
        assert!(parse(&file(json, &[])).is_err(), "{json} accepted");
    }
    let dup_meta = file(r#"{"__metadata__":{"k":"1","k":"2"}}"#, &[]);
    assert!(parse(&dup_meta).is_err());
    let bad_utf8 = file("{\"\u{ff}\":1}", &[]);
    let mut bytes = bad_utf8.clone();
    bytes[10] = 0xff;
    assert!(parse(&bytes).is_err());
}
