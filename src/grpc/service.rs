//! The inference side's RPCs: health, metadata, configuration and statistics here, inference in
//! [`super::infer`]. Each answers what the matching HTTP route answers (src/http/health.rs,
//! src/http/triton.rs), from the same state.

use tonic::{Request, Response, Status};

use crate::http::triton::{describe, version_stats};
use crate::http::ApiError;
use crate::protocol::metadata::{model_metadata, server_metadata};

use super::messages;
use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::*;
use super::Inference;

type Answer<T> = Result<Response<T>, Status>;

/// An empty version field means "the version the server picks", as in Triton.
fn named(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

fn status(e: ApiError) -> Status {
    e.grpc_status()
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        let ready = self.state.is_ready();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        let request = request.into_inner();
        let slot = self.state.slot(&request.name).map_err(status)?;
        let ready = match named(&request.version) {
            None => slot.is_ready(),
            Some(v) => match self.state.pick_version(&slot, Some(v)) {
                Ok(_) => true,
                // Like HTTP's 404 and 503, which tritonclient reads as "not ready".
                Err(ApiError::VersionNotReady { .. } | ApiError::UnknownVersion { .. }) => false,
                Err(e) => return Err(status(e)),
            },
        };
        let ready = ready && !self.state.is_draining();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse> {
        let m = server_metadata();
        Ok(Response::new(ServerMetadataResponse {
            name: m.name.to_string(),
            version: m.version.to_string(),
            extensions: m.extensions.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse> {
        let request = request.into_inner();
        let state = &self.state;
        let slot = state.slot(&request.name).map_err(status)?;
        let serving = slot.serving();
        let versions: Vec<u64> = serving.versions.keys().rev().copied().collect();
        let described = match named(&request.version) {
            Some(v) => Some(state.pick_version(&slot, Some(v)).map_err(status)?),
            None => serving.newest().cloned(),
        };
        let signature = match described {
            Some(v) => v.signature.clone(),
            None => slot.config().architecture.signature().clone(),
        };
        let m = model_metadata(&request.name, &versions, &signature, Default::default());
        Ok(Response::new(messages::metadata(m)))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        super::infer::model_infer(&self.state, request).await
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Answer<ModelConfigResponse> {
        let request = request.into_inner();
        let config =
            describe(&self.state, &request.name, named(&request.version)).map_err(status)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(messages::config(config)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        let request = request.into_inner();
        let state = &self.state;
        let mut stats = Vec::new();
        if request.name.is_empty() {
            for slot in state.repository.slots() {
                stats.extend(version_stats(&slot, None));
            }
        } else {
            let slot = state.slot(&request.name).map_err(status)?;
            let only = match named(&request.version) {
                Some(v) => Some(state.pick_version(&slot, Some(v)).map_err(status)?.version),
                None => None,
            };
            stats = version_stats(&slot, only);
        }
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: stats.into_iter().map(messages::statistics).collect(),
        }))
    }
}
