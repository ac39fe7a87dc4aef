//! The `wick` command line: parses arguments and calls the library. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of glibc's allocator. Measured side by side (scripts/bench_http.sh,
/// scripts/bench_batching.sh): the small-MLP HTTP path spends about 10% less CPU per request
/// (glibc's malloc/free were a sixth of the profile) and MiniLM serves about 35% more sequences
/// per second (its kernels' large temporaries no longer go back to the kernel after every op).
/// The price is memory kept for reuse: about 0.3x of a 90 MB model's size on top of its
/// weights (examples/reload_bench.rs); jemalloc was measured too and was slower on MiniLM.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use wick::bench::BenchOptions;
use wick::convert::ConvertOptions;
use wick::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "wick",
    version,
    about = "Serve PyTorch state dicts (safetensors) over the Open Inference Protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of a config file.
    Serve(ServeArgs),
    /// Check a checkpoint strictly against a configured model, without loading it; with --full,
    /// run a whole version folder through the server's load gate (build, warm-up, golden outputs).
    Check(CheckArgs),
    /// List the tensors of a safetensors file: names, dtypes, shapes, bytes, metadata.
    Inspect(InspectArgs),
    /// Convert a torch.save checkpoint (.pth/.pt/.bin) to safetensors, offline, without executing it.
    Convert(ConvertOptions),
    /// Exit 0 when a server answers ready (for container health checks).
    Health(HealthArgs),
    /// Drive a running server with concurrent clients and print throughput and latency.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value = "text", env = "WICK_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Args)]
struct CheckArgs {
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    #[arg(long)]
    model: String,
    /// The safetensors file to check (with --full: the version folder).
    file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Load the version folder FILE as the server would: strict keys, build, warm-up, golden
    /// outputs. Exit code 1 if the server would refuse it.
    #[arg(long)]
    full: bool,
}

#[derive(Args)]
struct InspectArgs {
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct HealthArgs {
    /// Defaults to the listen address of WICK_LISTEN, else 127.0.0.1:8080.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "2000")]
    timeout_ms: u64,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    options: BenchOptions,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let stdout = &mut std::io::stdout();
    let result = match Cli::parse().command {
        Command::Serve(args) => {
            wick::app::serve_until_signalled(&args.config, args.log_format).map(|()| true)
        }
        Command::Check(args) => wick::commands::load_config(&args.config).and_then(|config| {
            let check = if args.full {
                wick::commands::check_full
            } else {
                wick::commands::check
            };
            check(&config, &args.model, &args.file, args.json, stdout)
        }),
        Command::Inspect(args) => wick::commands::inspect(&args.file, args.json, stdout),
        Command::Convert(options) => wick::convert::run(&options, stdout),
        Command::Health(args) => {
            wick::commands::health_main(args.url.as_deref(), Duration::from_millis(args.timeout_ms))
        }
        Command::Bench(args) => wick::bench::main(&args.options, args.json, stdout),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
