//! Fuzz target: safetensors headers through wick's own validator (the length prefix, the
//! JSON, duplicate keys, unknown fields, caps, offsets tiling the data, sizes). Any panic,
//! abort, leak or out-of-memory is a bug; refusals are expected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick::state_dict::header::{header_len, parse_bytes};
use wick::state_dict::HeaderLimits;

fuzz_target!(|data: &[u8]| {
    let limits = HeaderLimits::default();
    let _ = parse_bytes(data, &limits);
    // The prefix check alone, with a file length that may disagree with the bytes at hand.
    let claimed = data.len() as u64 / 2;
    let _ = header_len(data, claimed, &limits);
});
