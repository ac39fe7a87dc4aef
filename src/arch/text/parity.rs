//! Parity of every text family and head with transformers and sentence-transformers on the
//! catalogue fixtures (tests/fixtures/catalogue/<case>/, made by
//! scripts/make_catalogue_fixtures.py): the checkpoint's keys are exactly the ones the
//! architecture asks for, the server's token ids are the reference's for every text, embeddings
//! are within cosine 0.99999 and logits within 1e-4, alone and batched, from texts and from
//! token ids. The same cases run through HTTP in tests/arch_text.rs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::arch::{configure, Configured};
use crate::model::{Assets, HostData, HostTensor, Model, Notes};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/catalogue")
        .join(case)
}

fn case_json(case: &str) -> Value {
    let path = case_dir(case).join("case.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The case's `config` as a TOML table, with `drop` fields removed.
fn config_table(case: &Value, drop: &[&str]) -> toml::Table {
    let mut table = toml::Table::try_from(&case["config"]).unwrap();
    for field in drop {
        table.remove(*field);
    }
    table
}

fn configured(case: &Value, drop: &[&str]) -> Arc<Configured> {
    let name = case["architecture"].as_str().unwrap();
    configure(name, &config_table(case, drop)).unwrap()
}

/// The version's files the architecture reads, as the load pipeline collects them.
fn assets(arch: &Configured, dir: &Path) -> Assets {
    let mut assets = Assets::default();
    for name in arch.assets() {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            assets.insert(name, bytes);
        }
    }
    assets
}

/// Builds the case's model, checking first that the checkpoint holds exactly the parameters
/// the architecture asks for (names and shapes) besides its optional keys.
fn build(case_name: &str, arch: &Configured) -> Box<dyn Model> {
    let dir = case_dir(case_name);
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let expected = arch.expected().unwrap();
    let mut file: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        if expected.optional.iter().any(|g| g.matches(&name)) {
            continue;
        }
        file.insert(name, t.to_dtype(DType::F32).unwrap());
    }
    let want: BTreeSet<(String, Vec<usize>)> = expected
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let have: BTreeSet<(String, Vec<usize>)> = file
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    assert_eq!(
        want.symmetric_difference(&have).collect::<Vec<_>>(),
        Vec::<&(String, Vec<usize>)>::new(),
        "{case_name}: keys or shapes differ from the architecture's"
    );
    arch.build(file, &assets(arch, &dir)).unwrap()
}

/// One request: inputs by name, aligned with the model's signature.
fn request(arch: &Configured, named: Vec<(&str, HostTensor)>) -> Vec<Option<HostTensor>> {
    let mut inputs = vec![None; arch.signature().inputs.len()];
    for (name, tensor) in named {
        let slot = arch
            .signature()
            .inputs
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no input {name}"));
        inputs[slot] = Some(tensor);
    }
    inputs
}

fn texts(values: &[&str]) -> HostTensor {
    HostTensor {
        shape: vec![values.len()],
        data: HostData::Bytes(values.iter().map(|t| t.as_bytes().to_vec()).collect()),
    }
}

fn i64_matrix(rows: &Value) -> HostTensor {
    let rows = rows.as_array().unwrap();
    let values: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
        .collect();
    HostTensor {
        shape: vec![rows.len(), values.len() / rows.len()],
        data: HostData::I64(values),
    }
}

/// Runs one request alone; returns its outputs and notes.
fn run(model: &dyn Model, inputs: Vec<Option<HostTensor>>) -> (Vec<HostTensor>, Notes) {
    let prepared = model.prepare(inputs).unwrap();
    let mut outputs = model.forward(&[&prepared]).unwrap();
    (outputs.remove(0), prepared.notes)
}

fn f32s(t: &HostTensor) -> &[f32] {
    match &t.data {
        HostData::F32(v) => v,
        _ => panic!("not F32"),
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const EMBEDDING_CASES: [&str; 6] = [
    "bert_cls",
    "bert_max",
    "roberta_mean",
    "xlm_roberta_cls",
    "distilbert_mean",
    "mpnet_mean",
];

const CLASSIFICATION_CASES: [&str; 4] = [
    "bert_classifier",
    "roberta_classifier",
    "distilbert_classifier",
    "mpnet_classifier",
];

/// Checks one embedding case with the given model; returns the lowest cosine seen.
fn check_embeddings(name: &str, case: &Value, arch: &Configured, model: &dyn Model) -> f64 {
    let items = case["texts"].as_array().unwrap();
    let all: Vec<&str> = items.iter().map(|t| t["text"].as_str().unwrap()).collect();
    let width = arch.signature().outputs[0].dims[0] as usize;
    let (batched, notes) = run(model, request(arch, vec![("text", texts(&all))]));
    let batched = f32s(&batched[0]).to_vec();
    let truncated: Vec<Value> = items.iter().map(|t| t["truncated"].clone()).collect();
    assert_eq!(notes["truncated"], Value::from(truncated), "{name}");
    let tokens: Vec<usize> = items
        .iter()
        .map(|t| t["ids"].as_array().unwrap().len())
        .collect();
    assert_eq!(notes["tokens"], serde_json::json!(tokens), "{name}");
    let mut worst = 1f64;
    for (i, item) in items.iter().enumerate() {
        let want = floats(&item["embedding"]);
        let (alone, _) = run(model, request(arch, vec![("text", texts(&all[i..=i]))]));
        let alone = f32s(&alone[0]).to_vec();
        let row = &batched[i * width..(i + 1) * width];
        for got in [&alone[..], row] {
            let c = cosine(got, &want);
            assert!(c >= 0.99999, "{name} text {i}: cosine {c}");
            worst = worst.min(c);
        }
        // The ids the server made are the reference's: sending them gives the same answer.
        let ids = serde_json::json!([item["ids"]]);
        let (by_ids, _) = run(model, request(arch, vec![("input_ids", i64_matrix(&ids))]));
        assert!(
            max_abs(f32s(&by_ids[0]), &alone) <= 1e-6,
            "{name} text {i}: ids vs text"
        );
    }
    let ids_case = &case["ids_case"];
    let (out, _) = run(
        model,
        request(
            arch,
            vec![
                ("input_ids", i64_matrix(&ids_case["input_ids"])),
                ("attention_mask", i64_matrix(&ids_case["attention_mask"])),
            ],
        ),
    );
    for (r, want) in ids_case["embedding"].as_array().unwrap().iter().enumerate() {
        let c = cosine(&f32s(&out[0])[r * width..(r + 1) * width], &floats(want));
        assert!(c >= 0.99999, "{name} ids case row {r}: cosine {c}");
        worst = worst.min(c);
    }
    worst
}

#[test]
fn token_ids_are_the_references_for_every_text_and_pair() {
    for name in EMBEDDING_CASES.iter().chain(&CLASSIFICATION_CASES) {
        let case = case_json(name);
        let arch = configured(&case, &[]);
        let dir = case_dir(name);
        let max = case["config"]["max_seq_length"].as_u64().unwrap() as usize;
        let vocab = case["config"]["vocab_size"].as_u64().unwrap() as usize;
        let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
        let tokenizer =
            super::tokenizer::TextTokenizer::from_json(&bytes, max, vocab, true).unwrap();
        let items = case.get("texts").or(case.get("items")).unwrap();
        for item in items.as_array().unwrap() {
            let text = item["text"].as_str().unwrap();
            let encoded = match item["text_pair"].as_str() {
                Some(pair) => tokenizer.encode_pair(text, pair),
                None => tokenizer.encode(text),
            }
            .unwrap();
            let want: Vec<u32> = item["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(encoded.ids, want, "{name}: {item}");
            assert_eq!(
                Value::from(encoded.truncated),
                item["truncated"],
                "{name}: {item}"
            );
            if let Some(types) = item.get("token_type_ids") {
                let types: Vec<u32> = types
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                assert_eq!(encoded.type_ids, types, "{name}: {item}");
            }
        }
        drop(arch);
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    for name in EMBEDDING_CASES {
        let case = case_json(name);
        let arch = configured(&case, &[]);
        let model = build(name, &arch);
        let worst = check_embeddings(name, &case, &arch, model.as_ref());
        println!(
            "{name}: lowest cosine with sentence-transformers 1 - {:.2e}",
            1.0 - worst
        );
    }
}

#[test]
fn embedding_defaults_come_from_the_sentence_transformers_files() {
    for name in EMBEDDING_CASES {
        let case = case_json(name);
        // Without pooling, normalize and max_seq_length the version's files decide.
        let arch = configured(&case, &["pooling", "normalize", "max_seq_length"]);
        let model = build(name, &arch);
        let params = model.parameters();
        let defaults = &case["upstream"]["defaults_from_files"];
        for field in ["pooling", "normalize", "max_seq_length"] {
            assert_eq!(
                params[field], defaults[field],
                "{name}: {field} in {params:?}"
            );
        }
        let legacy = case["upstream"]["sentence_transformers_files"] == "legacy";
        let length_file = if legacy {
            "sentence_bert_config.json"
        } else {
            "tokenizer_config.json"
        };
        assert_eq!(
            params["settings_from"],
            serde_json::json!({
                "pooling": "1_Pooling/config.json",
                "normalize": "modules.json",
                "max_seq_length": length_file,
            }),
            "{name}"
        );
        check_embeddings(name, &case, &arch, model.as_ref());
    }
}

#[test]
fn explicit_fields_win_over_the_files() {
    // bert_cls's files say CLS pooling without normalisation; the config asks for mean pooling,
    // normalised, and a shorter max_seq_length.
    let case = case_json("bert_cls");
    let mut table = config_table(&case, &[]);
    table.insert("pooling".into(), "mean".into());
    table.insert("normalize".into(), true.into());
    table.insert("max_seq_length".into(), 8.into());
    let arch = configure("bert", &table).unwrap();
    let model = build("bert_cls", &arch);
    let params = model.parameters();
    assert_eq!(params["pooling"], "mean");
    assert_eq!(params["normalize"], true);
    assert_eq!(params["max_seq_length"], 8);
    assert_eq!(params["settings_from"]["pooling"], "config");
    let (out, notes) = run(
        model.as_ref(),
        request(
            &arch,
            vec![(
                "text",
                texts(&["The quick brown fox jumps over the lazy dog."]),
            )],
        ),
    );
    assert_eq!(notes["tokens"], serde_json::json!([8]));
    let norm: f32 = f32s(&out[0]).iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
}

#[test]
fn logits_match_transformers_for_texts_and_pairs() {
    for name in CLASSIFICATION_CASES {
        let case = case_json(name);
        let arch = configured(&case, &[]);
        let model = build(name, &arch);
        let items = case["items"].as_array().unwrap();
        let mut worst = 0f32;
        for item in items {
            let mut named = vec![("text", texts(&[item["text"].as_str().unwrap()]))];
            if let Some(pair) = item["text_pair"].as_str() {
                named.push(("text_pair", texts(&[pair])));
            }
            let (out, notes) = run(model.as_ref(), request(&arch, named));
            let err = max_abs(f32s(&out[0]), &floats(&item["logits"]));
            assert!(err <= 1e-4, "{name} {item}: logits off by {err}");
            worst = worst.max(err);
            let perr = max_abs(f32s(&out[1]), &floats(&item["probabilities"]));
            assert!(perr <= 1e-4, "{name} {item}: probabilities off by {perr}");
            let label = item["label"].as_str().unwrap().as_bytes().to_vec();
            assert_eq!(out[2].data, HostData::Bytes(vec![label]), "{name} {item}");
            assert_eq!(notes["truncated"], serde_json::json!([item["truncated"]]));
        }
        // All items at once: singles and pairs of mixed lengths in one batch.
        let singles: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
        let pairs: Vec<&str> = items
            .iter()
            .map(|i| i["text_pair"].as_str().unwrap_or(""))
            .collect();
        let paired: Vec<usize> = (0..items.len())
            .filter(|i| items[*i]["text_pair"].is_string())
            .collect();
        let firsts: Vec<&str> = paired.iter().map(|i| singles[*i]).collect();
        let seconds: Vec<&str> = paired.iter().map(|i| pairs[*i]).collect();
        let (out, _) = run(
            model.as_ref(),
            request(
                &arch,
                vec![("text", texts(&firsts)), ("text_pair", texts(&seconds))],
            ),
        );
        let n = arch.signature().outputs[0].dims[0] as usize;
        for (k, i) in paired.iter().enumerate() {
            let err = max_abs(
                &f32s(&out[0])[k * n..(k + 1) * n],
                &floats(&items[*i]["logits"]),
            );
            assert!(err <= 1e-4, "{name} batched pair {i}: {err}");
        }
        // Client token ids: a pair and a single padded together.
        let ids_case = &case["ids_case"];
        let mut named = vec![
            ("input_ids", i64_matrix(&ids_case["input_ids"])),
            ("attention_mask", i64_matrix(&ids_case["attention_mask"])),
        ];
        if ids_case.get("token_type_ids").is_some() {
            named.push(("token_type_ids", i64_matrix(&ids_case["token_type_ids"])));
        }
        let (out, _) = run(model.as_ref(), request(&arch, named));
        let want: Vec<f32> = ids_case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let err = max_abs(f32s(&out[0]), &want);
        assert!(err <= 1e-4, "{name} ids case: {err}");
        worst = worst.max(err);
        println!("{name}: largest logit error against transformers {worst:.3e}");
    }
}
