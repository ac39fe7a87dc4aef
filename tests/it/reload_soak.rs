//! A long run of swaps under load, alone in a child process (so the memory, descriptors and
//! mappings it measures are its own, not those of the tests running beside it): resident memory
//! returns near its starting level, and no descriptor or mapping leaks.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::util::{
    eventually, f32_tensor, infer_request, write_safetensors, Repo, TestServer, TOKEN,
};

const WIDTH: usize = 1024;

/// A `linear` WIDTH→WIDTH checkpoint (4 MiB): a leaked copy per swap would show as 800 MiB.
fn write_checkpoint(path: &Path, seed: u32) {
    let mut state = seed.wrapping_mul(2654435761).max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) - 0.5
    };
    let weight: Vec<f32> = (0..WIDTH * WIDTH).map(|_| next() * 0.01).collect();
    let bias: Vec<f32> = (0..WIDTH).map(|_| next()).collect();
    let tensors = [
        f32_tensor("linear.weight", &[WIDTH, WIDTH], &weight),
        f32_tensor("linear.bias", &[WIDTH], &bias),
    ];
    write_safetensors(path, &tensors, None);
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn checkpoint_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("model.safetensors"))
        .count()
}

#[test]
fn two_hundred_swaps_under_load_do_not_leak() {
    crate::util::process::alone(
        "reload_soak::two_hundred_swaps_under_load_do_not_leak",
        || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(swaps_under_load());
        },
    );
}

async fn swaps_under_load() {
    let repo = Repo::new();
    let staging = tempfile::tempdir().unwrap();
    let models = format!(
        "[[models]]\nname = \"big\"\narchitecture = \"linear\"\nconfig = {{ in_features = {WIDTH}, out_features = {WIDTH} }}\n"
    );
    let file = staging.path().join("v.safetensors");
    write_checkpoint(&file, 1);
    repo.install("big", 1, &file);
    let server = Arc::new(TestServer::start_admin(repo.config("", &models)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (server, stop, failures, served) = (
                Arc::clone(&server),
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&served),
            );
            tokio::spawn(async move {
                let body = infer_request("input", "FP32", [1, WIDTH], vec![0.5f32; WIDTH]);
                while !stop.load(Ordering::Relaxed) {
                    let (status, _) = server.post_json("/v2/models/big/infer", &body).await;
                    if status == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mut baseline = None;
    for version in 2..=201u64 {
        write_checkpoint(&file, version as u32);
        repo.install("big", version, &file);
        let (status, body) = server
            .admin("/v2/repository/models/big/load", "", Some(TOKEN))
            .await;
        assert_eq!(status, 200, "swap to {version}: {body}");
        std::fs::remove_dir_all(repo.version_dir("big", version - 1)).unwrap();
        if version == 21 {
            // Allocator pools and lazily started threads settle during the first swaps.
            baseline = Some((status_kb("VmRSS:"), open_fds()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    server.server().repository().reap();
    let (rss_before, fds_before) = baseline.unwrap();
    let (rss_after, fds_after) = (status_kb("VmRSS:"), open_fds());
    eprintln!(
        "200 swaps of a 4 MiB checkpoint under load: {} requests served; VmRSS {} -> {} kB; fds {} -> {}",
        served.load(Ordering::Relaxed), rss_before, rss_after, fds_before, fds_after
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the swaps"
    );
    assert!(served.load(Ordering::Relaxed) > 200);
    // One leaked copy per swap would be 720 MiB over the 180 measured swaps.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "VmRSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert!(
        fds_after <= fds_before + 4,
        "descriptors grew from {fds_before} to {fds_after}"
    );
    assert_eq!(checkpoint_mappings(), 0, "a checkpoint is still mapped");
    // Deleted version directories leave the index at the watcher's next scan.
    let settled = eventually(std::time::Duration::from_secs(5), || async {
        let index = server.index().await;
        index.len() == 1 && index[0]["version"] == "201" && index[0]["state"] == "READY"
    })
    .await;
    assert!(settled, "{:?}", server.index().await);
    TestServer::shutdown_shared(server).await;
}
