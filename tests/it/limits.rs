//! Hostile clients and careless publishers (docs/security.md): a real `wick serve` process whose
//! resident memory is measured around large hostile bodies, a checkpoint truncated while it
//! loads, sockets that try to hold every connection slot, and health probes while clients send
//! decompression bombs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::process::Process;
use crate::util::{
    demo_models, f32_tensor, fixture, infer_request, write_safetensors, Repo, TestServer,
};
use tokio::io::AsyncWriteExt;
use wick::bench::Target;

const MIB: usize = 1 << 20;

/// A field of /proc/<pid>/status in bytes (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Resets the peak resident size the kernel reports for `pid` (VmHWM) to its current size.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// The small BERT of tests/fixtures/arch as model `text` beside the demo models.
fn text_repo() -> (Repo, String) {
    let repo = Repo::demo();
    repo.install_files(
        "text",
        1,
        &[
            (
                "model.safetensors",
                &fixture("arch/bert_small/model.safetensors"),
            ),
            ("tokenizer.json", &fixture("arch/bert_small/tokenizer.json")),
        ],
    );
    let staging = tempfile::tempdir().unwrap();
    let wide = staging.path().join("wide.safetensors");
    linear_checkpoint(&wide, 8192, 1, 0.0);
    repo.install("wide", 1, &wide);
    let models = format!(
        "{}\n[[models]]\nname = \"wide\"\narchitecture = \"linear\"\n\
         config = {{ in_features = 8192, out_features = 1 }}\n\
         batching = {{ max_batch_size = 64 }}\n\
         \n[[models]]\nname = \"text\"\narchitecture = \"bert\"\n\
         config = {{ vocab_size = 132, hidden_size = 64, num_hidden_layers = 2, num_attention_heads = 4, \
         intermediate_size = 128, max_position_embeddings = 64 }}\n\
         load = {{ strip_prefix = \"bert.\", ignore = [\"classifier.*\"] }}\n",
        demo_models()
    );
    (repo, models)
}

/// One hostile body: where it goes and what it is.
struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: bytes::Bytes,
}

fn json_case(name: &'static str, path: &'static str, body: String) -> Case {
    Case {
        name,
        path,
        headers: Vec::new(),
        body: body.into(),
    }
}

/// About 60 MiB each, every one of a kind that used to cost 10-17× its size.
fn cases() -> Vec<Case> {
    let digits = "/v2/models/digits/infer";
    let text = "/v2/models/text/infer";
    let zeros = {
        // 16M FP32 zeros written as `0,` for the digits model: its rows are refused at the
        // shape (max_request_rows), before the data is read.
        let rows = (16 << 20) / 64;
        let mut s = format!(
            r#"{{"inputs":[{{"name":"input","shape":[{rows},64],"datatype":"FP32","data":["#
        );
        s.push_str(&"0,".repeat(rows * 64 - 1));
        s.push_str("0]}]}");
        s
    };
    let empty_strings = format!(
        r#"{{"inputs":[{{"name":"text","shape":[{n}],"datatype":"BYTES","data":[{}""]}}]}}"#,
        "\"\",".repeat(20 * MIB - 1),
        n = 20 * MIB
    );
    let long_shape = format!(
        r#"{{"inputs":[{{"name":"input","shape":[{}1],"datatype":"FP32","data":[0]}}]}}"#,
        "1,".repeat(30 * MIB)
    );
    let parameters = format!(
        r#"{{"parameters":{{{}"last":0}},"inputs":[]}}"#,
        (0..3 * MIB)
            .map(|i| format!(r#""p{i}":0,"#))
            .collect::<String>()
    );
    let outputs = format!(
        r#"{{"outputs":[{}{{"name":"output"}}],"inputs":[]}}"#,
        r#"{"name":"output"},"#.repeat(3 * MIB)
    );
    let long_text = format!(
        r#"{{"inputs":[{{"name":"text","shape":[1],"datatype":"BYTES","data":["{}"]}}]}}"#,
        "word ".repeat(12 * MIB)
    );
    // The binary extension: BYTES elements of length 0, as many as 60 MiB holds.
    let flood = {
        let elements = 15 * MIB;
        let header = format!(
            r#"{{"inputs":[{{"name":"text","shape":[{elements}],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
            elements * 4
        );
        let mut body = header.clone().into_bytes();
        body.resize(body.len() + elements * 4, 0);
        Case {
            name: "a binary flood of empty BYTES elements",
            path: text,
            headers: vec![("inference-header-content-length", header.len().to_string())],
            body: body.into(),
        }
    };
    let wide = {
        // The worst request the limits accept: 16M FP32 values (the element cap) written as
        // `0,` for a model whose 2048 rows of 8192 values fit max_request_rows. Decoded, they
        // take twice the body.
        let mut s = String::from(
            r#"{"inputs":[{"name":"input","shape":[2048,8192],"datatype":"FP32","data":["#,
        );
        s.push_str(&"0,".repeat(2048 * 8192 - 1));
        s.push_str("0]}]}");
        s
    };
    let ids = {
        // As many token ids as the element cap admits, written as `0,`: each id is 2 bytes of
        // body and is decoded into 4 (it was 8, 4× the body). The rows are longer than the
        // model's positions, so it is refused once decoded.
        let mut s = String::from(
            r#"{"inputs":[{"name":"input_ids","shape":[2048,8192],"datatype":"INT64","data":["#,
        );
        s.push_str(&"0,".repeat(2048 * 8192 - 1));
        s.push_str("0]}]}");
        s
    };
    vec![
        json_case(
            "a full tensor of zeros in JSON",
            "/v2/models/wide/infer",
            wide,
        ),
        json_case("zeros in data", digits, zeros),
        json_case("empty strings", text, empty_strings),
        json_case("a long shape", digits, long_shape),
        json_case("many parameters", digits, parameters),
        json_case("many outputs", digits, outputs),
        json_case("a 60 MiB text", text, long_text),
        flood,
        json_case("token ids in JSON", text, ids),
    ]
}

async fn send(target: &Target, case: &Case) -> (u16, String) {
    let headers: Vec<(&str, String)> = case.headers.clone();
    let mut conn = target.connect().await.unwrap();
    let (status, body) = conn
        .send(http::Method::POST, case.path, &headers, case.body.clone())
        .await
        .unwrap();
    (
        status.as_u16(),
        String::from_utf8_lossy(&body).chars().take(300).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_memory_is_bounded_by_what_the_server_admits() {
    let (repo, models) = text_repo();
    let process = Process::start_with(repo, "", &models);
    let pid = process.child.id();
    let target = process.target();
    let cases = cases();
    // Warm the paths once with small requests so first-use allocations do not count.
    for path in ["/v2/models/digits", "/v2/models/text"] {
        assert_eq!(target.get_status(path).await.unwrap(), 200);
    }
    let mut report = Vec::new();
    for case in &cases {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = status_kb(pid, "VmRSS:");
        reset_peak(pid);
        let started = Instant::now();
        let (status, answer) = send(&target, case).await;
        let took = started.elapsed();
        let growth = status_kb(pid, "VmHWM:").saturating_sub(before);
        let ratio = growth as f64 / case.body.len() as f64;
        report.push(format!(
            "{}: {} MiB body, status {status}, {took:?}, peak growth {:.2}x",
            case.name,
            case.body.len() / MIB,
            ratio
        ));
        assert!(
            (200..500).contains(&status),
            "{}: status {status}: {answer}",
            case.name
        );
        // The bar is 3× the body. The full JSON tensor comes closest: its values alone take
        // twice the body once decoded (docs/security.md).
        let bar = 3.0;
        assert!(ratio <= bar, "{}: {}", case.name, report.join("\n"));
        if case.name == "a 60 MiB text" {
            assert_eq!(status, 200, "{answer}");
            assert!(answer.contains(r#""truncated":[true]"#), "{answer}");
            assert!(ratio <= 2.0, "{}", report.join("\n"));
            // Generous for a debug build on a shared machine; the README quotes the release
            // figure (well under a second).
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
    }
    // Three at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = status_kb(pid, "VmRSS:");
    reset_peak(pid);
    let picked = [1usize, 2, 6];
    let bodies: usize = picked.iter().map(|&i| cases[i].body.len()).sum();
    let tasks: Vec<_> = picked
        .iter()
        .map(|&i| {
            let target = target.clone();
            let case = Case {
                name: cases[i].name,
                path: cases[i].path,
                headers: cases[i].headers.clone(),
                body: cases[i].body.clone(),
            };
            tokio::spawn(async move { send(&target, &case).await.0 })
        })
        .collect();
    for task in tasks {
        let status = task.await.unwrap();
        assert!((200..500).contains(&status), "{status}");
    }
    let growth = status_kb(pid, "VmHWM:").saturating_sub(before);
    let ratio = growth as f64 / bodies as f64;
    report.push(format!(
        "three at once: peak growth {ratio:.2}x of their bodies"
    ));
    println!("{}", report.join("\n"));
    assert!(ratio <= 3.0, "{}", report.join("\n"));
}

/// A `linear` checkpoint of `in_features` × `out_features`, F32.
fn linear_checkpoint(path: &Path, in_features: usize, out_features: usize, seed: f32) {
    let weight: Vec<f32> = (0..in_features * out_features)
        .map(|i| (i % 97) as f32 * 1e-4 + seed)
        .collect();
    let bias: Vec<f32> = (0..out_features).map(|i| i as f32 * 1e-3).collect();
    let tensors = [
        f32_tensor("linear.weight", &[out_features, in_features], &weight),
        f32_tensor("linear.bias", &[out_features], &bias),
    ];
    write_safetensors(path, &tensors, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_truncated_while_it_loads_never_kills_the_process() {
    const IN: usize = 2048;
    const OUT: usize = 4096;
    let repo = Repo::new();
    let staging = tempfile::tempdir().unwrap();
    let v1 = staging.path().join("v1.safetensors");
    linear_checkpoint(&v1, IN, OUT, 0.0);
    repo.install("big", 1, &v1);
    let models = format!(
        "[[models]]\nname = \"big\"\narchitecture = \"linear\"\nconfig = {{ in_features = {IN}, out_features = {OUT} }}\n"
    );
    // Loads are driven explicitly below; the watcher would race them.
    let server = TestServer::start_with(
        repo.config("", &models),
        wick::app::StartOptions {
            watch: false,
            ..Default::default()
        },
    )
    .await;
    let repository = Arc::clone(server.server().repository());
    let one =
        serde_json::to_vec(&infer_request("input", "FP32", [1, IN], vec![0.5f32; IN])).unwrap();
    let mut refused = 0;
    for round in 0..24u64 {
        let version = round + 2;
        let dir = repo.path().join("big").join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.safetensors");
        linear_checkpoint(&file, IN, OUT, version as f32);
        let size = std::fs::metadata(&file).unwrap().len();
        // Truncate the file at a different moment of each load: from before it starts to
        // after it ends (a 32 MB copy and hash take tens of milliseconds).
        let delay = Duration::from_micros(round * 2500);
        let truncate = {
            let file = file.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                f.set_len(size / 3).unwrap();
            })
        };
        let repository = Arc::clone(&repository);
        let outcome =
            tokio::task::spawn_blocking(move || repository.load("big", Some(version))).await;
        truncate.join().unwrap();
        // The load ran and returned (the process is alive to tell): either it finished before
        // the cut, or it was refused.
        let outcome = outcome.expect("the load task ended");
        if outcome.is_err() {
            refused += 1;
        }
        // Whatever serves answers.
        let (status, body) = server.post("/v2/models/big/infer", one.clone()).await;
        assert_eq!(status, 200, "round {round}: {}", body.text());
    }
    assert!(refused > 0, "no load was cut short: the race was never run");
    println!("{refused} of 24 loads were refused because the file was cut while it was read");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_lock_clients_out() {
    let (server, _repo) =
        TestServer::demo("max_connections = 6\nheader_read_timeout_ms = 30000").await;
    let addr = server.server().addr;
    // Eight sockets that each send one byte and go silent.
    let mut silent = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"G").await.unwrap();
        silent.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (status, _) = server.get("/v2/health/live").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
    server.shutdown().await;
}

/// The start of a valid request followed by 1 GiB of JSON whitespace, gzipped: about 1 MiB.
/// The decoder keeps reading (whitespace is valid) until the decompressed-size limit stops it.
fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(br#"{"id": "bomb", "inputs": ["#).unwrap();
    let spaces = vec![b' '; 8 * MIB];
    for _ in 0..128 {
        encoder.write_all(&spaces).unwrap();
    }
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_fast_while_clients_send_bombs_and_huge_texts() {
    let (repo, models) = text_repo();
    let server = Arc::new(TestServer::start(repo.config("", &models)).await);
    let target = Target::parse(&format!("http://{}", server.server().addr)).unwrap();
    let bomb = bytes::Bytes::from(gzip_bomb());
    let text = bytes::Bytes::from(format!(
        r#"{{"inputs":[{{"name":"text","shape":[1],"datatype":"BYTES","data":["{}"]}}]}}"#,
        "word ".repeat(12 * MIB)
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for i in 0..3 {
        let (target, stop) = (target.clone(), Arc::clone(&stop));
        let (body, path, headers) = if i < 2 {
            (
                bomb.clone(),
                "/v2/models/digits/infer",
                vec![("content-encoding", "gzip".to_string())],
            )
        } else {
            (text.clone(), "/v2/models/text/infer", Vec::new())
        };
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut conn = target.connect().await.unwrap();
                let (status, _) = conn
                    .send(http::Method::POST, path, &headers, body.clone())
                    .await
                    .unwrap();
                // A bomb stops at the decompressed-size limit (413); a text is answered.
                assert!(status == 413 || status == 200, "{status}");
                sent += 1;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    let mut probe = target.connect().await.unwrap();
    for _ in 0..100 {
        let started = Instant::now();
        let (status, _) = probe
            .send(
                http::Method::GET,
                "/v2/health/live",
                &[],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for a in attackers {
        sent += a.await.unwrap();
    }
    latencies.sort();
    let p99 = latencies[98];
    println!(
        "{sent} hostile bodies; /v2/health/live p50 {:?}, p99 {p99:?}",
        latencies[50]
    );
    assert!(sent >= 3, "the attackers sent only {sent} bodies");
    // The README quotes the release build's p99 (the goal is under 10 ms); decompression on
    // the async workers used to delay this probe by up to a second.
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
    TestServer::shutdown_shared(server).await;
}
