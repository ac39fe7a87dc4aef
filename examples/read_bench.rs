//! Reading a checkpoint's bytes: positioned reads (what wick does) against memory-mapped
//! windows (what it did until it stopped mapping files, docs/security.md), side by side,
//! interleaved, on the same file in the page cache. Each round reads the whole file through
//! 8 MiB windows and hashes it, as the loader does.
//!
//! `cargo run --release --example read_bench -- [MiB] [rounds]` (defaults: 90 MiB, 15 rounds).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const WINDOW: usize = 8 << 20;

fn by_reads(file: &File, len: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; WINDOW];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(WINDOW as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos).expect("read");
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    hasher.finalize().into()
}

fn by_maps(file: &File, len: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(WINDOW as u64) as usize;
        // SAFETY: a benchmark over a private temporary file nobody else writes.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(pos)
                .len(n)
                .map(file)
                .expect("map")
        };
        hasher.update(&map[..]);
        pos += n as u64;
    }
    hasher.finalize().into()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(90);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weights.bin");
    let len = mib << 20;
    let mut f = File::create(&path).expect("create");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    for _ in 0..mib {
        f.write_all(&chunk).expect("write");
    }
    drop(f);
    let file = File::open(&path).expect("open");
    assert_eq!(by_reads(&file, len), by_maps(&file, len));
    let (mut reads, mut maps) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer cache.
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for read in order {
            let started = Instant::now();
            if read {
                by_reads(&file, len);
                reads.push(started.elapsed());
            } else {
                by_maps(&file, len);
                maps.push(started.elapsed());
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("{mib} MiB, {rounds} interleaved rounds, 8 MiB windows + sha256, CPU: {cpu}");
    for (name, v) in [("pread", reads), ("mmap", maps)] {
        let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        println!(
            "{name:>6}: median {:.1} ms (min {:.1}, max {:.1})",
            ms(median(v)),
            ms(min),
            ms(max)
        );
    }
}
