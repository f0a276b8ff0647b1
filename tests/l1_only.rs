//! L1-only mode: the same API with no Redis at all.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use layercache::{EntryOptions, ErrorKind, Held, LayerCache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u32,
    tags: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_work_without_redis() {
    let cache = LayerCache::builder("local").build().await.unwrap();
    assert!(!cache.has_l2());
    let items = cache.region::<u32, Item>("item").build().await.unwrap();
    let names = cache.region::<str, String>("name").build().await.unwrap();

    assert!(items.get(&1).await.unwrap().is_none());
    let item = Item {
        id: 1,
        tags: vec!["a".into()],
    };
    items.insert(&1, item.clone()).await.unwrap();
    names.insert("", "empty key".into()).await.unwrap();
    names.insert("*", "star".into()).await.unwrap();
    assert_eq!(*items.get(&1).await.unwrap().unwrap(), item);
    assert_eq!(&*names.get("").await.unwrap().unwrap(), "empty key");
    assert_eq!(&*names.get("*").await.unwrap().unwrap(), "star");

    // Regions do not see each other's entries even with equal key bytes.
    let other = cache.region::<str, String>("other").build().await.unwrap();
    assert!(other.get("*").await.unwrap().is_none());

    items.invalidate(&1).await.unwrap();
    assert!(items.get(&1).await.unwrap().is_none());

    let s = cache.stats();
    assert_eq!(s.l1_hits, 3);
    assert_eq!(s.l2_hits + s.l2_writes + s.l2_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_coalesces_and_retries_after_errors() {
    let cache = LayerCache::builder("local").build().await.unwrap();
    let region = cache.region::<str, u64>("r").build().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());

    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (region, calls, gate) = (region.clone(), calls.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            region
                .get_or_load("k", move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Ok::<_, std::io::Error>(9)
                })
                .await
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().coalesced < 99 {
        assert!(std::time::Instant::now() < deadline, "callers never joined");
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap(), 9);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let err = region
        .get_or_load("bad", |_| async {
            Err::<u64, _>(std::io::Error::other("nope"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert!(region.get("bad").await.unwrap().is_none());
    let v = region
        .get_or_load("bad", |_| async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    assert_eq!(*v, 1);
}

#[tokio::test]
async fn entries_expire_after_their_l1_lifetime() {
    let (cache, region) = local_region().await;
    region
        .entry("short")
        .options(&EntryOptions::new().ttl(Duration::from_millis(200)))
        .insert(1)
        .await
        .unwrap();
    region.insert("long", 2).await.unwrap();
    assert!(region.get("short").await.unwrap().is_some());
    // L1 keeps its own (real) clock: wait, with a deadline, for the short entry to lapse.
    eventually("the expired entry to stop being served", || async {
        region.get("short").await.unwrap().is_none()
    })
    .await;
    assert!(region.get("long").await.unwrap().is_some());
    // The read that found it past its lifetime took it out: it holds no memory (nor a place
    // in a full L1) until the 60 s bound.
    cache.run_pending_tasks().await;
    assert_eq!(cache.l1_entry_count(), 1, "only the long entry is left");
}

/// A sliding entry that nobody reads goes once its lifetime (`ttl`, started over by each read)
/// has run, and `explain` (which looks without extending) says so, as `get` does.
#[tokio::test]
async fn explain_shows_a_sliding_entry_gone_once_it_went_unread() {
    let (cache, region) = local_region().await;
    let sliding = EntryOptions::new()
        .ttl(Duration::from_millis(200))
        .sliding(Duration::from_millis(50));
    region.entry("s").options(&sliding).insert(1).await.unwrap();
    assert!(
        matches!(region.explain("s").await.l1, Held::Entry(_)),
        "held while its sliding lifetime runs"
    );
    eventually("explain to show the unread sliding entry gone", || async {
        region.explain("s").await.l1 == Held::Nothing
    })
    .await;
    assert_eq!(region.get("s").await.unwrap(), None, "and get agrees");
    cache.run_pending_tasks().await;
    assert_eq!(cache.l1_entry_count(), 0, "and took it out");
}

/// An L1-only cache with a 60 s bound, and a region of `u8` values in it.
async fn local_region() -> (LayerCache, layercache::Region<str, u8>) {
    let cache = LayerCache::builder("local")
        .time_to_live(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let region = cache.region::<str, u8>("r").build().await.unwrap();
    (cache, region)
}

/// Polls `cond` until it holds, failing the test after 10 s (L1 lifetimes run on real clocks).
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fail-safe value lives in L1 past the cache-wide bound (`time_to_live`), which ends every
/// entry of the table that serves hits: a kept copy is the fallback then. A later write without
/// fail-safe takes the kept copy away with it.
#[tokio::test]
async fn a_fail_safe_value_outlives_the_l1_bound_as_the_fallback() {
    let cache = LayerCache::builder("fs-bound")
        .time_to_live(Duration::from_millis(150))
        .build()
        .await
        .unwrap();
    let region = cache.region::<str, u64>("r").build().await.unwrap();
    let keep = EntryOptions::new()
        .ttl(Duration::from_millis(100))
        .fail_safe_max_age(Duration::from_secs(60))
        .fail_safe_throttle(Duration::from_millis(1));
    let load = |outcome: Result<u64, &'static str>| {
        move |_: String| async move { outcome.map_err(std::io::Error::other) }
    };
    let first = region.entry("k").options(&keep).or_load(load(Ok(1))).await;
    assert_eq!(*first.unwrap(), 1);
    // Past the bound: the first table no longer has the key.
    eventually("the bound to end the first table's entry", || async {
        cache.run_pending_tasks().await;
        cache.l1_entry_count() == 0
    })
    .await;
    let stale = region
        .entry("k")
        .options(&keep)
        .or_load(load(Err("down")))
        .await;
    assert_eq!(*stale.unwrap(), 1, "the kept copy is the fallback");
    assert!(cache.stats().fail_safe_serves >= 1, "{:?}", cache.stats());

    // A plain write replaces the value: nothing of the old one may come back as a fallback.
    let plain = EntryOptions::new().ttl(Duration::from_millis(100));
    region.entry("k").options(&plain).insert(2).await.unwrap();
    assert_eq!(region.get("k").await.unwrap().as_deref(), Some(&2));
    eventually("the plain value's own lifetime to end", || async {
        region.get("k").await.unwrap().is_none()
    })
    .await;
    let gone = region
        .entry("k")
        .options(&keep)
        .or_load(load(Err("down")))
        .await;
    assert_eq!(gone.unwrap_err().kind(), ErrorKind::Loader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_capacity_weighs_encoded_size() {
    let cache = LayerCache::builder("local")
        .max_capacity_bytes(100_000)
        .build()
        .await
        .unwrap();
    let region = cache.region::<u32, Vec<u8>>("blob").build().await.unwrap();
    for i in 0..50 {
        region.insert(&i, vec![7; 10_000]).await.unwrap();
    }
    cache.run_pending_tasks().await;
    assert!(
        cache.l1_weighted_size() <= 100_000,
        "{}",
        cache.l1_weighted_size()
    );
    assert!(cache.l1_entry_count() <= 10, "{}", cache.l1_entry_count());
    assert!(cache.l1_entry_count() >= 1);
}

/// A loader's own error comes back typed through `Error::loader_error`; another type, or
/// another kind of error, gives `None`.
#[tokio::test]
async fn the_loaders_own_error_is_recovered_by_its_type() {
    #[derive(Debug, PartialEq)]
    struct NotFound(u64);
    impl std::fmt::Display for NotFound {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "user {} not found", self.0)
        }
    }
    impl std::error::Error for NotFound {}

    let cache = LayerCache::builder("typed").build().await.unwrap();
    let users = cache.region::<u64, String>("user").build().await.unwrap();
    let err = users
        .get_or_load(&7, |_| async { Err::<String, _>(NotFound(7)) })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert_eq!(err.loader_error::<NotFound>(), Some(&NotFound(7)));
    assert!(err.loader_error::<std::io::Error>().is_none());
    let config = layercache::Error::new(ErrorKind::Config, "x");
    assert!(config.loader_error::<NotFound>().is_none());
}

/// Outside a tokio runtime a read that must start a fetch fails with `ErrorKind::NoRuntime`
/// (not `Closed`): polled once by a plain thread with no runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outside_a_tokio_runtime_is_a_no_runtime_error() {
    let cache = LayerCache::builder("nort").build().await.unwrap();
    let users = cache.region::<u64, String>("user").build().await.unwrap();
    let outcome = std::thread::spawn(move || {
        use std::future::Future;
        let fut = users.get_or_load(&1, |_| async { Ok::<_, std::io::Error>("a".to_owned()) });
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r.map(|v| (*v).clone()),
            std::task::Poll::Pending => panic!("expected an immediate answer"),
        }
    })
    .join()
    .unwrap();
    assert_eq!(outcome.unwrap_err().kind(), ErrorKind::NoRuntime);
}

/// A region's entry options are readable: its own when it set them, else the cache's default,
/// and usable as the base of a `*_with` call.
#[tokio::test]
async fn a_regions_entry_options_are_its_own_or_the_caches_default() {
    let default = EntryOptions::new().ttl(Duration::from_secs(42));
    let own = EntryOptions::new().ttl(Duration::from_secs(7));
    let cache = LayerCache::builder("opts")
        .default_entry_options(default)
        .build()
        .await
        .unwrap();
    let plain = cache.region::<str, u64>("plain").build().await.unwrap();
    let tuned = cache
        .region::<str, u64>("tuned")
        .entry_options(own)
        .build()
        .await
        .unwrap();
    assert_eq!(plain.entry_options().get_ttl(), Duration::from_secs(42));
    assert_eq!(tuned.entry_options().get_ttl(), Duration::from_secs(7));
    let v = tuned
        .entry("k")
        .options(tuned.entry_options())
        .or_load_optional(|_| async { Ok::<_, std::io::Error>(Some(5)) })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&5));
}

/// Each region counts its own calls; the cache's stats are their sum (and its own).
#[tokio::test]
async fn regions_count_their_own_calls_and_the_cache_sums_them() {
    let c = layercache::LayerCache::builder("per-region")
        .build()
        .await
        .unwrap();
    let a = c.region::<u64, u64>("a").build().await.unwrap();
    let b = c.region::<u64, u64>("b").build().await.unwrap();
    a.insert(&1, 1).await.unwrap();
    a.get(&1).await.unwrap();
    a.get(&1).await.unwrap();
    b.get_or_load(&1, |k| async move { Ok::<_, std::io::Error>(k) })
        .await
        .unwrap();
    let (sa, sb, all) = (a.stats(), b.stats(), c.stats());
    assert_eq!((sa.l1_hits, sa.misses, sa.loads), (2, 0, 0));
    assert_eq!((sb.l1_hits, sb.misses, sb.loads), (0, 1, 1));
    assert_eq!((all.l1_hits, all.misses, all.loads), (2, 1, 1));
    assert_eq!(sa.to_string(), "reads: l1 hits 2");
}
