//! Where encoding large values off the async workers pays (`offload_threshold`).
//!
//! ```text
//! cargo bench -p layercache-benches --bench offload
//! ```
//!
//! One tokio worker thread runs two tasks: a *ticker* that only yields and measures how long
//! each of its turns took to come back (the stall every other task on that worker sees), and
//! a *cache* task that inserts values of one size and reads them back through a cold L1
//! (encode, compress, checksum on the write; checksum, decompress, decode on the read) against
//! a redis-server from the test kit. For each size, the cache task runs with everything on the
//! worker (`offload_threshold(usize::MAX)`) and with everything off it (`offload_threshold(0)`),
//! alternating, and reports the time per write + read and the ticker's p99 and longest turn.
//! Values are JSON-like rows (LZ4 shrinks them to about a third), as in `benches/codec.rs`.

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]
#![expect(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "a bench binary: failures abort the run, and its arithmetic is on reports"
)]

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use layercache::LayerCache;
use layercache_testkit::RedisServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
    email: String,
    active: bool,
    tags: Vec<String>,
}

fn rows(bytes: usize) -> Vec<Row> {
    (0..(bytes / 80).max(1) as u64)
        .map(|id| Row {
            id,
            name: format!("user number {id}"),
            email: format!("user{id}@example.com"),
            active: id % 3 != 0,
            tags: vec!["reader".to_owned(), format!("team-{}", id % 7)],
        })
        .collect()
}

/// One side's run: time per write + read, and the ticker's turns (µs).
struct Run {
    per_op: Duration,
    p99_us: f64,
    max_us: f64,
}

async fn run(url: &str, threshold: usize, value: &[Row], ops: usize) -> Run {
    let cache = LayerCache::builder("offload")
        .redis_url(url)
        .offload_threshold(threshold)
        .build()
        .await
        .unwrap();
    let region = cache.region::<str, Vec<Row>>("v").build().await.unwrap();
    // The region's first write tells it its values are large.
    region.insert("warm", value.to_vec()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut turns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                tokio::task::yield_now().await;
                turns.push(t.elapsed().as_micros() as u32);
            }
            turns
        })
    };
    let start = Instant::now();
    for i in 0..ops {
        let key = format!("k{}", i % 8);
        region.insert(&key, value.to_vec()).await.unwrap();
        cache.clear_l1();
        assert!(region.get(&key).await.unwrap().is_some());
    }
    let per_op = start.elapsed() / ops as u32;
    stop.store(true, Ordering::Relaxed);
    let mut turns = ticker.await.unwrap();
    turns.sort_unstable();
    let at = |p: f64| f64::from(turns[((turns.len() - 1) as f64 * p) as usize]);
    cache.shutdown().await;
    Run {
        per_op,
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("| value (encoded) | on the worker: µs per write + read | ticker p99 / longest turn µs | off the worker: µs per write + read | ticker p99 / longest turn µs |");
    println!("|---|---|---|---|---|");
    for kib in [4, 16, 64, 256, 1024] {
        let value = rows(kib << 10);
        let encoded = bincode::serde::encode_to_vec(&value, bincode::config::standard())
            .unwrap()
            .len();
        let ops = (4096 / kib).clamp(20, 400);
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..4 {
            for side in [round % 2, 1 - round % 2] {
                let threshold = if side == 0 { usize::MAX } else { 0 };
                let r = rt.block_on(run(&server.url(), threshold, &value, ops));
                if side == 0 {
                    on.push(r);
                } else {
                    off.push(r);
                }
            }
        }
        let med = |v: &mut Vec<Run>| {
            v.sort_by_key(|r| r.per_op);
            let m = &v[v.len() / 2];
            (m.per_op.as_secs_f64() * 1e6, m.p99_us, m.max_us)
        };
        let (a, b) = (med(&mut on), med(&mut off));
        println!(
            "| {} KiB | {:.0} | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} |",
            encoded >> 10,
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2
        );
    }
}
