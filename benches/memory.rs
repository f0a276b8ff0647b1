//! Memory of an L1 of N entries against raw moka holding the same N values: the issue's memory
//! target (peak RSS ≤ 1.3× raw moka) and where the rest goes.
//!
//! ```text
//! cargo bench -p layercache-benches --bench memory                     # 10,000 entries of 1 KiB
//! cargo bench -p layercache-benches --bench memory -- --entries 100000 --value-bytes 256
//! ```
//!
//! Each side runs in a child process of its own, which fills its cache with `--entries` values
//! (keys `k{i}`, bodies of `--value-bytes` random bytes, each value an `Arc` of its own) and
//! lets moka's housekeeping settle, then reports:
//! - **heap**: bytes live on the heap (a counting global allocator), minus what was live
//!   before the cache was built: what the cache itself holds, exactly;
//! - **peak heap**: the most bytes live at once (same allocator), so a peak RSS above the heap
//!   at the end is told apart from a transient peak;
//! - **peak RSS** (`VmHWM`) and **RSS** at the end (`VmRSS`): what the operating system gave
//!   the process, allocator overhead and all; and the end's RSS split into anonymous memory
//!   (heap, stacks) and file-backed pages (mostly the binary's code: the more of it runs, the
//!   more is resident — a Redis client runs more of it than an L1 alone).
//!
//! Sides: `moka` (a `moka::future::Cache<String, Arc<V>>` with the capacity, default
//! settings), `layercache-l1` (a `LayerCache` without Redis: the L1 alone), `layercache`
//! (with a redis-server from the test kit: values inserted through both tiers, so the process
//! also holds a Redis client and the bus).

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]
#![expect(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    reason = "a bench binary: failures abort the run, and its arithmetic is on reports"
)]

use std::{alloc::System, process::Command, sync::Arc, time::Duration};

use cap::Cap;
use layercache::LayerCache;
use layercache_testkit::RedisServer;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// The cached value (as in `loadgen`): a version and a body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Val {
    version: u64,
    body: Vec<u8>,
}

const SIDES: [&str; 3] = ["moka", "layercache-l1", "layercache"];

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

async fn child(side: &str, entries: usize, value_bytes: usize, url: Option<String>) {
    let mut rng = StdRng::seed_from_u64(7);
    let value = |rng: &mut StdRng, i: usize| Val {
        version: i as u64,
        body: (0..value_bytes).map(|_| rng.gen()).collect(),
    };
    let keys: Vec<String> = (0..entries).map(|i| format!("k{i}")).collect();
    let before = ALLOC.allocated();
    let mut keep_alive = None;
    match side {
        "moka" => {
            let cache: moka::future::Cache<String, Arc<Val>> =
                moka::future::Cache::new(entries as u64);
            for (i, k) in keys.iter().enumerate() {
                cache.insert(k.clone(), Arc::new(value(&mut rng, i))).await;
            }
            cache.run_pending_tasks().await;
            assert_eq!(cache.entry_count(), entries as u64);
            report(side, before);
            drop(cache);
        }
        _ => {
            let mut b = LayerCache::builder("mem").max_capacity(entries as u64);
            if let Some(url) = url {
                b = b.redis_url(url);
            }
            let cache = b.build().await.unwrap();
            let region = cache.region::<str, Val>("v").build().await.unwrap();
            for (i, k) in keys.iter().enumerate() {
                region.insert(k, value(&mut rng, i)).await.unwrap();
            }
            cache.run_pending_tasks().await;
            // Let background work (the bus, heartbeats) settle as it would in a service.
            tokio::time::sleep(Duration::from_millis(200)).await;
            cache.run_pending_tasks().await;
            assert_eq!(cache.l1_entry_count(), entries as u64);
            report(side, before);
            keep_alive = Some(cache);
        }
    }
    if let Some(cache) = keep_alive {
        cache.shutdown().await;
    }
}

fn report(side: &str, before: usize) {
    let heap = ALLOC.allocated().saturating_sub(before);
    println!(
        "RESULT {side} {heap} {} {} {} {} {}",
        status_kib("VmHWM:"),
        status_kib("VmRSS:"),
        status_kib("RssAnon:"),
        status_kib("RssFile:"),
        ALLOC.max_allocated().saturating_sub(before),
    );
}

fn main() {
    let entries = arg("--entries", 10_000);
    let value_bytes = arg("--value-bytes", 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let argv: Vec<String> = std::env::args().collect();
    if let Some(i) = argv.iter().position(|a| a == "--child") {
        let side = argv[i + 1].clone();
        let url = argv
            .iter()
            .position(|a| a == "--url")
            .map(|i| argv[i + 1].clone());
        rt.block_on(child(&side, entries, value_bytes, url));
        return;
    }
    if argv.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().unwrap();
    println!("memory: {entries} entries of {value_bytes} B (each value an Arc of its own)");
    println!();
    println!("| side | heap MiB | peak heap MiB | heap bytes / entry | × moka | peak RSS MiB | × moka | RSS at the end MiB | of it anonymous | of it file-backed (code) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut base: Option<(f64, f64)> = None;
    for side in SIDES {
        server.command(&["FLUSHALL"]).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--child",
            side,
            "--entries",
            &entries.to_string(),
            "--value-bytes",
            &value_bytes.to_string(),
        ]);
        if side == "layercache" {
            cmd.args(["--url", &server.url()]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            panic!(
                "{side} failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        let (heap, hwm, rss) = (f[0], f[1] * 1024.0, f[2] * 1024.0);
        let (anon, file, peak_heap) = (f[3] * 1024.0, f[4] * 1024.0, f[5]);
        let (bh, br) = *base.get_or_insert((heap, hwm));
        let mib = |b: f64| b / (1024.0 * 1024.0);
        println!(
            "| {side} | {:.1} | {:.1} | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} |",
            mib(heap),
            mib(peak_heap),
            heap / entries as f64,
            heap / bh,
            mib(hwm),
            hwm / br,
            mib(rss),
            mib(anon),
            mib(file)
        );
    }
    drop(server);
}
