//! Failovers and topology changes under load, on a real Redis Cluster (a primary killed, its
//! replica promoted; slots moved between primaries) and on Sentinel (the primary killed, the
//! sentinels promote the replica). Each test runs its own servers, one test at a time (they
//! kill nodes).

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use layercache::{FlushReason, LayerCache, Region};
use layercache_testkit::{RedisCluster, RedisSentinel};
use support::{caught_up, wait_until};

/// One test at a time: each runs six redis-server processes and kills some.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Hot keys of the failover test; the resharding test uses more, so that many move.
const KEYS: u64 = 64;

/// An instance whose commands time out after 300 ms (a dead primary is noticed quickly).
async fn instance(url: &str, name: &str) -> LayerCache {
    instance_with_timeout(url, name, Duration::from_millis(300)).await
}

async fn instance_with_timeout(url: &str, name: &str, command_timeout: Duration) -> LayerCache {
    LayerCache::builder(name)
        .redis_url(url)
        .l2_command_timeout(command_timeout)
        .l2_connect_timeout(Duration::from_secs(5))
        .l2_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .l2_breaker_cooldown(Duration::from_millis(300))
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap()
}

/// The primary (node index) that owns `key`'s slot: the one that answers a `GET` instead of
/// `MOVED`.
fn owner(cluster: &RedisCluster, key: &str) -> usize {
    cluster
        .primaries()
        .into_iter()
        .find(|&i| cluster.command(i, &["GET", key]).is_ok())
        .expect("a primary owns every slot")
}

/// Load on two instances: writers insert new versions of a source of truth, readers read
/// through the cache; failed calls are recorded with when they happened.
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    ops: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(regions: &[Region<u64, u64>], truth: &Arc<Vec<AtomicU64>>) -> Self {
        let keys = truth.len() as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let ops = Arc::new(AtomicU64::new(0));
        let locks: Arc<Vec<tokio::sync::Mutex<()>>> =
            Arc::new((0..keys).map(|_| tokio::sync::Mutex::new(())).collect());
        let mut tasks = Vec::new();
        for (i, r) in regions.iter().enumerate() {
            for role in 0..2u64 {
                let (r, truth, stop, errors, ops, locks) = (
                    r.clone(),
                    truth.clone(),
                    stop.clone(),
                    errors.clone(),
                    ops.clone(),
                    locks.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut n = i as u64 * 7 + role;
                    while !stop.load(Ordering::Relaxed) {
                        n = n
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let key = (n >> 33) % keys;
                        let result = if role == 0 && (n >> 20).is_multiple_of(4) {
                            let _row = locks[key as usize].lock().await;
                            let v = truth[key as usize].fetch_add(1, Ordering::SeqCst) + 1;
                            r.insert(&key, v).await.map(|_| ())
                        } else {
                            let truth = truth.clone();
                            r.get_or_load(&key, move |k| async move {
                                Ok::<_, std::io::Error>(truth[k as usize].load(Ordering::SeqCst))
                            })
                            .await
                            .map(|_| ())
                        };
                        ops.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = result {
                            errors.lock().unwrap().push((Instant::now(), e.to_string()));
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }));
            }
        }
        Self {
            stop,
            errors,
            ops,
            tasks,
        }
    }

    /// Waits (a deadline, not a sleep) until the load has done `n` more operations.
    async fn runs(&self, n: u64) {
        let target = self.ops.load(Ordering::Relaxed) + n;
        let ops = self.ops.clone();
        wait_until("the load to run", Duration::from_secs(10), || {
            let ops = ops.clone();
            async move { ops.load(Ordering::Relaxed) >= target }
        })
        .await;
    }

    /// Operations done so far.
    fn done(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    async fn stop(self) -> (u64, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ops.load(Ordering::Relaxed), errors)
    }
}

/// Coherence after the fault: every key written on A reads back on B, as the source has it,
/// once B applied A's messages.
async fn coherent_after(
    a: &LayerCache,
    b: &LayerCache,
    ra: &Region<u64, u64>,
    rb: &Region<u64, u64>,
    truth: &Arc<Vec<AtomicU64>>,
) {
    for key in 0..truth.len() as u64 {
        let v = truth[key as usize].fetch_add(1, Ordering::SeqCst) + 1;
        ra.insert(&key, v).await.unwrap();
    }
    caught_up(b, a).await;
    for key in 0..truth.len() as u64 {
        let got = rb
            .get_or_load(&key, |_| async { Ok::<_, std::io::Error>(u64::MAX) })
            .await
            .unwrap();
        assert_eq!(
            *got,
            truth[key as usize].load(Ordering::SeqCst),
            "key {key}"
        );
    }
}

/// Redis errors an instance has counted (failed calls and calls skipped while disconnected).
fn redis_errors(c: &LayerCache) -> u64 {
    let s = c.stats();
    s.l2_errors + s.l2_disconnected_skips
}

/// Waits until neither instance has counted a Redis error for `quiet` (the clients have
/// followed the new primary), failing the test after 15 s.
async fn errors_settle(instances: [&LayerCache; 2], quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let count = || (redis_errors(instances[0]), redis_errors(instances[1]));
    let (mut last, mut since) = (count(), Instant::now());
    while since.elapsed() < quiet {
        assert!(
            Instant::now() < deadline,
            "redis errors kept growing: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// What every failover test asserts once the new primary serves: once the errors settled (the
/// clients following it), no more Redis errors in two seconds of load; inside the window errors were
/// counted and absorbed (callers saw none, the default fallback policy); L1 was flushed (the
/// instances could not hear the bus); then both buses are healthy and every journaled write is
/// repaired.
async fn after_failover(load: Load, instances: [&LayerCache; 2]) {
    let [a, b] = instances;
    errors_settle(instances, Duration::from_millis(500)).await;
    let settled = (redis_errors(a), redis_errors(b));
    // Not a wait for something: two seconds of load in which nothing may fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ops, caller_errors) = load.stop().await;
    assert!(ops > 1000, "{ops} operations");
    assert_eq!(
        (redis_errors(a), redis_errors(b)),
        settled,
        "redis errors after the failover"
    );
    assert!(caller_errors.is_empty(), "{caller_errors:?}");
    assert!(
        settled.0 + settled.1 > 0,
        "the failover cost no redis call at all?"
    );
    for c in [a, b] {
        let flushes: u64 = FlushReason::ALL.iter().map(|&r| c.flushes(r)).sum();
        assert!(flushes > 0, "{:?}", c.bus_status());
    }
    wait_until(
        "both buses healthy, every repair done",
        Duration::from_secs(10),
        || {
            let (a, b) = (a.clone(), b.clone());
            async move {
                a.bus_status().unwrap().healthy
                    && b.bus_status().unwrap().healthy
                    && a.pending_repairs() == 0
                    && b.pending_repairs() == 0
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_fails_over_and_coherence_holds_after() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let a = instance(&cluster.url(), "failover").await;
    let b = instance(&cluster.url(), "failover").await;
    let ra = a.region::<u64, u64>("items").build().await.unwrap();
    let rb = b.region::<u64, u64>("items").build().await.unwrap();
    let truth: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let load = Load::start(&[ra.clone(), rb.clone()], &truth);
    load.runs(500).await;

    // Kill the primary that every bus message goes through.
    let victim = owner(&cluster, "failover:m2:bus");
    cluster.kill(victim);
    let c = std::thread::spawn(move || {
        cluster.wait_ok(Duration::from_secs(30)).unwrap();
        cluster
    });
    let cluster = tokio::task::spawn_blocking(move || c.join().unwrap())
        .await
        .unwrap();
    // The replica took over (in about two seconds here, `cluster-node-timeout 1000`; how long
    // is Redis's business, bounded only by `wait_ok`).
    // Once the clients have followed (a reconnect back-off, a slot map refresh), the errors
    // stop.
    after_failover(load, [&a, &b]).await;
    coherent_after(&a, &b, &ra, &rb, &truth).await;
    a.shutdown().await;
    b.shutdown().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_loses_no_call_and_coherence_holds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    // No node dies here, so nothing is gained by timing out quickly; a short timeout only
    // measured this machine (six servers, the resharding tool and the load on two cores: once
    // eight commands took over 300 ms mid-migration, which opened a breaker whose rejections
    // count as errors). What this test bounds is the errors the migration itself causes.
    let slow_ok = Duration::from_secs(3);
    let a = instance_with_timeout(&cluster.url(), "reshard", slow_ok).await;
    let b = instance_with_timeout(&cluster.url(), "reshard", slow_ok).await;
    let ra = a.region::<u64, u64>("items").build().await.unwrap();
    let rb = b.region::<u64, u64>("items").build().await.unwrap();
    // A thousand keys, all in Redis before the move, so that many are mid-migration while
    // the load reads and writes them.
    let truth: Arc<Vec<AtomicU64>> = Arc::new((0..1024).map(|_| AtomicU64::new(0)).collect());
    let keys: Vec<u64> = (0..1024).collect();
    for r in ra.insert_many(keys.iter().map(|k| (k, 0))).await {
        r.unwrap();
    }
    let load = Load::start(&[ra.clone(), rb.clone()], &truth);
    load.runs(500).await;
    // Move slots away from the primary that owns the bus channel (sharded pub/sub: the
    // subscribers are on it), so the channel's slot moves too.
    let from = owner(&cluster, "reshard:m2:bus");
    let to = cluster
        .primaries()
        .into_iter()
        .find(|&i| i != from)
        .unwrap();
    let count = |c: &RedisCluster, i: usize| {
        c.keys_per_primary()
            .unwrap()
            .into_iter()
            .find(|(n, _)| *n == i)
            .map_or(0, |(_, k)| k)
    };
    let before = (count(&cluster, from), count(&cluster, to));
    let ops_before = load.done();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.reshard(from, to, 5461).unwrap();
        cluster
    })
    .await
    .unwrap();
    let after = (count(&cluster, from), count(&cluster, to));
    // Errors inside the migration are allowed, counted and journaled (a `PUBLISH` of the bus
    // while the channel's own slot moves may fail once); after it, none.
    let during = (redis_errors(&a), redis_errors(&b));
    let ops_during = load.done() - ops_before;
    // Not a wait for something: the load goes on over the new slot map, and must not fail.
    load.runs(1000).await;
    let (ops, caller_errors) = load.stop().await;
    eprintln!(
        "keys on the two primaries before {before:?}, after {after:?}; {ops} operations; \
         redis errors during the migration {during:?} in {ops_during} operations"
    );
    // Keys moved (data, generation copies, marks: whatever lived in those slots).
    assert!(after.0 + 100 < before.0, "{before:?} -> {after:?}");
    assert!(after.1 > before.1 + 100, "{before:?} -> {after:?}");
    assert!(ops > 1000, "{ops} operations");
    // The test kit keeps an emptied primary a primary: the slot move is the only topology
    // change here (Redis 7's default would demote it a little after the move, and its
    // connection resets would land "after").
    assert!(
        cluster.primaries().contains(&from),
        "{:?}",
        cluster.primaries()
    );
    // `MOVED` and `ASK` were followed, and scripts on keys mid-migration (`TRYAGAIN`) retried:
    // callers saw no error, the store at most a few, and none once the slots had moved.
    assert!(caller_errors.is_empty(), "{caller_errors:?}");
    // (fred's default budgets, three writes and five redirections per command, gave 0-5
    // errors per run here, "too many failed write attempts" and "too many redirections" while
    // a slot's owner changed under stale slot maps; the store raises them on a cluster, and
    // ten runs saw none.)
    assert!(during.0 + during.1 <= 4, "{}\n{}", a.stats(), b.stats());
    assert_eq!((redis_errors(&a), redis_errors(&b)), during);
    wait_until("every repair done", Duration::from_secs(10), || {
        let (a, b) = (a.clone(), b.clone());
        async move { a.pending_repairs() == 0 && b.pending_repairs() == 0 }
    })
    .await;
    coherent_after(&a, &b, &ra, &rb, &truth).await;
    a.shutdown().await;
    b.shutdown().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_is_followed_and_coherence_holds_after() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sentinel = RedisSentinel::start().unwrap_or_else(|e| panic!("{e}"));
    let a = instance(&sentinel.url(), "sentinel").await;
    let b = instance(&sentinel.url(), "sentinel").await;
    let ra = a.region::<u64, u64>("items").build().await.unwrap();
    let rb = b.region::<u64, u64>("items").build().await.unwrap();
    let truth: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let load = Load::start(&[ra.clone(), rb.clone()], &truth);
    load.runs(500).await;
    let old = sentinel.primary_port().unwrap();
    assert_eq!(old, sentinel.server(0).port());
    let killed_at = Instant::now();
    let (sentinel, new) = support::fail_over(sentinel, old).await;
    let promoted_at = Instant::now();
    assert_eq!(new, sentinel.server(1).port());
    eprintln!("sentinel failover took {:?}", promoted_at - killed_at);
    // Once the clients have followed the sentinels to the new primary, the errors stop.
    after_failover(load, [&a, &b]).await;
    coherent_after(&a, &b, &ra, &rb, &truth).await;
    // The writes went to the new primary.
    let keys = sentinel.server(1).command(&["DBSIZE"]).unwrap();
    assert!(
        keys.parse::<u64>().unwrap() >= KEYS,
        "{keys} keys on the new primary"
    );
    a.shutdown().await;
    b.shutdown().await;
    drop(sentinel);
}
