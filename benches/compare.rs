//! Interleaved comparison harness: layercache against its raw baseline, alternating.
//!
//! Criterion runs one side of a comparison for seconds, then the other; on a shared VM the
//! machine's speed drifts in between, and the ratio carries that drift (±0.2× in
//! `docs/BENCHMARKS.md`). This harness alternates short rounds instead — a round of the
//! baseline, a round of layercache, in alternating order — and reports the distribution of the
//! per-round ratios. Both sides of each ratio ran within milliseconds of each other.
//!
//! - `l1_hit`: `Region::get` answered by L1, against a moka `future::Cache<String, Arc<V>>`
//!   `get` (default settings) of the same value.
//! - `l1_hit_sync`: the same against moka's synchronous `sync::Cache<String, Arc<V>>` `get`
//!   (no future): layercache's L1 is a `sync::Cache`, so this shows our own code's cost alone.
//! - `l1_hit_deadline`: the same for an entry whose `ttl` (50 s) is shorter than the cache-wide
//!   L1 bound (60 s), so each hit also reads the coarse clock for the entry's own deadline.
//! - `l2_hit`: `Region::get` answered by Redis (5,000 keys through a 50-entry L1, so reads miss
//!   L1: GET, envelope check, decode, L1 fill), against a fred `GET` plus bincode decode into an
//!   `Arc` over the same number of keys.
//!
//! - `load`: `Region::get_or_load` of a key neither tier holds (`GET`, loader, fill script, L1
//!   fill), against a fred `GET` that finds nothing, a bincode encode and a `SET … PX`: the
//!   miss path of hand-written cache-aside.
//! - `write`: `Region::insert` (a `SET`, the fence's `GET` of the region's generation and the
//!   bus message, pipelined) against a bincode encode and a fred `SET … PX`. Target: ≤ 1.3×.
//! - `write_tracked`: the same `insert` with `server_assisted_tracking` (no `PUBLISH`), against
//!   the same `SET`.
//! - `write_announced`: the same `insert` against a `SET … PX` and a `PUBLISH` sent together,
//!   on a channel another connection of the process subscribes to (informational).
//!
//! - `batch_get`: `Region::get_many` of 100 keys answered by Redis (same setup as `l2_hit`),
//!   against 100 sequential `Region::get` of the same keys. Target: ≤ 1/15 of the time.
//! - `batch_get_raw`: the same `get_many(100)` against one fred `MGET` of the 100 keys and
//!   100 bincode decodes (informational: the floor under the batch read).
//! - `batch_get_sliding`: `get_many(100)` on a region with sliding expiration (each key read
//!   is extended in Redis) against the same on a region without (informational).
//! - `batch_load`: `Region::get_or_load_many` of 100 keys neither tier has (one batch-loader
//!   call), against 100 concurrent `Region::get_or_load` of other such keys (100 loader calls).
//!   Target: ≤ 1/5 of the time.
//! - `batch_write`: `Region::insert_many` of 100 values, against 100 concurrent
//!   `Region::insert` (each its own script run and bus message).
//! - `batch_write_tagged`, `batch_load_tagged`: the same batch write, and a batch load of 100
//!   new keys, tagged (`Region::many().tags(…)`) against untagged (informational: what tags
//!   cost a batch).
//!
//! Run: `cargo bench --bench compare` (a redis-server is started by the testkit). Set
//! `COMPARE_ROUNDS` for more rounds (default 41), `COMPARE_ONLY=l1_hit` (or `l1_hit_sync`, `l1_hit_deadline`, `l2_hit`, `load`, `write`, `write_tracked`, `write_announced`, `batch_get`, `batch_get_raw`, `batch_get_sliding`, `batch_load`, `batch_write`, `batch_write_tagged`, `batch_load_tagged`) for one, and `COMPARE_SIDE=ours`
//! (or `base`) to run one side only — for `perf stat`/`perf record` of that side (its ratios are
//! then meaningless).

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

mod compare_tagged;
mod support;
mod support_write;

use std::time::{Duration, Instant};

use layercache_testkit::RedisServer;
use support::{l1_setup, L2Setup, L2_KEYS};

/// Per-round mean times (ns per op) of both sides, and their ratios.
struct Rounds {
    ours: Vec<f64>,
    base: Vec<f64>,
}

impl Rounds {
    fn report(&self, name: &str, target: f64) {
        let mut ratios: Vec<f64> = self
            .ours
            .iter()
            .zip(&self.base)
            .map(|(o, b)| o / b)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let q = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        let mut ours = self.ours.clone();
        let mut base = self.base.clone();
        ours.sort_by(f64::total_cmp);
        base.sort_by(f64::total_cmp);
        let met = ratios.iter().filter(|r| **r <= target).count();
        println!(
            "{name}: {} rounds; layercache median {:.0} ns/op, baseline median {:.0} ns/op; \
             ratio p10 {:.2} / median {:.2} / p90 {:.2}; rounds at or under {target}x: {met}",
            ratios.len(),
            q(&ours, 0.5),
            q(&base, 0.5),
            q(&ratios, 0.1),
            q(&ratios, 0.5),
            q(&ratios, 0.9),
        );
    }
}

fn rounds() -> usize {
    std::env::var("COMPARE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(41)
}

/// Runs `rounds` rounds of `ops` operations of each side, alternating which goes first.
async fn interleave<A, FA, B, FB>(rounds: usize, ops: usize, mut ours: A, mut base: B) -> Rounds
where
    A: FnMut(usize) -> FA,
    FA: std::future::Future<Output = ()>,
    B: FnMut(usize) -> FB,
    FB: std::future::Future<Output = ()>,
{
    let mut r = Rounds {
        ours: Vec::with_capacity(rounds),
        base: Vec::with_capacity(rounds),
    };
    let mut i = 0usize;
    let only = std::env::var("COMPARE_SIDE").ok();
    for round in 0..rounds + 1 {
        let mut time_ours = Duration::ZERO;
        let mut time_base = Duration::ZERO;
        for side in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            for _ in 0..ops {
                i = i.wrapping_add(1);
                if side == 0 {
                    if only.as_deref() != Some("base") {
                        ours(i).await;
                    }
                } else if only.as_deref() != Some("ours") {
                    base(i).await;
                }
            }
            let took = start.elapsed();
            if side == 0 {
                time_ours = took;
            } else {
                time_base = took;
            }
        }
        // Round 0 warms up both sides.
        if round > 0 {
            r.ours.push(time_ours.as_nanos() as f64 / ops as f64);
            r.base.push(time_base.as_nanos() as f64 / ops as f64);
        }
    }
    r
}

fn l1_hit(rounds: usize) {
    l1_hit_of(rounds, "l1_hit", "user:42", None, false);
}

/// `l1_hit` against moka's synchronous cache (`moka::sync::Cache::get`, no future), which is
/// what layercache's L1 is built on: the comparison that shows only our own code's cost.
fn l1_hit_sync(rounds: usize) {
    l1_hit_of(rounds, "l1_hit_sync", "user:42", None, true);
}

/// `l1_hit` of an entry that lives shorter than the cache-wide L1 bound, so each hit checks its
/// own deadline on the coarse clock.
fn l1_hit_deadline(rounds: usize) {
    let short = layercache::EntryOptions::new().ttl(Duration::from_secs(50));
    l1_hit_of(rounds, "l1_hit_deadline", "user:short", Some(short), false);
}

fn l1_hit_of(
    rounds: usize,
    name: &str,
    key: &'static str,
    options: Option<layercache::EntryOptions>,
    sync_baseline: bool,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (cache, region, moka_cache, moka_sync) = l1_setup().await;
        if let Some(options) = options {
            region
                .entry(key)
                .options(&options)
                .insert(support::profile())
                .await
                .expect("insert");
        }
        let misses = cache.stats().misses;
        let r = interleave(
            rounds,
            20_000,
            |_| {
                let region = &region;
                async move {
                    let v = region.get(key).await.expect("get");
                    std::hint::black_box(v.expect("an L1 hit"));
                }
            },
            |_| {
                let (moka_cache, moka_sync) = (&moka_cache, &moka_sync);
                async move {
                    let v = if sync_baseline {
                        moka_sync.get("user:42")
                    } else {
                        moka_cache.get("user:42").await
                    };
                    std::hint::black_box(v);
                }
            },
        )
        .await;
        r.report(name, 1.2);
        assert!(cache.stats().l1_hits > 0);
        assert_eq!(cache.stats().misses, misses, "every read was an L1 hit");
    });
}

/// A redis-server, a current-thread runtime (one thread runs the caller, the fetch tasks and
/// fred's connection task), and the L2 comparisons' setup on them.
fn l2_bench() -> (RedisServer, tokio::runtime::Runtime, L2Setup) {
    l2_bench_with(false)
}

/// [`l2_bench`], with the cache's `server_assisted_tracking` set to `tracking`.
fn l2_bench_with(tracking: bool) -> (RedisServer, tokio::runtime::Runtime, L2Setup) {
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let setup = rt.block_on(L2Setup::new(&server, tracking));
    (server, rt, setup)
}

fn l2_hit(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let r = interleave(
            rounds,
            1_000,
            |i| {
                let setup = &setup;
                async move {
                    std::hint::black_box(setup.read(i).await);
                }
            },
            |i| {
                let setup = &setup;
                async move {
                    std::hint::black_box(setup.raw_read(i).await);
                }
            },
        )
        .await;
        r.report("l2_hit", 1.1);
        setup.check();
    });
    drop(server);
}

/// `Region::insert` (encode, envelope, the fenced `SET` with its bus message sent together,
/// L1 fill) against a bincode encode and a fred `SET … PX` of the same value: what a
/// hand-written cache-aside write costs.
fn write(rounds: usize) {
    write_with(rounds, false);
}

/// `write` with `server_assisted_tracking`: the write sends no `PUBLISH` (Redis reports it to
/// other instances itself; there are none here) — against the same fred `SET`.
fn write_tracked(rounds: usize) {
    write_with(rounds, true);
}

/// `write`, the cache built with `server_assisted_tracking(tracking)`.
fn write_with(rounds: usize, tracking: bool) {
    let name = if tracking { "write_tracked" } else { "write" };
    let (server, rt, setup) = l2_bench_with(tracking);
    rt.block_on(async {
        let r = interleave(
            rounds,
            1_000,
            |i| support_write::insert(&setup, i),
            |i| support_write::raw_write(&setup, setup.raw_keys[i % L2_KEYS].as_str()),
        )
        .await;
        r.report(name, 1.3);
        let stats = setup.cache.stats();
        assert!(stats.l2_writes > 0 && stats.l2_errors == 0, "{stats:?}");
        print_commandstats(&setup).await;
    });
    drop(server);
}

/// Where the time goes on the server: Redis's own time per call of the commands a cache sends.
async fn print_commandstats(setup: &L2Setup) {
    let info: String = fred::interfaces::ClientLike::custom(
        &setup.raw,
        fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::Random, false),
        vec!["commandstats"],
    )
    .await
    .expect("info");
    for line in info.lines().filter(|l| {
        [
            "cmdstat_set:",
            "cmdstat_get:",
            "cmdstat_mget:",
            "cmdstat_getex:",
            "cmdstat_pexpire:",
            "cmdstat_evalsha:",
            "cmdstat_publish:",
        ]
        .iter()
        .any(|c| l.starts_with(c))
    }) {
        println!("  redis {line}");
    }
}

/// The miss path: `Region::get_or_load` of a key neither tier holds (a `GET` that finds
/// nothing, the loader, the conditional fill script, the L1 fill) against what hand-written
/// cache-aside does on a miss: a fred `GET` that finds nothing, then a bincode encode and a
/// `SET … PX` of the loaded value. Every operation is a key of its own.
fn load(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let r = interleave(
            rounds,
            1_000,
            |i| {
                let setup = &setup;
                async move {
                    let key = format!("miss:{i}");
                    let v = setup
                        .region
                        .get_or_load(key.as_str(), |_| async {
                            Ok::<_, std::io::Error>(support::profile())
                        })
                        .await
                        .expect("get_or_load");
                    std::hint::black_box(v);
                }
            },
            |i| {
                let setup = &setup;
                async move {
                    let key = format!("raw:miss:{i}");
                    let got: Option<Vec<u8>> =
                        fred::prelude::KeysInterface::get(&setup.raw, key.as_str())
                            .await
                            .expect("get");
                    assert!(got.is_none());
                    support_write::raw_write(setup, &key).await;
                }
            },
        )
        .await;
        r.report("load", 1.3);
        let stats = setup.cache.stats();
        assert!(
            stats.loads >= (rounds as u64) * 1_000 && stats.l2_errors == 0,
            "{stats:?}"
        );
    });
    drop(server);
}

/// Keys per batch.
const BATCH: usize = 100;

/// The keys of batch `i` (cycling over the keys Redis holds).
fn batch_keys(setup: &L2Setup, i: usize) -> Vec<&str> {
    (0..BATCH)
        .map(|j| setup.keys[(i * BATCH + j) % L2_KEYS].as_str())
        .collect()
}

/// [`batch_keys`], owned (for a task that outlives the borrow).
fn owned_batch_keys(setup: &L2Setup, i: usize) -> Vec<String> {
    batch_keys(setup, i)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The layercache side of `batch_get` and `batch_get_raw`: `get_many` of batch `i`, every key
/// found.
async fn batch_read(setup: &L2Setup, i: usize) {
    let got = setup.region.get_many(batch_keys(setup, i)).await;
    assert!(got.iter().all(|v| matches!(v, Ok(Some(_)))));
    std::hint::black_box(got);
}

fn batch_get(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let r = interleave(
            rounds,
            20,
            |i| batch_read(&setup, i),
            |i| {
                let (setup, keys) = (&setup, batch_keys(&setup, i));
                async move {
                    for k in keys {
                        let v = setup.region.get(k).await.expect("get");
                        std::hint::black_box(v.expect("found"));
                    }
                }
            },
        )
        .await;
        r.report("batch_get", 1.0 / 15.0);
    });
    drop(server);
}

/// `get_many(100)` against one fred `MGET` of 100 keys and 100 bincode decodes: what the
/// batch read costs beyond the command and the decode (informational: no target).
fn batch_get_raw(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let r = interleave(
            rounds,
            20,
            |i| batch_read(&setup, i),
            |i| {
                let keys: Vec<String> = (0..BATCH)
                    .map(|j| setup.raw_keys[(i * BATCH + j) % L2_KEYS].clone())
                    .collect();
                let setup = &setup;
                async move {
                    let rows: Vec<Option<Vec<u8>>> =
                        fred::interfaces::KeysInterface::mget(&setup.raw, keys)
                            .await
                            .expect("mget");
                    let values: Vec<std::sync::Arc<support::Profile>> = rows
                        .into_iter()
                        .map(|b| {
                            let b = b.expect("found");
                            let (v, _): (support::Profile, usize) =
                                bincode::serde::decode_from_slice(&b, bincode::config::standard())
                                    .expect("decode");
                            std::sync::Arc::new(v)
                        })
                        .collect();
                    std::hint::black_box(values);
                }
            },
        )
        .await;
        r.report("batch_get_raw", 1.1);
    });
    drop(server);
}

/// `get_many(100)` on a region with sliding expiration (every key read is extended in Redis)
/// against `get_many(100)` of the same keys on a region without: what sliding costs a batch
/// read (informational: no target).
fn batch_get_sliding(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let options = layercache::EntryOptions::new()
            .ttl(Duration::from_secs(3600))
            .sliding(Duration::from_millis(1));
        let sliding = setup
            .cache
            .region::<str, support::Profile>("s")
            .entry_options(options)
            .build()
            .await
            .expect("region");
        for chunk in setup.keys.chunks(1_000) {
            let done = sliding
                .insert_many(chunk.iter().map(|k| (k.as_str(), support::profile())))
                .await;
            assert!(done.iter().all(Result::is_ok));
        }
        setup.cache.clear_l1();
        let extends = setup.cache.stats().l2_extends;
        let r = interleave(
            rounds,
            20,
            |i| {
                let (sliding, keys) = (&sliding, batch_keys(&setup, i));
                async move {
                    let got = sliding.get_many(keys).await;
                    assert!(got.iter().all(|v| matches!(v, Ok(Some(_)))));
                    std::hint::black_box(got);
                }
            },
            |i| batch_read(&setup, i),
        )
        .await;
        r.report("batch_get_sliding", 1.1);
        println!(
            "batch_get_sliding: {} extensions sent",
            setup.cache.stats().l2_extends - extends
        );
        print_commandstats(&setup).await;
    });
    drop(server);
}

fn batch_load(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let loads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Every operation's keys are new: `{side}:{i}:{j}`.
        let keys = |side: &str, i: usize| -> Vec<String> {
            (0..BATCH).map(|j| format!("{side}:{i}:{j}")).collect()
        };
        let r = interleave(
            rounds,
            10,
            |i| {
                let (region, keys, loads) = (setup.region.clone(), keys("many", i), loads.clone());
                async move {
                    let got = region
                        .get_or_load_many(
                            keys.iter().map(String::as_str),
                            move |ks: Vec<String>| {
                                loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let rows: Vec<(String, support::Profile)> =
                                    ks.into_iter().map(|k| (k, support::profile())).collect();
                                std::future::ready(Ok::<_, std::io::Error>(rows))
                            },
                        )
                        .await;
                    assert!(got.iter().all(|v| matches!(v, Ok(Some(_)))));
                }
            },
            |i| {
                let (region, keys, loads) = (setup.region.clone(), keys("one", i), loads.clone());
                async move {
                    let tasks: Vec<_> = keys
                        .into_iter()
                        .map(|k| {
                            let (region, loads) = (region.clone(), loads.clone());
                            tokio::spawn(async move {
                                region
                                    .get_or_load(k.as_str(), move |_| {
                                        loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                        std::future::ready(Ok::<_, std::io::Error>(
                                            support::profile(),
                                        ))
                                    })
                                    .await
                                    .expect("load")
                            })
                        })
                        .collect();
                    for t in tasks {
                        std::hint::black_box(t.await.expect("task"));
                    }
                }
            },
        )
        .await;
        r.report("batch_load", 1.0 / 5.0);
        let n = (rounds + 1) * 10;
        println!(
            "batch_load: {} loader calls for {n} batches and {} single loads",
            loads.load(std::sync::atomic::Ordering::Relaxed),
            n * BATCH
        );
        print_commandstats(&setup).await;
    });
    drop(server);
}

fn batch_write(rounds: usize) {
    let (server, rt, setup) = l2_bench();
    rt.block_on(async {
        let batch = |i: usize| owned_batch_keys(&setup, i);
        let r = interleave(
            rounds,
            20,
            |i| {
                let (region, keys) = (setup.region.clone(), batch(i));
                async move {
                    let done = region
                        .insert_many(keys.iter().map(|k| (k.as_str(), support::profile())))
                        .await;
                    assert!(done.iter().all(Result::is_ok));
                }
            },
            |i| {
                let (region, keys) = (setup.region.clone(), batch(i));
                async move {
                    let tasks: Vec<_> = keys
                        .into_iter()
                        .map(|k| {
                            let region = region.clone();
                            tokio::spawn(async move {
                                region.insert(k.as_str(), support::profile()).await
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task").expect("insert");
                    }
                }
            },
        )
        .await;
        r.report("batch_write", 1.0 / 5.0);
    });
    drop(server);
}

/// The baseline of `write_announced`: a `SET … PX` and a `PUBLISH` of a 40-byte message on the
/// subscribed channel, sent together.
async fn raw_write_announced(setup: &L2Setup, i: usize) {
    let message = vec![7u8; 40];
    let ((), published) = tokio::join!(
        support_write::raw_write(setup, setup.raw_keys[i % L2_KEYS].as_str()),
        fred::prelude::PubsubInterface::publish::<(), _, _>(&setup.raw, "raw-bus", message)
    );
    published.expect("publish");
}

/// `Region::insert` against what a hand-written write that tells other instances costs: a
/// bincode encode, a fred `SET … PX` and a `PUBLISH` of a 40-byte message, sent together, on a
/// channel that another connection of this process (on a thread of its own, as layercache's bus
/// listener) subscribes to. Informational: the target is against the bare `SET`.
fn write_announced(rounds: usize) {
    use fred::prelude::{Builder, ClientLike, Config, EventInterface, PubsubInterface};
    let (server, rt, setup) = l2_bench();
    let url = server.url();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sub = Builder::from_config(Config::from_url(&url).expect("url"))
                .build()
                .expect("client");
            sub.init().await.expect("connect");
            let mut rx = sub.message_rx();
            sub.subscribe("raw-bus").await.expect("subscribe");
            ready_tx.send(()).expect("ready");
            let drain = async {
                while let Ok(m) = rx.recv().await {
                    std::hint::black_box(m);
                }
            };
            tokio::select! {
                () = drain => {}
                _ = stop_rx => {}
            }
        });
    });
    ready_rx.recv().expect("the subscriber is ready");
    rt.block_on(async {
        let r = interleave(
            rounds,
            1_000,
            |i| support_write::insert(&setup, i),
            |i| raw_write_announced(&setup, i),
        )
        .await;
        r.report("write_announced", 1.3);
    });
    drop(stop_tx);
    listener.join().expect("the listener thread");
    drop(server);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    // Run without `--bench` (as `cargo test --benches` does), keep it quick.
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = if bench { rounds() } else { 3 };
    // `COMPARE_ONLY=l1_hit` (or `l2_hit`) runs one comparison, for profiling.
    let only = std::env::var("COMPARE_ONLY").ok();
    if only.as_deref().is_none_or(|o| o == "l1_hit") {
        l1_hit(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "l1_hit_sync") {
        l1_hit_sync(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "l1_hit_deadline") {
        l1_hit_deadline(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "l2_hit") {
        l2_hit(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "batch_get") {
        batch_get(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "batch_get_raw") {
        batch_get_raw(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "batch_get_sliding") {
        batch_get_sliding(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "batch_load") {
        batch_load(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "batch_write_tagged") {
        compare_tagged::batch_write_tagged(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "batch_load_tagged") {
        compare_tagged::batch_load_tagged(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "load") {
        load(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "write") {
        write(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "write_tracked") {
        write_tracked(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "write_announced") {
        write_announced(rounds);
    }
    if only.as_deref().is_none_or(|o| o == "batch_write") {
        batch_write(rounds);
    }
}
