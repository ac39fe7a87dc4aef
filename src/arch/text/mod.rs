//! Text encoders in Hugging Face's layout, one architecture per family, all on one encoder:
//!
//! - [`bert`], [`roberta`] (and XLM-RoBERTa), [`distilbert`], [`mpnet`]: each family's config
//!   struct (its `config.json` fields) and where its checkpoints keep things;
//! - [`family`]: what a family plugs into, the config table split into family and head fields,
//!   and the one [`Architecture`](crate::arch::Architecture) they share;
//! - [`encoder`]: the transformer encoder all four run;
//! - [`head`]: sentence embeddings (pooling, normalisation) and sequence classification;
//! - [`st_files`]: the defaults a version folder's sentence-transformers files carry;
//! - [`model`], [`groups`]: requests to batches and back; [`tokenizer`]: server-side
//!   tokenisation of texts and text pairs.

pub mod bert;
pub mod distilbert;
pub mod encoder;
pub mod family;
pub mod groups;
pub mod head;
pub mod model;
pub mod mpnet;
#[cfg(test)]
mod parity;
pub mod roberta;
pub mod st_files;
pub mod tokenizer;

pub use family::{TextConfig, TextFamily, TOKENIZER_FILE};
