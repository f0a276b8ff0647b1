//! Redis faults and security settings against a real redis-server: authentication (password
//! and ACL user), TLS, `CLIENT PAUSE`, `DEBUG SLEEP`, the circuit breaker, latency and a
//! blackhole through the test kit's proxy, writes timed out during an outage, and a start while
//! Redis is down.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;
#[macro_use]
mod own_topologies;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cap::Cap;
use layercache::{CoherenceLossPolicy, EntryOptions, FlushReason, L2ErrorPolicy, LayerCache};
use layercache_testkit::RedisServer;

/// Tracks the heap, so the network-fault test can show memory stays bounded.
#[global_allocator]
static ALLOC: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);
use support::{caught_up, cmd, raw_client, signal, wait_until, Shared};

// One suite, two topologies: each scenario below runs on a redis-server and on a Redis Cluster
// of its own (it pauses, stops, cuts or kills them). Single-server only: TLS (the test kit's
// cluster runs without it) and `DEBUG SLEEP` (a server-wide stall, as
// `CLIENT PAUSE` is, which runs on both).
on_own_redis_and_cluster!(
    an_acl_user_limited_to_the_cache_keys_and_channel_works,
    a_password_protected_server_works_and_a_wrong_password_is_a_clear_error,
    client_pause_bounds_every_call_by_its_timeout,
    the_breaker_opens_on_an_outage_stops_paying_timeouts_and_closes_after,
    an_oversized_key_is_a_clear_error_and_nothing_is_written,
    latency_and_a_blackhole_fire_timeouts_open_the_breaker_and_never_hang,
    writes_that_timed_out_during_an_outage_are_not_replayed_after_it,
    a_degraded_start_serves_without_redis_and_joins_it_when_it_answers,
    redis_down_falls_back_to_the_loader_or_propagates_by_policy,
    build_fails_clearly_when_redis_is_unreachable,
    scripts_run_by_hash_and_are_loaded_again_after_script_flush,
);

const TIMEOUT: Duration = Duration::from_millis(300);

async fn a_password_protected_server_works_and_a_wrong_password_is_a_clear_error(
    shared: &mut Shared,
) {
    shared.require_password("s3cret-pw");
    let cache = LayerCache::builder("auth")
        .redis_url(shared.url_with(":s3cret-pw"))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    r.insert("k", 1).await.unwrap();
    let other = LayerCache::builder("auth")
        .redis_url(shared.url_with(":s3cret-pw"))
        .build()
        .await
        .unwrap();
    let r2 = other.region::<str, u64>("r").build().await.unwrap();
    assert_eq!(*r2.get("k").await.unwrap().unwrap(), 1);
    assert_eq!(other.stats().l2_hits, 1);
    assert!(!format!("{cache:?}").contains("s3cret-pw"));

    let err = LayerCache::builder("auth")
        .redis_url(shared.url_with(":wrong"))
        .l2_connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_redis(), "{err}");
    assert!(!err.to_string().contains("wrong@"), "{err}");
}

async fn an_acl_user_limited_to_the_cache_keys_and_channel_works(shared: &mut Shared) {
    // Only what the cache needs: its keys, its bus channel, the commands it sends (and, on a
    // cluster, reading the slot map), on every node.
    let mut rules = vec![
        "SETUSER",
        "cacheuser",
        "on",
        ">acl-pw",
        "~acl:*",
        "&acl:*",
        "+@read",
        "+@write",
        "+@pubsub",
        "+@scripting",
        "+@connection",
        "+@keyspace",
    ];
    if let Shared::Cluster(_) = shared {
        // fred reads the slot map; the start checks the cluster is ok.
        rules.extend(["+cluster|slots", "+cluster|info"]);
    }
    let rules = rules;
    match shared {
        // (ACL users are per node: replicas answer a client's slot-map questions too.)
        Shared::Cluster(cluster) => {
            let args: Vec<&str> = std::iter::once("ACL").chain(rules).collect();
            for i in 0..6 {
                cluster.command(i, &args).unwrap();
            }
        }
        _ => {
            for admin in shared.node_clients().await {
                cmd(&admin, "ACL", &rules).await;
            }
        }
    }
    let cache = LayerCache::builder("acl")
        .redis_url(shared.url_with("cacheuser:acl-pw"))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    assert!(
        r.generation().is_some(),
        "the generation script must be allowed"
    );
    r.insert("k", 1).await.unwrap();
    r.invalidate_all().await.unwrap();
    r.insert("k", 2).await.unwrap();
    let other = LayerCache::builder("acl")
        .redis_url(shared.url_with("cacheuser:acl-pw"))
        .build()
        .await
        .unwrap();
    let r2 = other.region::<str, u64>("r").build().await.unwrap();
    assert_eq!(*r2.get("k").await.unwrap().unwrap(), 2);
    let s = cache.stats();
    assert_eq!((s.l2_errors, s.bus_publish_errors), (0, 0), "{s:?}");

    // A cache name outside the user's key pattern is refused by Redis (NOPERM): the region
    // never learns its generation, so it bypasses Redis, and reads still work from the loader.
    if let Ok(outside) = LayerCache::builder("other")
        .redis_url(shared.url_with("cacheuser:acl-pw"))
        .build()
        .await
    {
        let r = outside.region::<str, u64>("r").build().await.unwrap();
        assert!(r.generation().is_none());
        let v = r
            .get_or_load("k", |_| async { Ok::<_, std::io::Error>(3) })
            .await
            .unwrap();
        assert_eq!(*v, 3);
        assert!(outside.stats().l2_errors >= 1, "{:?}", outside.stats());
    }
}

/// Runs `get_or_load` on a cold key and returns how long it took; it must succeed (from the
/// loader) while Redis does not answer.
async fn timed_read(
    r: &layercache::Region<str, u64>,
    key: &str,
    loads: &Arc<AtomicUsize>,
) -> Duration {
    let start = Instant::now();
    let loads = loads.clone();
    let v = r
        .get_or_load(key, move |_| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(*v, 7);
    start.elapsed()
}

async fn cache_for(shared: &Shared, name: &str) -> LayerCache {
    LayerCache::builder(name)
        .redis_url(shared.url())
        .l2_command_timeout(TIMEOUT)
        .build()
        .await
        .unwrap()
}

async fn client_pause_bounds_every_call_by_its_timeout(shared: &mut Shared) {
    let cache = cache_for(shared, "pause").await;
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    shared.pause(3000).await;
    for i in 0..3 {
        let took = timed_read(&r, &format!("k{i}"), &loads).await;
        // A read pays at most the GET timeout (the SET of the loaded value is bounded too, but
        // a failed GET skips it). Generous bound for a loaded CI machine: timeout + 1 s.
        assert!(
            took < TIMEOUT + Duration::from_secs(1),
            "read took {took:?}"
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    assert!(cache.stats().l2_timeouts >= 1, "{:?}", cache.stats());
    // Service resumes after the pause: a write reaches Redis, where a fresh instance reads it.
    shared.unpause().await;
    resumes(shared, &cache, &r).await;
}

/// After a fault: writes through `r` reach Redis again (a fresh instance reads them there).
async fn resumes(shared: &Shared, cache: &LayerCache, r: &layercache::Region<str, u64>) {
    let other = cache_for(shared, cache.name()).await;
    let r2 = other.region::<str, u64>("r").build().await.unwrap();
    let mut n = 100;
    wait_until(
        "writes to reach redis again",
        Duration::from_secs(10),
        || {
            n += 1;
            let (r, r2) = (r.clone(), r2.clone());
            async move {
                let _ = r.insert("after", n).await;
                r2.get("after").await.ok().flatten().as_deref() == Some(&n)
            }
        },
    )
    .await;
    assert!(other.stats().l2_hits >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep_bounds_every_call_by_its_timeout() {
    let server = RedisServer::builder()
        .arg("enable-debug-command", "local")
        .start()
        .unwrap();
    let admin = raw_client(&server).await;
    let shared = Shared::Redis(server);
    let cache = cache_for(&shared, "sleep").await;
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    // DEBUG SLEEP blocks the whole server; send it without waiting for its reply.
    let sleeper = tokio::spawn(async move { cmd(&admin, "DEBUG", &["SLEEP", "2"]).await });
    let port = match &shared {
        Shared::Redis(server) => server.port(),
        _ => unreachable!(),
    };
    wait_until("the server to be asleep", Duration::from_secs(5), || {
        async move {
            // A raw PING that does not answer within 100 ms means the server is blocked.
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 16];
                s.read(&mut buf).is_err()
            })
            .await
            .unwrap_or(false)
        }
    })
    .await;
    let took = timed_read(&r, "cold", &loads).await;
    assert!(
        took < TIMEOUT + Duration::from_secs(1),
        "read took {took:?}"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(cache.stats().l2_timeouts >= 1, "{:?}", cache.stats());
    let _ = sleeper.await;
    resumes(&shared, &cache, &r).await;
}

async fn the_breaker_opens_on_an_outage_stops_paying_timeouts_and_closes_after(
    shared: &mut Shared,
) {
    let cache = LayerCache::builder("brk")
        .redis_url(shared.url())
        .l2_command_timeout(TIMEOUT)
        .l2_breaker_threshold(2)
        .l2_breaker_cooldown(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    // A Redis that is connected but silent (stopped): a refused connection is skipped without
    // the breaker (see tests/hardening.rs), a silent one is what the breaker is for.
    let pids = shared.pids();
    pids.iter().for_each(|&pid| signal(pid, "STOP"));
    let mut i = 0;
    wait_until("the breaker to open", Duration::from_secs(10), || {
        i += 1;
        let (r, cache, loads, key) = (r.clone(), cache.clone(), loads.clone(), format!("a{i}"));
        async move {
            timed_read(&r, &key, &loads).await;
            cache.stats().breaker_opens >= 1
        }
    })
    .await;
    assert!(cache.l2_breaker_open());
    // While open, reads go straight to the loader: no more timeouts are paid.
    let timeouts = cache.stats().l2_timeouts;
    let rejected = cache.stats().breaker_rejections;
    for i in 0..20 {
        timed_read(&r, &format!("b{i}"), &loads).await;
    }
    let s = cache.stats();
    assert!(
        s.l2_timeouts <= timeouts + 1,
        "paid timeouts while open: {s:?}"
    ); // a probe may
    assert!(s.breaker_rejections >= rejected + 19, "{s:?}");

    pids.iter().for_each(|&pid| signal(pid, "CONT"));
    wait_until("the breaker to close", Duration::from_secs(10), || {
        let (r, cache) = (r.clone(), cache.clone());
        async move {
            let _ = r.insert("probe", 1).await;
            !cache.l2_breaker_open()
        }
    })
    .await;
    resumes(shared, &cache, &r).await;
}

async fn an_oversized_key_is_a_clear_error_and_nothing_is_written(shared: &mut Shared) {
    let cache = LayerCache::builder("big")
        .redis_url(shared.url())
        .max_key_bytes(16)
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    let long = "k".repeat(17);
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let errs = [
        r.insert(&long, 1).await.unwrap_err(),
        r.get(&long).await.unwrap_err(),
        r.invalidate(&long).await.unwrap_err(),
        r.get_or_load(&long, move |_| async move {
            l.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(1)
        })
        .await
        .unwrap_err(),
    ];
    for e in errs {
        assert_eq!(e.kind(), layercache::ErrorKind::KeyTooLarge, "{e}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    assert!(shared.data_keys("big").await.is_empty());
    // 16 bytes is fine.
    r.insert(&"k".repeat(16), 2).await.unwrap();
    assert_eq!(shared.data_keys("big").await.len(), 1);
}

async fn latency_and_a_blackhole_fire_timeouts_open_the_breaker_and_never_hang(
    shared: &mut Shared,
) {
    let proxy = shared.network();
    let cache = LayerCache::builder("net")
        .redis_url(proxy.url())
        .l2_command_timeout(TIMEOUT)
        .l2_breaker_threshold(3)
        .l2_breaker_cooldown(Duration::from_millis(200))
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    let loads = Arc::new(AtomicUsize::new(0));

    // Latency above the command timeout: every call gives up at its timeout.
    proxy.set_latency(Duration::from_secs(1));
    for i in 0..3 {
        let took = tokio::time::timeout(
            Duration::from_secs(10),
            timed_read(&r, &format!("l{i}"), &loads),
        )
        .await
        .expect("a read hung");
        assert!(
            took < TIMEOUT + Duration::from_secs(1),
            "read took {took:?}"
        );
    }
    assert!(cache.stats().l2_timeouts >= 1, "{:?}", cache.stats());

    // A blackhole: connections stay open, nothing comes back.
    proxy.set_latency(Duration::ZERO);
    proxy.blackhole();
    let mut i = 0;
    wait_until("the breaker to open", Duration::from_secs(10), || {
        i += 1;
        let (r, cache, loads, key) = (r.clone(), cache.clone(), loads.clone(), format!("b{i}"));
        async move {
            let took = timed_read(&r, &key, &loads).await;
            assert!(
                took < TIMEOUT + Duration::from_secs(1),
                "read took {took:?}"
            );
            cache.stats().breaker_opens >= 1
        }
    })
    .await;
    // Memory stays bounded while the blackhole lasts: 2,000 more reads (and writes, which
    // queue bus messages) do not grow the heap by more than a few MiB.
    let heap = ALLOC.allocated();
    let timeouts = cache.stats().l2_timeouts;
    for i in 0..2000 {
        let key = format!("m{i}");
        timed_read(&r, &key, &loads).await;
        let _ = r.insert(&key, 1).await;
    }
    // And the breaker stays open: only its probes pay a timeout, not the 4,000 calls (a
    // pipeline whose commands timed out once passed for a successful probe and closed it).
    let paid = cache.stats().l2_timeouts - timeouts;
    assert!(
        paid < 400,
        "{paid} calls paid a timeout: {:?}",
        cache.stats()
    );
    cache.run_pending_tasks().await;
    let grown = ALLOC.allocated().saturating_sub(heap);
    assert!(
        grown < 32 << 20,
        "the heap grew by {grown} bytes during the blackhole"
    );
    // The bus notices its own heartbeats no longer come back.
    wait_until("the bus to notice", Duration::from_secs(10), || {
        let cache = cache.clone();
        async move { cache.flushes(layercache::FlushReason::HeartbeatMissed) >= 1 }
    })
    .await;

    // The network heals: the breaker closes, the bus recovers, writes reach Redis.
    proxy.pass();
    wait_until("recovery", Duration::from_secs(15), || {
        let (r, cache) = (r.clone(), cache.clone());
        async move {
            let _ = r.insert("probe", 1).await;
            !cache.l2_breaker_open() && cache.bus_status().is_some_and(|s| s.healthy)
        }
    })
    .await;
    resumes(shared, &cache, &r).await;
}

/// TLS with the test kit's CA: two instances share values and the bus over TLS; trusting only
/// the system's roots, the kit's certificate is refused; a CA file with no certificate is a
/// configuration error. On a cluster every node (and every redirection) is TLS.
async fn tls_with_a_testkit_ca_works_and_an_untrusted_server_is_refused(url: &str, ca: &str) {
    let build = || {
        LayerCache::builder("tls")
            .redis_url(url)
            .l2_tls_ca_pem(ca.to_owned())
            .l2_connect_timeout(Duration::from_secs(5))
            .build()
    };
    let a = build().await.unwrap();
    let b = build().await.unwrap();
    let (ra, rb) = (
        a.region::<str, u64>("r").build().await.unwrap(),
        b.region::<str, u64>("r").build().await.unwrap(),
    );
    // Enough keys to reach every primary of a cluster.
    for i in 0..30u64 {
        ra.insert(&format!("k{i}"), i).await.unwrap();
    }
    for i in 0..30u64 {
        // From Redis, over TLS.
        assert_eq!(*rb.get(&format!("k{i}")).await.unwrap().unwrap(), i);
    }
    ra.insert("k0", 100).await.unwrap();
    support::caught_up(&b, &a).await; // the bus runs over TLS too
    assert_eq!(*rb.get("k0").await.unwrap().unwrap(), 100);
    assert_eq!(b.stats().l2_errors, 0);
    assert_eq!(a.stats().l2_errors, 0);

    // Trusting only the system's roots, the testkit's certificate is refused.
    let err = LayerCache::builder("tls")
        .redis_url(url)
        .l2_connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_redis(), "{err}");
    // A CA file with no certificate is a configuration error.
    let err = LayerCache::builder("tls")
        .redis_url(url)
        .l2_tls_ca_pem("not a pem")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), layercache::ErrorKind::Config, "{err}");
}

mod tls {
    use layercache_testkit::{RedisCluster, RedisServer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_redis() {
        let server = RedisServer::builder().tls().start().unwrap();
        assert!(server.url().starts_with("rediss://"));
        let ca = server.ca_pem().unwrap();
        super::tls_with_a_testkit_ca_works_and_an_untrusted_server_is_refused(&server.url(), ca)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_cluster() {
        let _one = crate::support::one_cluster_at_a_time().await;
        let cluster = RedisCluster::start_tls().unwrap_or_else(|e| panic!("{e}"));
        assert!(cluster.url().starts_with("rediss-cluster://"));
        let ca = cluster.ca_pem().unwrap();
        super::tls_with_a_testkit_ca_works_and_an_untrusted_server_is_refused(&cluster.url(), &ca)
            .await;
        // The keys spread over the three primaries.
        let spread = cluster.keys_per_primary().unwrap();
        assert!(spread.iter().all(|(_, n)| *n > 0), "{spread:?}");
    }
}

/// Writes made while Redis is down time out (and say so with `Propagate`). fred queues commands
/// while it reconnects; a command the cache has given up on must not be sent once the
/// connection is back, where it would land long after its caller was told it failed (and could
/// overwrite a newer value written meanwhile by another instance).
async fn writes_that_timed_out_during_an_outage_are_not_replayed_after_it(shared: &mut Shared) {
    // One connection, and a pool of three (the bus on one, commands on the others: each
    // reconnects on its own).
    for (name, pool) in [("replay", 1), ("replaypool", 3)] {
        not_replayed(shared, name, pool).await;
    }
}

async fn not_replayed(shared: &mut Shared, name: &str, pool: usize) {
    let cache = LayerCache::builder(name)
        .redis_url(shared.url())
        .l2_pool_size(pool)
        .l2_command_timeout(TIMEOUT)
        .l2_error_policy(layercache::L2ErrorPolicy::Propagate)
        // Keep the breaker shut: every write below goes to fred and times out there.
        .l2_breaker_threshold(1_000)
        .l2_repair_capacity(0)
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    shared.kill_all();
    for i in 0..5 {
        let written = r.insert(&format!("lost{i}"), i).await;
        assert!(written.is_err(), "write {i} during the outage succeeded");
    }
    // With no room for keys, the journal repairs by moving the region's generation: it
    // writes no data key, so any key found below was replayed by the client.
    assert_eq!(
        cache.pending_repairs(),
        1,
        "unconfirmed writes are journaled"
    );
    let before = r.generation();
    shared.restart_all();
    resumes(shared, &cache, &r).await;
    wait_until("the journal's repair", Duration::from_secs(10), || {
        let cache = cache.clone();
        async move { cache.pending_repairs() == 0 }
    })
    .await;
    assert_ne!(r.generation(), before, "the repair moved the generation");
    let replayed: Vec<String> = shared
        .data_keys(name)
        .await
        .into_iter()
        .filter(|k| k.contains("lost"))
        .collect();
    assert!(
        replayed.is_empty(),
        "replayed after the outage: {replayed:?}"
    );
}

/// A service restarting while Redis is down: with the default `L2Startup::FailFast` it cannot
/// start; with `L2Startup::Degraded` it starts, serves from the loader and L1, and joins Redis
/// when it answers — generation read, bus subscribed, L1 flushed (what it loaded alone may be
/// stale), and writes shared with another instance both ways.
async fn a_degraded_start_serves_without_redis_and_joins_it_when_it_answers(shared: &mut Shared) {
    shared.kill_all();
    let url = shared.url();
    let refused = LayerCache::builder("deg")
        .redis_url(&url)
        .l2_connect_timeout(TIMEOUT)
        .build()
        .await;
    assert!(refused.is_err(), "fail-fast started without redis");
    // A degraded cache that never reaches Redis still shuts down promptly.
    let never = LayerCache::builder("deg-never")
        .redis_url(&url)
        .l2_startup(layercache::L2Startup::Degraded)
        .l2_connect_timeout(TIMEOUT)
        .build()
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), never.shutdown()).await;
    assert!(closed.is_ok(), "shutdown hung while redis was down");
    drop(never);
    let cache = LayerCache::builder("deg")
        .redis_url(&url)
        .l2_startup(layercache::L2Startup::Degraded)
        .l2_connect_timeout(TIMEOUT)
        // Generous: after joining, calls must not time out on a machine busy with other tests.
        .l2_command_timeout(Duration::from_secs(1))
        .l2_reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .l2_breaker_cooldown(Duration::from_millis(200))
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    assert!(!cache.l2_connected());
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    assert_eq!(r.generation(), None, "no generation without redis");
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let took = timed_read(&r, "k", &loads).await;
        assert!(took < Duration::from_secs(2), "read took {took:?}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "L1 serves what was loaded");

    shared.restart_all();
    wait_until("the cache to join redis", Duration::from_secs(10), || {
        let (cache, r) = (cache.clone(), r.clone());
        async move {
            cache.l2_connected()
                && !cache.l2_breaker_open()
                && r.generation().is_some()
                && cache.bus_status().is_some_and(|s| s.healthy)
        }
    })
    .await;
    assert!(cache.flushes(layercache::FlushReason::Reconnect) >= 1);
    assert!(
        r.get("k").await.unwrap().is_none(),
        "what was loaded alone was not flushed on joining"
    );
    // Writes flow both ways with an instance that started normally (announced, so each
    // side's copy is dropped when the other writes).
    let other = shared.builder("deg").build().await.unwrap();
    let ro = other.region::<str, u64>("r").build().await.unwrap();
    assert_eq!(ro.get("x").await.unwrap(), None);
    r.insert("x", 5).await.unwrap();
    support::caught_up(&other, &cache).await;
    assert_eq!(ro.get("x").await.unwrap().as_deref(), Some(&5));
    assert!(other.stats().l2_hits >= 1, "{:?}", other.stats());
    ro.insert("x", 6).await.unwrap();
    support::caught_up(&cache, &other).await;
    assert_eq!(r.get("x").await.unwrap().as_deref(), Some(&6));
}

async fn redis_down_falls_back_to_the_loader_or_propagates_by_policy(shared: &mut Shared) {
    // Keeps L1 through the coherence loss an outage is: shows L1 serving during it.
    let cache = shared
        .builder("down")
        .coherence_loss_policy(CoherenceLossPolicy::KeepUntilTtl)
        // "cached" is written by the other instance just before: no cooldown keeps it out.
        .l1_write_cooldown(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let strict = shared
        .builder("down")
        .l2_error_policy(L2ErrorPolicy::Propagate)
        .build()
        .await
        .unwrap();
    let region = cache.region::<str, u64>("r").build().await.unwrap();
    let strict_region = strict.region::<str, u64>("r").build().await.unwrap();
    // (Each insert also drops the other instance's copy over the bus: insert in turn and wait.)
    strict_region.insert("cached", 1).await.unwrap();
    caught_up(&cache, &strict).await;
    region.insert("cached", 1).await.unwrap();
    shared.kill_all();
    for c in [&cache, &strict] {
        wait_until(
            "the bus to notice the outage",
            Duration::from_secs(10),
            || {
                let c = c.clone();
                async move { c.flushes(FlushReason::Disconnect) >= 1 }
            },
        )
        .await;
    }

    // L1 still serves (kept by policy); a cold key is loaded; failures are counted, not
    // returned.
    assert_eq!(*region.get("cached").await.unwrap().unwrap(), 1);
    let v = region
        .get_or_load("cold", |_| async { Ok::<_, std::io::Error>(2) })
        .await
        .unwrap();
    assert_eq!(*v, 2);
    region.insert("w", 3).await.unwrap();
    assert_eq!(
        *region.get("w").await.unwrap().unwrap(),
        3,
        "insert still updates L1"
    );
    assert!(cache.stats().l2_errors >= 2, "{:?}", cache.stats());

    // The default policy flushed L1 when the outage began: nothing possibly stale is served.
    let err = strict_region.get("cached").await.unwrap_err();
    assert!(err.is_redis(), "{err}");
    let err = strict_region.insert("w", 4).await.unwrap_err();
    assert!(err.is_redis(), "{err}");
    assert_eq!(
        *strict_region.get("w").await.unwrap().unwrap(),
        4,
        "L1 updated before the error"
    );
}

async fn build_fails_clearly_when_redis_is_unreachable(shared: &mut Shared) {
    let url = shared.url();
    shared.kill_all();
    let err = LayerCache::builder("x")
        .redis_url(url)
        .l2_connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_redis(), "{err}");
}

/// Scripts go to Redis by hash (`EVALSHA`), their text once per server (`SCRIPT LOAD`); after
/// `SCRIPT FLUSH` (or a restart) every script is loaded again on first use and the calls
/// succeed: writes, loads with tags and the load lock, tag and region invalidation.
async fn scripts_run_by_hash_and_are_loaded_again_after_script_flush(shared: &mut Shared) {
    let cache = shared.builder("sha").build().await.unwrap();
    let r = cache
        .region::<str, u64>("r")
        .entry_options(EntryOptions::new().distributed_lock(true))
        .build()
        .await
        .unwrap();
    let exercise = |round: u64| {
        let r = r.clone();
        let cache = cache.clone();
        async move {
            r.insert("k", round).await.unwrap();
            assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&round));
            let options = EntryOptions::new().distributed_lock(true);
            let loaded = r
                .entry("loaded")
                .options(&options)
                .tags(&["t"])
                .or_load(move |_| async move { Ok::<_, std::io::Error>(round) })
                .await
                .unwrap();
            assert_eq!(*loaded, round);
            cache.invalidate_tag("t").await.unwrap();
            r.invalidate("k").await.unwrap();
            r.invalidate_all().await.unwrap();
            assert_eq!(r.get("k").await.unwrap(), None);
        }
    };
    exercise(1).await;
    let loads = shared.command_calls("script|load").await;
    assert!(loads > 0, "the scripts were loaded");
    assert_eq!(
        shared.command_calls("eval").await,
        0,
        "no script sent as text"
    );
    let by_hash = shared.command_calls("evalsha").await;
    exercise(2).await;
    assert_eq!(
        shared.command_calls("script|load").await,
        loads,
        "loaded once per server"
    );
    assert!(shared.command_calls("evalsha").await > by_hash);

    shared.flush_scripts().await;
    exercise(3).await;
    assert!(
        shared.command_calls("script|load").await > loads,
        "loaded again"
    );
    assert_eq!(cache.stats().l2_errors, 0, "{:?}", cache.stats());
}
