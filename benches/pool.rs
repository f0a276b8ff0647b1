//! How many connections should carry commands (`LayerCacheBuilder::l2_pool_size`)?
//!
//! ```text
//! cargo bench -p layercache-benches --bench pool
//! ```
//!
//! Against a redis-server from the test kit, with pools of 1, 2 and 4 connections (alternating,
//! two rounds each, medians reported):
//!
//! - **Redis reads/s**: 32 tasks, each with keys of its own, reading through an L1 that keeps
//!   nothing (an L1 lifetime of 1 µs; counted by `Stats::l2_hits`), of
//!   values of 1 KiB and of 256 KiB (stored uncompressed: the bytes cross the socket);
//! - **a write's latency behind large reads**: one task `insert`s a small value (a write
//!   pipelined with its bus announcement) 200 times while 16 tasks read 1 MiB values; with one
//!   connection the write and its `PUBLISH` queue behind the replies in flight, with more they
//!   go on the bus's own connection. Heartbeats take the same path as that `PUBLISH`.

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]
#![expect(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "a bench binary: failures abort the run, and its arithmetic is on reports"
)]

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use layercache::{EntryOptions, LayerCache, Region};
use layercache_testkit::RedisServer;

/// Keys per region: each reading task has keys of its own (no two reads share a fetch).
const KEYS: usize = 256;
const READ_FOR: Duration = Duration::from_millis(1500);

async fn cache(url: &str, pool: usize) -> LayerCache {
    LayerCache::builder("pool")
        .redis_url(url)
        .l2_pool_size(pool)
        .default_entry_options(
            EntryOptions::new()
                .ttl(Duration::from_secs(3600))
                .l1_ttl(Duration::from_micros(1)),
        )
        .compression_threshold(usize::MAX)
        .l2_command_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap()
}

async fn region(cache: &LayerCache, name: &str) -> Region<str, String> {
    cache.region::<str, String>(name).build().await.unwrap()
}

/// Redis reads/s (`Stats::l2_hits`) of `tasks` tasks reading `name`'s keys for [`READ_FOR`].
async fn reads_per_sec(cache: &LayerCache, name: &str, tasks: usize) -> f64 {
    let r = region(cache, name).await;
    let done = Arc::new(AtomicU64::new(0));
    let hits = cache.stats().l2_hits;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (r, done) = (r.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while started.elapsed() < READ_FOR {
                let v = r.get(&format!("k{}", i % KEYS)).await.unwrap();
                assert!(v.is_some());
                done.fetch_add(1, Ordering::Relaxed);
                i += tasks;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let hits = cache.stats().l2_hits - hits;
    assert!(hits > 0 && hits <= done.load(Ordering::Relaxed));
    hits as f64 / started.elapsed().as_secs_f64()
}

/// p50 and p99 (µs) of a small `insert` while 16 tasks read 1 MiB values.
async fn write_behind_large_reads(cache: &LayerCache) -> (f64, f64) {
    let large = region(cache, "huge").await;
    let small = region(cache, "small-writes").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..16 {
        let (r, stop) = (large.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                r.get(&format!("k{}", i % 8)).await.unwrap();
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut took = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        small
            .insert(&format!("w{}", i % 16), "x".to_owned())
            .await
            .unwrap();
        took.push(t.elapsed().as_secs_f64() * 1e6);
    }
    stop.store(true, Ordering::Relaxed);
    for h in readers {
        h.await.unwrap();
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cache(&url, 1).await;
        for (name, bytes) in [("small", 1 << 10), ("large", 256 << 10), ("huge", 1 << 20)] {
            let r = region(&c, name).await;
            for i in 0..KEYS {
                r.insert(&format!("k{i}"), "v".repeat(bytes)).await.unwrap();
            }
        }
        c.shutdown().await;
    });
    let pools = [1, 2, 4];
    let mut small = vec![Vec::new(); pools.len()];
    let mut large = vec![Vec::new(); pools.len()];
    let mut p50 = vec![Vec::new(); pools.len()];
    let mut p99 = vec![Vec::new(); pools.len()];
    for round in 0..2 {
        for step in 0..pools.len() {
            let i = if round % 2 == 0 {
                step
            } else {
                pools.len() - 1 - step
            };
            rt.block_on(async {
                let c = cache(&url, pools[i]).await;
                small[i].push(reads_per_sec(&c, "small", 32).await);
                large[i].push(reads_per_sec(&c, "large", 32).await);
                let (a, b) = write_behind_large_reads(&c).await;
                p50[i].push(a);
                p99[i].push(b);
                c.shutdown().await;
            });
        }
    }
    println!("| l2_pool_size | Redis reads/s, 1 KiB | Redis reads/s, 256 KiB | insert behind 1 MiB reads: p50 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for (i, pool) in pools.iter().enumerate() {
        println!(
            "| {pool} | {:.0} | {:.0} | {:.0} | {:.0} |",
            median(&mut small[i]),
            median(&mut large[i]),
            median(&mut p50[i]),
            median(&mut p99[i])
        );
    }
}
