//! `wick bench`: a closed- or open-loop load generator for a running server, and the small HTTP
//! client it shares with `wick health`.
//!
//! N clients each hold one keep-alive connection and send the same pre-encoded request for T
//! seconds (after a warm-up that is not measured), JSON or binary. Closed loop (the default):
//! each client sends its next request when the previous answer arrives. Open loop (`--rate R`):
//! requests are due at a fixed rate, R per second spread evenly over the clients, and each
//! latency is measured from the request's *intended* send time, so a server that falls behind
//! is charged for the queue that forms in front of it (no coordinated omission: a closed loop
//! that stalls simply stops sending, and its percentiles hide the stall). The request is
//! built from the model's metadata: deterministic pseudo-random values for FP32 inputs, token ids
//! for INT64 inputs, `--text` for BYTES inputs. Every latency is kept, so the percentiles are
//! exact. Loop bounds: the duration, and optionally a request count.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// A server address from a URL like `http://127.0.0.1:8080`.
#[derive(Debug, Clone)]
pub struct Target {
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            bail!("no host in {url:?}");
        }
        Ok(Target {
            authority: authority.to_string(),
        })
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot connect to {}", self.authority))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            authority: self.authority.clone(),
        })
    }

    pub async fn get_status(&self, path: &str) -> anyhow::Result<u16> {
        let mut conn = self.connect().await?;
        Ok(conn
            .send(Method::GET, path, &[], Bytes::new())
            .await?
            .0
            .as_u16())
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let mut conn = self.connect().await?;
        let (status, body) = conn.send(Method::GET, path, &[], Bytes::new()).await?;
        if status != StatusCode::OK {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Conn {
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let (status, _, body) = self.send_full(method, path, headers, body).await?;
        Ok((status, body))
    }

    /// Like `send`, also returning the response headers.
    pub async fn send_full(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, http::HeaderMap, Bytes)> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder.body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }
}

/// `wick bench` settings (also its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub version: Option<u64>,
    #[arg(long, default_value = "1")]
    pub clients: usize,
    /// Measured seconds.
    #[arg(long, default_value = "10", value_parser = seconds)]
    pub duration: Duration,
    /// Unmeasured warm-up seconds.
    #[arg(long, default_value = "1", value_parser = seconds)]
    pub warmup: Duration,
    /// Use the binary tensor extension for inputs and outputs.
    #[arg(long)]
    pub binary: bool,
    /// Rows per request.
    #[arg(long, default_value = "1")]
    pub rows: usize,
    /// Text for BYTES inputs.
    #[arg(long, default_value = "This is a test sentence.")]
    pub text: String,
    /// Sequence length for INT64 inputs with a variable dimension.
    #[arg(long, default_value = "16")]
    pub seq_len: usize,
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Open loop: send this many requests per second in total, at fixed intervals, and measure
    /// each latency from its intended send time. `--clients` is then the number of connections
    /// the requests are spread over (and the most that can be in flight).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// A duration given in (fractional) seconds on the command line.
fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(value).map_err(|e| format!("{e}"))
}

/// Results of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub clients: usize,
    /// The target rate of an open-loop run (requests per second); `None` for a closed loop.
    pub rate: Option<f64>,
    pub seconds: f64,
    pub encoding: &'static str,
    pub rows_per_request: usize,
    pub requests: u64,
    pub requests_per_second: f64,
    pub rows_per_second: f64,
    pub errors: u64,
    pub error_statuses: Vec<(u16, u64)>,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.rate {
            Some(rate) => format!(
                "open loop at {rate} req/s over {} connections",
                self.clients
            ),
            None => format!("{} clients", self.clients),
        };
        writeln!(
            f,
            "{} · {mode} · {:.1} s · {} · {} row(s)/request",
            self.model, self.seconds, self.encoding, self.rows_per_request
        )?;
        writeln!(
            f,
            "requests {}  ({:.1}/s, {:.1} rows/s)  errors {}",
            self.requests, self.requests_per_second, self.rows_per_second, self.errors
        )?;
        write!(
            f,
            "latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )?;
        for (status, count) in &self.error_statuses {
            write!(f, "\n  status {status}: {count}")?;
        }
        Ok(())
    }
}

/// A request body ready to send.
struct Prepared {
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

/// Builds the request from the model's metadata.
async fn prepare(target: &Target, options: &BenchOptions) -> anyhow::Result<Prepared> {
    let base = match options.version {
        Some(v) => format!("/v2/models/{}/versions/{v}", options.model),
        None => format!("/v2/models/{}", options.model),
    };
    let metadata = target.get_json(&base).await?;
    let empty = Vec::new();
    let inputs = metadata["inputs"].as_array().unwrap_or(&empty);
    let outputs = metadata["outputs"].as_array().unwrap_or(&empty);
    let mut json_inputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for input in inputs {
        let name = input["name"].as_str().unwrap_or_default();
        let datatype = input["datatype"].as_str().unwrap_or_default();
        // Optional text-model inputs that are not the text itself are left out.
        if datatype == "INT64" && inputs.iter().any(|i| i["datatype"] == "BYTES") {
            continue;
        }
        let shape = input_shape(input, options);
        let count: usize = shape.iter().product();
        let Some((data, bytes)) = input_values(datatype, count, &options.text, &mut seed) else {
            bail!("input {name:?} has datatype {datatype}, which wick bench does not generate")
        };
        if options.binary {
            json_inputs.push(json!({"name": name, "shape": shape, "datatype": datatype,
                "parameters": {"binary_data_size": bytes.len()}}));
            tail.extend_from_slice(&bytes);
        } else {
            json_inputs
                .push(json!({"name": name, "shape": shape, "datatype": datatype, "data": data}));
        }
    }
    let json_outputs: Vec<Value> = outputs
        .iter()
        .map(|o| json!({"name": o["name"], "parameters": {"binary_data": options.binary}}))
        .collect();
    let header = serde_json::to_vec(&json!({"inputs": json_inputs, "outputs": json_outputs}))?;
    let mut headers = vec![("content-type", "application/json".to_string())];
    let mut body = header.clone();
    if options.binary {
        headers = vec![("inference-header-content-length", header.len().to_string())];
        body.extend_from_slice(&tail);
    }
    Ok(Prepared {
        path: format!("{base}/infer"),
        headers,
        body: Bytes::from(body),
    })
}

/// The shape sent for `input` (from the model's metadata): `options.rows` rows, and
/// `options.seq_len` for every variable dimension.
fn input_shape(input: &Value, options: &BenchOptions) -> Vec<usize> {
    let dims: Vec<i64> = input["shape"]
        .as_array()
        .map(|s| s.iter().skip(1).filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let mut shape = vec![options.rows];
    shape.extend(
        dims.iter()
            .map(|d| if *d < 0 { options.seq_len } else { *d as usize }),
    );
    shape
}

/// `count` values of `datatype`, as JSON and as the binary extension's bytes: pseudo-random
/// FP32 in [0, 1) (from `seed`), token-like INT64, or `text` for BYTES. `None` for the other
/// datatypes.
fn input_values(
    datatype: &str,
    count: usize,
    text: &str,
    seed: &mut u64,
) -> Option<(Value, Vec<u8>)> {
    match datatype {
        "FP32" => {
            let values: Vec<f32> = (0..count)
                .map(|_| {
                    *seed ^= *seed << 13;
                    *seed ^= *seed >> 7;
                    *seed ^= *seed << 17;
                    (*seed >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Some((json!(values), bytes))
        }
        "INT64" => {
            let values: Vec<i64> = (0..count).map(|i| 1000 + (i % 1000) as i64).collect();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Some((json!(values), bytes))
        }
        "BYTES" => {
            let values: Vec<&str> = (0..count).map(|_| text).collect();
            let mut bytes = Vec::new();
            for v in &values {
                bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
                bytes.extend_from_slice(v.as_bytes());
            }
            Some((json!(values), bytes))
        }
        _ => None,
    }
}

/// `wick bench`: runs the load and prints the report (as one JSON object with `json`).
pub fn main(
    options: &BenchOptions,
    json: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<bool> {
    let report = crate::app::runtime(2)?.block_on(run(options))?;
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(out, "{report}")?;
    }
    Ok(true)
}

/// Drives the server at `options.url` and measures it.
pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    if options.clients == 0 || options.rows == 0 {
        bail!("--clients and --rows must be at least 1");
    }
    if options.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    let target = Target::parse(&options.url)?;
    let prepared = std::sync::Arc::new(prepare(&target, options).await?);
    probe(&target, &prepared).await?;

    let launched = Instant::now();
    let start = launched + options.warmup;
    let end = start + options.duration;
    let per_client_cap = options
        .max_requests
        .map(|m| m.div_ceil(options.clients as u64));
    let mut tasks = Vec::with_capacity(options.clients);
    for i in 0..options.clients {
        let target = target.clone();
        let prepared = std::sync::Arc::clone(&prepared);
        let run = ClientRun {
            start,
            end,
            cap: per_client_cap,
            schedule: options
                .rate
                .map(|rate| Schedule::for_client(rate, options.clients, i, launched)),
        };
        tasks.push(tokio::spawn(async move {
            client(&target, &prepared, run).await
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a client task panicked")??);
    }
    Ok(report(options, start, results))
}

/// Sends the request once, so a misconfiguration fails loudly, not as N errors.
async fn probe(target: &Target, prepared: &Prepared) -> anyhow::Result<()> {
    let mut probe = target.connect().await?;
    let (status, body) = probe
        .send(
            Method::POST,
            &prepared.path,
            &prepared.headers,
            prepared.body.clone(),
        )
        .await?;
    if status != StatusCode::OK {
        bail!(
            "the probe request failed: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// The clients' results, measured from `start` (the end of the warm-up), as one report.
fn report(options: &BenchOptions, start: Instant, results: Vec<ClientResult>) -> BenchReport {
    let mut latencies: Vec<u32> = Vec::new();
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    let mut last = start;
    for result in results {
        latencies.extend(result.latencies);
        for (status, count) in result.errors {
            *statuses.entry(status).or_default() += count;
        }
        last = last.max(result.finished);
    }
    let seconds = last
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as u64
    };
    let requests = latencies.len() as u64;
    BenchReport {
        model: options.model.clone(),
        clients: options.clients,
        rate: options.rate,
        seconds,
        encoding: if options.binary { "binary" } else { "JSON" },
        rows_per_request: options.rows,
        requests,
        requests_per_second: requests as f64 / seconds,
        rows_per_second: (requests * options.rows as u64) as f64 / seconds,
        errors: statuses.values().sum(),
        error_statuses: statuses.into_iter().collect(),
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        p999_us: pct(99.9),
        max_us: latencies.last().copied().unwrap_or(0) as u64,
    }
}

struct ClientResult {
    latencies: Vec<u32>,
    errors: Vec<(u16, u64)>,
    finished: Instant,
}

/// When one client's requests of an open-loop run are due: every `interval`, from `first`.
/// Client `i` of `n` is offset by `i / rate`, so the clients together send at `rate`, evenly.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    first: Instant,
    interval: Duration,
}

impl Schedule {
    /// The warm-up runs on the same schedule (from `from`), so the measured window starts
    /// with the server in its steady state; requests due before the window are not measured.
    fn for_client(rate: f64, clients: usize, i: usize, from: Instant) -> Schedule {
        let per_request = Duration::from_secs_f64(1.0 / rate);
        Schedule {
            first: from + per_request.mul_f64(i as f64),
            interval: per_request.mul_f64(clients as f64),
        }
    }

    /// The intended send time of this client's `k`-th request.
    fn due(&self, k: u64) -> Instant {
        self.first + self.interval.mul_f64(k as f64)
    }
}

/// What one client task does: its measured window, request cap and (open loop) schedule.
#[derive(Debug, Clone, Copy)]
struct ClientRun {
    start: Instant,
    end: Instant,
    cap: Option<u64>,
    schedule: Option<Schedule>,
}

async fn client(
    target: &Target,
    prepared: &Prepared,
    run: ClientRun,
) -> anyhow::Result<ClientResult> {
    let mut conn = target.connect().await?;
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut errors: std::collections::BTreeMap<u16, u64> = Default::default();
    let mut sent = 0u64;
    let mut k = 0u64;
    loop {
        // Closed loop: a request's clock starts when it is sent. Open loop: when it was due,
        // even if the previous answer arrived late and this one goes out behind schedule.
        let before = match run.schedule {
            Some(schedule) => {
                let due = schedule.due(k);
                k += 1;
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        if before >= run.end || run.cap.is_some_and(|c| sent >= c) {
            break;
        }
        let result = conn
            .send(
                Method::POST,
                &prepared.path,
                &prepared.headers,
                prepared.body.clone(),
            )
            .await;
        let after = Instant::now();
        let measured = before >= run.start;
        match result {
            Ok((StatusCode::OK, _)) if measured => {
                sent += 1;
                latencies.push(
                    after
                        .duration_since(before)
                        .as_micros()
                        .min(u32::MAX as u128) as u32,
                );
            }
            Ok((StatusCode::OK, _)) => {}
            Ok((status, _)) => {
                if measured {
                    sent += 1;
                    *errors.entry(status.as_u16()).or_default() += 1;
                }
            }
            Err(_) => {
                // Status 0 stands for a connection error; reconnect and go on.
                if measured {
                    *errors.entry(0).or_default() += 1;
                }
                conn = target.connect().await?;
            }
        }
    }
    Ok(ClientResult {
        latencies,
        errors: errors.into_iter().collect(),
        finished: Instant::now().min(run.end.max(run.start)),
    })
}
