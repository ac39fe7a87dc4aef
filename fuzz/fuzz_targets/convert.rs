//! Fuzz target: whole `torch.save` archives through `wick convert`'s reader (zip checks, pickle
//! machine, state-dict selection, view checks, gathering, safetensors layout), in memory.
//! Any panic, abort, leak or out-of-memory is a bug; refusals are expected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick::convert::{convert_bytes, Limits};

fuzz_target!(|data: &[u8]| {
    // Tighter than the CLI's caps so that one input cannot ask for more than a few MiB.
    let mut limits = Limits::for_input(data.len() as u64);
    limits.plan.max_output_bytes = 8 << 20;
    limits.pickle.max_objects = 1 << 16;
    let _ = convert_bytes(data, None, &limits);
    let _ = convert_bytes(data, Some("model"), &limits);
});
