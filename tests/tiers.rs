//! The two tiers end to end against a real redis-server.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;
#[macro_use]
mod topologies;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::prelude::KeysInterface;
use layercache::{envelope, EntryOptions, ErrorKind, LayerCache, Postcard};
use serde::{Deserialize, Serialize};
use support::{caught_up, command_calls, raw_client, wait_until, Shared};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    roles: Vec<String>,
    manager: Option<Box<User>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle { r: f64 },
    Square(u32),
    Empty,
}

fn ada() -> User {
    User {
        id: 1,
        name: "Ada".into(),
        roles: vec!["admin".into(), "dev".into()],
        manager: Some(Box::new(User {
            id: 0,
            name: "Grace".into(),
            roles: vec![],
            manager: None,
        })),
    }
}

async fn values_round_trip_through_both_tiers_and_a_second_instance(shared: &Shared) {
    let a = shared.builder("rt").build().await.unwrap();
    // No cooldown: B reads keys A wrote just before, which a cooldown keeps out of B's L1.
    let b = shared
        .builder("rt")
        .l1_write_cooldown(Duration::ZERO)
        .build()
        .await
        .unwrap();

    let users_a = a.region::<u64, User>("user").build().await.unwrap();
    let shapes_a = a.region::<str, Shape>("shape").build().await.unwrap();
    let maps_a = a
        .region::<String, BTreeMap<String, Vec<u64>>>("map")
        .build()
        .await
        .unwrap();
    let texts_a = a
        .region_with_codec::<str, String, Postcard>("text", Postcard)
        .build()
        .await
        .unwrap();

    let mut map = BTreeMap::new();
    map.insert("primes".to_owned(), vec![2, 3, 5, 7]);
    map.insert("empty".to_owned(), vec![]);

    users_a.insert(&1, ada()).await.unwrap();
    shapes_a
        .insert("c", Shape::Circle { r: 1.5 })
        .await
        .unwrap();
    shapes_a.insert("s", Shape::Square(4)).await.unwrap();
    shapes_a.insert("e", Shape::Empty).await.unwrap();
    maps_a.insert("m", map.clone()).await.unwrap();
    texts_a.insert("t", "ünïcødé ✓".to_owned()).await.unwrap();

    // Instance A reads its own writes from L1.
    assert_eq!(*users_a.get(&1).await.unwrap().unwrap(), ada());
    assert_eq!(a.stats().l1_hits, 1);
    assert_eq!(a.stats().l2_hits, 0);

    // Instance B has an empty L1: the first reads come from Redis, the second from L1 (once B
    // has applied A's announcements, which on a cluster leave a round trip after each write:
    // one applied between B's two reads would drop B's copy).
    caught_up(&b, &a).await;
    let users_b = b.region::<u64, User>("user").build().await.unwrap();
    let shapes_b = b.region::<str, Shape>("shape").build().await.unwrap();
    let maps_b = b
        .region::<String, BTreeMap<String, Vec<u64>>>("map")
        .build()
        .await
        .unwrap();
    let texts_b = b
        .region_with_codec::<str, String, Postcard>("text", Postcard)
        .build()
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(*users_b.get(&1).await.unwrap().unwrap(), ada());
        assert_eq!(
            *shapes_b.get("c").await.unwrap().unwrap(),
            Shape::Circle { r: 1.5 }
        );
        assert_eq!(*shapes_b.get("s").await.unwrap().unwrap(), Shape::Square(4));
        assert_eq!(*shapes_b.get("e").await.unwrap().unwrap(), Shape::Empty);
        assert_eq!(*maps_b.get("m").await.unwrap().unwrap(), map);
        assert_eq!(&*texts_b.get("t").await.unwrap().unwrap(), "ünïcødé ✓");
    }
    let s = b.stats();
    assert_eq!((s.l2_hits, s.l1_hits, s.misses), (6, 6, 0), "{s:?}");
    assert_eq!(s.decode_errors, 0);

    // A missing key is a miss in both tiers.
    assert!(users_b.get(&404).await.unwrap().is_none());
    assert_eq!(b.stats().misses, 1);
}

async fn an_l1_hit_sends_no_command_to_redis(shared: &Shared) {
    // A long heartbeat timeout: on a machine starved by the other tests (a cluster starting) a
    // late heartbeat would flush L1, and the next read would go to Redis.
    let cache = shared
        .builder("hot")
        .bus_heartbeat_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let region = cache.region::<str, String>("r").build().await.unwrap();
    region.insert("k", "v".to_owned()).await.unwrap();

    // Every command on the cache's keys, on any server (the slow logs; other tests share a
    // cluster); on a server of its own, every command at all (below).
    shared.log_every_command().await;
    let Shared::Redis(server) = shared else {
        for _ in 0..1000 {
            assert_eq!(&*region.get("k").await.unwrap().unwrap(), "v");
        }
        assert_eq!(shared.commands_naming("hot:").await, Vec::<String>::new());
        assert_eq!(cache.stats().l1_hits, 1000);
        return;
    };
    let raw = raw_client(server).await;
    let gets = command_calls(&raw, "get").await;
    let before = command_calls_by_name(&raw).await;
    for _ in 0..1000 {
        assert_eq!(&*region.get("k").await.unwrap().unwrap(), "v");
    }
    assert_eq!(command_calls(&raw, "get").await, gets);
    // Only this test's own INFO calls were served in between, and maybe the bus's own
    // traffic, which runs on the listener's thread whatever the reads do: a heartbeat
    // (`PUBLISH`), or the subscription made at `build()` reaching Redis late on a busy machine
    // (seen once in CI: fred may answer `SUBSCRIBE` before Redis has run it).
    let mut after = command_calls_by_name(&raw).await;
    let mut before = before;
    for bus in ["publish", "subscribe"] {
        after.remove(bus);
        before.remove(bus);
    }
    *before.entry("info".to_owned()).or_default() += 2;
    assert_eq!(after, before);
    assert_eq!(shared.commands_naming("hot:").await, Vec::<String>::new());
    assert_eq!(cache.stats().l1_hits, 1000);
}

/// Calls served per command (`INFO commandstats`).
async fn command_calls_by_name(
    raw: &fred::prelude::Client,
) -> std::collections::BTreeMap<String, u64> {
    let info = support::cmd(raw, "INFO", &["commandstats"])
        .await
        .as_string()
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

async fn large_values_are_stored_compressed_small_ones_plain(shared: &Shared) {
    let raw = shared.raw().await;
    let cache = shared.builder("lz").build().await.unwrap();
    let region = cache.region::<str, String>("doc").build().await.unwrap();

    let big = "all work and no play makes jack a dull boy. ".repeat(200); // ~9 KB
    let small = "short".to_owned();
    region.insert("big", big.clone()).await.unwrap();
    region.insert("small", small.clone()).await.unwrap();

    let big_bytes: Vec<u8> = raw.get(region.redis_key("big").unwrap()).await.unwrap();
    let small_bytes: Vec<u8> = raw.get(region.redis_key("small").unwrap()).await.unwrap();
    assert_eq!(&big_bytes[..4], &envelope::MAGIC);
    assert_eq!(
        big_bytes[6] & envelope::FLAG_LZ4,
        envelope::FLAG_LZ4,
        "big value not compressed"
    );
    assert!(
        big_bytes.len() < big.len() / 4,
        "compressed {} bytes from {}",
        big_bytes.len(),
        big.len()
    );
    assert_eq!(
        small_bytes[6] & envelope::FLAG_LZ4,
        0,
        "small value compressed"
    );
    // bincode: 1 length byte + the text.
    assert_eq!(small_bytes.len(), envelope::HEADER_LEN + 1 + small.len());

    let s = cache.stats();
    assert_eq!(s.compressed_writes, 1);
    assert!(s.bytes_stored < s.bytes_raw / 4, "{s:?}");

    // Both read back intact through a fresh instance.
    let other = shared.builder("lz").build().await.unwrap();
    let r2 = other.region::<str, String>("doc").build().await.unwrap();
    assert_eq!(*r2.get("big").await.unwrap().unwrap(), big);
    assert_eq!(*r2.get("small").await.unwrap().unwrap(), small);
}

async fn a_schema_bump_turns_old_entries_into_misses(shared: &Shared) {
    let v1 = shared.builder("app").build().await.unwrap();
    let old = v1
        .region::<str, (u32, String)>("item")
        .schema_version(1)
        .build()
        .await
        .unwrap();
    old.insert("x", (1, "one".into())).await.unwrap();

    // The next deploy changes the value type and bumps the schema version.
    let v2 = shared.builder("app").build().await.unwrap();
    let new = v2
        .region::<str, (String, u64, bool)>("item")
        .schema_version(2)
        .build()
        .await
        .unwrap();
    assert!(new.get("x").await.unwrap().is_none());
    assert_eq!(
        v2.stats().decode_errors,
        0,
        "an old layout must never be decoded"
    );
    let loaded = new
        .get_or_load("x", |_| async {
            Ok::<_, std::io::Error>(("one".into(), 1, true))
        })
        .await
        .unwrap();
    assert_eq!(*loaded, ("one".to_owned(), 1, true));
    assert_ne!(old.redis_key("x").unwrap(), new.redis_key("x").unwrap());

    // The old deploy still reads its own layout.
    let v1b = shared.builder("app").build().await.unwrap();
    let old_b = v1b
        .region::<str, (u32, String)>("item")
        .schema_version(1)
        .build()
        .await
        .unwrap();
    assert_eq!(
        *old_b.get("x").await.unwrap().unwrap(),
        (1, "one".to_owned())
    );

    // One process cannot register one region name with two layouts.
    let clash = v2
        .region::<str, (u32, String)>("item")
        .schema_version(2)
        .build()
        .await;
    assert_eq!(clash.unwrap_err().kind(), ErrorKind::Config);
}

async fn odd_keys_stay_distinct_and_every_key_has_a_ttl(shared: &Shared) {
    let raw = shared.raw().await;
    let cache = shared.builder("keys").build().await.unwrap();
    let region = cache.region::<[u8], usize>("k").build().await.unwrap();
    let keys: Vec<&[u8]> = vec![
        b"",
        b"*",
        b"?",
        b"[a]",
        b":",
        b"::",
        b"{}",
        b"{a}1",
        b"{a}2",
        b"%",
        b"%25",
        b"a b",
        b"\x00",
        b"\xff\xfe",
        "ключ".as_bytes(),
        b"user:1",
        b"user%3A1",
    ];
    for (i, k) in keys.iter().enumerate() {
        region.insert(*k, i).await.unwrap();
    }
    let stored = shared.data_keys("keys").await;
    assert_eq!(stored.len(), keys.len(), "{stored:?}");
    let data_prefix = format!("keys:f2:k:s1:g{}:", region.generation().unwrap());
    for key in &stored {
        let user_part = key.strip_prefix(&data_prefix).unwrap();
        // On a cluster the bucket's hash tag comes first: the only `{…}` of the key.
        let user_part = match shared {
            Shared::Cluster(_) => {
                user_part
                    .strip_prefix('{')
                    .unwrap()
                    .split_once('}')
                    .unwrap()
                    .1
            }
            _ => user_part,
        };
        assert!(!user_part.contains(['{', '}', '*', '?', '[', ']']), "{key}");
        let pttl: i64 = raw.pttl(key.as_str()).await.unwrap();
        assert!(pttl > 0, "{key} has no TTL ({pttl})");
    }

    // A fresh instance (empty L1) reads each key's own value from Redis.
    let other = shared.builder("keys").build().await.unwrap();
    let r2 = other.region::<[u8], usize>("k").build().await.unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(*r2.get(*k).await.unwrap().unwrap(), i, "key {k:?}");
    }
    assert_eq!(other.stats().l2_hits, keys.len() as u64);

    // Keys written by get_or_load have a TTL too, and it follows the entry options.
    let opts = EntryOptions::new().ttl(Duration::from_secs(30));
    region
        .entry(b"loaded".as_slice())
        .options(&opts)
        .or_load(|_| async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    let pttl: i64 = raw
        .pttl(region.redis_key(b"loaded".as_slice()).unwrap())
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 30_000, "{pttl}");
}

async fn concurrent_loads_of_one_cold_key_run_the_loader_once(shared: &Shared) {
    let cache = shared.builder("flight").build().await.unwrap();
    let region = cache.region::<str, String>("r").build().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());

    let mut tasks = Vec::new();
    for _ in 0..100 {
        let region = region.clone();
        let calls = calls.clone();
        let release = release.clone();
        tasks.push(tokio::spawn(async move {
            region
                .get_or_load("cold", move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok::<_, std::io::Error>("loaded".to_owned())
                })
                .await
        }));
    }
    // Hold the loader until every other caller has joined the flight.
    wait_until(
        "99 callers to join the flight",
        Duration::from_secs(10),
        || {
            let c = cache.clone();
            async move { c.stats().coalesced >= 99 }
        },
    )
    .await;
    release.notify_one();
    for t in tasks {
        assert_eq!(&*t.await.unwrap().unwrap(), "loaded");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!((s.loads, s.misses, s.l2_writes), (1, 1, 1), "{s:?}");
}

async fn a_cancelled_caller_does_not_cancel_the_load_for_the_others(shared: &Shared) {
    let cache = shared.builder("cancel").build().await.unwrap();
    let region = cache.region::<str, u64>("r").build().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());

    let leader = {
        let (region, calls, release) = (region.clone(), calls.clone(), release.clone());
        tokio::spawn(async move {
            region
                .get_or_load("k", move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok::<_, std::io::Error>(42)
                })
                .await
        })
    };
    wait_until("the loader to start", Duration::from_secs(10), || {
        let c = calls.clone();
        async move { c.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let waiter = {
        let region = region.clone();
        tokio::spawn(async move {
            region
                .get_or_load("k", |_| async { Ok::<_, std::io::Error>(0) })
                .await
        })
    };
    wait_until("the second caller to join", Duration::from_secs(10), || {
        let c = cache.clone();
        async move { c.stats().coalesced == 1 }
    })
    .await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    release.notify_one();
    assert_eq!(*waiter.await.unwrap().unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The load completed and filled the cache.
    assert_eq!(*region.get("k").await.unwrap().unwrap(), 42);
}

async fn loader_errors_and_panics_cache_nothing_and_the_next_call_retries(shared: &Shared) {
    let cache = shared.builder("fail").build().await.unwrap();
    let region = cache.region::<str, u64>("r").build().await.unwrap();

    let err = region
        .get_or_load("k", |_| async {
            Err::<u64, _>(std::io::Error::other("db down"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert!(err.to_string().contains("db down"), "{err}");

    let err = region
        .get_or_load("k", |_| async {
            if true {
                panic!("loader bug");
            }
            Ok::<u64, std::io::Error>(1)
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert!(err.to_string().contains("panicked"), "{err}");
    assert!(
        shared.data_keys("fail").await.is_empty(),
        "a failed load wrote to redis"
    );
    assert!(region.get("k").await.unwrap().is_none());

    let v = region
        .get_or_load("k", |_| async { Ok::<_, std::io::Error>(5) })
        .await
        .unwrap();
    assert_eq!(*v, 5);
    let s = cache.stats();
    assert_eq!((s.loads, s.load_errors), (3, 2), "{s:?}");
}

async fn an_insert_during_a_slow_load_wins(shared: &Shared) {
    let raw = shared.raw().await;
    let cache = shared.builder("race").build().await.unwrap();
    let region = cache.region::<str, String>("r").build().await.unwrap();
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());

    let slow = {
        let (region, started, release) = (region.clone(), started.clone(), release.clone());
        tokio::spawn(async move {
            region
                .get_or_load("k", move |_| async move {
                    started.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>("old".to_owned())
                })
                .await
        })
    };
    started.notified().await;
    region.insert("k", "new".to_owned()).await.unwrap();
    release.notify_one();
    // The slow caller's read began before the insert; it may see "old" itself...
    assert_eq!(&*slow.await.unwrap().unwrap(), "old");
    // ...but "old" must not land in either tier afterwards.
    assert_eq!(cache.stats().l1_fills_overtaken, 1, "{}", cache.stats());
    assert_eq!(&*region.get("k").await.unwrap().unwrap(), "new");
    let other = shared.builder("race").build().await.unwrap();
    let r2 = other.region::<str, String>("r").build().await.unwrap();
    assert_eq!(&*r2.get("k").await.unwrap().unwrap(), "new");
    let bytes: Vec<u8> = raw.get(region.redis_key("k").unwrap()).await.unwrap();
    assert!(bytes.ends_with(b"new"));
}

async fn invalidate_removes_from_both_tiers(shared: &Shared) {
    let raw = shared.raw().await;
    let cache = shared.builder("inv").build().await.unwrap();
    let region = cache.region::<u32, u32>("r").build().await.unwrap();
    region.insert(&1, 10).await.unwrap();
    region.invalidate(&1).await.unwrap();
    // What remains in Redis is a tombstone (a miss for everyone), not the value.
    let bytes: Vec<u8> = raw.get(region.redis_key(&1).unwrap()).await.unwrap();
    assert_eq!(bytes.len(), envelope::HEADER_LEN);
    assert_ne!(bytes[6] & envelope::FLAG_TOMBSTONE, 0);
    assert!(region.get(&1).await.unwrap().is_none());
    assert_eq!(cache.stats().l1_hits, 0);
}

async fn oversized_values_are_refused_on_insert_and_kept_out_of_redis_on_load(shared: &Shared) {
    let cache = shared
        .builder("big")
        .max_value_bytes(1000)
        .build()
        .await
        .unwrap();
    let region = cache.region::<str, Vec<u8>>("r").build().await.unwrap();
    let err = region.insert("k", vec![1; 5000]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    let v = region
        .get_or_load("k", |_| async { Ok::<_, std::io::Error>(vec![2u8; 5000]) })
        .await
        .unwrap();
    assert_eq!(v.len(), 5000);
    assert!(shared.data_keys("big").await.is_empty());
    assert_eq!(cache.stats().l2_oversize_skips, 1);
    // Kept in L1 all the same.
    assert_eq!(region.get("k").await.unwrap().unwrap().len(), 5000);
}

/// The loader's context sets the stored lifetime from what it loaded; one the call's options
/// reject (below its soft TTL) is ignored for the call's own.
async fn a_loader_sets_the_lifetime_of_what_it_loaded(shared: &Shared) {
    let raw = shared.raw().await;
    let c = shared.builder("ctx").build().await.unwrap();
    let tokens = c
        .region::<str, String>("token")
        .entry_options(EntryOptions::new().ttl(Duration::from_secs(600)))
        .build()
        .await
        .unwrap();
    let load = |secs: u64| {
        move |name: String, ctx: layercache::LoadContext| async move {
            ctx.set_ttl(Duration::from_secs(secs));
            Ok::<_, std::io::Error>(format!("{name}:{secs}"))
        }
    };
    let got = tokens
        .entry("a")
        .or_load_with_context(load(5))
        .await
        .unwrap();
    assert_eq!(got.as_str(), "a:5");
    let pttl = raw
        .pttl::<i64, _>(tokens.redis_key("a").unwrap())
        .await
        .unwrap();
    assert!(
        (1..=5_000).contains(&pttl),
        "PTTL {pttl} ms, the loader set 5 s"
    );

    let soft = EntryOptions::new()
        .ttl(Duration::from_secs(600))
        .soft_ttl(Duration::from_secs(60));
    tokens
        .entry("b")
        .options(&soft)
        .or_load_with_context(load(5))
        .await
        .unwrap();
    let pttl = raw
        .pttl::<i64, _>(tokens.redis_key("b").unwrap())
        .await
        .unwrap();
    assert!(
        pttl > 500_000,
        "PTTL {pttl} ms: a TTL below the soft TTL must be ignored"
    );
    c.shutdown().await;
}

/// `explain` tells which tier holds a key, how old it is, its tags, and what a `get` would do,
/// through a write, a read on another instance and an invalidation.
async fn explain_follows_a_key_through_both_tiers(shared: &Shared) {
    use layercache::{Held, NextGet};
    let instance = || {
        shared
            .builder("why")
            .l1_write_cooldown(Duration::ZERO)
            .bus_heartbeat_interval(Duration::from_millis(100))
            .build()
    };
    let (a, b) = (instance().await.unwrap(), instance().await.unwrap());
    let options = EntryOptions::new()
        .ttl(Duration::from_secs(60))
        .soft_ttl(Duration::from_secs(30));
    let region = |c: &LayerCache| c.region::<str, String>("r").entry_options(options).build();
    let (ra, rb) = (region(&a).await.unwrap(), region(&b).await.unwrap());
    ra.entry("k")
        .tags(&["team:1"])
        .insert("v".to_owned())
        .await
        .unwrap();
    caught_up(&b, &a).await;

    let why = rb.explain("k").await;
    assert_eq!(why.redis_key, rb.redis_key("k"));
    assert_eq!(why.l1, Held::Nothing);
    let Held::Entry(e) = &why.l2 else {
        panic!("{why:?}")
    };
    assert_eq!(e.tags, ["team:1"]);
    assert!(!e.stale && !e.negative);
    assert!(e.expires_in.unwrap() <= Duration::from_secs(60));
    assert!(e.refresh_in.unwrap() <= Duration::from_secs(30));
    assert_eq!(why.next_get, NextGet::FromRedis);
    assert_eq!(b.stats().l2_hits, 0, "explain counts nothing");

    rb.get("k").await.unwrap().unwrap();
    let why = rb.explain("k").await;
    assert!(
        matches!(&why.l1, Held::Entry(e) if e.tags == ["team:1"]),
        "{why:?}"
    );
    assert_eq!(why.next_get, NextGet::FromL1);

    ra.invalidate("k").await.unwrap();
    caught_up(&b, &a).await;
    let why = rb.explain("k").await;
    assert_eq!(why.l1, Held::Nothing);
    assert!(matches!(why.l2, Held::Tombstone { .. }), "{why:?}");
    assert_eq!(why.next_get, NextGet::Load);
    let shown = why.to_string();
    assert!(
        shown.contains("tombstone") && shown.contains("Load"),
        "{shown}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The doorkeeper: while L1 is full, a value read from Redis goes in L1 at its key's second
/// read from Redis, not its first; while L1 has room, or with the doorkeeper off, at the first.
async fn a_full_l1_takes_a_key_read_from_redis_at_its_second_read(shared: &Shared) {
    use layercache::{Held, NextGet};
    let writer = shared.builder("door").build().await.unwrap();
    let w = writer.region::<str, u64>("r").build().await.unwrap();
    for i in 0..8u64 {
        w.insert(&format!("k{i}"), i).await.unwrap();
    }
    for door in [true, false] {
        let reader = shared
            .builder("door")
            .max_capacity(4)
            .l1_write_cooldown(Duration::ZERO)
            .l1_doorkeeper(door)
            .build()
            .await
            .unwrap();
        let r = reader.region::<str, u64>("r").build().await.unwrap();
        // Room in L1: the first read from Redis fills it.
        for i in 0..4u64 {
            assert_eq!(r.get(&format!("k{i}")).await.unwrap().as_deref(), Some(&i));
            assert_eq!(r.explain(&format!("k{i}")).await.next_get, NextGet::FromL1);
        }
        reader.run_pending_tasks().await;
        assert_eq!(reader.l1_entry_count(), 4, "L1 is full");
        assert_eq!(reader.stats().l1_door_skips, 0);

        // Full: k4's first read from Redis leaves L1 alone (with the doorkeeper on).
        assert_eq!(r.get("k4").await.unwrap().as_deref(), Some(&4));
        let why = r.explain("k4").await;
        if door {
            assert_eq!(why.l1, Held::Nothing, "{why:?}");
            assert_eq!(why.next_get, NextGet::FromRedis, "{why:?}");
            assert_eq!(reader.stats().l1_door_skips, 1);
            // Its second read puts it in (moka's own policy then decides what stays).
            assert_eq!(r.get("k4").await.unwrap().as_deref(), Some(&4));
            assert_eq!(reader.stats().l1_door_skips, 1);
            assert_eq!(reader.stats().l2_hits, 6);
        } else {
            assert!(matches!(why.l1, Held::Entry(_)), "{why:?}");
            assert_eq!(reader.stats().l1_door_skips, 0);
        }
        reader.shutdown().await;
    }
    writer.shutdown().await;
}

/// A key a full L1 holds, taken out because another instance wrote it, goes back in at its
/// first read from Redis: it left for the write, not for want of room. (Keys this instance
/// loaded never passed the doorkeeper; before, each write elsewhere cost such a hot key one
/// more Redis read, and every reader of it meanwhile.)
async fn a_key_written_elsewhere_goes_back_into_a_full_l1_at_its_first_read(shared: &Shared) {
    use layercache::{Held, NextGet};
    let writer = shared.builder("door-back").build().await.unwrap();
    let w = writer.region::<str, u64>("r").build().await.unwrap();
    let reader = shared
        .builder("door-back")
        .max_capacity(4)
        .l1_write_cooldown(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let r = reader.region::<str, u64>("r").build().await.unwrap();
    for i in 0..4u64 {
        let got = r
            .get_or_load(&format!("k{i}"), move |_| async move {
                Ok::<_, std::io::Error>(i)
            })
            .await
            .unwrap();
        assert_eq!(*got, i);
    }
    reader.run_pending_tasks().await;
    assert_eq!(reader.l1_entry_count(), 4, "L1 is full");

    w.insert("k0", 100).await.unwrap();
    support::caught_up(&reader, &writer).await;
    assert_eq!(
        r.explain("k0").await.l1,
        Held::Nothing,
        "the write took it out"
    );
    assert_eq!(r.get("k0").await.unwrap().as_deref(), Some(&100));
    let why = r.explain("k0").await;
    assert!(matches!(why.l1, Held::Entry(_)), "{why:?}");
    assert_eq!(why.next_get, NextGet::FromL1, "{why:?}");
    assert_eq!(reader.stats().l1_door_skips, 0);
    reader.shutdown().await;
    writer.shutdown().await;
}

on_redis_and_cluster!(
    a_key_written_elsewhere_goes_back_into_a_full_l1_at_its_first_read,
    a_full_l1_takes_a_key_read_from_redis_at_its_second_read,
    an_l1_hit_sends_no_command_to_redis,
    values_round_trip_through_both_tiers_and_a_second_instance,
    a_schema_bump_turns_old_entries_into_misses,
    concurrent_loads_of_one_cold_key_run_the_loader_once,
    a_cancelled_caller_does_not_cancel_the_load_for_the_others,
    explain_follows_a_key_through_both_tiers,
    odd_keys_stay_distinct_and_every_key_has_a_ttl,
    loader_errors_and_panics_cache_nothing_and_the_next_call_retries,
    oversized_values_are_refused_on_insert_and_kept_out_of_redis_on_load,
    large_values_are_stored_compressed_small_ones_plain,
    invalidate_removes_from_both_tiers,
    a_loader_sets_the_lifetime_of_what_it_loaded,
    an_insert_during_a_slow_load_wins,
);
