//! Request tracing: the W3C `traceparent` a client sends becomes the parent of the request's
//! spans (`infer`, and under it `decode`, `queue`, `compute`, `encode`), which carry the model,
//! the version and its weights' sha256; with `otlp_endpoint` set they are exported over
//! OTLP/HTTP (JSON) to a collector.
//!
//! Spans are `tracing` spans on the target [`TARGET`]: the log output never shows them (its
//! filter turns the target off), so without an exporter their callsites are disabled and a
//! request pays one interest check per span. With one, `tracing-opentelemetry` turns them into
//! OpenTelemetry spans and the SDK's batch processor exports them from its own thread through
//! [`Collector`], a small blocking HTTP/1.1 client: the async workers never wait on the
//! collector, and wick links no TLS stack (collectors run as a local agent or sidecar, which is
//! how OTLP is deployed on Kubernetes).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every request span.
pub const TARGET: &str = "wick::trace";

/// How long the exporter waits for a collector to accept a connection or answer.
const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go and which requests are traced.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The collector's traces URL, `http://host:port/v1/traces`.
    pub endpoint: String,
    /// The share of requests without a sampled `traceparent` that are traced (a sampled
    /// parent is always followed).
    pub sample_ratio: f64,
}

/// The traces URL of a collector's base URL (`http://host:4318` → `.../v1/traces`; a URL that
/// already names a path is kept), or why it cannot be used.
pub fn traces_url(base: &str) -> Result<String, String> {
    let rest = base
        .strip_prefix("http://")
        .ok_or("must be an http:// URL (run the collector as a local agent for TLS)")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        return Err("must name a host and port, without credentials".into());
    }
    let path = match path.trim_end_matches('/') {
        "" => "v1/traces",
        p => p,
    };
    Ok(format!("http://{authority}/{path}"))
}

/// The exporter's provider: dropping it (at shutdown) flushes the spans still buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("wick: flushing the last spans failed: {e}");
        }
    }
}

/// The layer that exports request spans, and the guard that flushes them.
pub fn layer<S>(
    config: &TraceConfig,
) -> Result<(impl tracing_subscriber::Layer<S>, Exporter), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Collector)
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(config.endpoint.clone())
        .with_timeout(COLLECTOR_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(Resource::builder().with_service_name("wick").build())
        .build();
    let tracer = provider.tracer("wick");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, Exporter { provider }))
}

/// The span of one inference request on `route`, a child of the caller's `traceparent` when
/// it sent a valid one. Disabled (free) when no exporter is installed.
pub fn request_span(headers: &http::HeaderMap, route: &'static str, model: &str) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "infer",
        otel.kind = "server",
        route,
        model,
        version = tracing::field::Empty,
        weights_sha256 = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // A malformed traceparent leaves the span a root: that is what the W3C spec asks.
    let _ = span.set_parent(parent);
    span
}

/// Records the version that answers on the request's span.
pub fn record_version(span: &tracing::Span, version: u64, sha256: &str) {
    span.record("version", version);
    span.record("weights_sha256", sha256);
}

/// Marks the request's span failed (an OpenTelemetry error status) when it did not succeed.
pub fn record_outcome(span: &tracing::Span, ok: bool) {
    if !ok {
        span.record("otel.status_code", "ERROR");
    }
}

/// A child span of the request (`decode`, `queue`, `compute`, `encode`).
#[macro_export]
macro_rules! stage_span {
    ($parent:expr, $name:literal $(, $($field:tt)*)?) => {
        tracing::info_span!(target: $crate::telemetry::trace::TARGET, parent: $parent, $name $(, $($field)*)?)
    };
}

/// The exporter's HTTP client: one blocking HTTP/1.1 POST per batch of spans, on the batch
/// processor's thread.
#[derive(Debug, Clone, Copy)]
struct Collector;

#[async_trait::async_trait]
impl HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        post(&request).map_err(Into::into)
    }
}

/// Sends `request` and reads the status line of the answer (its body is not needed).
fn post(request: &Request<Bytes>) -> std::io::Result<Response<Bytes>> {
    let uri = request.uri();
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let host = uri
        .host()
        .ok_or_else(|| invalid("the collector URL names no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let address = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("the collector's host does not resolve"))?;
    let mut stream = TcpStream::connect_timeout(&address, COLLECTOR_TIMEOUT)?;
    stream.set_read_timeout(Some(COLLECTOR_TIMEOUT))?;
    stream.set_write_timeout(Some(COLLECTOR_TIMEOUT))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        request.body().len()
    );
    for (name, value) in request.headers() {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(request.body())?;
    // "HTTP/1.1 200 OK": the status is all the exporter looks at.
    let mut status_line = [0u8; 12];
    stream.read_exact(&mut status_line)?;
    let status = std::str::from_utf8(&status_line[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("the collector's answer is not HTTP"))?;
    Response::builder()
        .status(status)
        .body(Bytes::new())
        .map_err(|e| invalid(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_get_the_traces_path_and_must_be_plain_http() {
        assert_eq!(
            traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://otel:4318/").unwrap(),
            "http://otel:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://otel:4318/custom/traces").unwrap(),
            "http://otel:4318/custom/traces"
        );
        assert!(traces_url("https://otel:4318").is_err());
        assert!(traces_url("http://user:pw@otel:4318").is_err());
        assert!(traces_url("http:///v1/traces").is_err());
    }
}
