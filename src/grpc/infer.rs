//! `ModelInfer`: the gRPC form of `POST /v2/models/{m}[/versions/{v}]/infer`, down the same
//! path as HTTP (src/http/infer.rs): version routing (canary by `x-request-id` metadata),
//! admission, decode with the same checks ([`crate::protocol::decode::decode_message`]),
//! prepare and split, the batcher, deadlines, the shadow, metrics. Outputs are returned in
//! `raw_output_contents`, as Triton does; the weights' sha256 is the response parameter
//! `weights_sha256` (and `x-wick-weights-sha256` metadata).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::engine::{LoadedVersion, Outputs};
use crate::http::infer::{
    handle, prepares_text, refuse_when_full, submit, Admitted, Call, DecodedParts, ShadowCopy,
    Split, INLINE_DECODE_BYTES,
};
use crate::http::{ApiError, AppState};
use crate::protocol::decode::{
    decode_message, Contents, MessageInput, MessageRequest, MessageValues,
};
use crate::protocol::{raw_bytes, Datatype, Decoded};
use crate::repository::ModelSlot;

use super::messages;
use super::pb::{
    model_infer_response::InferOutputTensor, InferTensorContents, ModelInferRequest,
    ModelInferResponse,
};

pub async fn model_infer(
    state: &AppState,
    request: Request<ModelInferRequest>,
) -> Result<Response<ModelInferResponse>, Status> {
    let (metadata, _, message) = request.into_parts();
    let slot = &state
        .slot(&message.model_name)
        .map_err(|e| e.grpc_status())?;
    let version = (!message.model_version.is_empty()).then(|| message.model_version.clone());
    // gRPC metadata are HTTP/2 headers: `x-request-id` and `traceparent` work as on HTTP.
    let headers = metadata.into_headers();
    let call = Call {
        slot,
        version: version.as_deref(),
        headers: &headers,
        route: "grpc/ModelInfer",
    };
    let (picked, answer) = handle(state, call, |picked, shadow| async move {
        serve(state, slot, &picked, message, shadow).await
    })
    .await
    .map_err(|e| e.grpc_status())?;
    let mut response = Response::new(answer);
    if let Ok(sha) = MetadataValue::try_from(picked.sha256.as_str()) {
        response.metadata_mut().insert("x-wick-weights-sha256", sha);
    }
    Ok(response)
}

async fn serve(
    state: &AppState,
    slot: &Arc<ModelSlot>,
    version: &Arc<LoadedVersion>,
    message: ModelInferRequest,
    shadow: Option<ShadowCopy>,
) -> Result<ModelInferResponse, ApiError> {
    refuse_when_full(slot)?;
    let incoming = slot.engine.incoming();
    let config = slot.engine.config();
    let decoding = Instant::now();
    let split = Split::new(version, &config);
    let mut limits = state.limits.decode;
    limits.max_rows = config.max_request_rows as u64;
    let keep = shadow.is_some();
    // Small messages are decoded in place, like small HTTP bodies; large ones and text models'
    // (tokenising) on the slow-work pool.
    let inline =
        prost::Message::encoded_len(&message) <= INLINE_DECODE_BYTES && !prepares_text(version);
    let work = {
        let version = Arc::clone(version);
        move || -> Result<DecodedParts, ApiError> {
            let mut decoded = decode_message(view(&message)?, &version.signature, &limits)?;
            drop(message);
            let copy = keep.then(|| decoded.inputs.clone());
            let parts = split.prepare(&version, std::mem::take(&mut decoded.inputs))?;
            Ok((decoded, parts, copy))
        }
    };
    let span = tracing::Span::current();
    let decode_span = crate::stage_span!(&span, "decode");
    let (decoded, parts, copy) = if inline {
        decode_span.in_scope(work)?
    } else {
        state.slow.run(work).instrument(decode_span).await?
    };
    slot.metrics
        .compute_input(version.version, decoding.elapsed());
    let timeout = decoded.timeout.or(config.default_timeout);
    let admitted = Admitted {
        timeout,
        priority: decoded.priority,
        incoming,
    };
    let outputs = submit(slot, version, parts, admitted).await?;
    let encoding = Instant::now();
    let response =
        crate::stage_span!(&span, "encode").in_scope(|| respond(version, &decoded, &outputs));
    slot.metrics
        .compute_output(version.version, encoding.elapsed());
    if let (Some(shadow), Some(inputs)) = (shadow, copy) {
        shadow.offer(slot, inputs, outputs.tensors);
    }
    Ok(response)
}

/// The contents of an input that has none.
static EMPTY: InferTensorContents = InferTensorContents {
    bool_contents: Vec::new(),
    int_contents: Vec::new(),
    int64_contents: Vec::new(),
    uint_contents: Vec::new(),
    uint64_contents: Vec::new(),
    fp32_contents: Vec::new(),
    fp64_contents: Vec::new(),
    bytes_contents: Vec::new(),
};

/// The message as the protocol's decoder reads it (borrowed: raw tensors are not copied).
fn view(message: &ModelInferRequest) -> Result<MessageRequest<'_>, ApiError> {
    let raw = &message.raw_input_contents;
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(ApiError::InvalidBody(format!(
            "raw_input_contents has {} entries for {} inputs",
            raw.len(),
            message.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(message.inputs.len());
    for (i, input) in message.inputs.iter().enumerate() {
        let values = match (raw.get(i), &input.contents) {
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidBody(format!(
                    "input {:?} has both contents and raw_input_contents",
                    crate::protocol::clip(&input.name)
                )))
            }
            (Some(bytes), None) => MessageValues::Raw(bytes),
            (None, contents) => {
                let c = contents.as_ref().unwrap_or(&EMPTY);
                MessageValues::Typed(Contents {
                    bools: &c.bool_contents,
                    ints: &c.int_contents,
                    int64s: &c.int64_contents,
                    uints: &c.uint_contents,
                    uint64s: &c.uint64_contents,
                    fp32s: &c.fp32_contents,
                    fp64s: &c.fp64_contents,
                    bytes: &c.bytes_contents,
                })
            }
        };
        inputs.push(MessageInput {
            name: &input.name,
            datatype: &input.datatype,
            shape: &input.shape,
            parameters: messages::parameters(&input.parameters),
            values,
        });
    }
    let outputs = (!message.outputs.is_empty()).then(|| {
        message
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), messages::parameters(&o.parameters)))
            .collect()
    });
    Ok(MessageRequest {
        id: (!message.id.is_empty()).then(|| message.id.clone()),
        parameters: messages::parameters(&message.parameters),
        inputs,
        outputs,
    })
}

/// The response: the requested outputs in order, their values in `raw_output_contents`.
fn respond(version: &LoadedVersion, decoded: &Decoded, outputs: &Outputs) -> ModelInferResponse {
    let mut parameters = std::collections::HashMap::new();
    parameters.insert(
        "weights_sha256".to_string(),
        messages::parameter(&serde_json::Value::String(version.sha256.clone())),
    );
    for (key, value) in &outputs.notes {
        parameters.insert(key.clone(), messages::parameter(value));
    }
    let mut tensors = Vec::with_capacity(decoded.outputs.len());
    let mut raw = Vec::with_capacity(decoded.outputs.len());
    for choice in &decoded.outputs {
        let (Some(spec), Some(tensor)) = (
            version.signature.outputs.get(choice.index),
            outputs.tensors.get(choice.index),
        ) else {
            continue;
        };
        tensors.push(InferOutputTensor {
            name: spec.name.clone(),
            datatype: Datatype::of_kind(tensor.data.kind()).name().to_string(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(Bytes::from(raw_bytes(&tensor.data)));
    }
    ModelInferResponse {
        model_name: version.model_name.clone(),
        model_version: version.version.to_string(),
        id: decoded.id.clone().unwrap_or_default(),
        parameters,
        outputs: tensors,
        raw_output_contents: raw,
    }
}
