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

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use layercache_testkit::RedisServer;
use support::{l1_setup, L2Setup};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn l1_hit(c: &mut Criterion) {
    let rt = runtime();
    let (_cache, region, moka_cache, _) = rt.block_on(l1_setup());
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

fn l2_hit(c: &mut Criterion) {
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    // One thread runs everything (caller, fetch task, fred's connection task): the numbers
    // are the work done, not how the OS scheduler hands futures between threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // L1 holds 50 entries; the benchmark cycles through 5,000 keys, so nearly every read
    // misses L1 and is served by Redis, with the L1 fill a real L2 hit does.
    let setup = rt.block_on(L2Setup::new(&server, false));
    let mut g = c.benchmark_group("l2_hit");
    g.throughput(Throughput::Elements(1));
    // Loopback round trips vary with scheduling: sample longer than the L1 group.
    g.sample_size(50).measurement_time(Duration::from_secs(8));
    let mut i = 0usize;
    g.bench_function("layercache", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let setup = &setup;
            async move { std::hint::black_box(setup.read(i).await) }
        })
    });
    let mut j = 0usize;
    g.bench_function("fred_get_decode", |b| {
        b.to_async(&rt).iter(|| {
            j += 1;
            let setup = &setup;
            async move { std::hint::black_box(setup.raw_read(j).await) }
        })
    });
    g.finish();
    setup.check();
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
