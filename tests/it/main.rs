//! wick's integration tests: one binary, a module per area, one set of helpers ([`util`]).
//!
//! Real servers on port 0 over temporary repositories, real HTTP, real checkpoints made by
//! PyTorch (tests/fixtures/, written by the scripts in scripts/). One binary instead of one per
//! file: the crate and its dependencies are linked once, and the tests of every area share the
//! runner's threads. Tests therefore share one process: none may depend on process-wide state
//! (environment variables, the current directory, global thread pools, signal handlers); the
//! one that measures the process itself runs alone in a child process ([`util::process`]).

mod arch_bert;
mod arch_resnet;
mod arch_sequential;
mod arch_text;
mod arch_vision;
mod batching;
mod bench;
mod binary;
mod canary;
mod convert;
mod custom_architecture;
mod grpc;
mod hostile_input;
mod hot_reload;
mod limits;
mod metrics;
mod minilm;
mod openai;
mod operations;
mod parity;
mod promotion;
mod protocol;
mod reload_soak;
mod repository_api;
mod rollout_control;
mod router;
mod shadow;
mod strict_loading;
mod tei;
mod trace_export;
mod tritonclient;
mod util;
