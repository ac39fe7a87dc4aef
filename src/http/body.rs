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

/// A response content coding wick can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's "deflate" is the zlib format.
    Deflate,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// The coding the client accepts for the response (`Accept-Encoding`), gzip first; `None` when
/// it asked for none (the common case: then nothing is compressed).
pub fn accepted_coding(headers: &HeaderMap) -> Option<Coding> {
    let value = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    let mut gzip = false;
    let mut deflate = false;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        match name.as_str() {
            "gzip" | "*" => gzip = true,
            "deflate" => deflate = true,
            _ => {}
        }
    }
    if gzip {
        Some(Coding::Gzip)
    } else if deflate {
        Some(Coding::Deflate)
    } else {
        None
    }
}

/// Compresses a response body.
pub fn compress(body: &[u8], coding: Coding) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let level = flate2::Compression::fast();
    match coding {
        Coding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), level);
            encoder.write_all(body)?;
            encoder.finish()
        }
        Coding::Deflate => {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 2), level);
            encoder.write_all(body)?;
            encoder.finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coding(value: &str) -> Option<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        accepted_coding(&headers)
    }

    #[test]
    fn accept_encoding() {
        assert_eq!(accepted_coding(&HeaderMap::new()), None);
        assert_eq!(coding("gzip"), Some(Coding::Gzip));
        assert_eq!(coding("deflate"), Some(Coding::Deflate));
        assert_eq!(coding("deflate, gzip;q=0.5"), Some(Coding::Gzip));
        assert_eq!(coding("gzip;q=0, deflate"), Some(Coding::Deflate));
        assert_eq!(coding("br, identity"), None);
        assert_eq!(coding("*"), Some(Coding::Gzip));
    }

    #[test]
    fn compressed_bodies_round_trip() {
        let body = br#"{"outputs":[1,2,3,4,5,6,7,8,9,10]}"#.repeat(10);
        for coding in [Coding::Gzip, Coding::Deflate] {
            let packed = compress(&body, coding).unwrap();
            let unpacked = match coding {
                Coding::Gzip => inflate(flate2::read::GzDecoder::new(&packed[..]), 1 << 20),
                Coding::Deflate => inflate(flate2::read::ZlibDecoder::new(&packed[..]), 1 << 20),
            }
            .unwrap();
            assert_eq!(&unpacked[..], &body[..]);
        }
    }
}
