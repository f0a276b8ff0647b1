//! Server-assisted tracking (`server_assisted_tracking(true)`): Redis reports every write of a
//! data key to the other instances, against a real redis-server, including the faults that
//! turn tracking off (a killed writing connection, a killed subscriber, `FLUSHALL`).

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::time::Duration;

use fred::prelude::Client;
use layercache::{ErrorKind, FlushReason, LayerCache, Region};
use support::{
    builder, cmd, command_calls, data_keys, fast_bus, raw_client, redis, region, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);

async fn tracked(server: &layercache_testkit::RedisServer, name: &str) -> LayerCache {
    fast_bus(builder(server, name))
        .server_assisted_tracking(true)
        .build()
        .await
        .unwrap()
}

/// Two tracked instances of cache `name` and their regions.
async fn pair(
    server: &layercache_testkit::RedisServer,
    name: &str,
) -> (LayerCache, LayerCache, Region<str, u64>, Region<str, u64>) {
    let (a, b) = (tracked(server, name).await, tracked(server, name).await);
    let (ra, rb) = (region(&a).await, region(&b).await);
    (a, b, ra, rb)
}

/// Waits until `c` has flushed L1 for `reason` at least once.
async fn flushed(c: &LayerCache, reason: FlushReason) {
    wait_until(&format!("a flush for {reason}"), WAIT, || {
        let c = c.clone();
        async move { c.flushes(reason) >= 1 }
    })
    .await;
}

/// Checks that `rb`'s instance `b` hears of `ra`'s writes: `from` in B's L1, then `from + 1`
/// written by A and served by B.
async fn still_reported(ra: &Region<str, u64>, b: &LayerCache, rb: &Region<str, u64>, from: u64) {
    ra.insert("k", from).await.unwrap();
    in_l1(b, rb, "k", from).await;
    ra.insert("k", from + 1).await.unwrap();
    serves(rb, "k", Some(from + 1), "B to hear of A's write").await;
}

/// Waits until `r` serves `expected` for `key` (from whichever tier).
async fn serves(r: &Region<str, u64>, key: &'static str, expected: Option<u64>, what: &str) {
    wait_until(what, WAIT, || {
        let r = r.clone();
        // An error (Redis still reconnecting, under `Propagate`) is "not yet".
        async move { matches!(r.get(key).await, Ok(v) if v.as_deref().copied() == expected) }
    })
    .await;
}

/// Waits until `key` is in `c`'s L1 with `expected` (a read answered from L1): only an
/// invalidation can make that instance serve another value afterwards. (A read right after
/// another instance's write may fill L1 before that write's invalidation arrives, which then
/// drops the copy: so it is read until a copy stays.)
async fn in_l1(c: &LayerCache, r: &Region<str, u64>, key: &'static str, expected: u64) {
    wait_until(&format!("{key} = {expected} in L1"), WAIT, || {
        let (c, r) = (c.clone(), r.clone());
        async move {
            let first = r.get(key).await.ok().flatten().map(|v| *v);
            let hits = c.stats().l1_hits;
            let second = r.get(key).await.ok().flatten().map(|v| *v);
            first == Some(expected) && second == Some(expected) && c.stats().l1_hits == hits + 1
        }
    })
    .await;
}

/// Inserts `value` right after a fault that may reach A's connection before or after the
/// write; true when Redis did not confirm it (the write was journaled for repair).
async fn insert_noting(a: &LayerCache, ra: &Region<str, u64>, key: &str, value: u64) -> bool {
    let recorded = a.stats().l2_repairs_recorded;
    ra.insert(key, value).await.unwrap();
    a.stats().l2_repairs_recorded > recorded
}

/// For a write [`insert_noting`] found journaled: its repair is a tombstone (an invalidation,
/// never a replay), so once A has made it B misses the key, neither the old value nor the
/// new; then the value is written again, now that A reaches Redis.
async fn repaired_if_journaled(
    a: &LayerCache,
    ra: &Region<str, u64>,
    rb: &Region<str, u64>,
    key: &'static str,
    value: u64,
    journaled: bool,
) {
    if !journaled {
        return;
    }
    wait_until("A to repair the write Redis did not confirm", WAIT, || {
        let a = a.clone();
        async move { a.pending_repairs() == 0 }
    })
    .await;
    serves(rb, key, None, "B to miss the key whose write was repaired").await;
    ra.insert(key, value).await.unwrap();
}

/// The ids of the connections with tracking on (`CLIENT LIST` flag `t`).
async fn tracking_connections(raw: &Client) -> Vec<String> {
    let list = cmd(raw, "CLIENT", &["LIST"]).await.as_string().unwrap();
    list.lines()
        .filter(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("flags="))
                .is_some_and(|f| f.contains('t'))
        })
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_other_instances_without_a_publish() {
    let server = redis();
    let raw = raw_client(&server).await;
    let (a, b, ra, rb) = pair(&server, "tr").await;
    ra.insert("k", 1).await.unwrap();
    in_l1(&b, &rb, "k", 1).await;

    let publishes = command_calls(&raw, "publish").await;
    for v in 2..=201 {
        ra.insert("k", v).await.unwrap();
    }
    serves(&rb, "k", Some(201), "B to drop its copy of k").await;
    in_l1(&b, &rb, "k", 201).await;
    ra.invalidate("k").await.unwrap();
    serves(&rb, "k", None, "B to drop k after invalidate").await;

    // A batch: every key B holds is dropped.
    let keys: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let all = |v: u64| {
        let keys = keys.clone();
        move |got: Vec<layercache::Result<Option<std::sync::Arc<u64>>>>| {
            got.len() == keys.len() && got.iter().all(|g| matches!(g, Ok(Some(x)) if **x == v))
        }
    };
    let written = ra.insert_many(keys.iter().map(|k| (k.as_str(), 1))).await;
    assert!(written.iter().all(Result::is_ok));
    wait_until("B to read the batch", WAIT, || {
        let (rb, keys, all1) = (rb.clone(), keys.clone(), all(1));
        async move { all1(rb.get_many(keys.iter().map(String::as_str)).await) }
    })
    .await;
    for k in ["m0", "m25", "m49"] {
        in_l1(&b, &rb, k, 1).await;
    }
    let written = ra.insert_many(keys.iter().map(|k| (k.as_str(), 2))).await;
    assert!(written.iter().all(Result::is_ok));
    wait_until("B to drop every key of the batch", WAIT, || {
        let (rb, keys, all2) = (rb.clone(), keys.clone(), all(2));
        async move { all2(rb.get_many(keys.iter().map(String::as_str)).await) }
    })
    .await;

    // 251 writes announced by Redis itself: what was published is the two instances'
    // heartbeats (every 100 ms), not one message per write.
    let published = command_calls(&raw, "publish").await - publishes;
    assert!(published < 100, "{published} PUBLISH calls for 251 writes");
    for c in [&a, &b] {
        assert_eq!(c.bus_status().unwrap().tracking, Some(true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_is_not_told_of_its_own_writes() {
    let server = redis();
    let (a, _b, ra, rb) = pair(&server, "own").await;
    rb.insert("z", 1).await.unwrap();
    in_l1(&a, &ra, "z", 1).await;
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    for k in &keys {
        ra.insert(k, 7).await.unwrap();
    }
    // Redis reports in order: once A hears of B's later write, it has heard everything it
    // would ever hear of its own.
    rb.insert("z", 2).await.unwrap();
    serves(&ra, "z", Some(2), "A to hear of B's write").await;
    let before = a.stats();
    for k in &keys {
        assert_eq!(ra.get(k).await.unwrap().map(|v| *v), Some(7));
    }
    let after = a.stats();
    assert_eq!(
        after.l1_hits - before.l1_hits,
        100,
        "A dropped its own writes"
    );
    assert_eq!(after.l2_hits, before.l2_hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_another_program_are_reported() {
    let server = redis();
    let raw = raw_client(&server).await;
    let b = tracked(&server, "other").await;
    let rb = region(&b).await;
    rb.insert("k", 1).await.unwrap();
    rb.insert("j", 1).await.unwrap();
    in_l1(&b, &rb, "k", 1).await;
    in_l1(&b, &rb, "j", 1).await;
    let key = data_keys(&raw)
        .await
        .into_iter()
        .find(|k| k.ends_with(":k"))
        .unwrap();
    // A DEL by another client: B drops k and finds nothing in Redis.
    cmd(&raw, "DEL", &[&key]).await;
    serves(&rb, "k", None, "B to drop k deleted by another client").await;
    in_l1(&b, &rb, "j", 1).await;
    assert_eq!(b.flushes(FlushReason::TrackingLost), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_flushes_every_instance() {
    let server = redis();
    let raw = raw_client(&server).await;
    let (a, b, ra, rb) = pair(&server, "flush").await;
    ra.insert("k", 1).await.unwrap();
    in_l1(&a, &ra, "k", 1).await;
    in_l1(&b, &rb, "k", 1).await;
    cmd(&raw, "FLUSHALL", &[]).await;
    for (c, r) in [(&a, &ra), (&b, &rb)] {
        flushed(c, FlushReason::ServerFlush).await;
        assert_eq!(r.get("k").await.unwrap(), None);
    }
    // And tracking still works afterwards.
    still_reported(&ra, &b, &rb, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writing_connection_is_tracked_again_after_a_flush() {
    let server = redis();
    let raw = raw_client(&server).await;
    let (a, b, ra, rb) = pair(&server, "kill").await;
    let before = tracking_connections(&raw).await;
    assert_eq!(before.len(), 2, "one tracked connection per instance");
    ra.insert("k", 1).await.unwrap();
    in_l1(&b, &rb, "k", 1).await;

    // Kill both tracked connections: Redis forgets their tracking. A writes at once: B may
    // not be tracked when the write runs, and must not serve its old copy afterwards.
    for id in &before {
        cmd(&raw, "CLIENT", &["KILL", "ID", id]).await;
    }
    let journaled = insert_noting(&a, &ra, "k", 2).await;
    for c in [&a, &b] {
        flushed(c, FlushReason::TrackingLost).await;
    }
    wait_until(
        "tracking to be on again on two new connections",
        WAIT,
        || {
            let (raw, before) = (raw.clone(), before.clone());
            async move {
                let now = tracking_connections(&raw).await;
                now.len() == 2 && now.iter().all(|id| !before.contains(id))
            }
        },
    )
    .await;
    repaired_if_journaled(&a, &ra, &rb, "k", 2, journaled).await;
    serves(
        &rb,
        "k",
        Some(2),
        "B to drop the copy it held before the kill",
    )
    .await;
    for c in [&a, &b] {
        wait_until("the status to show tracking on again", WAIT, || {
            let c = c.clone();
            async move { c.bus_status().unwrap().tracking == Some(true) }
        })
        .await;
    }
    // And it is told of writes again.
    still_reported(&ra, &b, &rb, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_has_tracking_pointed_at_its_new_connection() {
    let server = redis();
    let raw = raw_client(&server).await;
    let (_a, b, ra, rb) = pair(&server, "sub").await;
    ra.insert("k", 1).await.unwrap();
    in_l1(&b, &rb, "k", 1).await;
    cmd(&raw, "CLIENT", &["KILL", "TYPE", "pubsub"]).await;
    // Written while B's subscriber is gone: B must not serve 1 afterwards.
    ra.insert("k", 2).await.unwrap();
    flushed(&b, FlushReason::Reconnect).await;
    serves(&rb, "k", Some(2), "B to read k again").await;
    still_reported(&ra, &b, &rb, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_is_refused_where_it_cannot_work() {
    let pooled = LayerCache::builder("c")
        .redis_url("redis://127.0.0.1:1")
        .l2_pool_size(2)
        .server_assisted_tracking(true)
        .build()
        .await
        .unwrap_err();
    assert_eq!(pooled.kind(), ErrorKind::Config);
    assert!(pooled.to_string().contains("l2_pool_size"), "{pooled}");
    // A cluster is tracked too (`on_a_cluster_every_primary_is_tracked_through_a_failover`),
    // with one connection per node as everywhere.
    let clustered = LayerCache::builder("c")
        .redis_url("redis-cluster://127.0.0.1:1")
        .l2_pool_size(2)
        .server_assisted_tracking(true)
        .build()
        .await
        .unwrap_err();
    assert_eq!(clustered.kind(), ErrorKind::Config);
    assert!(
        clustered.to_string().contains("l2_pool_size"),
        "{clustered}"
    );
    let memory = LayerCache::builder("c")
        .memory_server(&layercache::memory::MemoryServer::new())
        .server_assisted_tracking(true)
        .build()
        .await
        .unwrap_err();
    assert_eq!(memory.kind(), ErrorKind::Config);
}

/// A tracked instance and one without tracking on the same cache: the untracked one's writes
/// still reach the tracked one (on the bus), so a mixed deployment during a rollout keeps the
/// tracked side coherent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untracked_instance_still_reaches_a_tracked_one() {
    let server = redis();
    let a = fast_bus(builder(&server, "mixed")).build().await.unwrap();
    let b = tracked(&server, "mixed").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    ra.insert("k", 1).await.unwrap();
    in_l1(&b, &rb, "k", 1).await;
    ra.insert("k", 2).await.unwrap();
    serves(
        &rb,
        "k",
        Some(2),
        "B to hear of the untracked instance's write",
    )
    .await;
    assert_eq!(a.bus_status().unwrap().tracking, None);
    assert_eq!(b.bus_status().unwrap().tracking, Some(true));
}

/// A restart of the (empty) server: every connection is new, connection ids start again from
/// low numbers (an id tracking pointed at before may now be another client's), and Redis
/// forgot every registration. Both instances must end up tracked again, pointed at their own
/// subscriber, without serving what they held before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_tracked_again_by_every_instance() {
    let mut server = redis();
    let (a, b, ra, rb) = pair(&server, "rs").await;
    ra.insert("k", 1).await.unwrap();
    rb.insert("j", 1).await.unwrap();
    in_l1(&b, &rb, "k", 1).await;
    in_l1(&a, &ra, "j", 1).await;

    server.restart().unwrap();
    for c in [&a, &b] {
        flushed(c, FlushReason::Reconnect).await;
    }
    // What each held is gone with the restart: neither serves it.
    serves(&rb, "k", None, "B to drop k").await;
    serves(&ra, "j", None, "A to drop j").await;
    let raw = raw_client(&server).await;
    wait_until("both instances tracked again", WAIT, || {
        let raw = raw.clone();
        async move { tracking_connections(&raw).await.len() == 2 }
    })
    .await;
    // Each hears of the other's writes again, in both directions.
    ra.insert("k", 2).await.unwrap();
    rb.insert("j", 2).await.unwrap();
    in_l1(&b, &rb, "k", 2).await;
    in_l1(&a, &ra, "j", 2).await;
    ra.insert("k", 3).await.unwrap();
    rb.insert("j", 3).await.unwrap();
    serves(
        &rb,
        "k",
        Some(3),
        "B to hear of A's write after the restart",
    )
    .await;
    serves(
        &ra,
        "j",
        Some(3),
        "A to hear of B's write after the restart",
    )
    .await;
}

/// Three tracked instances, two writers (`insert` and `invalidate` from any instance, each key's
/// writes in order), four readers filling every L1 all the time. Once the writers are done,
/// every instance converges on the last write of every key: an invalidation lost or applied
/// before a racing fill would leave an older copy in some L1 for good (the L1 lifetime here is
/// the default minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_readers_converge_on_every_instance() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    };
    const KEYS: [&str; 4] = ["a", "b", "c", "d"];
    let server = redis();
    let mut caches = Vec::new();
    let mut regions = Vec::new();
    for _ in 0..3 {
        let c = tracked(&server, "conv").await;
        regions.push(region(&c).await);
        caches.push(c);
    }
    // The last write of each key: Some(v) for an insert, None for an invalidate.
    let last: Arc<Vec<Mutex<Option<u64>>>> =
        Arc::new(KEYS.iter().map(|_| Mutex::new(None)).collect());
    let locks: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new(KEYS.iter().map(|_| tokio::sync::Mutex::new(())).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4usize {
        let (regions, stop) = (regions.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = r;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let _ = regions[n % 3].get(KEYS[(n * 7 + r) % 4]).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (regions, last, locks) = (regions.clone(), last.clone(), locks.clone());
        writers.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9u64 + w;
            for i in 0..300u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = (x % 4) as usize;
                let inst = ((x >> 8) % 3) as usize;
                let _row = locks[k].lock().await;
                let v = w * 1_000_000 + i + 1;
                if (x >> 16).is_multiple_of(5) {
                    regions[inst].invalidate(KEYS[k]).await.unwrap();
                    *last[k].lock().unwrap() = None;
                } else {
                    regions[inst].insert(KEYS[k], v).await.unwrap();
                    *last[k].lock().unwrap() = Some(v);
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    for (i, r) in regions.iter().enumerate() {
        for (k, key) in KEYS.iter().enumerate() {
            let expected = *last[k].lock().unwrap();
            wait_until(
                &format!("instance {i} to serve the last write of {key}"),
                WAIT,
                || {
                    let r = r.clone();
                    async move { r.get(key).await.unwrap().map(|v| *v) == expected }
                },
            )
            .await;
        }
    }
    // And none of it was a flush: every copy was dropped by an invalidation.
    for c in &caches {
        assert_eq!(c.flushes(FlushReason::TrackingLost), 0);
        assert_eq!(c.stats().l1_flushes, 0);
    }
}

/// Sentinel: the primary killed, the replica promoted. Both instances follow it, are tracked
/// on the new primary (tracking is per connection: the replica never had it), and neither
/// serves what it held before the failover once another instance wrote the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_tracked_on_the_new_primary() {
    let sentinel = layercache_testkit::RedisSentinel::start().unwrap_or_else(|e| panic!("{e}"));
    let tracked_on = |url: String| async move {
        LayerCache::builder("sentinel")
            .redis_url(url)
            .l2_command_timeout(Duration::from_millis(300))
            .l2_connect_timeout(Duration::from_secs(5))
            .l2_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .l2_breaker_cooldown(Duration::from_millis(300))
            .bus_heartbeat_interval(Duration::from_millis(100))
            .bus_heartbeat_timeout(Duration::from_secs(1))
            .l1_write_cooldown(Duration::ZERO)
            // `Ok` means written (under the default `Fallback` a write Redis did not take
            // returns `Ok` too, and its repair writes a tombstone once Redis answers).
            .l2_error_policy(layercache::L2ErrorPolicy::Propagate)
            .server_assisted_tracking(true)
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (
        tracked_on(sentinel.url()).await,
        tracked_on(sentinel.url()).await,
    );
    let (ra, rb) = (region(&a).await, region(&b).await);
    ra.insert("k", 1).await.unwrap();
    in_l1(&b, &rb, "k", 1).await;

    let old = sentinel.primary_port().unwrap();
    let (sentinel, new) = support::fail_over(sentinel, old).await;
    assert_eq!(new, sentinel.server(1).port());
    // A writes once it has followed the sentinels (its first attempts may fail meanwhile).
    wait_until(
        "A to write on the new primary",
        Duration::from_secs(20),
        || {
            let ra = ra.clone();
            async move { ra.insert("k", 2).await.is_ok() }
        },
    )
    .await;
    serves(
        &rb,
        "k",
        Some(2),
        "B to drop the copy it held before the failover",
    )
    .await;
    let tracked = |server: &layercache_testkit::RedisServer| {
        let list = server.command(&["CLIENT", "LIST"]).unwrap();
        list.lines()
            .filter(|l| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix("flags="))
                    .is_some_and(|f| f.contains('t'))
            })
            .count()
    };
    wait_until("both instances tracked on the new primary", WAIT, || {
        let n = tracked(sentinel.server(1));
        async move { n == 2 }
    })
    .await;
    in_l1(&b, &rb, "k", 2).await;
    ra.insert("k", 3).await.unwrap();
    serves(
        &rb,
        "k",
        Some(3),
        "B to hear of A's write on the new primary",
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    drop(sentinel);
}

/// A degraded start (Redis down at `build()`): tracking cannot be turned on then; it is once
/// both connections reach Redis, before the instance's first flush, and it then hears of
/// another instance's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_start_is_tracked_once_redis_answers() {
    let mut server = redis();
    server.kill();
    let b = fast_bus(builder(&server, "deg"))
        .l2_startup(layercache::L2Startup::Degraded)
        .l2_reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .l2_breaker_cooldown(Duration::from_millis(200))
        .server_assisted_tracking(true)
        .build()
        .await
        .unwrap();
    assert_eq!(b.bus_status().unwrap().tracking, Some(false));
    server.restart().unwrap();
    wait_until("B to join Redis with tracking on", WAIT, || {
        let b = b.clone();
        async move { b.l2_connected() && b.bus_status().unwrap().tracking == Some(true) }
    })
    .await;
    let a = tracked(&server, "deg").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    wait_until("B to know its generation", WAIT, || {
        let rb = rb.clone();
        async move { rb.generation().is_some() }
    })
    .await;
    still_reported(&ra, &b, &rb, 1).await;
}

/// The listener as a task on the service's runtime (`bus_thread(false)`) instead of on a
/// thread of its own: tracking is turned on, and writes are reported, the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_works_with_the_listener_on_the_callers_runtime() {
    let server = redis();
    let on_runtime = || {
        fast_bus(builder(&server, "rt"))
            .bus_thread(false)
            .server_assisted_tracking(true)
            .build()
    };
    let (a, b) = (on_runtime().await.unwrap(), on_runtime().await.unwrap());
    let (ra, rb) = (region(&a).await, region(&b).await);
    still_reported(&ra, &b, &rb, 1).await;
    still_reported(&rb, &a, &ra, 3).await;
    for c in [&a, &b] {
        assert_eq!(c.bus_status().unwrap().tracking, Some(true));
    }
}

/// The primary (node index) of a cluster holding `key` (the others answer `MOVED`).
fn holder(cluster: &layercache_testkit::RedisCluster, key: &str) -> usize {
    cluster
        .primaries()
        .into_iter()
        .find(|&p| {
            cluster
                .command(p, &["EXISTS", key])
                .is_ok_and(|n| n.trim() == "1")
        })
        .unwrap_or_else(|| panic!("no primary holds {key}"))
}

/// `PUBLISH` and `SPUBLISH` calls served by every primary of a cluster.
fn publishes(cluster: &layercache_testkit::RedisCluster) -> u64 {
    cluster
        .primaries()
        .into_iter()
        .map(|p| {
            let stats = cluster
                .command(p, &["INFO", "commandstats"])
                .unwrap_or_default();
            stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_publish:") || l.starts_with("cmdstat_spublish:"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
        .sum()
}

/// The number of connections with tracking on, on every primary of a cluster, by primary.
fn tracked_on_primaries(cluster: &layercache_testkit::RedisCluster) -> Vec<(usize, usize)> {
    cluster
        .primaries()
        .into_iter()
        .map(|p| {
            let list = cluster.command(p, &["CLIENT", "LIST"]).unwrap_or_default();
            let tracked = list
                .lines()
                .filter(|l| {
                    l.split(' ')
                        .find_map(|f| f.strip_prefix("flags="))
                        .is_some_and(|f| f.contains('t'))
                })
                .count();
            (p, tracked)
        })
        .collect()
}

/// On a Redis Cluster each primary tracks the store's connection to it, reported to the
/// subscriber's connection on the same primary: writes of keys on every primary reach the
/// other instance, another program's too; `FLUSHALL` flushes; and after a primary fails over,
/// the promoted replica is tracked too (found off by the heartbeat's check, turned on, L1
/// flushed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_every_primary_is_tracked_through_a_failover() {
    let mut cluster = layercache_testkit::RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let tracked = |name: &'static str| {
        fast_bus(support::cluster_builder(&cluster, name))
            .server_assisted_tracking(true)
            .build()
    };
    let (a, b) = (tracked("ctr").await.unwrap(), tracked("ctr").await.unwrap());
    let (ra, rb) = (region(&a).await, region(&b).await);
    for c in [&a, &b] {
        wait_until("tracking on", WAIT, || {
            let c = c.clone();
            async move { c.bus_status().unwrap().tracking == Some(true) }
        })
        .await;
    }
    let keys: Vec<&'static str> = (0..24)
        .map(|i| &*Box::leak(format!("k{i}").into_boxed_str()))
        .collect();
    let written = ra.insert_many(keys.iter().map(|k| (*k, 1))).await;
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    let holders: Vec<usize> = keys
        .iter()
        .map(|k| holder(&cluster, &ra.redis_key(*k).unwrap()))
        .collect();
    for p in cluster.primaries() {
        assert!(holders.contains(&p), "no key on primary {p}: {holders:?}");
    }
    for (p, n) in tracked_on_primaries(&cluster) {
        assert_eq!(n, 2, "tracked connections on primary {p}");
    }
    for k in &keys {
        in_l1(&b, &rb, k, 1).await;
    }
    // A's writes, on every primary, one by one: B drops every copy; Redis reports them, and
    // what is published is the heartbeats (every 100 ms), not a message per write.
    let before = publishes(&cluster);
    for round in 0..10 {
        for k in &keys {
            ra.insert(k, if round == 9 { 2 } else { 100 + round })
                .await
                .unwrap();
        }
    }
    let published = publishes(&cluster) - before;
    assert!(published < 120, "{published} PUBLISH calls for 240 writes");
    for k in &keys {
        serves(&rb, k, Some(2), "B to hear of A's write").await;
    }
    // Another program's writes (a DEL on the primary holding the key), one per primary.
    for k in &keys {
        in_l1(&b, &rb, k, 2).await;
    }
    let mut deleted = Vec::new();
    for p in cluster.primaries() {
        let at = holders.iter().position(|&h| h == p).unwrap();
        let rk = rb.redis_key(keys[at]).unwrap();
        assert_eq!(cluster.command(p, &["DEL", &rk]).unwrap().trim(), "1");
        deleted.push(keys[at]);
    }
    for k in &deleted {
        serves(&rb, k, None, "B to drop a key another program deleted").await;
    }
    assert_eq!(b.flushes(FlushReason::TrackingLost), 0);

    // The subscribers' connections to one primary are killed: tracking there points at
    // connections that are gone, until each subscriber reconnects and points it anew.
    let target = keys[1];
    let node = holder(&cluster, &ra.redis_key(target).unwrap());
    ra.insert(target, 7).await.unwrap();
    in_l1(&b, &rb, target, 7).await;
    let reconnects = b.flushes(FlushReason::Reconnect);
    cluster
        .command(node, &["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    ra.insert(target, 8).await.unwrap();
    wait_until("B's subscriber to reconnect", WAIT, || {
        let b = b.clone();
        async move { b.flushes(FlushReason::Reconnect) > reconnects }
    })
    .await;
    serves(&rb, target, Some(8), "B to read the key again").await;
    in_l1(&b, &rb, target, 8).await;
    ra.insert(target, 9).await.unwrap();
    serves(
        &rb,
        target,
        Some(9),
        "B to hear of a write after its reconnect",
    )
    .await;

    // The tracked connections to one primary are killed: Redis forgets their tracking. Each
    // instance reconnects, tracks anew, then flushes; a write made meanwhile is not missed.
    let lost = (
        a.flushes(FlushReason::TrackingLost),
        b.flushes(FlushReason::TrackingLost),
    );
    let list = cluster.command(node, &["CLIENT", "LIST"]).unwrap();
    let tracked_ids: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("flags="))
                .is_some_and(|f| f.contains('t'))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(tracked_ids.len(), 2, "{list}");
    for id in &tracked_ids {
        cluster
            .command(node, &["CLIENT", "KILL", "ID", id])
            .unwrap();
    }
    let journaled = insert_noting(&a, &ra, target, 10).await;
    wait_until("both instances to track anew and flush", WAIT, || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            a.flushes(FlushReason::TrackingLost) > lost.0
                && b.flushes(FlushReason::TrackingLost) > lost.1
                && a.bus_status().unwrap().tracking == Some(true)
                && b.bus_status().unwrap().tracking == Some(true)
        }
    })
    .await;
    repaired_if_journaled(&a, &ra, &rb, target, 10, journaled).await;
    serves(
        &rb,
        target,
        Some(10),
        "B to read the key written during the kill",
    )
    .await;
    in_l1(&b, &rb, target, 10).await;
    ra.insert(target, 11).await.unwrap();
    serves(&rb, target, Some(11), "B to hear of a write after the kill").await;

    // The primary holding the first key dies; its replica takes over.
    let moved = keys[0];
    ra.insert(moved, 3).await.unwrap();
    in_l1(&b, &rb, moved, 3).await;
    let victim = holder(&cluster, &ra.redis_key(moved).unwrap());
    cluster.kill(victim);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_ok(Duration::from_secs(30)).unwrap();
        cluster
    })
    .await
    .unwrap();
    wait_until("tracking on the promoted replica", WAIT * 3, || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            a.bus_status().unwrap().tracking == Some(true)
                && b.bus_status().unwrap().tracking == Some(true)
                && a.flushes(FlushReason::TrackingLost) > 0
                && b.flushes(FlushReason::TrackingLost) > 0
        }
    })
    .await;
    for (p, n) in tracked_on_primaries(&cluster) {
        assert_eq!(
            n, 2,
            "tracked connections on primary {p} after the failover"
        );
    }
    // Told of writes on the new primary.
    serves(&rb, moved, Some(3), "B to read the moved key").await;
    wait_until("A's write on the promoted replica to reach B", WAIT, || {
        let (a, ra, b, rb) = (a.clone(), ra.clone(), b.clone(), rb.clone());
        async move {
            // Put 4 in B's L1, then write 5: B must drop 4. A write Redis did not confirm
            // (journaled, `Ok` under the default policy) is tried again.
            if insert_noting(&a, &ra, moved, 4).await {
                return false;
            }
            let _ = rb.get(moved).await;
            let hits = b.stats().l1_hits;
            if rb.get(moved).await.ok().flatten().as_deref() != Some(&4)
                || b.stats().l1_hits != hits + 1
            {
                return false;
            }
            !insert_noting(&a, &ra, moved, 5).await
        }
    })
    .await;
    serves(
        &rb,
        moved,
        Some(5),
        "B to hear of a write on the promoted replica",
    )
    .await;

    // `FLUSHALL` on every primary: every instance flushes.
    for p in cluster.primaries() {
        cluster.command(p, &["FLUSHALL"]).unwrap();
    }
    for c in [&a, &b] {
        flushed(c, FlushReason::ServerFlush).await;
    }
    a.shutdown().await;
    b.shutdown().await;
    drop(cluster);
}
