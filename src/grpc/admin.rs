//! The admin side's RPCs: Triton's repository extension (index, load, unload), doing what the
//! HTTP repository API does (src/http/admin.rs) with the same checks. The admin listener's
//! router has already checked the bearer token in the `authorization` metadata.

use tonic::{Request, Response, Status};

use crate::http::admin::{apply, Action};
use crate::protocol::params::{ParamValue, Parameters};
use crate::repository::VersionState;

use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::model_repository_parameter::ParameterChoice;
use super::pb::*;
use super::Admin;

/// Repository parameters as the HTTP API reads them. `bytes_param` (Triton's `file:` content)
/// is kept as a marker only: loading from sent files is refused anyway.
fn parameters(map: &std::collections::HashMap<String, ModelRepositoryParameter>) -> Parameters {
    map.iter()
        .filter_map(|(k, v)| {
            let value = match v.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => ParamValue::Bool(*b),
                ParameterChoice::Int64Param(i) => match u64::try_from(*i) {
                    Ok(u) => ParamValue::Uint(u),
                    Err(_) => ParamValue::Int(*i),
                },
                ParameterChoice::StringParam(s) => ParamValue::Str(s.clone()),
                ParameterChoice::BytesParam(_) => ParamValue::Str(String::new()),
            };
            Some((k.clone(), value))
        })
        .collect()
}

/// Triton's name of a version state, as the HTTP index spells it.
fn state_name(state: VersionState) -> &'static str {
    match state {
        VersionState::Ready => "READY",
        VersionState::Loading => "LOADING",
        VersionState::Unavailable => "UNAVAILABLE",
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Admin {
    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready = request.into_inner().ready;
        let models = self
            .state
            .repository
            .index(ready)
            .into_iter()
            .map(|e| repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: state_name(e.state).to_string(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let request = request.into_inner();
        let params = parameters(&request.parameters);
        apply(&self.state, request.model_name, &params, Action::Load)
            .await
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let request = request.into_inner();
        let params = parameters(&request.parameters);
        apply(&self.state, request.model_name, &params, Action::Unload)
            .await
            .map_err(|e| e.grpc_status())?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
