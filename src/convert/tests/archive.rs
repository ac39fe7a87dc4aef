//! The zip container `torch.save` writes (its shape, records, corruption) and a whole
//! conversion in memory down to the safetensors layout.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::{binunicode, p2};
use crate::convert::archive::{Archive, ArchiveError, ArchiveLimits};
use crate::convert::{convert_bytes, ConvertError, Limits};
use crate::state_dict::HeaderLimits;

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
