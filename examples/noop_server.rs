//! The HTTP floor for `wick bench`: a no-op axum server that answers the digits model's
//! metadata and, for every inference request, parses the same JSON body wick parses and returns
//! ten floats. wick's throughput on the real model is quoted as a fraction of this one's.
//!
//! Run with `cargo run --release --example noop_server -- 127.0.0.1:9000`, then
//! `wick bench --url http://127.0.0.1:9000 --model digits --clients 32`.

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

async fn metadata() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"name":"digits","versions":["1"],"platform":"noop","inputs":[{"name":"input","datatype":"FP32","shape":[-1,64]}],"outputs":[{"name":"output","datatype":"FP32","shape":[-1,10]}]}"#,
    )
}

/// The request as a plain serde reader sees it: the same fields wick's decoder reads, with
/// `data` parsed into floats.
#[derive(serde::Deserialize)]
struct Request {
    id: Option<String>,
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    inputs: Vec<Input>,
    outputs: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(serde::Deserialize)]
struct Input {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    data: Vec<f32>,
}

async fn infer(body: Bytes) -> axum::response::Response {
    match serde_json::from_slice::<Request>(&body) {
        // Touch what was parsed, as a handler would.
        Ok(r) if r.inputs.iter().all(|i| {
            !i.name.is_empty() && !i.datatype.is_empty() && i.shape.len() <= 8 && !i.data.is_empty()
        }) && r.id.as_deref() != Some("")
            && r.parameters.as_ref().is_none_or(|p| p.len() < 64)
            && r.outputs.as_ref().is_none_or(|o| o.len() < 64) => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"model_name":"digits","model_version":"1","outputs":[{"name":"output","datatype":"FP32","shape":[1,10],"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0]}]}"#,
        )
            .into_response(),
        Ok(_) => (StatusCode::BAD_REQUEST, "empty input").into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let app = Router::new()
                .route("/v2/models/digits", get(metadata))
                .route("/v2/models/digits/infer", post(infer));
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            axum::serve(listener, app).await
        })
}
