//! On a real Redis Cluster (six local nodes, shared by the tests of this binary: each test has a
//! cache name of its own): where keys land, and the engine's rules kept per slot.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use layercache::{ClusterBus, LayerCache, Region};
use layercache_testkit::RedisCluster;
use support::{caught_up, cluster, cluster_builder, cluster_keys, wait_until};

const WAIT: Duration = Duration::from_secs(10);

async fn instance(cluster: &RedisCluster, name: &str) -> LayerCache {
    instance_with(cluster, name, ClusterBus::Plain, 1).await
}

async fn instance_with(
    cluster: &RedisCluster,
    name: &str,
    bus: ClusterBus,
    pool: usize,
) -> LayerCache {
    cluster_builder(cluster, name)
        .bus_heartbeat_interval(Duration::from_millis(200))
        .cluster_bus(bus)
        .l2_pool_size(pool)
        .build()
        .await
        .unwrap()
}

async fn region(cache: &LayerCache) -> Region<str, String> {
    cache.region::<str, String>("items").build().await.unwrap()
}

/// The cache's data keys, by the primary (node index) holding them.
fn data_keys_by_primary(cluster: &RedisCluster, name: &str) -> BTreeMap<usize, Vec<String>> {
    let mut by = BTreeMap::new();
    for i in cluster.primaries() {
        let keys = cluster
            .command(i, &["KEYS", &format!("{name}:f2:*")])
            .unwrap();
        by.insert(
            i,
            keys.lines()
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect(),
        );
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regions_keys_spread_over_every_primary() {
    let cluster = cluster();
    let cache = instance(&cluster, "spread").await;
    let r = region(&cache).await;
    for i in 0..300 {
        r.insert(&format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    let by = data_keys_by_primary(&cluster, "spread");
    assert_eq!(by.len(), 3, "{by:?}");
    let total: usize = by.values().map(Vec::len).sum();
    assert_eq!(total, 300);
    for (node, keys) in &by {
        // Three primaries of ~5,461 slots each: about a third each.
        assert!(keys.len() > 50, "primary {node} holds {} keys", keys.len());
    }
    // Many slots, each a bucket's (a multiple of 16), never one hash tag for the region.
    let slots: std::collections::BTreeSet<u16> = by
        .values()
        .flatten()
        .map(|k| cluster.keyslot(k).unwrap())
        .collect();
    assert!(slots.len() > 200, "{} slots", slots.len());
    assert!(slots.iter().all(|s| s % 16 == 0));
    // Every value reads back from Redis (a second instance with a cold L1).
    let other = instance(&cluster, "spread").await;
    let r2 = region(&other).await;
    for i in 0..300 {
        assert_eq!(
            r2.get(&format!("k{i}")).await.unwrap().as_deref(),
            Some(&format!("v{i}"))
        );
    }
    cache.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_invalidations_tags_and_generations_reach_the_other_instance() {
    reach_the_other_instance(ClusterBus::Plain, "coherent", 1).await;
}

/// The same on sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), with a pool of three clustered
/// clients (`l2_pool_size`): the bus on the first, commands on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_sharded_pub_sub_with_a_pool() {
    reach_the_other_instance(ClusterBus::Sharded, "sharded", 3).await;
}

async fn reach_the_other_instance(bus: ClusterBus, name: &str, pool: usize) {
    let cluster = cluster();
    let a = instance_with(&cluster, name, bus, pool).await;
    let b = instance_with(&cluster, name, bus, pool).await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    // Both subscribers are where the option says: on the channel's shard (sharded), or on some
    // node (plain).
    let channel = format!("{name}:m2:bus");
    let count = |kind: &str| -> u64 {
        (0..6)
            .map(|i| {
                let reply = cluster.command(i, &["PUBSUB", kind, &channel]).unwrap();
                reply.lines().nth(1).unwrap_or("0").parse::<u64>().unwrap()
            })
            .sum()
    };
    let (plain, sharded) = (count("NUMSUB"), count("SHARDNUMSUB"));
    match bus {
        ClusterBus::Sharded => assert_eq!((plain, sharded), (0, 2)),
        _ => assert_eq!((plain, sharded), (2, 0)),
    }

    // A write on A replaces B's copy.
    rb.insert("k", "old".to_owned()).await.unwrap();
    assert_eq!(
        rb.get("k").await.unwrap().as_deref(),
        Some(&"old".to_owned())
    );
    ra.insert("k", "new".to_owned()).await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(
        rb.get("k").await.unwrap().as_deref(),
        Some(&"new".to_owned())
    );

    // An invalidation on A empties both tiers for B.
    ra.invalidate("k").await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(rb.get("k").await.unwrap(), None);

    // A tag invalidation on A reaches the members B loaded, in every bucket.
    for i in 0..50 {
        let key = format!("t{i}");
        let v = rb
            .entry(&key)
            .tags(&["red"])
            .or_load(|k| async move { Ok::<_, std::io::Error>(format!("{k}-1")) })
            .await
            .unwrap();
        assert_eq!(*v, format!("t{i}-1"));
    }
    a.invalidate_tag("red").await.unwrap();
    caught_up(&b, &a).await;
    for i in 0..50 {
        let key = format!("t{i}");
        let v = rb
            .entry(&key)
            .tags(&["red"])
            .or_load(|k| async move { Ok::<_, std::io::Error>(format!("{k}-2")) })
            .await
            .unwrap();
        assert_eq!(*v, format!("t{i}-2"), "a member of the tag survived");
    }

    // A region invalidation on A: B's next reads miss everywhere, and both agree on the
    // generation.
    for i in 0..20 {
        rb.insert(&format!("g{i}"), "x".to_owned()).await.unwrap();
    }
    ra.invalidate_all().await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(ra.generation(), rb.generation());
    for i in 0..20 {
        assert_eq!(rb.get(&format!("g{i}")).await.unwrap(), None);
    }
    // Writes after the move land in the new generation and are read by both.
    rb.insert("after", "y".to_owned()).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(
        ra.get("after").await.unwrap().as_deref(),
        Some(&"y".to_owned())
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_deletes_every_data_key_on_every_primary() {
    let cluster = cluster();
    let cache = instance(&cluster, "clearing").await;
    let r = region(&cache).await;
    for i in 0..200 {
        r.insert(&format!("k{i}"), "v".to_owned()).await.unwrap();
    }
    cache.clear().await.unwrap();
    for i in 0..200 {
        assert_eq!(r.get(&format!("k{i}")).await.unwrap(), None);
    }
    // The old generation's keys are deleted in the background, on every primary.
    let c = Arc::clone(&cluster);
    wait_until("old data keys deleted", WAIT, move || {
        let c = Arc::clone(&c);
        async move {
            cluster_keys(&c)
                .iter()
                .filter(|k| k.starts_with("clearing:f2:"))
                .count()
                == 0
        }
    })
    .await;
    cache.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_and_writes_cross_every_slot() {
    let cluster = cluster();
    let cache = instance(&cluster, "batching").await;
    let r = region(&cache).await;
    let keys: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
    for written in r
        .insert_many(keys.iter().map(|k| (k.as_str(), format!("{k}!"))))
        .await
    {
        written.unwrap();
    }
    assert_eq!(cache.stats().l2_errors, 0);
    let other = instance(&cluster, "batching").await;
    let r2 = region(&other).await;
    let got = r2.get_many(keys.iter().map(String::as_str)).await;
    for (k, v) in keys.iter().zip(got) {
        assert_eq!(v.unwrap().as_deref(), Some(&format!("{k}!")));
    }
    for done in r
        .invalidate_many(keys[..250].iter().map(String::as_str))
        .await
    {
        done.unwrap();
    }
    caught_up(&other, &cache).await;
    let got = r2.get_many(keys.iter().map(String::as_str)).await;
    let found = got.iter().filter(|v| matches!(v, Ok(Some(_)))).count();
    assert_eq!(found, 250);
    cache.shutdown().await;
    other.shutdown().await;
}

/// Bad cluster input gets a clear error within the connect timeout, or a degraded start when
/// asked for: never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_input_fails_clearly_or_starts_degraded() {
    use layercache::L2Startup;
    let build = |url: String, startup: L2Startup| async move {
        let started = std::time::Instant::now();
        let r = LayerCache::builder("bad")
            .redis_url(url)
            .l2_connect_timeout(Duration::from_millis(1500))
            .l2_startup(startup)
            .build()
            .await;
        (r, started.elapsed())
    };
    // Unreachable seeds.
    let (r, took) = build(
        "redis-cluster://127.0.0.1:1?node=127.0.0.1:2".to_owned(),
        L2Startup::FailFast,
    )
    .await;
    let e = r.expect_err("unreachable seeds must fail");
    assert!(e.to_string().contains("connecting to redis"), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A node with cluster mode on but no slots: the cluster is not ok. An error at once, or a
    // degraded start after the connect timeout.
    let lonely = layercache_testkit::RedisServer::builder()
        .arg("cluster-enabled", "yes")
        .start()
        .unwrap();
    let url = format!("redis-cluster://127.0.0.1:{}", lonely.port());
    let (r, took) = build(url.clone(), L2Startup::FailFast).await;
    let e = r.expect_err("a cluster without slots must fail a fail-fast start");
    assert!(e.to_string().contains("is not ready"), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (r, took) = build(url, L2Startup::Degraded).await;
    let degraded = r.expect("a degraded start goes on without the cluster");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let rd = region(&degraded).await;
    // Served without Redis: a write stands locally (journaled for later).
    rd.insert("k", "v".to_owned()).await.unwrap();
    assert_eq!(rd.get("k").await.unwrap().as_deref(), Some(&"v".to_owned()));
    degraded.shutdown().await;

    // A replica as the only seed of a cluster URL: the slot map comes from it, commands go to
    // the primaries.
    let cluster = cluster();
    let replica = (0..6)
        .find(|i| !cluster.primaries().contains(i))
        .expect("three replicas");
    let c = build(
        format!("redis-cluster://127.0.0.1:{}", cluster.ports()[replica]),
        L2Startup::FailFast,
    )
    .await
    .0
    .expect("a replica seed finds the primaries");
    let r = region(&c).await;
    r.insert("via-replica", "v".to_owned()).await.unwrap();
    assert_eq!(c.stats().l2_errors, 0);
    c.clear_l1();
    assert_eq!(
        r.get("via-replica").await.unwrap().as_deref(),
        Some(&"v".to_owned())
    );
    c.shutdown().await;

    // A cluster node named by a plain URL: every other key would answer `MOVED`.
    let (r, took) = build(
        format!("redis://127.0.0.1:{}", cluster.ports()[0]),
        L2Startup::FailFast,
    )
    .await;
    let e = r.expect_err("a cluster node behind a redis:// URL must fail");
    assert!(e.to_string().contains("use redis-cluster://"), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// What operators' tools read (regions, key counts, presence records) works on a cluster: meta
/// keys are read and written as named, data keys counted on every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_key_counts_and_presence_records_are_read_on_a_cluster() {
    let cluster = cluster();
    let a = instance(&cluster, "inventory").await;
    let b = instance(&cluster, "inventory").await;
    let r = region(&a).await;
    for i in 0..60 {
        r.insert(&format!("k{i}"), "v".to_owned()).await.unwrap();
    }
    let regions = a.regions_in_redis().await.unwrap();
    assert_eq!(regions.len(), 1, "{regions:?}");
    assert_eq!(regions[0].name, "items");
    assert_eq!(regions[0].generation, r.generation(), "{regions:?}");
    let mut pages = 0;
    let n = a
        .count_region_keys("items", 1, r.generation().unwrap(), |_| pages += 1)
        .await
        .unwrap();
    assert_eq!(n, 60);
    assert!(pages >= 1);
    let ids: Vec<String> = [&a, &b]
        .iter()
        .map(|c| c.instance_id().unwrap().to_string())
        .collect();
    wait_until("both presence records", WAIT, || {
        let (a, ids) = (a.clone(), ids.clone());
        async move {
            let found = a.instances_in_redis().await.unwrap();
            ids.iter().all(|id| found.iter().any(|i| &i.id == id))
        }
    })
    .await;
    b.shutdown().await;
    let found = a.instances_in_redis().await.unwrap();
    assert!(
        !found.iter().any(|i| i.id == ids[1]),
        "a shut-down instance's record is gone: {found:?}"
    );
    a.shutdown().await;
}
