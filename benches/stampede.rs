//! Stampede: many concurrent callers on a few hot keys that keep expiring.
//!
//! Run: `cargo bench --bench stampede` (a redis-server is started by the testkit).
//!
//! 200 caller tasks read 4 hot keys in a loop for 3 seconds; values live 250 ms; the "database"
//! takes 10 ms per load. For each variant we count loader calls and the callers' latency
//! percentiles:
//!
//! - `naive cache-aside` (baseline): moka `get`, on a miss load and `insert`: every caller that
//!   misses loads.
//! - `layercache`: `get_or_load` (single flight per key per instance, Redis behind).
//! - `layercache + soft_ttl`: early refresh at 150 ms: loads move off the callers' path.
//! - two instances, `layercache` without and with `distributed_lock`.
#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use layercache::{EntryOptions, LayerCache, Region};
use layercache_testkit::RedisServer;

const CALLERS: usize = 200;
const KEYS: u64 = 4;
const RUN: Duration = Duration::from_secs(3);
const TTL: Duration = Duration::from_millis(250);
const DB_LATENCY: Duration = Duration::from_millis(10);

struct Report {
    loads: u64,
    /// Loads a caller waited for (the rest ran in the background).
    caller_loads: u64,
    latencies: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn print(name: &str, mut r: Report) {
    r.latencies.sort();
    println!(
        "{name:<36} loads {:>4} (on callers' path {:>4})  reads {:>8}  p50 {:>9?}  p99 {:>9?}  max {:>9?}",
        r.loads,
        r.caller_loads,
        r.latencies.len(),
        pct(&r.latencies, 0.5),
        pct(&r.latencies, 0.99),
        r.latencies[r.latencies.len() - 1]
    );
}

async fn db(loads: Arc<AtomicU64>, key: u64) -> Result<u64, std::io::Error> {
    loads.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(DB_LATENCY).await;
    Ok(key)
}

async fn naive() -> Report {
    let cache: moka::future::Cache<u64, Arc<u64>> =
        moka::future::Cache::builder().time_to_live(TTL).build();
    let loads = Arc::new(AtomicU64::new(0));
    let read = {
        let loads = loads.clone();
        move |_: usize, key: u64| {
            let (cache, loads) = (cache.clone(), loads.clone());
            async move {
                if cache.get(&key).await.is_none() {
                    let v = db(loads, key).await.expect("db");
                    cache.insert(key, Arc::new(v)).await;
                }
            }
        }
    };
    let latencies = callers(read).await;
    let loads = loads.load(Ordering::Relaxed);
    Report {
        loads,
        caller_loads: loads,
        latencies,
    }
}

/// Runs `CALLERS` tasks for `RUN`; caller `c` reads the hot keys in turn with `read(c, key)`,
/// yielding after each read as a request handler awaiting I/O would (200 tasks that never
/// yield starve the runtime). Returns every read's latency.
async fn callers<F, Fut>(read: F) -> Vec<Duration>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let read = read.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let start = Instant::now();
            let mut i = c as u64;
            while start.elapsed() < RUN {
                let key = i % KEYS;
                i += 1;
                let t = Instant::now();
                read(c, key).await;
                lat.push(t.elapsed());
                tokio::task::yield_now().await;
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    latencies
}

async fn layered(
    (caches, regions): (Vec<LayerCache>, Vec<Region<u64, u64>>),
    opts: EntryOptions,
) -> Report {
    let loads = Arc::new(AtomicU64::new(0));
    let read = {
        let loads = loads.clone();
        move |c: usize, key: u64| {
            let region = regions[c % regions.len()].clone();
            let loads = loads.clone();
            async move {
                region
                    .entry(&key)
                    .options(&opts)
                    .or_load(move |_| db(loads, key))
                    .await
                    .expect("get_or_load");
            }
        }
    };
    let latencies = callers(read).await;
    Report {
        loads: loads.load(Ordering::Relaxed),
        caller_loads: caches.iter().map(|c| c.stats().loads).sum(),
        latencies,
    }
}

async fn instances(
    server: &RedisServer,
    name: &str,
    n: usize,
) -> (Vec<LayerCache>, Vec<Region<u64, u64>>) {
    let mut caches = Vec::new();
    let mut regions = Vec::new();
    for _ in 0..n {
        let c = LayerCache::builder(name)
            .redis_url(server.url())
            .lock_ttl(Duration::from_secs(1))
            .build()
            .await
            .expect("cache");
        regions.push(c.region::<u64, u64>("hot").build().await.expect("region"));
        caches.push(c);
    }
    (caches, regions)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "{CALLERS} callers, {KEYS} hot keys, TTL {TTL:?}, loader {DB_LATENCY:?}, {RUN:?} per variant"
        );
        print("naive cache-aside (moka, baseline)", naive().await);
        let plain = EntryOptions::new().ttl(TTL);
        print(
            "layercache get_or_load",
            layered(instances(&server, "s1", 1).await, plain).await,
        );
        let soft = plain.soft_ttl(Duration::from_millis(150));
        print(
            "layercache + soft_ttl 150ms",
            layered(instances(&server, "s2", 1).await, soft).await,
        );
        print(
            "2 instances, no lock",
            layered(instances(&server, "s3", 2).await, plain).await,
        );
        print(
            "2 instances, distributed_lock",
            layered(instances(&server, "s4", 2).await, plain.distributed_lock(true)).await,
        );
        print(
            "2 instances, lock + soft_ttl 150ms",
            layered(instances(&server, "s5", 2).await, soft.distributed_lock(true)).await,
        );
    });
}
