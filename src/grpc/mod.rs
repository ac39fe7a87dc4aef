//! The gRPC front end: KServe v2 / Triton's `inference.GRPCInferenceService` (proto/
//! inference.proto, compiled by build.rs), served with tonic's generated service on wick's own
//! connection loop ([`crate::http::serve`]), so gRPC gets the same connection cap, request-head
//! deadline and graceful shutdown as HTTP.
//!
//! Two services implement the one protocol. [`Inference`], on `grpc_listen`, answers health,
//! metadata, inference, configuration and statistics, and UNIMPLEMENTED for the repository RPCs.
//! [`Admin`], mounted on the admin listener beside the HTTP repository API and behind the same
//! bearer token (metadata `authorization: Bearer ...`), answers the repository RPCs only. Every
//! RPC goes through the same state, lookups, decode checks, admission, batcher and metrics as
//! HTTP ([`crate::http::infer`]); errors map to gRPC codes in one place, beside the HTTP statuses
//! ([`crate::http::error`]). Messages larger than `max_body_bytes` are refused by tonic from the
//! length prefix, before their bytes are buffered, and a message must arrive within
//! `body_deadline_ms` ([`deadline`]).

mod admin;
mod deadline;
mod infer;
mod messages;
mod service;

/// The code generated from proto/inference.proto.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use axum::Router;

use crate::http::AppState;

use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The inference side: every RPC but the repository ones.
#[derive(Clone)]
pub struct Inference {
    state: AppState,
}

/// The admin side: the repository RPCs only (its router checks the token first).
#[derive(Clone)]
pub struct Admin {
    state: AppState,
}

/// The path prefix of every RPC of the service.
pub const SERVICE_PATH: &str = "/inference.GRPCInferenceService/{*rpc}";

/// The gRPC listener's routes: the inference side on every path (an unknown path answers
/// UNIMPLEMENTED, as gRPC clients expect).
pub fn router(state: AppState) -> Router {
    let limit = state.limits.body.max_bytes;
    let body_deadline = state.limits.body.deadline;
    let service =
        GrpcInferenceServiceServer::new(Inference { state }).max_decoding_message_size(limit);
    let router = Router::new()
        .fallback_service(service)
        .layer(axum::middleware::map_request(move |request| async move {
            deadline::bound(request, body_deadline)
        }));
    // Request ids (`x-request-id` metadata, echoed) and the request log, as on HTTP.
    crate::http::observe::layer(router)
}

/// The admin side's routes, to merge into the admin listener's router (inside its token check).
pub fn admin_routes<S: Clone + Send + Sync + 'static>(state: AppState) -> Router<S> {
    let limit = state.limits.body.max_bytes;
    let body_deadline = state.limits.body.deadline;
    let service = GrpcInferenceServiceServer::new(Admin { state }).max_decoding_message_size(limit);
    Router::new()
        .route_service(SERVICE_PATH, service)
        .layer(axum::middleware::map_request(move |request| async move {
            deadline::bound(request, body_deadline)
        }))
}
