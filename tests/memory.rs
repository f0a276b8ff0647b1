//! The in-memory shared tier (`memory` feature) as a user would test a service with it: no
//! redis-server anywhere in this file.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses the waits"
)]
mod support;

use layercache::{memory::MemoryServer, ErrorKind, FlushReason, LayerCache, Region};
use support::{caught_up, wait_until};
use tokio::sync::Notify;

async fn instance(server: &MemoryServer) -> LayerCache {
    LayerCache::builder("svc")
        .memory_server(server)
        .bus_heartbeat_interval(Duration::from_millis(50))
        .bus_heartbeat_timeout(Duration::from_millis(500))
        .l1_write_cooldown(Duration::ZERO)
        .build()
        .await
        .unwrap()
}

async fn users(c: &LayerCache) -> Region<u64, String> {
    c.region::<u64, String>("users").build().await.unwrap()
}

#[tokio::test]
async fn two_instances_share_entries_and_stay_coherent() {
    let server = MemoryServer::new();
    let (a, b) = (instance(&server).await, instance(&server).await);
    let (ua, ub) = (users(&a).await, users(&b).await);

    ua.insert(&1, "Ada".to_owned()).await.unwrap();
    // In the server, under the region's key, as in Redis.
    let key = ua.redis_key(&1).unwrap();
    assert!(server.keys().contains(&key), "{:?}", server.keys());
    assert_eq!(
        ub.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("Ada")
    );
    assert_eq!(b.stats().l2_hits, 1);

    // B holds it in L1 now; A's invalidation reaches B through the server's bus.
    assert_eq!(
        ub.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("Ada")
    );
    ua.invalidate(&1).await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(ub.get(&1).await.unwrap(), None);

    let loads = Arc::new(AtomicU64::new(0));
    let load = |loads: Arc<AtomicU64>| {
        move |_| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>("Grace".to_owned())
        }
    };
    ub.get_or_load(&2, load(loads.clone())).await.unwrap();
    ua.get_or_load(&2, load(loads.clone())).await.unwrap();
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "A found B's fill in the server"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A load that began before another instance's invalidation never puts its older value back
/// in the server (the conditional fill), driven step by step on one thread.
#[tokio::test(flavor = "current_thread")]
async fn a_load_that_began_before_a_remote_invalidation_never_refills() {
    let server = MemoryServer::new();
    let (a, b) = (instance(&server).await, instance(&server).await);
    let (ua, ub) = (users(&a).await, users(&b).await);
    ua.insert(&1, "old".to_owned()).await.unwrap();
    ua.invalidate(&1).await.unwrap();

    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = {
        let (ub, started, release) = (ub.clone(), started.clone(), release.clone());
        tokio::spawn(async move {
            ub.get_or_load(&1, move |_| async move {
                started.notify_one();
                release.notified().await;
                Ok::<_, std::io::Error>("read before the write".to_owned())
            })
            .await
        })
    };
    started.notified().await;
    // The source changes, and A invalidates while B's load is in flight.
    ua.invalidate(&1).await.unwrap();
    caught_up(&b, &a).await;
    release.notify_one();
    slow.await.unwrap().unwrap();

    // Nothing older was filled: both instances load again.
    let fresh = ua
        .get_or_load(&1, |_| async { Ok::<_, std::io::Error>("new".to_owned()) })
        .await
        .unwrap();
    assert_eq!(fresh.as_str(), "new");
    assert_eq!(
        ub.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("new")
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_outage_flushes_serves_from_the_source_and_repairs_when_it_is_back() {
    let server = MemoryServer::new();
    let (a, b) = (instance(&server).await, instance(&server).await);
    let (ua, ub) = (users(&a).await, users(&b).await);
    ua.insert(&1, "v1".to_owned()).await.unwrap();
    assert_eq!(
        ub.get(&1).await.unwrap().as_deref().map(String::as_str),
        Some("v1")
    );

    server.set_available(false);
    assert!(!a.l2_connected());
    // B's subscription fails: it flushes (it can no longer hear of changes).
    wait_until(
        "B to flush for the disconnection",
        Duration::from_secs(10),
        || {
            let b = b.clone();
            async move { b.flushes(FlushReason::Disconnect) > 0 }
        },
    )
    .await;
    assert_eq!(b.flushes(FlushReason::Disconnect), 1);
    // Reads go to the source; an invalidation the server never got is journaled (with the
    // default error policy it returns `Ok`: the repair runs before anything stale is served).
    let v = ub
        .get_or_load(&1, |_| async { Ok::<_, std::io::Error>("v2".to_owned()) })
        .await
        .unwrap();
    assert_eq!(v.as_str(), "v2");
    ua.invalidate(&1).await.unwrap();
    assert_eq!(a.pending_repairs(), 1);
    assert!(a.stats().l2_errors > 0);

    // Back: the journal's tombstone lands before the old entry can be served again.
    server.set_available(true);
    wait_until(
        "the repair and B's reconnection",
        Duration::from_secs(10),
        || {
            let (a, b) = (a.clone(), b.clone());
            async move { a.pending_repairs() == 0 && b.flushes(FlushReason::Reconnect) > 0 }
        },
    )
    .await;
    assert_eq!(a.pending_repairs(), 0);
    assert_eq!(ub.get(&1).await.unwrap(), None, "the stale v1 came back");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_cache_has_one_shared_tier() {
    let err = LayerCache::builder("svc")
        .memory_server(&MemoryServer::new())
        .redis_url("redis://127.0.0.1:1")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn flush_all_is_seen_as_a_restart() {
    let server = MemoryServer::new();
    let a = instance(&server).await;
    let ua = users(&a).await;
    ua.insert(&1, "x".to_owned()).await.unwrap();
    let g = ua.generation().unwrap();
    server.flush_all();
    assert!(server.keys().is_empty());
    // The region's generation is gone with everything else: a write re-reads it (a new
    // one, never below the lost one) instead of writing under the old.
    ua.insert(&2, "y".to_owned()).await.unwrap();
    assert!(ua.generation().unwrap() > g);
    assert!(server.get(&ua.redis_key(&2).unwrap()).is_some());
    a.shutdown().await;
}
