//! What a cache with Redis holds before its first entries, and that it gives it back when shut
//! down. One test, alone in its binary, so that the heap it counts is its own.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses the waits"
)]
mod support;

use std::{alloc::System, time::Duration};

use cap::Cap;
use layercache::LayerCache;
use layercache_testkit::RedisServer;
use support::wait_until;

/// Counts the heap: exact, and deterministic enough for bounds a few times wider than what
/// is measured (`docs/BENCHMARKS.md`, "What a cache costs before its first entry").
#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

async fn cache(server: &RedisServer) -> LayerCache {
    LayerCache::builder("footprint")
        .redis_url(server.url())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cache_with_redis_holds_under_a_mib_before_its_entries_and_gives_it_back() {
    let server = RedisServer::start().unwrap();
    // Once first, so that what the process sets up once (the runtime's timer and I/O driver,
    // the clients' statics) is not counted.
    let first = cache(&server).await;
    first.shutdown().await;
    drop(first);

    let before = ALLOC.allocated();
    let c = cache(&server).await;
    let users = c.region::<u64, String>("users").build().await.unwrap();
    users.insert(&1, "Ada".to_owned()).await.unwrap();
    assert_eq!(
        users.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("Ada")
    );
    let held = ALLOC.allocated().saturating_sub(before);
    // 0.7 MiB measured; the Redis client's event queues at 4096 messages alone took 2.4 MiB.
    assert!(
        held < 1 << 20,
        "a cache with one entry holds {held} bytes of heap"
    );

    c.shutdown().await;
    drop((users, c));
    wait_until(
        "the cache's heap to be given back",
        Duration::from_secs(10),
        || async { ALLOC.allocated().saturating_sub(before) < 64 << 10 },
    )
    .await;
    drop(server);
}
