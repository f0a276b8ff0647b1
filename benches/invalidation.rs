//! Invalidation bus: delivery latency (p50/p99) and the listener's sustained rate.
//!
//! Run: `cargo bench --bench invalidation` (a redis-server is started on a free port by the
//! testkit); `cargo bench --bench invalidation -- --cluster` also measures delivery on a local
//! six-node Redis Cluster with each bus (`ClusterBus::Plain`, `ClusterBus::Sharded`), twice,
//! alternating. Criterion reports means; delivery latency is about the tail, so this bench
//! measures each delivery itself and prints percentiles.
//!
//! 1. **Delivery latency**: instance A inserts a key that instance B holds in L1; we measure
//!    from A's `insert` call to B having applied the invalidation (B's `bus_status` shows A's
//!    published sequence number), and how much of that lies after `insert` returned.
//! 2. **Listener rate**: a server-side script publishes valid bus messages from a fake sender
//!    (1,000 key invalidations each, consecutive sequence numbers) as fast as Redis can; we
//!    measure how fast B applies them, and check that it never lagged.
#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::time::{Duration, Instant};

use fred::{
    prelude::{Builder, ClientLike, Config, LuaInterface},
    types::Value,
};
use layercache::{ClusterBus, FlushReason, LayerCache};
use layercache_testkit::{RedisCluster, RedisServer};

const DELIVERIES: usize = 2000;
const FLOOD_MESSAGES: u64 = 2000;
const KEYS_PER_MESSAGE: usize = 1000;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn wait_applied(a: &LayerCache, b: &LayerCache) {
    let id = a.instance_id().expect("bus");
    let target = a.bus_status().expect("bus").published_seq;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.bus_status().expect("bus").peer_seq(id) < Some(target) {
        assert!(Instant::now() < deadline, "invalidation never arrived");
        tokio::task::yield_now().await;
    }
}

async fn delivery_latency(label: &str, url: &str, bus: ClusterBus) {
    let build = || {
        LayerCache::builder("bench")
            .redis_url(url)
            .cluster_bus(bus)
            .build()
    };
    let a = build().await.expect("a");
    let b = build().await.expect("b");
    let ra = a.region::<str, u64>("r").build().await.expect("region");
    let rb = b.region::<str, u64>("r").build().await.expect("region");
    let mut total = Vec::with_capacity(DELIVERIES);
    let mut after_return = Vec::with_capacity(DELIVERIES);
    let mut insert = Vec::with_capacity(DELIVERIES);
    for i in 0..DELIVERIES as u64 {
        rb.get("k").await.expect("get"); // B holds the key in L1 (or learns it is absent)
        let start = Instant::now();
        ra.insert("k", i).await.expect("insert");
        let returned = start.elapsed();
        wait_applied(&a, &b).await;
        let applied = start.elapsed();
        total.push(applied);
        insert.push(returned);
        after_return.push(applied.saturating_sub(returned));
        assert_eq!(*rb.get("k").await.expect("get").expect("value"), i);
    }
    total.sort();
    after_return.sort();
    insert.sort();
    println!("delivery latency on {label}, {DELIVERIES} inserts on A with B holding the key:");
    println!(
        "  insert call -> B applied: p50 {:?}  p99 {:?}  max {:?}",
        pct(&total, 0.5),
        pct(&total, 0.99),
        total[total.len() - 1]
    );
    println!(
        "  insert returned -> B applied: p50 {:?}  p99 {:?}  max {:?}",
        pct(&after_return, 0.5),
        pct(&after_return, 0.99),
        after_return[after_return.len() - 1]
    );
    println!(
        "  insert itself (SET + PUBLISH, acknowledged): p50 {:?}  p99 {:?}",
        pct(&insert, 0.5),
        pct(&insert, 0.99)
    );
    let flushes = b.stats().l1_flushes;
    assert_eq!(flushes, 0, "no coherence loss expected");
    a.shutdown().await;
    b.shutdown().await;
}

/// A bus message (format version 1) from a fake sender, split around its sequence number.
fn message_parts() -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::new();
    head.extend_from_slice(b"LCBM");
    head.push(1);
    head.extend_from_slice(&[0xAB; 16]);
    let mut tail = Vec::new();
    tail.extend_from_slice(&(KEYS_PER_MESSAGE as u32).to_le_bytes());
    for k in 0..KEYS_PER_MESSAGE {
        let key = k.to_string();
        tail.push(1);
        tail.push(1);
        tail.push(b'r');
        tail.extend_from_slice(&(key.len() as u32).to_le_bytes());
        tail.extend_from_slice(key.as_bytes());
    }
    (head, tail)
}

async fn listener_rate(server: &RedisServer) {
    let b = LayerCache::builder("flood")
        .redis_url(server.url())
        .bus_buffer(65_536)
        .build()
        .await
        .expect("b");
    let rb = b.region::<str, u64>("r").build().await.expect("region");
    for k in 0..KEYS_PER_MESSAGE {
        rb.insert(&k.to_string(), 1).await.expect("insert");
    }
    let raw = Builder::from_config(Config::from_url(&server.url()).expect("url"))
        .build()
        .expect("client");
    raw.init().await.expect("connect");
    let (head, tail) = message_parts();
    let script = "for i = 1, tonumber(ARGV[3]) do \
        redis.call('PUBLISH', KEYS[1], ARGV[1] .. struct.pack('<I8', i) .. ARGV[2]) end return 1";
    let before = b.stats().bus_received;
    let start = Instant::now();
    let _: Value = raw
        .eval(
            script,
            "flood:m2:bus",
            vec![
                Value::Bytes(head.into()),
                Value::Bytes(tail.into()),
                Value::from(FLOOD_MESSAGES.to_string()),
            ],
        )
        .await
        .expect("flood");
    let published = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.stats().bus_received < before + FLOOD_MESSAGES {
        assert!(Instant::now() < deadline, "listener never caught up");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let applied = start.elapsed();
    let rate = FLOOD_MESSAGES as f64 / applied.as_secs_f64();
    println!(
        "listener rate: {FLOOD_MESSAGES} messages x {KEYS_PER_MESSAGE} key invalidations \
         (Redis published them in {published:?})"
    );
    println!(
        "  applied in {applied:?}: {rate:.0} messages/s, {:.0} invalidations/s",
        rate * KEYS_PER_MESSAGE as f64
    );
    println!(
        "  lag flushes: {}, gap flushes: {}",
        b.flushes(FlushReason::Lag),
        b.flushes(FlushReason::Gap)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        delivery_latency("one server", &server.url(), ClusterBus::Plain).await;
        listener_rate(&server).await;
    });
    // `--cluster`: the same deliveries on a local six-node Redis Cluster, with each bus.
    if std::env::args().any(|a| a == "--cluster") {
        drop(server);
        let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            for _ in 0..2 {
                delivery_latency(
                    "a cluster, plain pub/sub",
                    &cluster.url(),
                    ClusterBus::Plain,
                )
                .await;
                delivery_latency(
                    "a cluster, sharded pub/sub",
                    &cluster.url(),
                    ClusterBus::Sharded,
                )
                .await;
            }
        });
    }
}
