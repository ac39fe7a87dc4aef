//! Unit tests of the reader's pieces on hand-written pickles and archives, one module per stage:
//! opcode semantics, refusals and resource bounds (pickle.rs), tensor descriptions, selection
//! and view arithmetic (tensors.rs), the zip container and the output layout (archive.rs). The
//! real `torch.save` fixtures and the hostile files are exercised end to end in
//! tests/it/convert.rs. The pickle builders below are shared by all three.

mod archive;
mod pickle;
mod tensors;

use super::objects::PickleError;
use super::pickle::{parse, PickleLimits};

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
