//! Reading request bodies with a size limit, a total deadline and bounded decompression.
//!
//! axum's `Bytes` extractor answers an oversized body with a plain-text 413; reading the body
//! here keeps every error in the JSON shape, refuses a declared `Content-Length` above the limit
//! before reading a byte, and bounds the total time a body may take (a per-frame timeout would
//! let a client trickle one byte at a time forever). tritonclient may compress requests
//! (`Content-Encoding: gzip` or `deflate`); they are inflated here with the same byte limit
//! applied to the *decompressed* size, so a zip bomb costs at most `max_bytes`.

use std::time::Duration;

use axum::body::Body;
use std::io::Read;

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, Limited};

use super::error::ApiError;

/// Limits applied to every request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub deadline: Duration,
}

pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: &super::Limits,
) -> Result<Bytes, ApiError> {
    let limits = limits.body;
    if let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if declared > limits.max_bytes as u64 {
            return Err(ApiError::BodyTooLarge {
                limit: limits.max_bytes,
            });
        }
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let collect = Limited::new(body, limits.max_bytes).collect();
    let raw = match tokio::time::timeout(limits.deadline, collect).await {
        Err(_) => {
            return Err(ApiError::BodyTimeout {
                seconds: limits.deadline.as_secs(),
            })
        }
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::BodyTooLarge {
                limit: limits.max_bytes,
            })
        }
        Ok(Err(e)) => return Err(ApiError::BodyRead(e.to_string())),
    };
    match encoding.as_deref() {
        None | Some("identity") => Ok(raw),
        Some("gzip") => inflate(flate2::read::GzDecoder::new(&raw[..]), limits.max_bytes),
        Some("deflate") => inflate(flate2::read::ZlibDecoder::new(&raw[..]), limits.max_bytes),
        Some(other) => Err(ApiError::Header {
            header: "Content-Encoding",
            message: format!("{other:?} is not supported (gzip, deflate or identity)"),
        }),
    }
}

/// Decompresses at most `limit` bytes; one byte more means the body is too large.
fn inflate(decoder: impl Read, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BodyRead(format!("cannot decompress the body: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(Bytes::from(out))
}
