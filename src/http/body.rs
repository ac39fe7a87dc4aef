//! Reading request bodies with a size limit and a total deadline.
//!
//! axum's `Bytes` extractor answers an oversized body with a plain-text 413; reading the body
//! here keeps every error in the JSON shape, refuses a declared `Content-Length` above the limit
//! before reading a byte, and bounds the total time a body may take (a per-frame timeout would
//! let a client trickle one byte at a time forever).

use std::time::Duration;

use axum::body::Body;
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

pub async fn read_body(body: Body, headers: &HeaderMap, limits: &super::Limits) -> Result<Bytes, ApiError> {
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
    let collect = Limited::new(body, limits.max_bytes).collect();
    match tokio::time::timeout(limits.deadline, collect).await {
        Err(_) => Err(ApiError::BodyTimeout {
            seconds: limits.deadline.as_secs(),
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge {
            limit: limits.max_bytes,
        }),
        Ok(Err(e)) => Err(ApiError::BodyRead(e.to_string())),
    }
}
