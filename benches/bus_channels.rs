//! The bus on a Redis Cluster: one sharded channel per cache (what layercache does) against
//! several, spread by slot over the primaries — delivery latency, and the load on the shards
//! that own the channels.
//!
//! Run: `cargo bench --bench bus_channels` (starts a local six-node Redis Cluster through the
//! testkit). Raw fred clients, no cache: the question is what the channel layout costs Redis
//! and the subscriber, whatever sends on it. For each layout, twice, alternating:
//!
//! 1. **Delivery**: 2,000 messages sent one at a time (`SPUBLISH`, round-robin over the
//!    channels), each waited for at a subscriber holding every channel: p50/p99 from the send
//!    to the receipt.
//! 2. **Load**: 40,000 messages sent as fast as one client can (64 in flight) to two
//!    subscribers: messages/s, and the CPU each primary spent (`INFO cpu`, user + system)
//!    — the owning shard's share is what one channel concentrates.
#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fred::prelude::{Builder, Client, ClientLike, Config, EventInterface, PubsubInterface};
use layercache_testkit::RedisCluster;

const DELIVERIES: usize = 2000;
const BURST: u64 = 40_000;
const IN_FLIGHT: usize = 64;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn client(url: &str) -> Client {
    let c = Builder::from_config(Config::from_url(url).expect("url"))
        .build()
        .expect("client");
    c.init().await.expect("connect");
    c
}

/// Channel names whose slots are owned by `count` different primaries (one per primary).
fn channels(cluster: &RedisCluster, count: usize) -> Vec<String> {
    let owners = slot_owners(cluster);
    let mut picked: Vec<(usize, String)> = Vec::new();
    for n in 0.. {
        let name = format!("bench:m2:bus:{n}");
        let slot = cluster.keyslot(&name).expect("keyslot");
        let owner = owners
            .iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .map(|(_, _, node)| *node)
            .expect("an owner");
        if !picked.iter().any(|(p, _)| *p == owner) {
            picked.push((owner, name));
        }
        if picked.len() == count {
            break;
        }
    }
    picked.into_iter().map(|(_, name)| name).collect()
}

/// (first slot, last slot, node index) for every range a primary owns.
fn slot_owners(cluster: &RedisCluster) -> Vec<(u16, u16, usize)> {
    let nodes = cluster.command(0, &["CLUSTER", "NODES"]).expect("nodes");
    let ports = cluster.ports();
    let mut owners = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 9 || !fields[2].contains("master") {
            continue;
        }
        let port: u16 = fields[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("port");
        let index = ports.iter().position(|p| *p == port).expect("a node");
        for range in &fields[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                owners.push((a, b, index));
            }
        }
    }
    owners
}

/// CPU seconds (user + system) each primary has used, by node index.
fn cpu(cluster: &RedisCluster) -> Vec<(usize, f64)> {
    cluster
        .primaries()
        .into_iter()
        .map(|i| {
            let info = cluster.command(i, &["INFO", "cpu"]).expect("info");
            let used: f64 = info
                .lines()
                .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
                .sum();
            (i, used)
        })
        .collect()
}

/// A subscriber to every channel that counts what it receives and stamps the last receipt.
async fn subscriber(url: &str, channels: &[String]) -> (Client, Arc<AtomicU64>) {
    let c = client(url).await;
    let received = Arc::new(AtomicU64::new(0));
    let mut rx = c.message_rx();
    let r = received.clone();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            // A burst can outrun the client's message buffer: what it skipped was delivered by
            // Redis all the same (this measures Redis and the socket, not the buffer).
            match rx.recv().await {
                Ok(_) => r.fetch_add(1, Ordering::SeqCst),
                Err(RecvError::Lagged(n)) => r.fetch_add(n, Ordering::SeqCst),
                Err(RecvError::Closed) => break,
            };
        }
    });
    for ch in channels {
        c.ssubscribe(ch.as_str()).await.expect("ssubscribe");
    }
    (c, received)
}

async fn measure(cluster: &RedisCluster, count: usize) {
    let url = cluster.url();
    let chans = channels(cluster, count);
    let publisher = client(&url).await;
    let (sub_a, got_a) = subscriber(&url, &chans).await;
    let (sub_b, got_b) = subscriber(&url, &chans).await;

    // 1. Delivery, one message at a time.
    let mut latencies = Vec::with_capacity(DELIVERIES);
    for i in 0..DELIVERIES {
        let before = got_a.load(Ordering::SeqCst);
        let start = Instant::now();
        let _: i64 = publisher
            .spublish(chans[i % count].as_str(), "m")
            .await
            .expect("spublish");
        let deadline = start + Duration::from_secs(10);
        while got_a.load(Ordering::SeqCst) <= before {
            assert!(Instant::now() < deadline, "a message never arrived");
            tokio::task::yield_now().await;
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();

    // 2. Load: a burst, and what each primary spent on it.
    let (base_a, base_b) = (got_a.load(Ordering::SeqCst), got_b.load(Ordering::SeqCst));
    let cpu_before = cpu(cluster);
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (p, next, chans) = (publisher.clone(), next.clone(), chans.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= BURST {
                    break;
                }
                let channel = chans[i as usize % chans.len()].as_str();
                let _: i64 = p.spublish(channel, "m").await.expect("spublish");
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while got_a.load(Ordering::SeqCst) < base_a + BURST
        || got_b.load(Ordering::SeqCst) < base_b + BURST
    {
        assert!(Instant::now() < deadline, "the burst never arrived");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    let cpu_after = cpu(cluster);
    let spent: Vec<String> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|((i, a), (_, b))| format!("node {i} {:.0} ms", (b - a) * 1000.0))
        .collect();
    println!(
        "{count} channel(s): delivery p50 {:?} p99 {:?} | burst of {BURST} to 2 subscribers: \
         {:.0} msg/s; primaries' CPU: {}",
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        BURST as f64 / took.as_secs_f64(),
        spent.join(", ")
    );
    for c in [publisher, sub_a, sub_b] {
        let _ = c.quit().await;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for _ in 0..2 {
            measure(&cluster, 1).await;
            measure(&cluster, 3).await;
        }
    });
}
