//! The Open Inference Protocol (KServe v2) and Triton's binary tensor extension, as data.
//!
//! Request and response shapes, datatypes, and codecs between them and host tensors: decoding
//! validates shapes, sizes and value ranges with checked arithmetic before allocating, encoding
//! writes JSON or JSON plus binary tensors. No sockets and no models here: the HTTP layer hands in
//! bytes and a model signature, and gets back host tensors or a typed [`ProtocolError`].

pub mod datatype;
pub mod decode;
pub mod encode;
pub mod error;
pub mod metadata;
pub mod openai;
pub mod params;
pub mod tei;
pub mod triton;
mod values;

pub use datatype::Datatype;
pub use decode::{decode, decode_reader, DecodeLimits, Decoded, OutputChoice};
pub use encode::{encode_response, raw_bytes, Encoded, ResponseMeta};
pub use error::{clip, ProtocolError};
pub use values::clipped;

/// The response header carrying the length of the JSON part of a binary-extension body.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";
