//! The `wick` command line: parses arguments and calls the library. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's allocator. Measured side by side (scripts/bench_http.sh,
/// scripts/bench_batching.sh): the small-MLP HTTP path spends about 10% less CPU per request
/// (glibc's malloc/free were a sixth of the profile) and MiniLM serves about 35% more sequences
/// per second (its kernels' large temporaries no longer go back to the kernel after every op).
/// The price is memory kept for reuse: about 0.3x of a 90 MB model's size on top of its
/// weights (examples/reload_bench.rs); jemalloc was measured too and was slower on MiniLM.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use wick::app::{self, StartOptions, ThreadBudget};
use wick::config::Config;
use wick::telemetry::{self, LogFormat};

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
    Serve {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text", env = "WICK_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Check a checkpoint strictly against a configured model, without loading it.
    Check {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        model: String,
        /// The safetensors file to check.
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the tensors of a safetensors file: names, dtypes, shapes, bytes, metadata.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Convert a torch.save checkpoint (.pth/.pt/.bin) to safetensors, offline, without executing it.
    Convert {
        /// The torch.save file to read.
        input: PathBuf,
        /// The safetensors file to write (atomically: it appears only when complete).
        output: PathBuf,
        /// The checkpoint entry holding the state dict, e.g. `model` for {'model': ..., 'optimizer': ...}.
        #[arg(long)]
        key: Option<String>,
        /// Run `wick check` on the result against this config's --model before writing it.
        #[arg(long, requires = "model")]
        check_config: Option<PathBuf>,
        #[arg(long, requires = "check_config")]
        model: Option<String>,
    },
    /// Exit 0 when a server answers ready (for container health checks).
    Health {
        /// Defaults to the listen address of WICK_LISTEN, else 127.0.0.1:8080.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "2000")]
        timeout_ms: u64,
    },
    /// Drive a running server with concurrent clients and print throughput and latency.
    Bench {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, default_value = "1")]
        clients: usize,
        /// Measured seconds.
        #[arg(long, default_value = "10")]
        duration: f64,
        /// Unmeasured warm-up seconds.
        #[arg(long, default_value = "1")]
        warmup: f64,
        /// Use the binary tensor extension for inputs and outputs.
        #[arg(long)]
        binary: bool,
        #[arg(long, default_value = "1")]
        rows: usize,
        #[arg(long, default_value = "This is a test sentence.")]
        text: String,
        #[arg(long, default_value = "16")]
        seq_len: usize,
        #[arg(long)]
        max_requests: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve(&config, log_format),
        Command::Check {
            config,
            model,
            file,
            json,
        } => {
            let result = load_config(&config).and_then(|c| {
                wick::commands::check(&c, &model, &file, json, &mut std::io::stdout())
            });
            exit(result)
        }
        Command::Inspect { file, json } => {
            exit(wick::commands::inspect(&file, json, &mut std::io::stdout()))
        }
        Command::Convert {
            input,
            output,
            key,
            check_config,
            model,
        } => {
            let options = wick::convert::ConvertOptions {
                input,
                output,
                key,
                check_config,
                model,
            };
            exit(wick::convert::run(&options, &mut std::io::stdout()))
        }
        Command::Health { url, timeout_ms } => {
            let url = url.unwrap_or_else(|| {
                let listen =
                    std::env::var("WICK_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
                format!("http://{}", listen.replace("0.0.0.0", "127.0.0.1"))
            });
            exit(runtime(1).and_then(|rt| {
                rt.block_on(wick::commands::health(
                    &url,
                    Duration::from_millis(timeout_ms),
                ))
            }))
        }
        Command::Bench {
            url,
            model,
            version,
            clients,
            duration,
            warmup,
            binary,
            rows,
            text,
            seq_len,
            max_requests,
            json,
        } => {
            let options = wick::bench::BenchOptions {
                url,
                model,
                version,
                clients,
                duration: Duration::from_secs_f64(duration),
                warmup: Duration::from_secs_f64(warmup),
                binary,
                rows,
                text,
                seq_len,
                max_requests,
            };
            let result = runtime(2).and_then(|rt| rt.block_on(wick::bench::run(&options)));
            match result {
                Ok(report) if json => {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default())
                }
                Ok(report) => println!("{report}"),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn exit(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, &env)?)
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

fn serve(config_path: &std::path::Path, log_format: LogFormat) -> ExitCode {
    telemetry::init_logging(log_format);
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let budget = ThreadBudget::resolve(config.server.compute_threads);
    // candle sizes its thread pools from these variables the first time it computes; set them
    // while this process is still single-threaded (no runtime, no pools exist yet).
    std::env::set_var("RAYON_NUM_THREADS", budget.compute.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", budget.compute.to_string());
    let rt = match runtime(budget.tokio_workers) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_server(config, budget)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_server(config: Config, budget: ThreadBudget) -> anyhow::Result<()> {
    let options = StartOptions {
        admin_token: env("WICK_ADMIN_TOKEN"),
        watch: true,
        env: Box::new(env),
    };
    let server = app::start(config, options).await?;
    tracing::info!(
        listen = %server.addr,
        admin = ?server.admin_addr,
        compute_threads = budget.compute,
        tokio_workers = budget.tokio_workers,
        "wick {} serving", env!("CARGO_PKG_VERSION")
    );
    for line in app::describe_models(server.repository()) {
        tracing::info!("model {line}");
    }
    wait_for_signals(&server).await?;
    tracing::info!("shutting down: readiness is now 503; finishing in-flight requests");
    server.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn wait_for_signals(server: &app::Server) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                if let Some(tx) = server.watcher() {
                    let _ = tx.send(wick::repository::watch::Command::ReloadConfig);
                }
            }
        }
    }
}
