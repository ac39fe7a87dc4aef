//! wick: a model server for PyTorch state dicts.
//!
//! Architectures are Rust code with typed configs; weights are safetensors state dicts checked
//! strictly against what the code expects; clients speak the Open Inference Protocol (KServe v2)
//! over HTTP; requests are batched dynamically; new checkpoints are validated and swapped in
//! without dropping a request.
//!
//! # Layout
//! - [`model`]: the contract every architecture implements and everything above uses
//!   (`Model`, `Prepared`, `Signature`, host tensors, input errors); depends on nothing of wick's;
//! - [`arch`]: code-defined architecture families (`mlp`, `sequential`, `vision`: resnet, vit,
//!   convnext, mobilenet_v3, efficientnet; `text`) and their one registry table, with wick's own
//!   CPU kernels in [`arch::kernels`] (convolutions, Winograd, depthwise, fused pieces);
//! - [`state_dict`]: checkpoints as data: header validation, strict comparison, the load report;
//! - [`repository`]: the model repository on disk: the pure reconciliation plan and the layer
//!   that applies it, version records, the watcher, the load pipeline, the golden-output gate,
//!   canary and shadow rollouts, operator actions and the rolled-back record of `state_dir`;
//! - [`engine`]: per-model queue, batching policy, compute thread, deadlines, cancellation;
//! - [`protocol`]: KServe v2 JSON and binary tensors ⇄ host tensors; Triton's config and
//!   statistics, OpenAI's and TEI's shapes, as data;
//! - [`http`]: routes (KServe v2, Triton, OpenAI, TEI), limits, the connection loop, error →
//!   status mapping (and gRPC codes), the admin API and its rollout controls;
//! - [`grpc`]: KServe v2 / Triton's `GRPCInferenceService` (proto/inference.proto) on its own
//!   listener, and its repository RPCs on the admin listener; reuses [`http`]'s request path;
//! - [`config`]: `config.toml` + `WICK_*` overrides → a validated [`config::Config`] (the
//!   `[server]` section, a `[[models]]` entry and the promotion settings each in a file of
//!   their own);
//! - [`telemetry`]: logging, metrics (rollout and shadow figures among them) and Triton's
//!   per-version statistics, request spans (W3C traceparent in, OTLP out);
//! - [`app`]: wires a server together and serves until a signal; [`commands`] and [`bench`]:
//!   the other CLI subcommands;
//! - [`convert`]: `wick convert`, `.pth` checkpoints to safetensors offline (CLI only: the
//!   serving path never reads a pickle).
//!
//! Dependency direction: `grpc → http → engine/repository → state_dict/arch → model`. The reasoning
//! behind the choices lives in the repository's `docs/`.

pub mod app;
pub mod arch;
pub mod bench;
pub mod commands;
pub mod config;
pub mod convert;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod model;
pub mod protocol;
pub mod repository;
pub mod state_dict;
pub mod telemetry;
