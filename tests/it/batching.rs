//! Dynamic batching, admission control, deadlines, cancellation and failure isolation, observed
//! through a real server whose `linear` model takes a known time per forward pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::slow::{self, Probe, POISON};
use crate::util::{
    assert_close, assert_error, demo_model, infer_request, output_f32, read_tensors, wait_for,
    Repo, TestServer, Tolerance,
};
use http::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// A server whose `simple` model sleeps `delay` per forward pass, shared by client tasks.
async fn slow_server(delay: Duration, batching: &str) -> (Arc<TestServer>, Repo, Arc<Probe>) {
    let (server, repo, probe) = slow::slow_server("", delay, batching).await;
    (Arc::new(server), repo, probe)
}

/// `linear` in f64 against wick's f32.
const TOLERANCE: Tolerance = Tolerance::Absolute(1e-3);

/// Rows whose first value identifies them.
fn rows(marker: f32, count: usize) -> Vec<f32> {
    (0..count)
        .flat_map(|r| {
            (0..10).map(move |j| {
                if j == 0 {
                    marker + r as f32
                } else {
                    0.1 * j as f32 + 0.01 * r as f32
                }
            })
        })
        .collect()
}

fn body(data: &[f32], extra: Value) -> Vec<u8> {
    let mut request = infer_request("input", "FP32", [data.len() / 10, 10], data);
    if let Value::Object(map) = extra {
        for (k, v) in map {
            request[k] = v;
        }
    }
    serde_json::to_vec(&request).unwrap()
}

/// `linear` computed here in f64 from the checkpoint.
fn expected(data: &[f32]) -> Vec<f32> {
    let weights = read_tensors(&demo_model("simple", 1));
    let w = weights["linear.weight"].1.f32().to_vec();
    let b = weights["linear.bias"].1.f32()[0];
    data.chunks(10)
        .map(|row| {
            (row.iter()
                .zip(&w)
                .map(|(x, w)| *x as f64 * *w as f64)
                .sum::<f64>()
                + b as f64) as f32
        })
        .collect()
}

async fn post(server: &TestServer, body: Vec<u8>) -> (u16, http::HeaderMap, Value) {
    let (status, headers, bytes) = server
        .request_full(Method::POST, "/v2/models/simple/infer", &[], body)
        .await;
    (status, headers, serde_json::from_slice(&bytes).unwrap())
}

/// [`post`] on a task of its own.
fn spawn_post(
    server: &Arc<TestServer>,
    body: Vec<u8>,
) -> tokio::task::JoinHandle<(u16, http::HeaderMap, Value)> {
    let server = Arc::clone(server);
    tokio::spawn(async move { post(&server, body).await })
}

#[tokio::test]
async fn concurrent_requests_share_forward_passes_and_get_their_own_rows() {
    let (server, _repo, probe) =
        slow_server(Duration::from_millis(40), "{ max_batch_size = 64 }").await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            // 1 to 3 rows per request, each row marked by its request.
            let data = rows(100.0 * (i + 1) as f32, 1 + i % 3);
            let (status, _, answer) = post(&server, body(&data, json!({}))).await;
            (status, data, answer)
        }));
    }
    for task in tasks {
        let (status, data, answer) = task.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_close(
            &output_f32(&answer, "output"),
            &expected(&data),
            TOLERANCE,
            "a client's own rows",
        );
    }
    let calls = probe.calls();
    assert!(
        calls < 32,
        "{calls} forward passes for 32 concurrent requests"
    );
    assert!(
        probe.batches.lock().unwrap().iter().any(|rows| *rows > 3),
        "no batch held several requests"
    );
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn an_idle_server_never_waits_for_batch_mates() {
    // A huge queue delay must not delay a request that finds the model idle.
    let (server, _repo, _probe) = slow_server(
        Duration::ZERO,
        "{ max_batch_size = 64, max_queue_delay_us = 2000000 }",
    )
    .await;
    let started = Instant::now();
    let (status, _, _) = post(&server, body(&rows(1.0, 1), json!({}))).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn a_batch_does_not_wait_for_requests_that_are_not_coming() {
    // A 300 ms queue delay, and nothing on its way: the request gathered while the model was
    // busy runs as soon as the model is free, not after the delay.
    let (server, _repo, probe) = slow_server(
        Duration::from_millis(100),
        "{ max_batch_size = 64, max_queue_delay_us = 300000 }",
    )
    .await;
    let first = spawn_post(&server, body(&rows(1.0, 1), json!({})));
    wait_for("the first request to start", || probe.calls() == 1).await;
    let sent = Instant::now();
    let second = spawn_post(&server, body(&rows(2.0, 1), json!({})));
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
    let waited = sent.elapsed();
    // Its own forward pass (100 ms) after the first's remaining time (< 100 ms), and no
    // 300 ms wait on top.
    assert!(waited < Duration::from_millis(280), "{waited:?}");
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn a_batch_waits_for_a_request_on_its_way_up_to_the_delay() {
    let (server, _repo, probe) = slow_server(
        Duration::from_millis(100),
        "{ max_batch_size = 64, max_queue_delay_us = 2000000 }",
    )
    .await;
    let first = spawn_post(&server, body(&rows(1.0, 1), json!({})));
    wait_for("the first request to start", || probe.calls() == 1).await;
    // A client whose body is still arriving: the policy knows a batch-mate is coming.
    let payload = body(&rows(3.0, 1), json!({}));
    let mut stream = tokio::net::TcpStream::connect(server.server().addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&payload[..10]).await.unwrap();
    let second = spawn_post(&server, body(&rows(2.0, 1), json!({})));
    assert_eq!(first.await.unwrap().0, 200);
    // The second has been queued with the model free: it waits for the third.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        probe.calls(),
        1,
        "the second ran without its coming batch-mate"
    );
    stream.write_all(&payload[10..]).await.unwrap();
    let (status, _, answer) = second.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let (reply, _) =
        crate::util::server::read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // The two ran as one batch of two rows.
    assert_eq!(probe.batches.lock().unwrap().clone(), vec![1, 2]);
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn a_request_larger_than_a_batch_is_split_and_answered_in_order() {
    let (server, _repo, probe) =
        slow_server(Duration::from_millis(10), "{ max_batch_size = 4 }").await;
    let data = rows(100.0, 12);
    let (status, _, answer) = post(&server, body(&data, json!({}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([12, 1]));
    assert_close(
        &output_f32(&answer, "output"),
        &expected(&data),
        TOLERANCE,
        "a split request's rows, in order",
    );
    assert_eq!(probe.batches.lock().unwrap().clone(), vec![4, 4, 4]);
    // Past max_request_rows it is refused before anything is computed.
    let (server2, _repo2, probe2) = slow_server(
        Duration::from_millis(10),
        "{ max_batch_size = 4, max_request_rows = 8 }",
    )
    .await;
    let (status, _, answer) = post(&server2, body(&rows(1.0, 9), json!({}))).await;
    assert_error("9 rows", (status, &answer), 400, "max_request_rows");
    assert_eq!(probe2.calls(), 0);
    TestServer::shutdown_shared(server).await;
    TestServer::shutdown_shared(server2).await;
}

#[tokio::test]
async fn a_high_priority_request_overtakes_queued_low_priority_ones() {
    let (server, _repo, probe) =
        slow_server(Duration::from_millis(150), "{ max_batch_size = 1 }").await;
    let first = spawn_post(&server, body(&rows(1.0, 1), json!({})));
    wait_for("the first request to start", || probe.calls() == 1).await;
    let slot = server.server().repository().get("simple").unwrap();
    let mut tasks = Vec::new();
    for marker in [2.0, 3.0] {
        tasks.push(spawn_post(
            &server,
            body(&rows(marker, 1), json!({"parameters": {"priority": 5}})),
        ));
        wait_for("a queued request", || {
            slot.engine.queue_len() == tasks.len()
        })
        .await;
    }
    tasks.push(spawn_post(
        &server,
        body(&rows(9.0, 1), json!({"parameters": {"priority": 2}})),
    ));
    wait_for("three queued requests", || slot.engine.queue_len() == 3).await;
    assert_eq!(first.await.unwrap().0, 200);
    for task in tasks {
        assert_eq!(task.await.unwrap().0, 200);
    }
    assert_eq!(probe.computed(), vec![1.0, 9.0, 2.0, 3.0]);
    let (status, _, answer) = post(
        &server,
        body(&rows(1.0, 1), json!({"parameters": {"priority": -1}})),
    )
    .await;
    assert_error("a negative priority", (status, &answer), 400, "priority");
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn a_full_queue_answers_429_at_once_and_admitted_requests_succeed() {
    let (server, _repo, probe) = slow_server(
        Duration::from_millis(300),
        "{ max_batch_size = 1, max_queue_size = 3 }",
    )
    .await;
    let mut admitted = Vec::new();
    let spawn = |marker: f32| spawn_post(&server, body(&rows(marker, 1), json!({})));
    admitted.push(spawn(1.0));
    wait_for("the first request to start", || probe.calls() == 1).await;
    for marker in [2.0, 3.0, 4.0] {
        admitted.push(spawn(marker));
    }
    let slot = server.server().repository().get("simple").unwrap();
    wait_for("three queued requests", || slot.engine.queue_len() == 3).await;
    for marker in [5.0, 6.0] {
        let started = Instant::now();
        let (status, headers, answer) = post(&server, body(&rows(marker, 1), json!({}))).await;
        assert_error(
            "a request past the queue",
            (status, &answer),
            429,
            "max_queue_size",
        );
        assert_eq!(headers.get("retry-after").unwrap(), "1");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "429 took {:?}",
            started.elapsed()
        );
    }
    for task in admitted {
        assert_eq!(task.await.unwrap().0, 200);
    }
    assert!(!probe.computed().contains(&5.0) && !probe.computed().contains(&6.0));
    let metrics = server.get("/metrics").await.1.text();
    assert!(
        metrics.contains(r#"wick_rejections_total{model="simple",reason="queue_full"} 2"#),
        "{metrics}"
    );
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn timeouts_drop_queued_requests_before_compute() {
    let (server, _repo, probe) = slow_server(
        Duration::from_millis(400),
        "{ max_batch_size = 1, default_timeout_us = 150000 }",
    )
    .await;
    let first = spawn_post(
        &server,
        body(
            &rows(1.0, 1),
            json!({"parameters": {"timeout": 10_000_000}}),
        ),
    );
    wait_for("the first request to start", || probe.calls() == 1).await;
    // Triton's per-request timeout parameter (µs)...
    let started = Instant::now();
    let (status, headers, answer) = post(
        &server,
        body(&rows(2.0, 1), json!({"parameters": {"timeout": 50_000}})),
    )
    .await;
    assert_error(
        "timeout parameter",
        (status, &answer),
        503,
        "timeout of 50000 µs",
    );
    assert!(headers.get("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the timeout answer took {:?}",
        started.elapsed()
    );
    // ...and the configured default.
    let (status, _, answer) = post(&server, body(&rows(3.0, 1), json!({}))).await;
    assert_error("default timeout", (status, &answer), 503, "150000");
    assert_eq!(first.await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        probe.computed(),
        vec![1.0],
        "a timed-out request was computed"
    );
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn a_client_that_disconnects_has_its_work_dropped() {
    let (server, _repo, probe) =
        slow_server(Duration::from_millis(400), "{ max_batch_size = 1 }").await;
    let first = spawn_post(&server, body(&rows(1.0, 1), json!({})));
    wait_for("the first request to start", || probe.calls() == 1).await;
    let slot = server.server().repository().get("simple").unwrap();
    // A raw client sends a complete request, then goes away before it is computed.
    let payload = body(&rows(2.0, 1), json!({}));
    let mut stream = tokio::net::TcpStream::connect(server.server().addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&payload).await.unwrap();
    wait_for("the second request to queue", || {
        slot.engine.queue_len() == 1
    })
    .await;
    drop(stream);
    assert_eq!(first.await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        probe.computed(),
        vec![1.0],
        "the abandoned request was computed"
    );
    let metrics = server.get("/metrics").await.1.text();
    assert!(
        metrics.contains(r#"wick_rejections_total{model="simple",reason="client_disconnected"} 1"#),
        "{metrics}"
    );
    TestServer::shutdown_shared(server).await;
}

#[tokio::test]
async fn one_failing_request_does_not_fail_its_batch_mates() {
    let (server, _repo, probe) =
        slow_server(Duration::from_millis(150), "{ max_batch_size = 64 }").await;
    let spawn = |data: Vec<f32>| {
        let server = Arc::clone(&server);
        tokio::spawn(async move { (post(&server, body(&data, json!({}))).await, data) })
    };
    let first = spawn(rows(1.0, 1));
    wait_for("the first request to start", || probe.calls() == 1).await;
    let poisoned = spawn(rows(POISON, 1));
    let good: Vec<_> = (0..3)
        .map(|i| spawn(rows(10.0 * (i + 2) as f32, 2)))
        .collect();
    let slot = server.server().repository().get("simple").unwrap();
    wait_for("four queued requests", || slot.engine.queue_len() == 4).await;
    assert_eq!(first.await.unwrap().0 .0, 200);
    let ((status, _, answer), _) = poisoned.await.unwrap();
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].is_string());
    for task in good {
        let ((status, _, answer), data) = task.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_close(
            &output_f32(&answer, "output"),
            &expected(&data),
            TOLERANCE,
            "a batch-mate's rows",
        );
    }
    // The failed batch held all four; then each ran alone.
    let batches = probe.batches.lock().unwrap().clone();
    assert_eq!(batches, vec![1, 7, 1, 2, 2, 2], "{batches:?}");
    // The compute thread survived: the model still answers.
    assert_eq!(post(&server, body(&rows(5.0, 1), json!({}))).await.0, 200);
    TestServer::shutdown_shared(server).await;
}
