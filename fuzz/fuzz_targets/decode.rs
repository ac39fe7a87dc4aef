//! Fuzz target: inference request bodies through the streaming decoder, JSON and binary
//! extension, from a slice and from a reader that hands out a few bytes at a time. The two paths
//! must agree on whether a body is accepted and on what it decodes to. Any panic, abort, leak,
//! out-of-memory or disagreement is a bug; refusals are expected.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use wick::model::{ElemKind, IoSpec, Signature};
use wick::protocol::{decode, decode_reader, DecodeLimits};

fn signature() -> Signature {
    Signature {
        inputs: vec![
            IoSpec::new("x", ElemKind::F32, &[2]),
            IoSpec::new("ids", ElemKind::I64, &[-1]).optional(),
            IoSpec::new("text", ElemKind::Bytes, &[])
                .optional()
                .max_bytes(64),
        ],
        outputs: vec![
            IoSpec::new("y", ElemKind::F32, &[1]),
            IoSpec::new("z", ElemKind::I64, &[-1]),
        ],
    }
}

/// Hands out at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(buf.len()).min(self.step);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    // The first two bytes choose the framing: no binary tail, or a JSON header of that length.
    let (header_len, step, body) = match input {
        [a, b, rest @ ..] => {
            let n = u16::from_le_bytes([*a, *b]) as u64;
            let header = (n != 0 && n as usize <= rest.len()).then_some(n);
            (header, 1 + (*a as usize % 7), rest)
        }
        _ => (None, 1, input),
    };
    let limits = DecodeLimits {
        max_elements: 4096,
        max_strings: 64,
        ..DecodeLimits::default()
    };
    let sig = signature();
    let a = decode(body, header_len, &sig, &limits);
    let b = decode_reader(
        Trickle { data: body, step },
        header_len,
        &sig,
        &limits,
        body.len() as u64,
    );
    match (&a, &b) {
        (Ok(a), Ok(b)) => assert_eq!(a.inputs, b.inputs),
        (Err(_), Err(_)) => {}
        _ => panic!("slice and reader disagree: {a:?} vs {b:?}"),
    }
});
