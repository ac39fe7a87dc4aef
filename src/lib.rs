//! wick: a model server for PyTorch state dicts.
//!
//! Architectures are Rust code with typed configs; weights are safetensors state dicts checked
//! strictly against what the code expects; clients speak the Open Inference Protocol (KServe v2)
//! over HTTP; requests are batched dynamically; new checkpoints are validated and swapped in
//! without dropping a request.
//!
//! # Layout
//! - [`config`]: `config.toml` + `WICK_*` overrides → a validated [`config::Config`];
//! - [`arch`]: code-defined architectures and their registry;
//! - [`state_dict`]: checkpoints as data: header validation, strict comparison, the load report;
//! - [`repository`]: the model repository on disk, version policy, watcher, load pipeline;
//! - [`engine`]: per-model queue, batching policy, compute thread, deadlines, cancellation;
//! - [`protocol`]: KServe v2 JSON and binary tensors ⇄ host tensors;
//! - [`http`]: routes, limits, the connection loop, error → status mapping;
//! - [`telemetry`]: logging and metrics;
//! - [`app`]: wires a server together; [`commands`] and [`bench`]: the other CLI subcommands;
//! - [`convert`]: `wick convert`, `.pth` checkpoints to safetensors offline (CLI only: the
//!   serving path never reads a pickle).
//!
//! Dependency direction: `http → engine/repository → state_dict/arch → candle`.

pub mod app;
pub mod arch;
pub mod bench;
pub mod commands;
pub mod config;
pub mod convert;
pub mod engine;
pub mod http;
pub mod protocol;
pub mod repository;
pub mod state_dict;
pub mod telemetry;
