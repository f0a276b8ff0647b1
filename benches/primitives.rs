//! The primitives beside the cache against what a user would write by hand with fred, on one
//! redis-server (loopback), in the same run: µs per operation, medians of rounds, the two
//! sides alternating.
//!
//! ```text
//! cargo bench -p layercache-benches --bench primitives
//! ```
//!
//! - lock: `acquire()` + `release()` (two script runs: the fence and the token check) against
//!   `SET NX PX` + `DEL` (two commands, no fence, a release that could delete someone else's
//!   lock);
//! - rate check: one `check()` of each algorithm (one script run) against one `INCR` (what a
//!   hand-written fixed window costs at least);
//! - session read: `get()` of a session this instance holds (an L1 hit, plus, for a session
//!   with an owner, its owner's revocation mark, also an L1 hit) against a region `get` L1 hit.

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::{
    future::Future,
    time::{Duration, Instant},
};

use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use layercache::{LayerCache, RateLimit};
use layercache_testkit::RedisServer;

/// Runs `op` `n` times; µs per call.
async fn per_op<F, Fut>(n: u32, mut op: F) -> f64
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    for i in 0..n {
        op(i).await;
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to list.
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, n) = if bench { (5, 3_000) } else { (1, 50) };
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cache = LayerCache::builder("bp")
            .redis_url(server.url())
            .build()
            .await
            .expect("cache");
        let raw = Builder::from_config(Config::from_url(&server.url()).expect("url"))
            .build()
            .expect("client");
        raw.init().await.expect("connect");
        let buckets = [
            (
                "token bucket",
                RateLimit::token_bucket(1_000_000_000_000, Duration::from_secs(1)),
            ),
            (
                "fixed window",
                RateLimit::fixed_window(1_000_000_000_000, Duration::from_secs(3600)),
            ),
            (
                "sliding window",
                RateLimit::sliding_window(1_000_000_000_000, Duration::from_secs(3600)),
            ),
        ];
        let limiters: Vec<_> = buckets
            .iter()
            .map(|(name, l)| {
                let limiter = cache
                    .rate_limiter(&name.replace(' ', "-"), *l)
                    .expect("limiter");
                (*name, limiter)
            })
            .collect();
        let sessions = cache.sessions::<String>("s").build().await.expect("store");
        let id = sessions
            .create_for("u1", "data".to_owned())
            .await
            .expect("session");
        let anonymous = sessions.create("data".to_owned()).await.expect("session");
        let region = cache
            .region::<str, String>("r")
            .build()
            .await
            .expect("region");
        region.insert("k", "data".to_owned()).await.expect("insert");

        let mut rows: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
        let mut row = |name: &str| -> usize {
            rows.push((name.to_owned(), Vec::new(), Vec::new()));
            rows.len() - 1
        };
        let lock_row = row("lock acquire + release | SET NX PX + DEL");
        let rate_rows: Vec<usize> = limiters
            .iter()
            .map(|(name, _)| row(&format!("rate check, {name} | INCR")))
            .collect();
        let session_row = row("session get, with an owner (L1) | region get (L1)");
        let anonymous_row = row("session get, no owner (L1) | region get (L1)");
        for _ in 0..rounds {
            let ours = per_op(n, |_| async {
                let lock = cache.lock("job").acquire().await.expect("redis");
                lock.expect("free").release().await.expect("release");
            })
            .await;
            let theirs = per_op(n, |_| async {
                let taken: Option<String> = raw
                    .set(
                        "raw:lock",
                        "t",
                        Some(fred::types::Expiration::PX(10_000)),
                        Some(fred::types::SetOptions::NX),
                        false,
                    )
                    .await
                    .expect("set");
                assert!(taken.is_some());
                let _: u64 = raw.del("raw:lock").await.expect("del");
            })
            .await;
            rows[lock_row].1.push(ours);
            rows[lock_row].2.push(theirs);
            for ((_, limiter), &at) in limiters.iter().zip(&rate_rows) {
                let ours = per_op(n, |_| async {
                    assert!(limiter.check("k").await.expect("check").allowed);
                })
                .await;
                let theirs = per_op(n, |_| async {
                    let _: u64 = raw.incr("raw:count").await.expect("incr");
                })
                .await;
                rows[at].1.push(ours);
                rows[at].2.push(theirs);
            }
            let ours = per_op(n * 100, |_| async {
                assert!(sessions.get(&id).await.expect("get").is_some());
            })
            .await;
            let theirs = per_op(n * 100, |_| async {
                assert!(region.get("k").await.expect("get").is_some());
            })
            .await;
            rows[session_row].1.push(ours);
            rows[session_row].2.push(theirs);
            let ours = per_op(n * 100, |_| async {
                assert!(sessions.get(&anonymous).await.expect("get").is_some());
            })
            .await;
            rows[anonymous_row].1.push(ours);
            rows[anonymous_row].2.push(theirs);
        }
        println!("| operation | baseline | layercache µs | baseline µs | ratio |");
        println!("|---|---|---|---|---|");
        for (name, ours, theirs) in rows {
            let (ours, theirs) = (median(ours), median(theirs));
            let (what, base) = name.split_once(" | ").unwrap_or((&name, ""));
            println!(
                "| {what} | {base} | {ours:.2} | {theirs:.2} | {:.2} |",
                ours / theirs
            );
        }
        cache.shutdown().await;
    });
}
