//! Fuzz target: the text path. Raw bytes through the tokenizer wick builds from a real
//! tokenizer.json (the byte budget, truncation, pairs), and the same bytes as a KServe v2
//! request to a BERT model's `prepare` (decode, UTF-8 checks, tokenisation, padding). Any
//! panic, abort, leak or out-of-memory is a bug; refusals are expected.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wick::arch::text::tokenizer::{cut_to, TextTokenizer};
use wick::arch::{configure, Configured};
use wick::model::{Assets, Model};
use wick::protocol::{decode, DecodeLimits};

const TOKENIZER: &[u8] = include_bytes!("../../tests/fixtures/arch/bert_small/tokenizer.json");

fn tokenizers() -> &'static [TextTokenizer; 2] {
    static T: OnceLock<[TextTokenizer; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let make = |truncate| TextTokenizer::from_json(TOKENIZER, 16, 132, truncate).expect("tokenizer");
        [make(true), make(false)]
    })
}

/// A small BERT with zero weights: `prepare` does not need real ones.
fn model() -> &'static (std::sync::Arc<Configured>, Box<dyn Model>) {
    static M: OnceLock<(std::sync::Arc<Configured>, Box<dyn Model>)> = OnceLock::new();
    M.get_or_init(|| {
        let config: toml::Table = "vocab_size = 132\nhidden_size = 64\nnum_hidden_layers = 1\nnum_attention_heads = 4\nintermediate_size = 128\nmax_position_embeddings = 64\nmax_seq_length = 16\npooling = \"mean\"\nnormalize = true"
            .parse()
            .expect("config");
        let arch = configure("bert", &config).expect("configure");
        let mut tensors = HashMap::new();
        for p in &arch.expected().expect("expected").params {
            let t = candle_core::Tensor::zeros(p.shape.as_slice(), p.dtype, &candle_core::Device::Cpu)
                .expect("zeros");
            tensors.insert(p.name.clone(), t);
        }
        let mut assets = Assets::default();
        assets.insert("tokenizer.json", TOKENIZER.to_vec());
        let model = arch.build(tensors, &assets).expect("build");
        (arch, model)
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (half, _) = cut_to(&text, text.len() / 2);
    for tokenizer in tokenizers() {
        let _ = tokenizer.encode(&text);
        let _ = tokenizer.encode_pair(half, &text[half.len()..]);
    }
    let (arch, model) = model();
    let limits = DecodeLimits {
        max_elements: 4096,
        max_strings: 64,
        ..DecodeLimits::default()
    };
    if let Ok(mut decoded) = decode(data, None, arch.signature(), &limits) {
        let _ = model.prepare(std::mem::take(&mut decoded.inputs));
    }
});
