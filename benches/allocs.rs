//! Heap allocations per operation, layercache against its baselines (`compare`'s workloads):
//! the count behind "no allocation on a hit — count them", and the measure of each cut.
//!
//! ```text
//! cargo bench -p layercache-benches --bench allocs
//! ```
//!
//! A counting global allocator counts every `alloc`/`realloc` call of the whole process while
//! a side runs `OPS` operations on a current-thread runtime (so fred's connection task, on
//! that thread too, is counted with the command it carries), after a warm-up of the same
//! operations. Reported: allocations per operation (per key for batches), layercache beside
//! its baseline.
//!
//! - `l1_hit`: `Region::get` served by L1, against moka `sync::Cache::get` of an `Arc<V>`.
//! - `l2_hit`: `Region::get` served by Redis (an L1 of 50 entries cycling 5,000 keys), against
//!   a fred `GET` and a bincode decode into an `Arc`.
//! - `get_many` (per key): `Region::get_many` of 100 keys, cold L1, against 100 `Region::get`.
//! - `insert`: `Region::insert`, against a bincode encode and a fred `SET … PX`.

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]
#![expect(
    clippy::cast_precision_loss,
    reason = "a bench binary: its arithmetic is on reports"
)]

mod support;
mod support_write;

use std::{alloc::System, future::Future};

use layercache_testkit::RedisServer;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use support::{l1_setup, L2Setup, L2_KEYS};

/// Counts allocation calls and bytes.
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Operations per measured run (after as many for warm-up).
const OPS: usize = 2_000;
/// Keys per batch.
const BATCH: usize = 100;

/// Allocation calls (`alloc` and `realloc`) and bytes allocated, per operation.
#[derive(Clone, Copy)]
struct PerOp {
    calls: f64,
    bytes: f64,
}

impl PerOp {
    fn per(self, n: usize) -> Self {
        Self {
            calls: self.calls / n as f64,
            bytes: self.bytes / n as f64,
        }
    }
}

/// Runs `op(i)` `OPS` times after a warm-up; what it allocated per operation.
async fn per_op<F, Fut>(mut op: F) -> PerOp
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..OPS {
        op(i).await;
    }
    let region = stats_alloc::Region::new(ALLOC);
    for i in OPS..2 * OPS {
        op(i).await;
    }
    let change = region.change();
    PerOp {
        calls: (change.allocations + change.reallocations) as f64 / OPS as f64,
        bytes: change.bytes_allocated as f64 / OPS as f64,
    }
}

fn report(name: &str, ours: PerOp, base: PerOp, unit: &str) {
    println!(
        "{name}: per {unit}, layercache {:.1} allocations ({:.0} B), baseline {:.1} ({:.0} B)",
        ours.calls, ours.bytes, base.calls, base.bytes
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (_cache, region, _moka, moka_sync) = l1_setup().await;
        let ours = per_op(|_| {
            let region = &region;
            async move {
                std::hint::black_box(region.get("user:42").await.expect("get").expect("hit"));
            }
        })
        .await;
        let base = per_op(|_| {
            let moka = &moka_sync;
            async move {
                std::hint::black_box(moka.get("user:42"));
            }
        })
        .await;
        report("l1_hit", ours, base, "read");
    });
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let setup = L2Setup::new(&server, false).await;
        let ours = per_op(|i| {
            let setup = &setup;
            async move {
                std::hint::black_box(setup.read(i).await);
            }
        })
        .await;
        let base = per_op(|i| {
            let setup = &setup;
            async move {
                std::hint::black_box(setup.raw_read(i).await);
            }
        })
        .await;
        report("l2_hit", ours, base, "read");
        setup.check();

        // Batches: key lists built outside the counted operation's own work are counted too,
        // the same on both sides (one `Vec` per batch).
        let batch = |i: usize| -> Vec<&str> {
            (0..BATCH)
                .map(|j| setup.keys[(i * BATCH + j) % L2_KEYS].as_str())
                .collect()
        };
        let ours = per_op(|i| {
            let keys = batch(i);
            let setup = &setup;
            async move {
                let got = setup.region.get_many(keys).await;
                assert!(got.iter().all(|v| matches!(v, Ok(Some(_)))));
            }
        })
        .await;
        let base = per_op(|i| {
            let keys = batch(i);
            let setup = &setup;
            async move {
                for k in keys {
                    let v = setup.region.get(k).await.expect("get");
                    std::hint::black_box(v.expect("found"));
                }
            }
        })
        .await;
        report("get_many", ours.per(BATCH), base.per(BATCH), "key");

        let ours = per_op(|i| support_write::insert(&setup, i)).await;
        let base =
            per_op(|i| support_write::raw_write(&setup, setup.raw_keys[i % L2_KEYS].as_str()))
                .await;
        report("insert", ours, base, "write");
    });
    drop(server);
}
