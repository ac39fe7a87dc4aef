//! wick as infrastructure: a real `wick serve` process drains on SIGTERM, slow clients are cut
//! off by the header and body deadlines, and `wick health` tells ready from not ready.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::process::{wick, Process};
use crate::util::server::read_until_closed;
use crate::util::slow::slow_server;
use crate::util::{demo_models, eventually, infer_request, Repo, TestServer};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut process = Process::start("drain_delay_ms = 600\nshutdown_grace_ms = 5000");
    let target = process.target();
    assert_eq!(target.get_status("/v2/health/ready").await.unwrap(), 200);

    // Clients under load, and one idle keep-alive connection that must not hold shutdown open.
    let mut idle = target.connect().await.unwrap();
    idle.send(
        http::Method::GET,
        "/v2/health/live",
        &[],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let body =
        serde_json::to_vec(&infer_request("input", "FP32", [1, 64], vec![3.0f32; 64])).unwrap();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (target, stop, ok, bad, body) = (
                target.clone(),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&bad),
                body.clone(),
            );
            tokio::spawn(async move {
                let Ok(mut conn) = target.connect().await else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    match conn
                        .send(
                            http::Method::POST,
                            "/v2/models/digits/infer",
                            &[],
                            body.clone().into(),
                        )
                        .await
                    {
                        Ok((status, _)) if status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        // An HTTP answer other than 200 is a failed request.
                        Ok(_) => bad.fetch_add(1, Ordering::Relaxed),
                        // The connection was closed by the shutdown: this client is done.
                        Err(_) => break,
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::Relaxed);
    let signalled = Instant::now();
    process.signal("TERM");

    // Readiness flips to 503 at once, while the listener still accepts during the drain delay.
    let mut saw_503 = false;
    while signalled.elapsed() < Duration::from_millis(500) {
        if let Ok(503) = target.get_status("/v2/health/ready").await {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_503, "readiness did not turn 503 after SIGTERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = process.wait(Duration::from_secs(10));
        (code, process)
    })
    .await
    .unwrap();
    let exited_after = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(code.0, Some(0), "wick serve did not exit 0");
    // Drain delay (0.6 s) plus a little: the idle keep-alive connection did not hold it open.
    assert!(
        exited_after < Duration::from_secs(3),
        "shutdown took {exited_after:?}"
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "requests failed with an HTTP error during shutdown"
    );
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "no request was served during the drain delay"
    );
    drop(idle);
}

#[tokio::test]
async fn shutdown_finishes_queued_requests_and_joins_compute_threads() {
    let (server, _repo, probe) = slow_server(
        "shutdown_grace_ms = 5000",
        Duration::from_millis(150),
        "{ max_batch_size = 1 }",
    )
    .await;
    let requests: Vec<_> = (0..4)
        .map(|i| {
            let target = server.target.clone();
            tokio::spawn(async move {
                let body = infer_request("input", "FP32", [1, 10], vec![i as f32; 10]);
                let mut conn = target.connect().await.unwrap();
                let body = serde_json::to_vec(&body).unwrap().into();
                conn.send(http::Method::POST, "/v2/models/simple/infer", &[], body)
                    .await
                    .unwrap()
                    .0
            })
        })
        .collect();
    let slot = server.server().repository().get("simple").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            slot.engine.queue_len() == 3
        })
        .await
    );
    let started = Instant::now();
    server.shutdown().await;
    // Every admitted request was computed and answered before shutdown returned.
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(probe.calls(), 4);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// What the server said before closing, and when it closed.
async fn said_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (String, Option<Duration>) {
    let (seen, closed) = read_until_closed(stream, limit).await;
    (String::from_utf8_lossy(&seen).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let (server, _repo) =
        TestServer::demo("header_read_timeout_ms = 500\nbody_deadline_ms = 700").await;
    let addr = server.server().addr;

    // Slowloris: half a request head, then silence.
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    // A body trickled one byte at a time.
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(
            b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n",
        )
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        for _ in 0..30 {
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        trickle
    });

    // Others are served meanwhile.
    for _ in 0..5 {
        let (status, _) = server
            .infer_f32("simple", "input", &[1, 10], &[1.0; 10])
            .await;
        assert_eq!(status, 200);
    }

    let (said, closed) = said_until_closed(&mut partial, Duration::from_secs(3)).await;
    let closed = closed.expect("the slowloris connection was not closed");
    assert!(
        closed < Duration::from_millis(1500),
        "closed after {closed:?}"
    );
    assert!(!said.contains("200 OK"), "{said}");

    let mut trickle = trickler.await.unwrap();
    let (said, _) = said_until_closed(&mut trickle, Duration::from_secs(3)).await;
    assert!(
        said.starts_with("HTTP/1.1 408"),
        "the trickled body was not cut at the deadline: {said:?}"
    );
    assert!(said.contains("\"error\""), "{said}");
    let (status, _) = server
        .infer_f32("simple", "input", &[1, 10], &[1.0; 10])
        .await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

/// The exit code of `wick health` against `addr` (run off the runtime's workers, which keep
/// serving meanwhile).
async fn health(addr: impl std::fmt::Display) -> i32 {
    let url = format!("http://{addr}");
    tokio::task::spawn_blocking(move || {
        wick()
            .args(["health", "--url", &url, "--timeout-ms", "1000"])
            .status()
            .unwrap()
            .code()
            .unwrap_or(-1)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wick_health_tells_ready_from_not_ready() {
    let (ready, _repo) = TestServer::demo("").await;
    assert_eq!(health(ready.server().addr).await, 0);

    // Configured models without any version: live, not ready.
    let empty = Repo::new();
    let not_ready = TestServer::start(empty.config("", &demo_models())).await;
    assert_eq!(health(not_ready.server().addr).await, 1);

    // Nothing listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    assert_eq!(health(closed).await, 1);
    ready.shutdown().await;
    not_ready.shutdown().await;
}
