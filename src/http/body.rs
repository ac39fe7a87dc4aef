//! Receiving request bodies within the server's limits.
//!
//! A body is received as the chunks it arrives in, each chunk's size taken from the server-wide
//! in-flight budget as it comes ([`Inflight`]): beyond `max_inflight_body_bytes` a request is
//! refused at once with 503 and `Retry-After`. A declared `Content-Length` above the body limit
//! is refused before a byte is read, and the whole body must arrive before a deadline (a
//! per-frame timeout would let a client trickle one byte at a time forever). Decoding then
//! reads the chunks in order and frees each once consumed, so a large body and its decoded
//! tensors are never both whole in memory. Past the first [`SPILL_AFTER`] bytes, a body is
//! copied into blocks mapped straight from the kernel ([`Spill`]): dropping a consumed block
//! returns its pages to the system at once, where the allocator would keep them resident, so a
//! body's memory shrinks as fast as its decoded values grow (docs/security.md has the figures).
//! tritonclient may compress requests
//! (`Content-Encoding: gzip` or `deflate`): they are inflated while they are decoded, with the
//! body limit applied to the *decompressed* size, so a zip bomb costs at most `max_bytes` of
//! work, on the slow-work pool ([`super::pool`]), never on an async worker.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Limits applied to every request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// One body, after decompression.
    pub max_bytes: usize,
    /// The whole body must arrive within this.
    pub deadline: Duration,
}

/// The server-wide budget of request-body bytes being received or decoded at once
/// (`max_inflight_body_bytes`). Beyond it, requests are refused at once (503 with
/// `Retry-After`) rather than queued into an out-of-memory kill: memory is bounded by what the
/// server admits, not by what clients send.
#[derive(Debug, Clone)]
pub struct Inflight {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Budget units: KiB, so a u32 permit count covers 4 TiB.
const UNIT: usize = 1024;

impl Inflight {
    pub fn new(limit_bytes: usize) -> Inflight {
        let units = (limit_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Inflight {
            permits: Arc::new(Semaphore::new(units)),
            limit: limit_bytes,
        }
    }

    /// Takes `bytes` more of the budget into `held`, or refuses.
    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> Result<(), ApiError> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let busy = || ApiError::Busy { limit: self.limit };
        if units == 0 {
            return Ok(());
        }
        let permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(units)
            .map_err(|_| busy())?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }

    /// Budget in use now, in bytes (for tests and metrics).
    pub fn in_use(&self) -> usize {
        let free = self.permits.available_permits() * UNIT;
        self.limit.saturating_sub(free.min(self.limit))
    }
}

/// How a body's bytes are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// HTTP's "deflate" is the zlib format.
    Deflate,
}

/// A body received whole, as the chunks it arrived in, holding its share of the in-flight
/// budget until it is dropped (after decoding).
#[derive(Debug)]
pub struct Received {
    chunks: VecDeque<Bytes>,
    len: usize,
    pub encoding: Encoding,
    _budget: Option<OwnedSemaphorePermit>,
}

impl Received {
    /// Bytes received (compressed bytes for a compressed body).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body as one contiguous buffer (copies only when it arrived in several chunks).
    pub fn contiguous(&mut self) -> Bytes {
        if self.chunks.len() == 1 {
            return self.chunks[0].clone();
        }
        let mut all = Vec::with_capacity(self.len);
        for chunk in &self.chunks {
            all.extend_from_slice(chunk);
        }
        Bytes::from(all)
    }

    /// A reader of the decoded bytes that frees each chunk once it is consumed and refuses to
    /// inflate a compressed body past `max_bytes` (`overflow` is set when it tried).
    pub fn into_reader(self, max_bytes: usize, overflow: Arc<AtomicBool>) -> Box<dyn Read + Send> {
        let encoding = self.encoding;
        let chunks = ChunkReader { received: self };
        match encoding {
            Encoding::Identity => Box::new(chunks),
            Encoding::Gzip => Box::new(Bounded::new(
                flate2::read::GzDecoder::new(chunks),
                max_bytes,
                overflow,
            )),
            Encoding::Deflate => Box::new(Bounded::new(
                flate2::read::ZlibDecoder::new(chunks),
                max_bytes,
                overflow,
            )),
        }
    }
}

/// Reads a received body chunk by chunk, dropping each chunk once it is read.
struct ChunkReader {
    received: Received,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let chunks = &mut self.received.chunks;
        while let Some(front) = chunks.front_mut() {
            if front.is_empty() {
                chunks.pop_front();
                continue;
            }
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            let _ = front.split_to(n);
            if front.is_empty() {
                chunks.pop_front();
            }
            return Ok(n);
        }
        Ok(0)
    }
}

/// A reader that fails once more than `limit` bytes came out of it: the decompressed size of a
/// body is bounded like its received size, so a zip bomb costs at most `limit` bytes of work.
struct Bounded<R> {
    inner: R,
    left: usize,
    overflow: Arc<AtomicBool>,
}

impl<R> Bounded<R> {
    fn new(inner: R, limit: usize, overflow: Arc<AtomicBool>) -> Bounded<R> {
        Bounded {
            inner,
            left: limit,
            overflow,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte more than may come: getting it means the limit was passed.
        let want = buf.len().min(self.left.saturating_add(1));
        let n = self.inner.read(&mut buf[..want])?;
        if n > self.left {
            self.overflow.store(true, Ordering::Release);
            return Err(std::io::Error::other("the decompressed body is too large"));
        }
        self.left -= n;
        Ok(n)
    }
}

/// Receives a request body: refuses a declared `Content-Length` above the limit before reading
/// a byte, takes each chunk's size from the in-flight budget as it arrives (refusing when the
/// budget is spent), and bounds the total time the body may take (a per-frame timeout would let
/// a client trickle one byte at a time forever).
pub async fn receive(
    body: Body,
    headers: &HeaderMap,
    limits: &BodyLimits,
    inflight: &Inflight,
) -> Result<Received, ApiError> {
    let too_large = || ApiError::BodyTooLarge {
        limit: limits.max_bytes,
    };
    let encoding = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => Encoding::Identity,
        Some("gzip") => Encoding::Gzip,
        Some("deflate") => Encoding::Deflate,
        Some(other) => {
            return Err(ApiError::Header {
                header: "Content-Encoding",
                message: format!(
                    "{:?} is not supported (gzip, deflate or identity)",
                    crate::protocol::clip(other)
                ),
            })
        }
    };
    let mut budget = None;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared {
        if declared > limits.max_bytes as u64 {
            return Err(too_large());
        }
        inflight.take(&mut budget, declared as usize)?;
    }
    let mut received = Received {
        chunks: VecDeque::new(),
        len: 0,
        encoding,
        _budget: None,
    };
    let mut spill = Spill::default();
    let collect = async {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received.len += data.len();
            if received.len > limits.max_bytes {
                return Err(too_large());
            }
            if declared.is_none() {
                inflight.take(&mut budget, data.len())?;
            }
            if received.len <= SPILL_AFTER {
                received.chunks.push_back(data);
            } else {
                spill.push(&data, &mut received.chunks)?;
            }
        }
        spill.finish(&mut received.chunks)
    };
    match tokio::time::timeout(limits.deadline, collect).await {
        Err(_) => {
            return Err(ApiError::BodyTimeout {
                seconds: limits.deadline.as_secs(),
            })
        }
        Ok(result) => result?,
    }
    received._budget = budget;
    Ok(received)
}

/// A body's first bytes stay in the buffers they arrived in; past this many, they are copied
/// into [`Spill`] blocks. Small requests, the common case, never pay for the copy.
const SPILL_AFTER: usize = 4 << 20;

/// Bytes per spill block: large enough that mapping one costs little beside filling it, small
/// enough that the block being decoded is a small part of a large body.
const SPILL_BLOCK: usize = 1 << 20;

/// Where a large body's bytes go: anonymous memory maps of [`SPILL_BLOCK`] bytes, each frozen
/// into a chunk when full. The allocator keeps freed memory resident for reuse, so a body held
/// in its buffers would still count in full after decoding consumed it, beside the decoded
/// values (3.4× a JSON tensor's body at peak where 2× is the values); a map is returned to the
/// system when its chunk is dropped, after the decoder has read it.
#[derive(Default)]
struct Spill {
    block: Option<memmap2::MmapMut>,
    filled: usize,
}

impl Spill {
    fn push(&mut self, mut data: &[u8], chunks: &mut VecDeque<Bytes>) -> Result<(), ApiError> {
        while !data.is_empty() {
            let block = match &mut self.block {
                Some(block) => block,
                None => self
                    .block
                    .insert(memmap2::MmapMut::map_anon(SPILL_BLOCK).map_err(|e| {
                        ApiError::Internal(format!("cannot map memory for a request body: {e}"))
                    })?),
            };
            let n = (SPILL_BLOCK - self.filled).min(data.len());
            block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == SPILL_BLOCK {
                self.finish(chunks)?;
            }
        }
        Ok(())
    }

    /// Freezes the block being filled into the last chunk.
    fn finish(&mut self, chunks: &mut VecDeque<Bytes>) -> Result<(), ApiError> {
        if let Some(block) = self.block.take() {
            let block = block.make_read_only().map_err(|e| {
                ApiError::Internal(format!("cannot seal a request body block: {e}"))
            })?;
            chunks.push_back(Bytes::from_owner(block).slice(..self.filled));
            self.filled = 0;
        }
        Ok(())
    }
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

    fn received(chunks: &[&[u8]], encoding: Encoding) -> Received {
        Received {
            chunks: chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
            len: chunks.iter().map(|c| c.len()).sum(),
            encoding,
            _budget: None,
        }
    }

    #[test]
    fn compressed_bodies_round_trip_through_the_chunk_reader() {
        let body = br#"{"outputs":[1,2,3,4,5,6,7,8,9,10]}"#.repeat(10);
        for (coding, encoding) in [
            (Coding::Gzip, Encoding::Gzip),
            (Coding::Deflate, Encoding::Deflate),
        ] {
            let packed = compress(&body, coding).unwrap();
            let (a, b) = packed.split_at(packed.len() / 2);
            let overflow = Arc::new(AtomicBool::new(false));
            let mut out = Vec::new();
            received(&[a, b], encoding)
                .into_reader(1 << 20, Arc::clone(&overflow))
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, body);
            assert!(!overflow.load(Ordering::Acquire));
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 10 << 20]).unwrap();
        let packed = encoder.finish().unwrap();
        assert!(packed.len() < 64 << 10, "{}", packed.len());
        let overflow = Arc::new(AtomicBool::new(false));
        let mut out = Vec::new();
        let result = received(&[&packed], Encoding::Gzip)
            .into_reader(1 << 20, Arc::clone(&overflow))
            .read_to_end(&mut out);
        assert!(result.is_err());
        assert!(out.len() <= 1 << 20);
        assert!(overflow.load(Ordering::Acquire));
    }

    #[test]
    fn a_large_body_spills_into_blocks_and_reads_back_exactly() {
        let body: Vec<u8> = (0..SPILL_AFTER + 2 * SPILL_BLOCK + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut chunks = VecDeque::new();
        let mut spill = Spill::default();
        let (head, tail) = body.split_at(SPILL_AFTER);
        chunks.push_back(Bytes::copy_from_slice(head));
        // Odd-sized pieces cross block boundaries.
        for piece in tail.chunks(77_777) {
            spill.push(piece, &mut chunks).unwrap();
        }
        spill.finish(&mut chunks).unwrap();
        assert_eq!(chunks.len(), 1 + 3);
        let len = body.len();
        let mut received = Received {
            chunks,
            len,
            encoding: Encoding::Identity,
            _budget: None,
        };
        assert_eq!(&received.contiguous()[..], &body[..]);
        let mut out = Vec::new();
        received
            .into_reader(len, Arc::new(AtomicBool::new(false)))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn the_inflight_budget_refuses_beyond_its_limit_and_frees_on_drop() {
        let inflight = Inflight::new(64 << 10);
        let mut a = None;
        inflight.take(&mut a, 40 << 10).unwrap();
        let mut b = None;
        assert!(matches!(
            inflight.take(&mut b, 40 << 10),
            Err(ApiError::Busy { .. })
        ));
        assert_eq!(inflight.in_use(), 40 << 10);
        drop(a);
        inflight.take(&mut b, 40 << 10).unwrap();
    }
}
