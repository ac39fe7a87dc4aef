//! Fuzz target: raw data.pkl bytes through the pickle machine, then the state-dict selection
//! and the summary's descriptions (which walk shared and cyclic structures). Any panic, abort,
//! leak or out-of-memory is a bug; refusals are expected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick::convert::{pickle, torch};

fuzz_target!(|data: &[u8]| {
    let limits = pickle::PickleLimits {
        max_objects: 1 << 16,
    };
    if let Ok(unpickled) = pickle::parse(data, &limits) {
        let _ = torch::describe(&unpickled, unpickled.root);
        if let Ok(selection) = torch::select(&unpickled, None) {
            for dropped in &selection.dropped {
                std::hint::black_box(&dropped.what);
            }
        }
    }
});
