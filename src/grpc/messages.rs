//! wick's protocol shapes (src/protocol/) as the generated gRPC messages. The HTTP JSON and the
//! gRPC answers are built from the same values; only their encoding differs here.

use std::collections::HashMap;

use serde_json::Value;

use crate::protocol::metadata::ModelMetadata;
use crate::protocol::params::{ParamValue, Parameters};
use crate::protocol::triton::{self, ConfigTensor, StatDuration};

use super::pb::{self, infer_parameter::ParameterChoice, model_version_policy::PolicyChoice};

pub fn metadata(m: ModelMetadata) -> pb::ModelMetadataResponse {
    let tensors = |list: Vec<crate::protocol::metadata::TensorMetadata>| {
        list.into_iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: t.name,
                datatype: t.datatype.to_string(),
                shape: t.shape,
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform.to_string(),
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

fn data_type(name: &str) -> i32 {
    pb::DataType::from_str_name(name).unwrap_or(pb::DataType::TypeInvalid) as i32
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Triton's ModelConfig message from the configuration HTTP's `/config` answers.
pub fn config(c: triton::ModelConfig) -> pb::ModelConfig {
    let input = c
        .input
        .iter()
        .map(|t: &ConfigTensor| pb::ModelInput {
            name: t.name.clone(),
            data_type: data_type(t.data_type),
            dims: t.dims.clone(),
            optional: t.optional,
        })
        .collect();
    let output = c
        .output
        .iter()
        .map(|t| pb::ModelOutput {
            name: t.name.clone(),
            data_type: data_type(t.data_type),
            dims: t.dims.clone(),
        })
        .collect();
    let parameters = c
        .parameters
        .iter()
        .map(|(k, v)| {
            let text = v.get("string_value").and_then(Value::as_str).unwrap_or("");
            let value = pb::ModelParameter {
                string_value: text.to_string(),
            };
            (k.clone(), value)
        })
        .collect();
    pb::ModelConfig {
        name: c.name.clone(),
        platform: c.platform.to_string(),
        backend: c.backend.to_string(),
        version_policy: Some(version_policy(&c.version_policy)),
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input,
        output,
        scheduling_choice: Some(pb::model_config::SchedulingChoice::DynamicBatching(
            dynamic_batching(&c.dynamic_batching),
        )),
        instance_group: vec![pb::ModelInstanceGroup {
            name: c.name,
            count: 1,
            kind: pb::model_instance_group::Kind::Cpu as i32,
        }],
        parameters,
    }
}

fn version_policy(v: &Value) -> pb::ModelVersionPolicy {
    let choice = if let Some(latest) = v.get("latest") {
        PolicyChoice::Latest(pb::model_version_policy::Latest {
            num_versions: u32::try_from(u64_at(latest, "num_versions")).unwrap_or(u32::MAX),
        })
    } else if let Some(specific) = v.get("specific") {
        let versions = specific
            .get("versions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        PolicyChoice::Specific(pb::model_version_policy::Specific { versions })
    } else {
        PolicyChoice::All(pb::model_version_policy::All {})
    };
    pb::ModelVersionPolicy {
        policy_choice: Some(choice),
    }
}

fn dynamic_batching(v: &Value) -> pb::ModelDynamicBatching {
    let queue = v.get("default_queue_policy").unwrap_or(&Value::Null);
    pb::ModelDynamicBatching {
        preferred_batch_size: Vec::new(),
        max_queue_delay_microseconds: u64_at(v, "max_queue_delay_microseconds"),
        preserve_ordering: v
            .get("preserve_ordering")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        priority_levels: u64_at(v, "priority_levels"),
        default_priority_level: u64_at(v, "default_priority_level"),
        default_queue_policy: Some(pb::ModelQueuePolicy {
            timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
            default_timeout_microseconds: u64_at(queue, "default_timeout_microseconds"),
            allow_timeout_override: true,
            max_queue_size: u32::try_from(u64_at(queue, "max_queue_size")).unwrap_or(u32::MAX),
        }),
    }
}

fn duration(d: StatDuration) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

/// One version's statistics, from the same snapshot HTTP's `/stats` answers.
pub fn statistics(s: triton::ModelStatistics) -> pb::ModelStatistics {
    let i = s.inference_stats;
    pb::ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(i.success),
            fail: duration(i.fail),
            queue: duration(i.queue),
            compute_input: duration(i.compute_input),
            compute_infer: duration(i.compute_infer),
            compute_output: duration(i.compute_output),
            cache_hit: duration(i.cache_hit),
            cache_miss: duration(i.cache_miss),
        }),
        batch_stats: s
            .batch_stats
            .into_iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
    }
}

/// Request parameters as the JSON decoder reads them: a non-negative integer is unsigned
/// whichever field carried it (tritonclient sends `timeout` as `int64_param`).
pub fn parameters(map: &HashMap<String, pb::InferParameter>) -> Parameters {
    map.iter()
        .filter_map(|(k, v)| {
            let value = match v.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => ParamValue::Bool(*b),
                ParameterChoice::Int64Param(i) => match u64::try_from(*i) {
                    Ok(u) => ParamValue::Uint(u),
                    Err(_) => ParamValue::Int(*i),
                },
                ParameterChoice::Uint64Param(u) => ParamValue::Uint(*u),
                ParameterChoice::DoubleParam(f) => ParamValue::Float(*f),
                ParameterChoice::StringParam(s) => ParamValue::Str(s.clone()),
            };
            Some((k.clone(), value))
        })
        .collect()
}

/// A response parameter from a JSON note (numbers and booleans typed, anything else as text).
pub fn parameter(value: &Value) -> pb::InferParameter {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => ParameterChoice::Uint64Param(u),
            (_, Some(i), _) => ParameterChoice::Int64Param(i),
            (_, _, Some(f)) => ParameterChoice::DoubleParam(f),
            _ => ParameterChoice::StringParam(n.to_string()),
        },
        other => ParameterChoice::StringParam(other.to_string()),
    };
    pb::InferParameter {
        parameter_choice: Some(choice),
    }
}
