//! Triton's model configuration and statistics extensions, as data: the JSON shapes of
//! `GET /v2/models/{m}[/versions/{v}]/config` (Triton's `ModelConfig` protobuf in its JSON
//! mapping) and `.../stats` (`ModelStatisticsResponse`), built from wick's own config, signature
//! and counters. Field names follow Triton's `model_config.proto` and `grpc_service.proto` so
//! `tritonclient`'s `get_model_config` and `get_inference_statistics` read them as from Triton.

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{BatchingConfig, VersionPolicy};
use crate::model::{ElemKind, IoSpec, Notes, Signature};
use crate::telemetry::{Counted, StatsSnapshot};

/// Triton's `DataType` enum name of an element kind (`TYPE_STRING` is Triton's BYTES).
pub fn config_datatype(kind: ElemKind) -> &'static str {
    match kind {
        ElemKind::F32 => "TYPE_FP32",
        ElemKind::I64 => "TYPE_INT64",
        ElemKind::Bytes => "TYPE_STRING",
    }
}

#[derive(Debug, Serialize)]
pub struct ConfigTensor {
    pub name: String,
    pub data_type: &'static str,
    /// Without the batch dimension (`max_batch_size > 0`, as Triton); `-1` varies per request.
    pub dims: Vec<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

impl ConfigTensor {
    fn of(spec: &IoSpec) -> ConfigTensor {
        ConfigTensor {
            name: spec.name.clone(),
            data_type: config_datatype(spec.kind),
            dims: spec.dims.clone(),
            optional: spec.optional,
        }
    }
}

/// Triton's `ModelConfig`, the fields wick has something to say about.
#[derive(Debug, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub platform: &'static str,
    pub backend: &'static str,
    pub version_policy: Value,
    pub max_batch_size: usize,
    pub input: Vec<ConfigTensor>,
    pub output: Vec<ConfigTensor>,
    pub dynamic_batching: Value,
    pub instance_group: Value,
    /// Triton's `parameters` map: string values under `string_value`.
    pub parameters: serde_json::Map<String, Value>,
}

/// What a model's configuration is made of.
pub struct ConfigParts<'a> {
    pub name: &'a str,
    pub architecture: &'a str,
    pub signature: &'a Signature,
    pub version_policy: &'a VersionPolicy,
    pub batching: &'a BatchingConfig,
    /// What the described version resolved at load time (`Model::parameters`).
    pub resolved: &'a Notes,
}

fn version_policy(policy: &VersionPolicy) -> Value {
    match policy {
        VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
        VersionPolicy::All => json!({ "all": {} }),
        VersionPolicy::Specific(versions) => json!({ "specific": { "versions": versions } }),
    }
}

/// `GET .../config`: Triton's ModelConfig of a model.
pub fn model_config(parts: &ConfigParts<'_>) -> ModelConfig {
    let b = parts.batching;
    let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let dynamic_batching = json!({
        "preferred_batch_size": [],
        "max_queue_delay_microseconds": micros(b.max_queue_delay),
        "preserve_ordering": true,
        "priority_levels": 0,
        "default_priority_level": b.default_priority,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": b.default_timeout.map_or(0, micros),
            "allow_timeout_override": true,
            "max_queue_size": b.max_queue_size,
        },
    });
    let mut parameters = serde_json::Map::new();
    let mut string = |key: &str, value: String| {
        parameters.insert(key.to_string(), json!({ "string_value": value }));
    };
    string("architecture", parts.architecture.to_string());
    string("max_request_rows", b.max_request_rows.to_string());
    string("max_batch_tokens", b.max_batch_tokens.to_string());
    string("max_queue_tokens", b.max_queue_tokens.to_string());
    for (key, value) in parts.resolved {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        string(key, text);
    }
    ModelConfig {
        name: parts.name.to_string(),
        platform: "wick_safetensors",
        backend: "wick",
        version_policy: version_policy(parts.version_policy),
        max_batch_size: b.max_batch_size,
        input: parts
            .signature
            .inputs
            .iter()
            .map(ConfigTensor::of)
            .collect(),
        output: parts
            .signature
            .outputs
            .iter()
            .map(ConfigTensor::of)
            .collect(),
        dynamic_batching,
        instance_group: json!([{ "name": parts.name, "kind": "KIND_CPU", "count": 1 }]),
        parameters,
    }
}

#[derive(Debug, Serialize)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

impl From<Counted> for StatDuration {
    fn from(c: Counted) -> StatDuration {
        StatDuration {
            count: c.count,
            ns: c.ns,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InferStatistics {
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
    pub cache_hit: StatDuration,
    pub cache_miss: StatDuration,
}

#[derive(Debug, Serialize)]
pub struct BatchStatistics {
    pub batch_size: u64,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

#[derive(Debug, Serialize)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferStatistics,
    pub batch_stats: Vec<BatchStatistics>,
    pub memory_usage: Vec<Value>,
    pub response_stats: serde_json::Map<String, Value>,
}

/// `GET .../stats`: the answer lists one entry per model version.
#[derive(Debug, Serialize)]
pub struct StatisticsResponse {
    pub model_stats: Vec<ModelStatistics>,
}

/// One version's statistics in Triton's shape. Per-batch tallies carry forward passes only:
/// wick decodes and encodes per request, so a batch's input and output phases are zero.
pub fn model_statistics(name: &str, version: u64, s: StatsSnapshot) -> ModelStatistics {
    let zero = || StatDuration { count: 0, ns: 0 };
    ModelStatistics {
        name: name.to_string(),
        version: version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: InferStatistics {
            success: s.success.into(),
            fail: s.fail.into(),
            queue: s.queue.into(),
            compute_input: s.compute_input.into(),
            compute_infer: s.compute_infer.into(),
            compute_output: s.compute_output.into(),
            cache_hit: zero(),
            cache_miss: zero(),
        },
        batch_stats: s
            .batches
            .into_iter()
            .map(|(rows, counted)| BatchStatistics {
                batch_size: rows,
                compute_input: zero(),
                compute_infer: counted.into(),
                compute_output: zero(),
            })
            .collect(),
        memory_usage: Vec::new(),
        response_stats: serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_triton_names_and_no_batch_dimension() {
        let signature = Signature {
            inputs: vec![IoSpec::new("text", ElemKind::Bytes, &[]).optional()],
            outputs: vec![IoSpec::new("embedding", ElemKind::F32, &[384])],
        };
        let batching = BatchingConfig {
            max_queue_delay: std::time::Duration::from_micros(2000),
            ..BatchingConfig::default()
        };
        let config = model_config(&ConfigParts {
            name: "m",
            architecture: "bert",
            signature: &signature,
            version_policy: &VersionPolicy::Specific(vec![1, 3]),
            batching: &batching,
            resolved: &Notes::new(),
        });
        let v = serde_json::to_value(&config).unwrap();
        assert_eq!(v["input"][0]["data_type"], "TYPE_STRING");
        assert_eq!(v["input"][0]["optional"], true);
        assert_eq!(v["output"][0]["dims"], json!([384]));
        assert_eq!(
            v["version_policy"],
            json!({"specific": {"versions": [1, 3]}})
        );
        assert_eq!(v["dynamic_batching"]["max_queue_delay_microseconds"], 2000);
        assert_eq!(v["max_batch_size"], 64);
        assert_eq!(
            v["parameters"]["architecture"],
            json!({"string_value": "bert"})
        );
    }
}
