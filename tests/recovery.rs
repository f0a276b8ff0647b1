//! Writes that Redis did not confirm are never undone: the write journal and its repair, and
//! writes whose L1 fill could keep an older value than Redis. Real redis-server, with the test
//! kit's proxy between one instance and Redis.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::prelude::KeysInterface;
use layercache::{LayerCache, Region};
use layercache_testkit::Proxy;
use support::{builder, caught_up, cmd, instance, raw_client, redis, region, wait_until};

const WAIT: Duration = Duration::from_secs(15);

/// An instance whose link to Redis (commands and bus) goes through `proxy`.
async fn via(proxy: &Proxy, name: &str, timeout: Duration) -> LayerCache {
    support::proxied(proxy, name, timeout)
        .l2_connect_timeout(Duration::from_secs(2))
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_millis(1000))
        .build()
        .await
        .unwrap()
}

/// Two instances of one cache: A linked to Redis through a proxy the test can cut (300 ms
/// command timeout), B directly. Holds the server and the proxy for the test's length.
struct CutOff {
    server: layercache_testkit::RedisServer,
    proxy: Proxy,
    a: LayerCache,
    b: LayerCache,
    ra: Region<str, u64>,
    rb: Region<str, u64>,
}

async fn cut_off(name: &str) -> CutOff {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = via(&proxy, name, Duration::from_millis(300)).await;
    let b = instance(&server, name).await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    CutOff {
        server,
        proxy,
        a,
        b,
        ra,
        rb,
    }
}

/// Reads through to `source` (the source of truth).
async fn read(r: &Region<str, u64>, key: &str, source: &Arc<AtomicU64>) -> u64 {
    let s = source.clone();
    *r.get_or_load(key, move |_| async move {
        Ok::<_, std::io::Error>(s.load(Ordering::SeqCst))
    })
    .await
    .unwrap()
}

/// Waits until `cache` has repaired everything and is back on the bus.
async fn repaired(cache: &LayerCache) {
    wait_until("the repairs to run", WAIT, || {
        let c = cache.clone();
        async move { c.pending_repairs() == 0 && c.l2_connected() }
    })
    .await;
}

/// Cut off from Redis, A invalidates a key that B holds; A's `Ok` stands after the link heals:
/// neither A nor B nor a new instance ever reads the old value back from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_made_while_cut_off_is_repaired_not_undone() {
    let CutOff {
        server,
        proxy,
        a,
        b,
        ra,
        rb,
    } = cut_off("cut").await;
    ra.insert("k", 1).await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(rb.get("k").await.unwrap().as_deref(), Some(&1));

    proxy.cut();
    ra.invalidate("k").await.unwrap();
    assert_eq!(ra.get("k").await.unwrap(), None);
    assert_eq!(a.pending_repairs(), 1);
    assert!(a.stats().l2_repairs_recorded >= 1, "{:?}", a.stats());

    proxy.pass();
    repaired(&a).await;
    caught_up(&b, &a).await;
    assert_eq!(
        ra.get("k").await.unwrap(),
        None,
        "A read the old value back"
    );
    assert_eq!(rb.get("k").await.unwrap(), None, "B kept the old value");
    let c = instance(&server, "cut").await;
    assert_eq!(
        region(&c).await.get("k").await.unwrap(),
        None,
        "Redis holds the old value"
    );
    assert!(a.stats().l2_repairs_done >= 1, "{:?}", a.stats());
}

/// The insert form: A writes 2 while cut off; afterwards every instance reads 2 (through the
/// loader: Redis holds a tombstone, never the 1 it held, nor a replay of A's 2 that could
/// overwrite a newer value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_made_while_cut_off_is_repaired_not_undone() {
    let CutOff {
        server,
        proxy,
        a,
        b,
        ra,
        rb,
    } = cut_off("cuti").await;
    let source = Arc::new(AtomicU64::new(1));
    ra.insert("k", 1).await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(read(&rb, "k", &source).await, 1);

    proxy.cut();
    source.store(2, Ordering::SeqCst);
    ra.insert("k", 2).await.unwrap();
    assert_eq!(read(&ra, "k", &source).await, 2);

    proxy.pass();
    repaired(&a).await;
    caught_up(&b, &a).await;
    assert_eq!(read(&rb, "k", &source).await, 2, "B kept the old value");
    assert_eq!(
        read(&ra, "k", &source).await,
        2,
        "A read the old value back"
    );
    // Redis holds the value A's load filled over the tombstone, never the 1 it held.
    let c = instance(&server, "cuti").await;
    assert_eq!(
        region(&c).await.get("k").await.unwrap().as_deref(),
        Some(&2)
    );
}

/// The same for a batch: cut off from Redis, A's `insert_many` answers `Ok` for every key
/// (journaled) and serves the new values at once; once the link heals the repairs run, and
/// neither B nor a new instance ever reads an old value back. The batch's commands that timed
/// out are not replayed after the reconnect either: a later batch's values stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_insert_made_while_cut_off_is_repaired_not_undone() {
    let CutOff {
        server,
        proxy,
        a,
        b,
        ra,
        rb,
    } = cut_off("cutm").await;
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    let source = Arc::new(AtomicU64::new(1));
    let done = ra.insert_many(keys.iter().map(|k| (*k, 1))).await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    caught_up(&b, &a).await;
    for k in keys {
        assert_eq!(read(&rb, k, &source).await, 1);
    }

    proxy.cut();
    source.store(2, Ordering::SeqCst);
    let done = ra.insert_many(keys.iter().map(|k| (*k, 2))).await;
    assert!(done.iter().all(Result::is_ok), "journaled: {done:?}");
    assert_eq!(a.pending_repairs(), keys.len());
    for k in keys {
        assert_eq!(read(&ra, k, &source).await, 2);
    }

    proxy.pass();
    repaired(&a).await;
    caught_up(&b, &a).await;
    for k in keys {
        assert_eq!(
            read(&rb, k, &source).await,
            2,
            "B kept the old value of {k}"
        );
        assert_eq!(read(&ra, k, &source).await, 2, "A read the old {k} back");
    }
    // A later batch stands: nothing of the one cut off lands after it. (No wait needed: a
    // client replays what it queued when it reconnects, before anything sent since, so a
    // replay of the cut-off batch would have reached Redis ahead of this batch on the same
    // connection, whose replies have come back.)
    source.store(3, Ordering::SeqCst);
    let done = ra.insert_many(keys.iter().map(|k| (*k, 3))).await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    let c = instance(&server, "cutm").await;
    let rc = region(&c).await;
    for k in keys {
        assert_eq!(rc.get(k).await.unwrap().as_deref(), Some(&3), "{k}");
    }
}

/// While a write is unconfirmed, its key is not served from Redis. `CLIENT PAUSE … WRITE` holds
/// A's tombstone in Redis (it times out, and lands later) while reads still answer: A must not
/// read the old value that Redis still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_write_is_unconfirmed_its_key_is_not_read_from_redis() {
    let server = redis();
    let raw = raw_client(&server).await;
    let a = builder(&server, "pause")
        .l2_command_timeout(Duration::from_millis(300))
        .l2_breaker_threshold(1_000)
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let ra = region(&a).await;
    let source = Arc::new(AtomicU64::new(1));
    ra.insert("k", 1).await.unwrap();
    let _ = cmd(&raw, "CLIENT", &["PAUSE", "3000", "WRITE"]).await;
    source.store(2, Ordering::SeqCst);
    ra.invalidate("k").await.unwrap();
    assert_eq!(
        a.pending_repairs(),
        1,
        "the tombstone timed out: {:?}",
        a.stats()
    );
    let rk = ra.redis_key("k").unwrap();
    let held: Option<Vec<u8>> = raw.get(&rk).await.unwrap();
    assert!(
        held.is_some(),
        "precondition: Redis still holds the old entry"
    );
    assert_eq!(
        ra.get("k").await.unwrap(),
        None,
        "served from Redis while unconfirmed"
    );
    assert_eq!(read(&ra, "k", &source).await, 2);
    assert!(a.stats().l2_repair_bypasses >= 1, "{:?}", a.stats());
    let _ = cmd(&raw, "CLIENT", &["UNPAUSE"]).await;
    repaired(&a).await;
    a.clear_l1();
    assert_eq!(ra.get("k").await.unwrap(), None);
}

/// A full journal repairs by region: with room for one key, the second unconfirmed
/// invalidation moves the region's generation once Redis answers, on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_moves_the_region_generation() {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = LayerCache::builder("full")
        .redis_url(proxy.url())
        .l2_command_timeout(Duration::from_millis(300))
        .l2_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .l2_repair_capacity(1)
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_millis(1000))
        .build()
        .await
        .unwrap();
    let b = instance(&server, "full").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    for k in ["x", "y", "z"] {
        ra.insert(k, 1).await.unwrap();
    }
    caught_up(&b, &a).await;
    for k in ["x", "y", "z"] {
        assert_eq!(rb.get(k).await.unwrap().as_deref(), Some(&1));
    }
    let before = rb.generation().unwrap();
    proxy.cut();
    ra.invalidate("x").await.unwrap();
    ra.invalidate("y").await.unwrap();
    assert_eq!(a.stats().l2_repair_overflows, 1, "{:?}", a.stats());
    proxy.pass();
    repaired(&a).await;
    caught_up(&b, &a).await;
    assert!(
        rb.generation().unwrap() > before,
        "the region's generation did not move"
    );
    // A re-reads its generation after its bus reconnects (which may come after the repair).
    wait_until("A to know the moved generation", WAIT, || {
        let (ra, rb) = (ra.clone(), rb.clone());
        async move { ra.generation().is_some() && ra.generation() == rb.generation() }
    })
    .await;
    for k in ["x", "y", "z"] {
        assert_eq!(
            rb.get(k).await.unwrap(),
            None,
            "{k} survived the region repair on B"
        );
        assert_eq!(
            ra.get(k).await.unwrap(),
            None,
            "{k} survived the region repair on A"
        );
    }
}

/// `invalidate_all` while cut off: the generation is moved once Redis answers, instead of being
/// read back as it was (which would bring every old entry back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidate_all_made_while_cut_off_is_repaired_not_undone() {
    // (The server is only held: the test reads Redis through the instances.)
    let CutOff {
        server: _server,
        proxy,
        a,
        b,
        ra,
        rb,
    } = cut_off("cutall").await;
    ra.insert("k", 1).await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(rb.get("k").await.unwrap().as_deref(), Some(&1));
    proxy.cut();
    ra.invalidate_all().await.unwrap();
    proxy.pass();
    repaired(&a).await;
    caught_up(&b, &a).await;
    assert_eq!(rb.get("k").await.unwrap(), None, "B kept the old value");
    assert_eq!(
        ra.get("k").await.unwrap(),
        None,
        "A read the old value back"
    );
}

/// An instance behind `proxy`, whose commands a test slows with `set_command_latency`: a long
/// command timeout, and — its heartbeats travel the slowed link — a long heartbeat timeout, so
/// the bus does not flush its L1 (which would hide the stale fills these tests look for).
async fn slowed_instance(proxy: &Proxy, name: &str) -> LayerCache {
    LayerCache::builder(name)
        .redis_url(proxy.url())
        .l2_command_timeout(Duration::from_secs(10))
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap()
}

/// A write's L1 fill loses to anything newer: A's insert of 5 lands in Redis, then B writes 6
/// and A applies B's announcement — all before A's reply comes back (A's commands are slowed,
/// its subscription is not). A must not then put 5 in L1 over the newer 6 that Redis and B hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_does_not_fill_l1_over_a_newer_write_applied_meanwhile() {
    let server = redis();
    let raw = raw_client(&server).await;
    let proxy = Proxy::start(server.port()).unwrap();
    let a = slowed_instance(&proxy, "older").await;
    let b = instance(&server, "older").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    ra.insert("k", 1).await.unwrap();
    caught_up(&b, &a).await;
    let rk = ra.redis_key("k").unwrap();
    let first: Vec<u8> = raw.get(&rk).await.unwrap();

    proxy.set_command_latency(Duration::from_millis(1500));
    let slow = {
        let ra = ra.clone();
        tokio::spawn(async move { ra.insert("k", 5).await })
    };
    wait_until("A's write to land in Redis", WAIT, || {
        let (raw, rk, first) = (raw.clone(), rk.clone(), first.clone());
        async move {
            let now: Option<Vec<u8>> = raw.get(&rk).await.unwrap();
            now.is_some_and(|n| n != first)
        }
    })
    .await;
    rb.insert("k", 6).await.unwrap();
    caught_up(&a, &b).await;
    assert!(
        !slow.is_finished(),
        "precondition: A applied B's write before its own reply came back"
    );
    slow.await.unwrap().unwrap();
    proxy.set_command_latency(Duration::ZERO);
    assert_eq!(a.stats().l1_flushes, 0, "{:?}", a.stats());
    assert_eq!(rb.get("k").await.unwrap().as_deref(), Some(&6));
    assert_eq!(
        ra.get("k").await.unwrap().as_deref(),
        Some(&6),
        "A keeps its older write in L1 over the newer one"
    );
}

/// Two writers of one key update the source to v5 and v6; v6's write reaches Redis first, v5's
/// last. With source versions the older write is refused and counted: Redis, both instances and
/// a new one keep v6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_versioned_write_arriving_last_is_refused() {
    let server = redis();
    let a = instance(&server, "ver").await;
    let b = instance(&server, "ver").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    assert!(rb.insert_versioned("k", 6, 6).await.unwrap());
    caught_up(&a, &b).await;
    assert!(
        !ra.insert_versioned("k", 5, 5).await.unwrap(),
        "the older write must be refused"
    );
    assert_eq!(a.stats().l2_versions_refused, 1, "{:?}", a.stats());
    caught_up(&b, &a).await;
    assert_eq!(
        ra.get("k").await.unwrap().as_deref(),
        Some(&6),
        "A kept its older write"
    );
    assert_eq!(rb.get("k").await.unwrap().as_deref(), Some(&6));
    let c = instance(&server, "ver").await;
    assert_eq!(
        region(&c).await.get("k").await.unwrap().as_deref(),
        Some(&6),
        "Redis holds v5"
    );
    // A newer version, and the same version again, are written.
    assert!(ra.insert_versioned("k", 7, 7).await.unwrap());
    assert!(ra.insert_versioned("k", 7, 7).await.unwrap());
    caught_up(&b, &a).await;
    assert_eq!(rb.get("k").await.unwrap().as_deref(), Some(&7));
    // Versions are compared byte by byte as big-endian u64: the full range orders correctly.
    assert!(ra.insert_versioned("k", 1, u64::MAX - 1).await.unwrap());
    assert!(!ra.insert_versioned("k", 2, 1 << 63).await.unwrap());
    assert!(ra.insert_versioned("k", 3, u64::MAX).await.unwrap());
    // An unversioned write or an invalidation replaces any version.
    ra.insert("k", 8).await.unwrap();
    assert!(ra.insert_versioned("k", 9, 1).await.unwrap());
    assert_eq!(ra.get("k").await.unwrap().as_deref(), Some(&9));
}

/// A versioned write is served by its own instance while its Redis write travels (as a plain
/// `insert` is), but never over a newer version this instance already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_write_is_served_at_once_but_never_over_a_newer_version() {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = slowed_instance(&proxy, "verfill").await;
    let ra = region(&a).await;
    assert!(ra.insert_versioned("k", 4, 4).await.unwrap());
    proxy.set_command_latency(Duration::from_millis(1000));
    let slow = {
        let ra = ra.clone();
        tokio::spawn(async move { ra.insert_versioned("k", 5, 5).await })
    };
    wait_until("A to serve its own write", WAIT, || {
        let ra = ra.clone();
        async move { ra.get("k").await.unwrap().as_deref() == Some(&5) }
    })
    .await;
    assert!(
        !slow.is_finished(),
        "precondition: A served v5 before Redis answered"
    );
    // An older versioned write of another task does not replace v5 in L1 while it travels.
    let older = {
        let ra = ra.clone();
        tokio::spawn(async move { ra.insert_versioned("k", 3, 3).await })
    };
    // Every read while it is in flight (1 s through the slowed link) still gets v5.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut reads_in_flight = 0;
    while !older.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the older write never ended"
        );
        assert_eq!(ra.get("k").await.unwrap().as_deref(), Some(&5));
        reads_in_flight += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        reads_in_flight >= 10,
        "precondition: reads made while the older write was in flight ({reads_in_flight})"
    );
    assert!(slow.await.unwrap().unwrap());
    assert!(!older.await.unwrap().unwrap(), "Redis refuses v3 after v5");
    proxy.set_command_latency(Duration::ZERO);
    assert_eq!(ra.get("k").await.unwrap().as_deref(), Some(&5));
}

/// Without Redis, versions are compared in the in-process tier.
#[tokio::test]
async fn a_versioned_write_without_redis_is_compared_in_l1() {
    let cache = LayerCache::builder("l1ver").build().await.unwrap();
    let r = region(&cache).await;
    assert!(r.insert_versioned("k", 6, 6).await.unwrap());
    assert!(!r.insert_versioned("k", 5, 5).await.unwrap());
    assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&6));
    assert_eq!(cache.stats().l2_versions_refused, 1);
    assert!(r.insert_versioned("k", 7, 7).await.unwrap());
    r.insert("k", 8).await.unwrap();
    assert!(r.insert_versioned("k", 1, 1).await.unwrap());
    assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&1));
}

/// Waits until `a` counts `b` as a live peer (it has heard `b`'s heartbeat).
async fn knows(a: &LayerCache, b: &LayerCache) {
    let id = b.instance_id().unwrap();
    wait_until("the peer's heartbeat", WAIT, || {
        let a = a.clone();
        async move { a.bus_status().unwrap().peer_seq(id).is_some() }
    })
    .await;
}

/// Acknowledged writes: right after A's `insert` returns, B (which held the old value in L1)
/// reads the new one — every round of 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_acknowledged_insert_returns_every_instance_reads_it() {
    let server = redis();
    let acked = |name| {
        builder(&server, name)
            .ack_writes(Duration::from_secs(10))
            .bus_heartbeat_interval(Duration::from_millis(100))
            .bus_heartbeat_timeout(Duration::from_secs(5))
            // B's old value must be in L1 when A writes: no cooldown after A's writes.
            .l1_write_cooldown(Duration::ZERO)
            .build()
    };
    let a = acked("ack").await.unwrap();
    let b = acked("ack").await.unwrap();
    knows(&a, &b).await;
    knows(&b, &a).await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    ra.insert("k", 0).await.unwrap();
    let mut old_in_l1 = 0;
    for i in 1..=1000u64 {
        // B holds the previous value (from L1 after the first read).
        assert_eq!(rb.get("k").await.unwrap().as_deref(), Some(&(i - 1)));
        if b.stats().l1_hits > old_in_l1 {
            old_in_l1 = b.stats().l1_hits;
        }
        ra.insert("k", i).await.unwrap();
        assert_eq!(
            rb.get("k").await.unwrap().as_deref(),
            Some(&i),
            "round {i}: B read the old value after A's acknowledged insert returned"
        );
    }
    assert!(
        old_in_l1 > 0,
        "B never served from L1: the test proves nothing"
    );
    // Invalidations are acknowledged too.
    rb.get("k").await.unwrap();
    ra.invalidate("k").await.unwrap();
    assert_eq!(rb.get("k").await.unwrap(), None);
}

/// A peer that stopped listening (its link blackholed) is still live for A (its heartbeats
/// were heard recently): A's acknowledged write returns after its timeout and names it. The
/// write itself landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_names_the_peer_that_did_not_acknowledge() {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = builder(&server, "deaf")
        .ack_writes(Duration::from_millis(500))
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let b = LayerCache::builder("deaf")
        .redis_url(proxy.url())
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let c = instance(&server, "deaf").await;
    knows(&a, &b).await;
    knows(&a, &c).await;
    let ra = region(&a).await;
    ra.insert("k", 1).await.unwrap();
    proxy.blackhole();
    let err = ra.insert("k", 2).await.unwrap_err();
    assert_eq!(err.kind(), layercache::ErrorKind::Unacknowledged, "{err}");
    assert_eq!(err.unacknowledged(), &[b.instance_id().unwrap()], "{err}");
    let fresh = instance(&server, "deaf").await;
    assert_eq!(
        region(&fresh).await.get("k").await.unwrap().as_deref(),
        Some(&2)
    );
    proxy.pass();
}

/// The source of truth for the fault test: a version per key, and when each was committed.
struct Truth {
    versions: Vec<AtomicU64>,
    /// `commits[k][i]`: when version `i + 1` of key `k` was committed.
    commits: Vec<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl Truth {
    fn new(keys: usize) -> Self {
        Self {
            versions: (0..keys).map(|_| AtomicU64::new(0)).collect(),
            commits: (0..keys)
                .map(|_| std::sync::Mutex::new(Vec::new()))
                .collect(),
        }
    }

    fn commit(&self, k: usize) -> u64 {
        let mut commits = self.commits[k].lock().unwrap();
        commits.push(std::time::Instant::now());
        self.versions[k].fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How long ago the first version newer than `v` was committed.
    fn stale_for(&self, k: usize, v: u64) -> Duration {
        let commits = self.commits[k].lock().unwrap();
        commits[usize::try_from(v).unwrap()].elapsed()
    }
}

/// One fault of the schedule and the staleness it may cause: reads older than the source by
/// more than `bound` fail the test.
struct Phase {
    name: &'static str,
    bound: Duration,
}

/// Three instances (one behind the proxy), readers and versioned writers on 200 keys, and a
/// schedule of faults: the proxy cut and healed, `CLIENT PAUSE`, `CLIENT KILL TYPE pubsub`,
/// SIGKILL and a restart empty, `FLUSHALL`. Each fault's phase lasts the fault and a recovery
/// tail; a read that returns a version older than the source had committed when it began is
/// stale for as long as the first newer version had been committed. Per phase the worst is
/// printed and must stay within the phase's documented bound; after writes stop, no instance
/// serves any key older than the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_schedule_under_load_keeps_every_read_within_its_bound() {
    const KEYS: usize = 200;
    let mut server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let tuned = |b: layercache::LayerCacheBuilder| {
        b.l2_command_timeout(Duration::from_millis(300))
            .l2_suspect_timeout(Duration::from_millis(100))
            .l2_connect_timeout(Duration::from_secs(2))
            .l2_breaker_cooldown(Duration::from_millis(200))
            .l2_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .bus_heartbeat_interval(Duration::from_millis(100))
            .bus_heartbeat_timeout(Duration::from_secs(1))
            .time_to_live(Duration::from_secs(30))
    };
    let a = tuned(LayerCache::builder("sched").redis_url(proxy.url()))
        .build()
        .await
        .unwrap();
    let b = tuned(LayerCache::builder("sched").redis_url(server.url()))
        .build()
        .await
        .unwrap();
    let c = tuned(LayerCache::builder("sched").redis_url(server.url()))
        .build()
        .await
        .unwrap();
    let caches = [a.clone(), b.clone(), c.clone()];
    let mut regions = Vec::new();
    for cache in &caches {
        regions.push(region(cache).await);
    }
    let truth = Arc::new(Truth::new(KEYS));
    let phase = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // (phase, how long the returned version had been outdated)
    let stale = Arc::new(std::sync::Mutex::new(Vec::<(usize, Duration)>::new()));
    let reads = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        for t in 0..3u64 {
            let (r, truth, phase, stop) = (r.clone(), truth.clone(), phase.clone(), stop.clone());
            let (stale, reads) = (stale.clone(), reads.clone());
            let seed = i as u64 * 10 + t;
            workers.push(tokio::spawn(async move {
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                while !stop.load(Ordering::SeqCst) {
                    // Hot keys: the square of a uniform draw favours the low ones.
                    let u = (next() % 1000) as f64 / 1000.0;
                    let k = ((u * u) * KEYS as f64) as usize;
                    let key = format!("k{k}");
                    if next() % 10 == 0 {
                        let v = truth.commit(k);
                        let _ = r.insert_versioned(&key, v, v).await;
                    } else {
                        let at = phase.load(Ordering::SeqCst);
                        let before = truth.versions[k].load(Ordering::SeqCst);
                        let t2 = truth.clone();
                        let got = r
                            .get_or_load(&key, move |_| async move {
                                Ok::<_, std::io::Error>(t2.versions[k].load(Ordering::SeqCst))
                            })
                            .await;
                        if let Ok(got) = got {
                            reads.fetch_add(1, Ordering::Relaxed);
                            if *got < before {
                                let age = truth.stale_for(k, *got);
                                stale.lock().unwrap().push((at, age));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }

    // The sleeps below are the schedule itself — how long each fault lasts and how long the
    // workload runs through its recovery — not waits for something to settle: the end of the
    // test waits on conditions (repairs done, every instance caught up).
    let grace = Duration::from_secs(2);
    let tail = Duration::from_millis(2500);
    let mut phases = vec![Phase {
        name: "healthy",
        bound: Duration::from_millis(1500),
    }];
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut next_phase = |name: &'static str, fault: Duration| {
        phases.push(Phase {
            name,
            bound: fault + grace,
        });
        phase.store(phases.len() - 1, Ordering::SeqCst);
    };
    next_phase("proxy cut 1.5 s", Duration::from_millis(1500));
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.pass();
    tokio::time::sleep(tail).await;

    next_phase("CLIENT PAUSE 2000", Duration::from_secs(2));
    let raw = raw_client(&server).await;
    let _ = cmd(&raw, "CLIENT", &["PAUSE", "2000"]).await;
    tokio::time::sleep(Duration::from_secs(2) + tail).await;

    next_phase("CLIENT KILL TYPE pubsub", Duration::ZERO);
    let _ = cmd(&raw, "CLIENT", &["KILL", "TYPE", "pubsub"]).await;
    tokio::time::sleep(tail).await;

    next_phase("SIGKILL + restart empty", Duration::from_millis(500));
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().unwrap();
    tokio::time::sleep(tail).await;

    next_phase("FLUSHALL", Duration::ZERO);
    let raw = raw_client(&server).await;
    let _ = cmd(&raw, "FLUSHALL", &[]).await;
    tokio::time::sleep(tail).await;

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let stale = stale.lock().unwrap().clone();
    let total = reads.load(Ordering::Relaxed);
    assert!(total > 1000, "too few reads to mean anything: {total}");
    let mut failed = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        let in_phase: Vec<Duration> = stale
            .iter()
            .filter(|(at, _)| *at == i)
            .map(|(_, d)| *d)
            .collect();
        let worst = in_phase.iter().max().copied().unwrap_or_default();
        eprintln!(
            "{:<26} stale reads {:>4}, worst window {:>8.1?}, bound {:?}",
            p.name,
            in_phase.len(),
            worst,
            p.bound
        );
        if worst > p.bound {
            failed.push(format!("{}: {worst:?} > {:?}", p.name, p.bound));
        }
    }
    eprintln!("{total} reads, {} stale", stale.len());
    assert!(failed.is_empty(), "stale beyond the bound: {failed:?}");

    // Writes have stopped: once every instance has repaired what it journaled and heard
    // everyone, none serves anything older than the source.
    for cache in &caches {
        repaired(cache).await;
    }
    for x in &caches {
        for y in &caches {
            if x.instance_id() != y.instance_id() {
                caught_up(x, y).await;
            }
        }
    }
    let mut still = Vec::new();
    for k in 0..KEYS {
        let now = truth.versions[k].load(Ordering::SeqCst);
        for (i, r) in regions.iter().enumerate() {
            if let Some(v) = r.get(&format!("k{k}")).await.unwrap() {
                if *v < now {
                    still.push((i, k, *v, now));
                }
            }
        }
    }
    assert!(
        still.is_empty(),
        "still stale after writes stopped: {still:?}"
    );
}

/// After `FLUSHALL`, the region generation is created again by an instance whose clock is
/// behind (a generation below the one the running instance used). The running instance moves
/// it forward and announces it instead of going on in another generation: both converge, and
/// each one's writes reach the other through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_created_again_below_one_in_use_is_moved_forward_not_split() {
    let server = redis();
    let raw = raw_client(&server).await;
    let running = instance(&server, "skew").await;
    let rr = region(&running).await;
    rr.insert("warm", 0).await.unwrap();
    let used = rr.generation().unwrap();
    let _ = cmd(&raw, "FLUSHALL", &[]).await;
    // Another host, its clock behind, creates the generation again.
    let _ = cmd(&raw, "SET", &["skew:m2:item:s1:gen", "1"]).await;
    let fresh = instance(&server, "skew").await;
    let rf = region(&fresh).await;
    assert_eq!(rf.generation(), Some(1));
    // The running instance's next fill is fenced, re-reads the generation, finds it below one
    // it used, moves it forward and announces it.
    let v = rr
        .get_or_load("x", |_| async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    assert_eq!(*v, 1);
    wait_until("one generation on both", WAIT, || {
        let (rr, rf) = (rr.clone(), rf.clone());
        async move { rr.generation() == rf.generation() }
    })
    .await;
    assert!(rr.generation().unwrap() > used);
    assert_eq!(
        running.stats().generation_repairs,
        1,
        "{:?}",
        running.stats()
    );
    // Each one's writes reach the other through Redis.
    rr.insert("z", 7).await.unwrap();
    rf.insert("y", 5).await.unwrap();
    caught_up(&fresh, &running).await;
    caught_up(&running, &fresh).await;
    assert_eq!(rf.get("z").await.unwrap().as_deref(), Some(&7));
    assert_eq!(rr.get("y").await.unwrap().as_deref(), Some(&5));
    assert_eq!(running.pending_repairs(), 0);
}

/// With the bus listener on a thread of its own (the default) and as a task on the caller's
/// runtime, invalidations reach every instance, acknowledged writes work, and `shutdown()`
/// ends the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_listener_on_its_own_thread_or_as_a_task_keeps_instances_coherent() {
    let server = redis();
    for own_thread in [true, false] {
        let name = if own_thread { "thr" } else { "task" };
        let make = || {
            builder(&server, name)
                .bus_thread(own_thread)
                .ack_writes(Duration::from_secs(2))
                .bus_heartbeat_interval(Duration::from_millis(100))
                .bus_heartbeat_timeout(Duration::from_secs(2))
                // B holds the old value in L1 when A writes.
                .l1_write_cooldown(Duration::ZERO)
                .build()
        };
        let a = make().await.unwrap();
        let b = make().await.unwrap();
        knows(&a, &b).await;
        knows(&b, &a).await;
        let (ra, rb) = (region(&a).await, region(&b).await);
        for i in 1..=50u64 {
            rb.get("k").await.unwrap();
            ra.insert("k", i).await.unwrap();
            assert_eq!(
                rb.get("k").await.unwrap().as_deref(),
                Some(&i),
                "{name} round {i}"
            );
        }
        assert!(b.stats().l1_hits > 0, "{name}: B never read from L1");
        ra.invalidate("k").await.unwrap();
        assert_eq!(rb.get("k").await.unwrap(), None);
        // shutdown() returns once the listener has ended: afterwards B no longer hears anything.
        b.shutdown().await;
        let heard = b.stats().bus_received;
        let err = ra.insert("k", 99).await.unwrap_err();
        assert_eq!(
            err.unacknowledged(),
            &[b.instance_id().unwrap()],
            "{name}: {err}"
        );
        assert_eq!(b.stats().bus_received, heard);
        a.shutdown().await;
    }
}

/// A plain read runs in its caller's task: cancelling that caller while its Redis read is in
/// flight must not fail the readers that joined it — they read again and get the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_joined_to_a_cancelled_read_read_again() {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = slowed_instance(&proxy, "cancelled").await;
    let ra = region(&a).await;
    let b = instance(&server, "cancelled").await;
    region(&b).await.insert("k", 7).await.unwrap();
    // B's announcement must not reach A during A's reads (it would end A's first read).
    caught_up(&a, &b).await;
    proxy.set_command_latency(Duration::from_millis(400));
    // The leading read, polled once here: it misses L1, leads the key's flight and waits on
    // its Redis read (if it did not lead, the wait below for the second read to join times out).
    let mut leader = Box::pin(ra.get("k"));
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut leader)
            .await
            .is_err(),
        "precondition: the read waits on the slowed Redis"
    );
    let joined = {
        let ra = ra.clone();
        tokio::spawn(async move { ra.get("k").await })
    };
    wait_until("the second read to join the first", WAIT, || {
        let a = a.clone();
        async move { a.stats().coalesced >= 1 }
    })
    .await;
    // Cancelled: the leading caller's future is dropped mid-read.
    drop(leader);
    assert_eq!(
        joined.await.unwrap().unwrap().as_deref(),
        Some(&7),
        "the joined read read again"
    );
    proxy.set_command_latency(Duration::ZERO);
    a.shutdown().await;
    b.shutdown().await;
}

/// A load waiting for another instance's load lock stops waiting once Redis stops answering,
/// and loads without the lock: the holder's value could not be seen even if it came. With
/// `lock_wait` an hour, A's single and batch loads wait for B's locks; cut off, each answers
/// from its own loader (before, both waited out the hour: a Redis outage made the callers'
/// outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_waiting_for_the_lock_loads_without_it_once_redis_is_cut_off() {
    use layercache::EntryOptions;
    use tokio::sync::Notify;

    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = support::proxied(&proxy, "lockcut", Duration::from_millis(300))
        .lock_wait(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let b = instance(&server, "lockcut").await;
    let options = EntryOptions::new().distributed_lock(true);
    let ra = a
        .region::<str, u64>("r")
        .entry_options(options)
        .build()
        .await
        .unwrap();
    let rb = b
        .region::<str, u64>("r")
        .entry_options(options)
        .build()
        .await
        .unwrap();

    // B holds the locks of "k" and "m", its load held back until the end.
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let holder = {
        let (rb, started, release) = (rb.clone(), started.clone(), release.clone());
        tokio::spawn(async move {
            rb.get_or_load_many(["k", "m"], move |keys: Vec<String>| {
                let (started, release) = (started.clone(), release.clone());
                async move {
                    started.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, 100)).collect::<Vec<_>>())
                }
            })
            .await
        })
    };
    started.notified().await;
    assert_eq!(b.stats().locks_acquired, 2, "{:?}", b.stats());

    // A waits for them: one single load, one batch ("n" is A's to load, "m" B's).
    let single = {
        let ra = ra.clone();
        tokio::spawn(async move {
            ra.get_or_load("k", |_| async { Ok::<_, std::io::Error>(1) })
                .await
        })
    };
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let batch = {
        let (ra, asked) = (ra.clone(), asked.clone());
        tokio::spawn(async move {
            ra.get_or_load_many(["m", "n"], move |keys: Vec<String>| {
                asked.lock().unwrap().push(keys.clone());
                async move {
                    Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, 2)).collect::<Vec<_>>())
                }
            })
            .await
        })
    };
    wait_until("A to wait for both locks", WAIT, || {
        let a = a.clone();
        async move { a.stats().lock_waits >= 2 }
    })
    .await;
    assert_eq!(a.stats().lock_takeovers, 0, "{:?}", a.stats());

    proxy.cut();
    // (A bound on a hang, not a timing: before, each call waited out `lock_wait`.)
    let single = tokio::time::timeout(WAIT, single)
        .await
        .expect("the single load still waits for the lock")
        .unwrap();
    assert_eq!(*single.unwrap(), 1);
    let batch = tokio::time::timeout(WAIT, batch)
        .await
        .expect("the batch load still waits for the lock")
        .unwrap();
    let values: Vec<_> = batch.into_iter().map(|r| r.unwrap().map(|v| *v)).collect();
    assert_eq!(values, [Some(2), Some(2)]);
    assert_eq!(
        *asked.lock().unwrap(),
        [vec!["n".to_owned()], vec!["m".to_owned()]],
        "the batch loaded its own key, then the one whose wait Redis ended"
    );
    assert!(a.stats().lock_takeovers >= 2, "{:?}", a.stats());
    assert!(a.stats().l2_errors >= 1, "{:?}", a.stats());

    release.notify_one();
    let held: Vec<_> = holder
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().map(|v| *v))
        .collect();
    assert_eq!(held, [Some(100), Some(100)]);
    proxy.pass();
}

/// Tagged and versioned batch writes (`many()`) keep the batch write's promise: cut off, A's
/// batch returns `Ok` (journaled) and A serves the new values; once the link heals the repairs
/// run, and neither B nor a new instance ever reads the old value back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_versioned_batch_made_while_cut_off_is_repaired_not_undone() {
    let CutOff {
        server,
        proxy,
        a,
        b,
        ra,
        rb,
    } = cut_off("cutv").await;
    let keys = ["k0", "k1", "k2"];
    let source = Arc::new(AtomicU64::new(1));
    let write = |v: u64| {
        let ra = ra.clone();
        async move {
            ra.many()
                .tags(&["team"])
                .insert_versioned(keys.iter().map(|k| (*k, v, v)))
                .await
        }
    };
    let done = write(1).await;
    assert!(done.iter().all(|r| matches!(r, Ok(true))), "{done:?}");
    caught_up(&b, &a).await;
    for k in keys {
        assert_eq!(read(&rb, k, &source).await, 1);
    }

    proxy.cut();
    source.store(2, Ordering::SeqCst);
    let done = write(2).await;
    assert!(done.iter().all(Result::is_ok), "journaled: {done:?}");
    assert_eq!(a.pending_repairs(), keys.len());
    for k in keys {
        assert_eq!(read(&ra, k, &source).await, 2);
    }

    proxy.pass();
    repaired(&a).await;
    caught_up(&b, &a).await;
    let c = instance(&server, "cutv").await;
    let rc = region(&c).await;
    for k in keys {
        for (who, r) in [("A", &ra), ("B", &rb), ("a new instance", &rc)] {
            assert_eq!(read(r, k, &source).await, 2, "{who} read the old {k} back");
        }
    }
}
