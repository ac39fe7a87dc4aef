//! `wick bench`'s open loop: requests leave on a fixed schedule and each latency is measured from
//! its intended send time, so a server stall is charged to every request that was due during it.

use std::time::Duration;

use wick::bench::{run, BenchOptions};

use crate::util::process::Process;
use crate::util::TestServer;

fn options(url: String, rate: Option<f64>, clients: usize, seconds: f64) -> BenchOptions {
    BenchOptions {
        url,
        model: "simple".into(),
        version: None,
        clients,
        duration: Duration::from_secs_f64(seconds),
        warmup: Duration::from_millis(200),
        binary: false,
        rows: 1,
        text: String::new(),
        seq_len: 16,
        max_requests: None,
        rate,
    }
}

#[tokio::test]
async fn open_loop_sends_exactly_the_scheduled_requests() {
    let (server, _repo) = TestServer::demo("").await;
    let url = format!("http://{}", server.target.authority);
    // 200 req/s over 4 connections for 1 s: 200 requests are due in the measured window
    // (each connection's grid may put one more or one fewer at the window's edges).
    let report = run(&options(url, Some(200.0), 4, 1.0)).await.unwrap();
    assert_eq!(report.errors, 0, "{report}");
    assert!(
        (196..=204).contains(&report.requests),
        "an open loop sends what its schedule says, not what the server allows: {report}"
    );
    assert_eq!(report.rate, Some(200.0));
    server.shutdown().await;
}

#[test]
fn open_loop_latency_counts_from_the_intended_send_time() {
    let server = Process::start("");
    let url = format!("http://{}", server.addr);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // One connection at 200 req/s for 1.2 s; 300 ms into the window the server is frozen for
    // 400 ms. Every request due during the freeze waits for its end: ~80 of the ~240 measured
    // requests are due then, a third of them at least 270 ms before it ends, so more than 10%
    // of all latencies exceed 250 ms. A closed loop would charge the freeze to one request.
    let load =
        std::thread::spawn(move || runtime.block_on(run(&options(url, Some(200.0), 1, 1.2))));
    std::thread::sleep(Duration::from_millis(200 + 300));
    server.signal("STOP");
    std::thread::sleep(Duration::from_millis(400));
    server.signal("CONT");
    let report = load.join().unwrap().unwrap();
    assert_eq!(report.errors, 0, "{report}");
    assert!(
        report.p90_us >= 250_000,
        "requests due during the freeze are charged from their intended send time: {report}"
    );
}
