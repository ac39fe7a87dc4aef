//! Numeric cases of tests/fixtures/catalogue (scripts/make_catalogue_fixtures.py): a case's
//! config as a `[[models]]` entry, its io.safetensors samples as requests and references, and
//! the comparison the case's `tolerance` is stated in (max |out - ref| / max |ref| per output).

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::tensors::{input, output, read_json};
use super::{f32s, fixture, read_tensors, Repo, TestServer, Values};

/// A numeric case: its folder, case.json and io.safetensors tensors.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub json: Value,
    pub io: HashMap<String, (Vec<usize>, Values)>,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = fixture("catalogue").join(name);
        let json = read_json(&dir.join("case.json"));
        let io = read_tensors(&dir.join(json["io"]["file"].as_str().unwrap()));
        Case {
            name: name.to_string(),
            dir,
            json,
            io,
        }
    }

    /// The case's weights file.
    pub fn weights(&self) -> PathBuf {
        self.dir
            .join(self.json["weights"]["file"].as_str().unwrap())
    }

    /// Publishes the weights as version 1 of `model`.
    pub fn install(&self, repo: &Repo, model: &str) {
        repo.install(model, 1, &self.weights());
    }

    /// The case's config table, changed by `edit`.
    pub fn config(&self, edit: impl FnOnce(&mut toml::Table)) -> toml::Table {
        let mut table = toml::Table::try_from(&self.json["config"]).unwrap();
        edit(&mut table);
        table
    }

    /// A `[[models]]` entry serving this case's architecture with `config`.
    pub fn model_toml(&self, model: &str, config: toml::Table) -> String {
        format!(
            "[[models]]\nname = \"{model}\"\narchitecture = {}\nconfig = {}\n\
             batching = {{ max_batch_size = 16, max_queue_delay_us = 20000 }}\n",
            self.json["architecture"],
            toml::Value::Table(config)
        )
    }

    /// The samples' names (`a`, `b`) with their input and output names.
    pub fn samples(&self) -> Vec<(String, Vec<String>, Vec<String>)> {
        self.json["io"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let names = |k: &str| s[k].as_object().unwrap().keys().cloned().collect();
                (
                    s["name"].as_str().unwrap().to_string(),
                    names("inputs"),
                    names("outputs"),
                )
            })
            .collect()
    }

    /// The inference request of `sample` (every input, FP32 or INT64 as stored).
    pub fn request(&self, sample: &str, inputs: &[String]) -> Value {
        let inputs: Vec<Value> = inputs
            .iter()
            .map(|name| {
                let (shape, values) = &self.io[&format!("{sample}.{name}")];
                match values {
                    Values::F32(v) => input(name, "FP32", shape, v),
                    Values::I64(v) => input(name, "INT64", shape, v),
                }
            })
            .collect();
        json!({ "inputs": inputs })
    }

    /// The case's tolerance (max_rel_err).
    pub fn tolerance(&self) -> f32 {
        self.json["tolerance"]["max_rel_err"].as_f64().unwrap() as f32
    }

    /// Asserts every output of `response` is within the case's tolerance of `sample`'s
    /// reference, with the reference's shape. Returns the worst relative error.
    #[track_caller]
    pub fn check(&self, response: &Value, sample: &str, outputs: &[String], what: &str) -> f32 {
        let mut worst = 0f32;
        for name in outputs {
            let (shape, want) = &self.io[&format!("{sample}.{name}")];
            let out = output(response, name);
            assert_eq!(out["shape"], json!(shape), "{what}: {name} shape");
            let rel = relative_error(&f32s(&out["data"]), want.f32());
            assert!(
                rel <= self.tolerance(),
                "{what}: {name} differs from PyTorch by {rel:e} (allowed {})",
                self.tolerance()
            );
            worst = worst.max(rel);
        }
        worst
    }

    /// Serves `model` (this case's weights and config) and checks every sample alone, then all
    /// samples sent at once (batched together where shapes allow).
    pub async fn check_over_http(&self, server: &TestServer, model: &str) {
        let path = format!("/v2/models/{model}/infer");
        for (sample, inputs, outputs) in self.samples() {
            let (status, response) = server
                .post_json(&path, &self.request(&sample, &inputs))
                .await;
            assert_eq!(status, 200, "{}: {response}", self.name);
            let what = format!("{} sample {sample}", self.name);
            let worst = self.check(&response, &sample, &outputs, &what);
            println!("{what}: max relative error vs PyTorch {worst:e}");
        }
        // Four requests in flight at once (a, b, a, b): batched together where the shapes allow.
        let samples = self.samples();
        let pick = |i: usize| &samples[i % samples.len()];
        let body = |i: usize| self.request(&pick(i).0, &pick(i).1);
        let (b0, b1, b2, b3) = (body(0), body(1), body(2), body(3));
        let (r0, r1, r2, r3) = tokio::join!(
            server.post_json(&path, &b0),
            server.post_json(&path, &b1),
            server.post_json(&path, &b2),
            server.post_json(&path, &b3)
        );
        for (i, (status, response)) in [r0, r1, r2, r3].iter().enumerate() {
            assert_eq!(*status, 200, "{}: {response}", self.name);
            let what = format!("{} concurrent {i}", self.name);
            self.check(response, &pick(i).0, &pick(i).2, &what);
        }
    }
}

/// max |got - want| / max |want|: the measure the fixture script states tolerances in.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    if peak > 0.0 {
        diff / peak
    } else {
        diff
    }
}
