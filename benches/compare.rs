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
//! - `l2_hit`: `Region::get` answered by Redis (5,000 keys through a 50-entry L1, so reads miss
//!   L1: GET, envelope check, decode, L1 fill), against a fred `GET` plus bincode decode into an
//!   `Arc` over the same number of keys.
//!
//! Run: `cargo bench --bench compare` (a redis-server is started by the testkit). Set
//! `COMPARE_ROUNDS` for more rounds (default 41), `COMPARE_ONLY=l1_hit` (or `l2_hit`) for one.

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

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
    for round in 0..rounds + 1 {
        let mut time_ours = Duration::ZERO;
        let mut time_base = Duration::ZERO;
        for side in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            for _ in 0..ops {
                i = i.wrapping_add(1);
                if side == 0 {
                    ours(i).await;
                } else {
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
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
        let r = interleave(
            rounds,
            20_000,
            |_| {
                let region = &region;
                async move {
                    let v = region.get("user:42").await.expect("get");
                    std::hint::black_box(v);
                }
            },
            |_| {
                let moka_cache = &moka_cache;
                async move {
                    let v = moka_cache.get("user:42").await;
                    std::hint::black_box(v);
                }
            },
        )
        .await;
        r.report("l1_hit", 1.5);
        assert!(cache.stats().l1_hits > 0);
    });
}

const L2_KEYS: usize = 5000;

fn l2_hit(rounds: usize) {
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
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
        let bytes =
            bincode::serde::encode_to_vec(profile(), bincode::config::standard()).expect("encode");
        let keys: Vec<String> = (0..L2_KEYS).map(|i| format!("user:{i}")).collect();
        let raw_keys: Vec<String> = keys.iter().map(|k| format!("raw:{k}")).collect();
        for (k, rk) in keys.iter().zip(&raw_keys) {
            region.insert(k, profile()).await.expect("insert");
            let _: () = raw
                .set(rk.as_str(), bytes.clone(), None, None, false)
                .await
                .expect("set");
        }
        cache.clear_l1();
        let r = interleave(
            rounds,
            1_000,
            |i| {
                let (region, key) = (&region, &keys[i % L2_KEYS]);
                async move {
                    let v = region.get(key.as_str()).await.expect("get");
                    std::hint::black_box(v);
                }
            },
            |i| {
                let (raw, key) = (&raw, &raw_keys[i % L2_KEYS]);
                async move {
                    let bytes: Vec<u8> = raw.get(key.as_str()).await.expect("get");
                    let (v, _): (Profile, usize) =
                        bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                            .expect("decode");
                    std::hint::black_box(Arc::new(v));
                }
            },
        )
        .await;
        r.report("l2_hit", 1.2);
        let stats = cache.stats();
        assert_eq!(stats.decode_errors, 0, "{stats:?}");
        assert!(
            stats.l1_hits * 50 <= stats.l2_hits.max(1),
            "the L2 comparison was served by L1: {stats:?}"
        );
    });
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
    if only.as_deref().is_none_or(|o| o == "l2_hit") {
        l2_hit(rounds);
    }
}
