//! Stampede protection and freshness against a real redis-server: the distributed load lock,
//! early refresh (soft TTL and XFetch), fail-safe, loader timeouts, negative caching, TTL
//! jitter and sliding expiration.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;
#[macro_use]
mod topologies;

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::prelude::KeysInterface;
use layercache::{EntryOptions, ErrorKind, LayerCache, Region};
use support::{caught_up, wait_until, Shared};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(10);

async fn instance(shared: &Shared, name: &str) -> LayerCache {
    instance_of(shared.builder(name)).await
}

async fn instance_of(b: layercache::LayerCacheBuilder) -> LayerCache {
    b.lock_ttl(Duration::from_millis(400))
        .lock_wait(Duration::from_secs(5))
        .build()
        .await
        .unwrap()
}

async fn region(c: &LayerCache) -> Region<str, u64> {
    c.region::<str, u64>("r").build().await.unwrap()
}

/// 4 instances x 250 callers on one cold key; returns how many times the loader ran.
async fn stampede(shared: &Shared, lock: bool) -> (usize, Vec<LayerCache>) {
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(instance(shared, if lock { "lk" } else { "nolk" }).await);
    }
    let opts = EntryOptions::new().distributed_lock(lock);
    let calls = Arc::new(AtomicUsize::new(0));
    // A gate rather than a `Notify`: a load started after the release (which would be a
    // failure of the lock) must finish and be counted, not wait forever.
    let (release, gate) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for c in &caches {
        let r = region(c).await;
        for _ in 0..250 {
            let (r, calls, mut gate) = (r.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                r.entry("hot")
                    .options(&opts)
                    .or_load(move |_| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok::<_, std::io::Error>(42)
                    })
                    .await
            }));
        }
    }
    // Hold the loader until every caller is in: 249 joined per instance, and either the
    // three other instances waiting on the lock, or four loaders started.
    wait_until("all callers to be waiting", WAIT, || {
        let caches = caches.clone();
        let calls = calls.clone();
        async move {
            let joined: u64 = caches.iter().map(|c| c.stats().coalesced).sum();
            let waiting: u64 = caches.iter().map(|c| c.stats().lock_waits).sum();
            let started = calls.load(Ordering::SeqCst);
            joined >= 4 * 249
                && if lock {
                    waiting >= 3 && started >= 1
                } else {
                    started >= 4
                }
        }
    })
    .await;
    release.send_replace(true);
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap(), 42);
    }
    (calls.load(Ordering::SeqCst), caches)
}

async fn with_the_lock_one_load_serves_four_instances(shared: &Shared) {
    let (calls, caches) = stampede(shared, true).await;
    assert_eq!(calls, 1, "the loader ran {calls} times");
    let acquired: u64 = caches.iter().map(|c| c.stats().locks_acquired).sum();
    let takeovers: u64 = caches.iter().map(|c| c.stats().lock_takeovers).sum();
    assert_eq!((acquired, takeovers), (1, 0));
}

async fn without_the_lock_at_most_one_load_per_instance(shared: &Shared) {
    let (calls, caches) = stampede(shared, false).await;
    assert!((1..=4).contains(&calls), "the loader ran {calls} times");
    for c in &caches {
        assert!(c.stats().loads <= 1, "{:?}", c.stats());
    }
}

async fn a_dead_lock_holder_is_taken_over_after_the_lock_ttl(shared: &Shared) {
    let builder = shared.builder("dead");
    // Instance A runs in a runtime of its own, which we then shut down mid-load: its tasks
    // (the load and the lock renewal) are dropped, as in a crashed process.
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = builder
                .lock_ttl(Duration::from_millis(400))
                .build()
                .await
                .unwrap();
            let ra = region(&a).await;
            let opts = EntryOptions::new().distributed_lock(true);
            let r2 = ra.clone();
            tokio::spawn(async move {
                r2.entry("k")
                    .options(&opts)
                    .or_load(|_| std::future::pending::<Result<u64, std::io::Error>>())
                    .await
            });
            let deadline = std::time::Instant::now() + WAIT;
            while a.stats().locks_acquired < 1 {
                assert!(std::time::Instant::now() < deadline);
                tokio::task::yield_now().await;
            }
        });
        rt.shutdown_background();
    });
    holder.join().unwrap();

    let b = instance(shared, "dead").await;
    let rb = region(&b).await;
    let opts = EntryOptions::new().distributed_lock(true);
    let v = tokio::time::timeout(
        WAIT,
        rb.entry("k")
            .options(&opts)
            .or_load(|_| async { Ok::<_, std::io::Error>(7) }),
    )
    .await
    .expect("the waiter must not hang")
    .unwrap();
    assert_eq!(*v, 7);
    let s = b.stats();
    assert_eq!(
        (s.lock_waits, s.locks_acquired, s.loads),
        (1, 1, 1),
        "{s:?}"
    );
    assert_eq!(
        s.lock_takeovers, 0,
        "the lock should lapse within its TTL, not the wait"
    );
}

/// Reads `key` through `get_or_load_with` in a loop until `done` holds (10 s at most), with a
/// loader returning increasing versions; checks versions never go back. Returns the reads.
async fn hammer(
    c: &LayerCache,
    r: &Region<str, u64>,
    opts: &EntryOptions,
    version: &Arc<AtomicU64>,
    done: impl Fn(&layercache::Stats) -> bool,
) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    let mut last = 0;
    let mut reads = 0;
    while !done(&c.stats()) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {:?}",
            c.stats()
        );
        let version = version.clone();
        let v = *r
            .entry("k")
            .options(opts)
            .or_load(move |_| async move {
                tokio::time::sleep(Duration::from_millis(20)).await; // a slow source
                Ok::<_, std::io::Error>(version.fetch_add(1, Ordering::SeqCst) + 1)
            })
            .await
            .unwrap();
        assert!(v >= last, "went back from {last} to {v}");
        last = v;
        reads += 1;
        tokio::time::sleep(Duration::from_millis(2)).await; // pacing, not waiting
    }
    reads
}

async fn early_refresh_keeps_a_hot_key_off_the_callers_path(shared: &Shared) {
    let c = instance(shared, "hot").await;
    let r = region(&c).await;
    let opts = EntryOptions::new()
        .ttl(Duration::from_millis(600))
        .soft_ttl(Duration::from_millis(100));
    let version = Arc::new(AtomicU64::new(0));
    // Read continuously across several soft expiries and well past the first hard expiry.
    let reads = hammer(&c, &r, &opts, &version, |s| s.refreshes >= 5).await;
    let s = c.stats();
    assert_eq!(
        s.loads, 1,
        "only the first read may load on the caller's path: {s:?}"
    );
    assert!(reads > 10);
    assert!(version.load(Ordering::SeqCst) >= 5);
}

async fn xfetch_refreshes_before_expiry_without_a_soft_ttl(shared: &Shared) {
    let c = instance(shared, "xf").await;
    let r = region(&c).await;
    // delta (~20 ms) * beta (25) = ~0.5 s of head start on a 1 s TTL.
    let opts = EntryOptions::new()
        .ttl(Duration::from_secs(1))
        .xfetch_beta(25.0);
    let version = Arc::new(AtomicU64::new(0));
    hammer(&c, &r, &opts, &version, |s| s.refreshes >= 3).await;
    let s = c.stats();
    assert_eq!(
        s.loads, 1,
        "XFetch should refresh before every expiry: {s:?}"
    );
}

async fn fail_safe_serves_stale_until_max_age_then_errors_then_recovers(shared: &Shared) {
    let c = instance(shared, "fs").await;
    let r = region(&c).await;
    let opts = EntryOptions::new()
        .ttl(Duration::from_millis(200))
        .fail_safe_max_age(Duration::from_millis(800))
        .fail_safe_throttle(Duration::from_millis(50));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |v: u64| {
        let (failing, calls) = (failing.clone(), calls.clone());
        move |_| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if failing.load(Ordering::SeqCst) {
                Err(std::io::Error::other("source down"))
            } else {
                Ok(v)
            }
        }
    };
    assert_eq!(
        *r.entry("k").options(&opts).or_load(load(1)).await.unwrap(),
        1
    );
    failing.store(true, Ordering::SeqCst);

    // Stale 1 is served while the source fails, until the max age has passed; then an error.
    let deadline = std::time::Instant::now() + WAIT;
    let err = loop {
        assert!(std::time::Instant::now() < deadline);
        match r.entry("k").options(&opts).or_load(load(99)).await {
            Ok(v) => assert_eq!(*v, 1, "only the stale value may be served"),
            Err(e) => break e,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(err.kind(), ErrorKind::Loader);
    let s = c.stats();
    assert!(s.fail_safe_serves >= 2, "{s:?}");
    // The throttle spared the source: far fewer loader calls than reads.
    let failing_calls = calls.load(Ordering::SeqCst) - 1;
    assert!(
        (failing_calls as u64) < s.l1_hits + s.fail_safe_serves,
        "throttle did not reduce calls: {failing_calls} calls, {s:?}"
    );

    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        *r.entry("k").options(&opts).or_load(load(2)).await.unwrap(),
        2
    );
    assert_eq!(
        *r.entry("k").options(&opts).or_load(load(3)).await.unwrap(),
        2,
        "cached again"
    );
}

async fn soft_timeout_returns_stale_and_the_load_lands_later(shared: &Shared) {
    let c = instance(shared, "soft").await;
    let r = region(&c).await;
    let opts = EntryOptions::new()
        .ttl(Duration::from_millis(100))
        .fail_safe_max_age(Duration::from_secs(30))
        .loader_soft_timeout(Duration::from_millis(50))
        .loader_hard_timeout(Duration::from_secs(20));
    assert_eq!(
        *r.entry("k")
            .options(&opts)
            .or_load(|_| async { Ok::<_, std::io::Error>(1) })
            .await
            .unwrap(),
        1
    );
    // Wait (by reading) for the value to go stale: a plain read then misses.
    let misses = c.stats().misses;
    wait_until("the value to expire", WAIT, || {
        let c = c.clone();
        let r = r.clone();
        async move {
            let _ = r.get("k").await;
            c.stats().misses > misses
        }
    })
    .await;
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let v = r
        .entry("k")
        .options(&opts)
        .or_load(move |_| async move {
            gate.notified().await;
            Ok::<_, std::io::Error>(2)
        })
        .await
        .unwrap();
    assert_eq!(*v, 1, "the stale value comes back at the soft timeout");
    assert_eq!(c.stats().soft_timeouts, 1);
    release.notify_one();
    wait_until("the background load to land", WAIT, || {
        let r = r.clone();
        async move { r.get("k").await.unwrap().as_deref() == Some(&2) }
    })
    .await;
}

async fn hard_timeout_is_an_error_and_caches_nothing(shared: &Shared) {
    let c = instance(shared, "hard").await;
    let r = region(&c).await;
    let opts = EntryOptions::new().loader_hard_timeout(Duration::from_millis(100));
    let err = r
        .entry("k")
        .options(&opts)
        .or_load(|_| std::future::pending::<Result<u64, std::io::Error>>())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert!(err.to_string().contains("hard timeout"), "{err}");
    assert_eq!(c.stats().hard_timeouts, 1);
    assert!(r.get("k").await.unwrap().is_none());
    let v = r
        .entry("k")
        .options(&opts)
        .or_load(|_| async { Ok::<_, std::io::Error>(5) })
        .await
        .unwrap();
    assert_eq!(*v, 5, "the next call retries");
}

async fn not_found_is_cached_for_the_negative_ttl_in_both_tiers(shared: &Shared) {
    let a = instance(shared, "neg").await;
    let b = instance(shared, "neg").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let opts = EntryOptions::new().negative_ttl(Duration::from_secs(30));
    let calls = Arc::new(AtomicUsize::new(0));
    let lookup = || {
        let calls = calls.clone();
        move |_| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<u64>, std::io::Error>(None)
        }
    };
    assert!(ra
        .entry("ghost")
        .options(&opts)
        .or_load_optional(lookup())
        .await
        .unwrap()
        .is_none());
    assert!(ra
        .entry("ghost")
        .options(&opts)
        .or_load_optional(lookup())
        .await
        .unwrap()
        .is_none());
    assert!(ra.get("ghost").await.unwrap().is_none());
    // Another instance finds the cached "not found" in Redis.
    assert!(rb
        .entry("ghost")
        .options(&opts)
        .or_load_optional(lookup())
        .await
        .unwrap()
        .is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().negative_stores, 1);
    assert!(a.stats().negative_hits >= 2 && b.stats().negative_hits >= 1);
    // Without a negative TTL nothing is cached.
    let plain = EntryOptions::new();
    assert!(ra
        .entry("other")
        .options(&plain)
        .or_load_optional(lookup())
        .await
        .unwrap()
        .is_none());
    assert!(ra
        .entry("other")
        .options(&plain)
        .or_load_optional(lookup())
        .await
        .unwrap()
        .is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // A real value replaces the negative entry.
    ra.insert("ghost", 9).await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(*rb.get("ghost").await.unwrap().unwrap(), 9);
}

async fn ttl_jitter_spreads_expiries(shared: &Shared) {
    let raw = shared.raw().await;
    let c = instance(shared, "jit").await;
    let r = region(&c).await;
    let opts = EntryOptions::new()
        .ttl(Duration::from_secs(60))
        .jitter(Duration::from_secs(30));
    let mut pttls = Vec::new();
    for i in 0..100u64 {
        r.entry(&i.to_string())
            .options(&opts)
            .insert(i)
            .await
            .unwrap();
        let pttl: i64 = raw
            .pttl(r.redis_key(&i.to_string()).unwrap())
            .await
            .unwrap();
        pttls.push(pttl);
    }
    let (min, max) = (*pttls.iter().min().unwrap(), *pttls.iter().max().unwrap());
    assert!(min > 59_000 && max <= 90_000, "{min}..{max}");
    assert!(max - min > 15_000, "not spread: {min}..{max}");
    // Without jitter, all the same (to the millisecond of the write).
    let fixed = EntryOptions::new().ttl(Duration::from_secs(60));
    r.entry("a").options(&fixed).insert(1).await.unwrap();
    let pttl: i64 = raw.pttl(r.redis_key("a").unwrap()).await.unwrap();
    assert!((59_000..=60_000).contains(&pttl));
}

async fn sliding_expiration_extends_redis_at_most_once_per_interval(shared: &Shared) {
    let raw = shared.raw().await;
    let a = instance(shared, "slide").await;
    let b = instance(shared, "slide").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let opts = EntryOptions::new()
        .ttl(Duration::from_secs(10))
        .sliding(Duration::from_millis(300));
    let ra = ra;
    ra.entry("k").options(&opts).insert(1).await.unwrap();
    let key = ra.redis_key("k").unwrap();
    // (The commands on this cache's keys, from the slow logs: other tests share a cluster.)
    shared.log_every_command().await;
    let calls = |name: &'static str| async move {
        let names = shared.commands_naming("slide:").await;
        names.iter().filter(|n| *n == name).count()
    };
    let before = calls("PEXPIRE").await;
    for _ in 0..500 {
        ra.get("k").await.unwrap();
    }
    assert_eq!(
        calls("PEXPIRE").await,
        before,
        "extended within the interval"
    );
    // Let Redis's TTL run down a little, then read past the interval: one extension.
    wait_until("one extension", WAIT, || {
        let (a, ra) = (a.clone(), ra.clone());
        async move {
            let _ = ra.get("k").await;
            a.stats().l2_extends >= 1
        }
    })
    .await;
    wait_until("the PEXPIRE to reach redis", WAIT, || async {
        calls("PEXPIRE").await == before + 1
    })
    .await;
    for _ in 0..500 {
        ra.get("k").await.unwrap();
    }
    assert!(calls("PEXPIRE").await <= before + 2);
    let pttl: i64 = raw.pttl(key.as_str()).await.unwrap();
    assert!(pttl > 9_000, "{pttl}");
    // A Redis read of a sliding entry extends it in the same command (GETEX).
    let getex = calls("GETEX").await;
    let rb_opts = rb.clone();
    assert_eq!(
        *rb_opts
            .entry("k")
            .options(&opts)
            .or_load(|_| async { Ok::<_, std::io::Error>(0) })
            .await
            .unwrap(),
        1
    );
    assert_eq!(calls("GETEX").await, getex + 1);
}

/// An entry kept alive by reads on one instance is alive for the others too, past the
/// lifetime it was written with (its envelope's expiry is that first lifetime; Redis's TTL is
/// what the reads extend); unread, it ends everywhere.
async fn a_slid_entry_outlives_its_first_ttl_on_every_instance(shared: &Shared) {
    let a = instance(shared, "slid").await;
    let b = instance(shared, "slid").await;
    let sliding = EntryOptions::new()
        .ttl(Duration::from_secs(1))
        .sliding(Duration::from_millis(100));
    let build = |c: &LayerCache| c.region::<str, u64>("r").entry_options(sliding).build();
    let (ra, rb) = (build(&a).await.unwrap(), build(&b).await.unwrap());
    ra.insert("k", 1).await.unwrap();
    // Read on A until it has extended the entry in Redis 25 times (at most once per 100 ms:
    // more than two lifetimes).
    let extends = a.stats().l2_extends;
    wait_until("A's reads to extend the entry 25 times", WAIT, || {
        let (a, ra) = (a.clone(), ra.clone());
        async move {
            assert_eq!(
                ra.get("k").await.unwrap().as_deref(),
                Some(&1),
                "ended while read"
            );
            a.stats().l2_extends >= extends + 25
        }
    })
    .await;
    assert_eq!(
        rb.get("k").await.unwrap().as_deref(),
        Some(&1),
        "B found it expired although A's reads kept it alive"
    );
    // Unread (a read would extend it), it ends in Redis, then in both L1s.
    let key = ra.redis_key("k").unwrap();
    let raw = shared.raw().await;
    wait_until("the unread entry to end in redis", WAIT, || {
        let (raw, key) = (raw.clone(), key.clone());
        async move { raw.exists::<u64, _>(key.as_str()).await.unwrap() == 0 }
    })
    .await;
    assert_eq!(ra.get("k").await.unwrap(), None);
    assert_eq!(rb.get("k").await.unwrap(), None);
}

async fn a_panicking_loader_fails_every_waiter_and_the_next_call_retries(shared: &Shared) {
    let c = instance(shared, "panic").await;
    let r = region(&c).await;
    let release = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (r, release) = (r.clone(), release.clone());
        tasks.push(tokio::spawn(async move {
            r.get_or_load("k", move |_| async move {
                release.notified().await;
                if true {
                    panic!("loader bug");
                }
                Ok::<u64, std::io::Error>(1)
            })
            .await
        }));
    }
    wait_until("every caller to join", WAIT, || {
        let c = c.clone();
        async move { c.stats().coalesced >= 49 }
    })
    .await;
    release.notify_waiters();
    for t in tasks {
        let err = t
            .await
            .expect("a loader panic must not reach the callers")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Loader);
    }
    assert!(r.get("k").await.unwrap().is_none(), "nothing cached");
    let v = r
        .get_or_load("k", |_| async { Ok::<_, std::io::Error>(2) })
        .await
        .unwrap();
    assert_eq!(*v, 2);
    assert_eq!(c.stats().load_errors, 1);
}

/// Uncontended, the load lock costs no round trip of its own: the read that finds nothing
/// takes it (one script), the load fills, the lock is released: two scripts and the fill's
/// `SET … NX` and its fence's `GET` (a write over nothing needs no script). (The slow log lists a script's own
/// commands after it, newest first; before, the lock was a `SET … NX` of its own after a plain
/// `GET`.)
async fn an_uncontended_load_takes_the_lock_with_its_read(shared: &Shared) {
    let c = shared.builder("lockread").build().await.unwrap();
    let r = c
        .region::<str, u64>("item")
        .entry_options(EntryOptions::new().distributed_lock(true))
        .build()
        .await
        .unwrap();
    // Loads the scripts once (the first run of each on a server is a NOSCRIPT and a retry), on
    // every primary of a cluster.
    for i in 0..64 {
        r.get_or_load(&format!("warm-up-{i}"), |_| async {
            Ok::<_, std::io::Error>(0)
        })
        .await
        .unwrap();
    }
    shared.log_every_command().await;
    let v = r
        .get_or_load("k", |_| async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    assert_eq!(*v, 7);
    // (The commands on this cache's keys: other tests share a cluster.)
    let names = shared.commands_naming("lockread:").await;
    let expected = [
        "EVALSHA", "DEL", "GET", // release: check the token, delete
        "EVALSHA", "SET", "GET", // fill: check the generation, write
        "EVALSHA", "SET", "GET", // read, then take the lock: nothing was there
    ];
    match shared {
        // The first fill in a bucket the region never wrote to finds no copy of the
        // generation there after its write: the copy is caught up (a GET of the region's
        // generation, on its own node, and the raise script) and the write stands, in the live
        // key space — once per bucket and region (docs/SCALING.md).
        Shared::Cluster(_) => {
            let on_the_bucket = [
                &expected[..3],
                &["EVALSHA", "SET", "GET"], // the copy raised
                &["GET", "SET"],            // the fill: the write, then its copy read (none)
                &expected[6..],
            ]
            .concat();
            let generation_read = ["GET"];
            assert!(
                names == [&generation_read[..], &on_the_bucket].concat()
                    || names == [&on_the_bucket[..], &generation_read].concat(),
                "{names:?}"
            );
        }
        _ => {
            let on_one_server = [
                &expected[..3],
                &["GET", "SET"], // fill: the write, then its fence read (no script)
                &expected[6..],
            ]
            .concat();
            assert_eq!(names, on_one_server);
        }
    }
    let stats = c.stats();
    assert_eq!((stats.locks_acquired, stats.lock_waits), (65, 0));
    c.shutdown().await;
}

on_redis_and_cluster!(
    a_dead_lock_holder_is_taken_over_after_the_lock_ttl,
    ttl_jitter_spreads_expiries,
    sliding_expiration_extends_redis_at_most_once_per_interval,
    a_slid_entry_outlives_its_first_ttl_on_every_instance,
    an_uncontended_load_takes_the_lock_with_its_read,
    with_the_lock_one_load_serves_four_instances,
    without_the_lock_at_most_one_load_per_instance,
    early_refresh_keeps_a_hot_key_off_the_callers_path,
    xfetch_refreshes_before_expiry_without_a_soft_ttl,
    fail_safe_serves_stale_until_max_age_then_errors_then_recovers,
    soft_timeout_returns_stale_and_the_load_lands_later,
    hard_timeout_is_an_error_and_caches_nothing,
    not_found_is_cached_for_the_negative_ttl_in_both_tiers,
    a_panicking_loader_fails_every_waiter_and_the_next_call_retries,
);
