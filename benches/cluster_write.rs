//! A lone `insert` on a Redis Cluster, with and without server-assisted tracking: wall time and
//! the process's CPU per write (all its threads: the runtime, fred, the bus listener).
//!
//! ```text
//! cargo bench -p layercache-benches --bench cluster_write
//! ```
//!
//! Without tracking a plain write on a cluster takes two round trips (the `SET` and the fence's
//! `GET` on the key's node, then the announcement's `SPUBLISH` on the channel's node once the
//! write answered); with tracking, one (Redis reports the write itself). A private cluster of
//! six servers is started; the two settings alternate, 3 × 2,000 writes each.

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::time::{Duration, Instant};

use layercache::LayerCache;
use layercache_testkit::RedisCluster;

/// This process's CPU time so far (user and system, all threads).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Clock ticks of 10 ms (`getconf CLK_TCK` is 100 on Linux).
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

const WRITES: u32 = 2_000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = if bench { 3 } else { 1 };
    let writes = if bench { WRITES } else { 50 };
    let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for tracking in [false, true, false, true] {
            let c = LayerCache::builder("cw")
                .redis_url(cluster.url())
                .server_assisted_tracking(tracking)
                .build()
                .await
                .expect("cache");
            let r = c.region::<u64, String>("r").build().await.expect("region");
            for i in 0..500u64 {
                r.insert(&i, format!("w{i}")).await.expect("insert");
            }
            let (mut wall, mut used) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let (started, before) = (Instant::now(), cpu());
                for i in 0..u64::from(writes) {
                    r.insert(&(i % 500), format!("v{round}:{i}"))
                        .await
                        .expect("insert");
                }
                wall.push(started.elapsed() / writes);
                used.push((cpu() - before) / writes);
            }
            println!("tracking {tracking}: a lone insert takes {wall:?}, CPU {used:?}");
            c.shutdown().await;
        }
    });
}
