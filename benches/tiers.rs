//! L1 and L2 hits, each beside its raw baseline measured in the same run.
//!
//! - `l1_hit/layercache`: `Region::get` answered by the in-process tier.
//! - `l1_hit/moka`: a moka `future::Cache<String, Arc<V>>` `get` of the same value.
//! - `l2_hit/layercache`: `Region::get` answered by Redis: the bench cycles through 5,000 keys
//!   with an L1 of 50 entries, so reads miss L1: GET, envelope check, decode, L1 fill.
//! - `l2_hit/fred_get_decode`: a plain fred `GET` plus bincode decode of the same value, over
//!   the same number of keys.
//!
//! The L1 group runs on a one-worker multi-thread runtime; the L2 group on a current-thread
//! runtime, so that thread hand-offs (which dominate a loopback round trip and vary from run
//! to run) do not drown the difference being measured.
//!
//! Run: `cargo bench --bench tiers` (a redis-server is started on a free port by the testkit).

#![expect(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::{sync::Arc, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use layercache::LayerCache;
use layercache_testkit::RedisServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    score: f64,
}

fn profile() -> Profile {
    Profile {
        id: 42,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        roles: vec!["admin".into(), "analyst".into(), "engineer".into()],
        score: 99.5,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn l1_hit(c: &mut Criterion) {
    let rt = runtime();
    let (region, moka_cache) = rt.block_on(async {
        let cache = LayerCache::builder("bench").build().await.expect("cache");
        let region = cache
            .region::<str, Profile>("p")
            .build()
            .await
            .expect("region");
        region.insert("user:42", profile()).await.expect("insert");
        let moka_cache: moka::future::Cache<String, Arc<Profile>> =
            moka::future::Cache::new(10_000);
        moka_cache
            .insert("user:42".to_owned(), Arc::new(profile()))
            .await;
        (region, moka_cache)
    });

    let mut g = c.benchmark_group("l1_hit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("layercache", |b| {
        b.to_async(&rt).iter(|| async {
            let v = region.get("user:42").await.expect("get");
            std::hint::black_box(v)
        })
    });
    g.bench_function("moka", |b| {
        b.to_async(&rt).iter(|| async {
            let v = moka_cache.get("user:42").await;
            std::hint::black_box(v)
        })
    });
    g.finish();
}

/// Keys the L2 group cycles through: far more than its L1 holds, so reads miss L1.
const L2_KEYS: usize = 5000;

fn l2_hit(c: &mut Criterion) {
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    // One thread runs everything (caller, fetch task, fred's connection task): the numbers
    // are the work done, not how the OS scheduler hands futures between threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let keys: Vec<String> = (0..L2_KEYS).map(|i| format!("user:{i}")).collect();
    let (cache, region, raw) = rt.block_on(async {
        // L1 holds 50 entries; the benchmark cycles through 5,000 keys, so nearly every read
        // misses L1 and is served by Redis, with the L1 fill a real L2 hit does.
        let cache = LayerCache::builder("bench")
            .redis_url(server.url())
            .max_capacity(50)
            .build()
            .await
            .expect("cache");
        let region = cache
            .region::<str, Profile>("p")
            .build()
            .await
            .expect("region");
        let raw = Builder::from_config(Config::from_url(&server.url()).expect("url"))
            .build()
            .expect("client");
        raw.init().await.expect("connect");
        // The baseline's keys hold the plain bincode bytes of the same value.
        let bytes =
            bincode::serde::encode_to_vec(profile(), bincode::config::standard()).expect("encode");
        for k in &keys {
            region.insert(k, profile()).await.expect("insert");
            let _: () = raw
                .set(format!("raw:{k}"), bytes.clone(), None, None, false)
                .await
                .expect("set");
        }
        cache.clear_l1();
        (cache, region, raw)
    });

    let mut g = c.benchmark_group("l2_hit");
    g.throughput(Throughput::Elements(1));
    // Loopback round trips vary with scheduling: sample longer than the L1 group.
    g.sample_size(50).measurement_time(Duration::from_secs(8));
    let mut i = 0usize;
    g.bench_function("layercache", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % L2_KEYS;
            let key = &keys[i];
            let region = &region;
            async move {
                let v = region.get(key.as_str()).await.expect("get");
                std::hint::black_box(v)
            }
        })
    });
    let raw_keys: Vec<String> = keys.iter().map(|k| format!("raw:{k}")).collect();
    let mut j = 0usize;
    g.bench_function("fred_get_decode", |b| {
        b.to_async(&rt).iter(|| {
            j = (j + 1) % L2_KEYS;
            let key = &raw_keys[j];
            let raw = &raw;
            async move {
                let bytes: Vec<u8> = raw.get(key.as_str()).await.expect("get");
                let (v, _): (Profile, usize) =
                    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                        .expect("decode");
                std::hint::black_box(Arc::new(v))
            }
        })
    });
    g.finish();
    let stats = cache.stats();
    assert_eq!(stats.decode_errors, 0, "{stats:?}");
    // Fewer than 2% of the reads may have been L1 hits, if any reads ran at all.
    assert!(
        stats.l1_hits * 50 <= stats.l2_hits.max(1),
        "the L2 bench was served by L1: {stats:?}"
    );
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = l1_hit, l2_hit
}
criterion_main!(benches);
