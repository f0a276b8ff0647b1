//! Codecs and compression: how fast a value is stored and read back through the envelope
//! (encode, LZ4 above the threshold, CRC; and back), and how many bytes it takes — bincode and
//! postcard, compression on and off, values from 100 B to 128 KiB.
//!
//! The values are "JSON-like records": a list of rows with a few repeated field values, as an
//! API's payload is. The shared tier is the in-memory server (`memory` feature), so the numbers
//! are the codec's and the envelope's work, not a network's.
//!
//! - `store/{codec}/{compression}/{size}`: `insert` (encode, compress, checksum, write).
//! - `load/{codec}/{compression}/{size}`: `get` with a cold L1 (read, checksum, decompress,
//!   decode).
//!
//! Stored bytes (the payload after compression, against the codec's raw bytes) are printed once
//! per case from the cache's `Stats`.
//!
//! Run: `cargo bench -p layercache-benches --bench codec`.

#![expect(missing_docs, reason = "criterion_group! generates undocumented items")]
#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use layercache::{memory::MemoryServer, Bincode, Codec, LayerCache, Postcard, Region};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    id: u64,
    status: String,
    country: String,
    tags: Vec<String>,
    score: f64,
    note: String,
}

/// A record of about `bytes` encoded bytes: rows whose fields repeat a few values.
fn record(bytes: usize) -> Vec<Row> {
    let statuses = ["active", "suspended", "pending"];
    let countries = ["FR", "DE", "US", "JP", "BR"];
    let rows = (bytes / 70).max(1);
    (0..rows as u64)
        .map(|i| Row {
            id: 10_000 + i,
            status: statuses[(i % 3) as usize].to_owned(),
            country: countries[(i % 5) as usize].to_owned(),
            tags: vec!["customer".to_owned(), format!("tier-{}", i % 4)],
            score: (i % 100) as f64 / 10.0,
            note: if i % 7 == 0 {
                format!("follow up on ticket {}", 5000 + i)
            } else {
                String::new()
            },
        })
        .collect()
}

const SIZES: [usize; 4] = [100, 1024, 10 * 1024, 128 * 1024];

async fn region<C: Codec>(codec: C, compress: bool) -> (LayerCache, Region<str, Vec<Row>, C>) {
    let server = MemoryServer::new();
    let cache = LayerCache::builder("codec")
        .memory_server(&server)
        .compression_threshold(if compress { 1024 } else { usize::MAX })
        .max_value_bytes(1 << 20)
        .build()
        .await
        .expect("cache");
    let region = cache
        .region_with_codec::<str, Vec<Row>, C>("r", codec)
        .build()
        .await
        .expect("region");
    (cache, region)
}

fn case<C: Codec + Clone>(c: &mut Criterion, name: &str, codec: C) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for compress in [false, true] {
        let label = if compress { "lz4" } else { "plain" };
        let (cache, region) = rt.block_on(region(codec.clone(), compress));
        let mut g = c.benchmark_group(format!("codec/{name}/{label}"));
        g.sample_size(20).measurement_time(Duration::from_secs(1));
        for size in SIZES {
            let value = record(size);
            // One write to learn the encoded size: the throughput is in raw (codec) bytes.
            let before = cache.stats();
            rt.block_on(region.insert("probe", value.clone()))
                .expect("insert");
            let after = cache.stats();
            let raw = after.bytes_raw - before.bytes_raw;
            let stored = after.bytes_stored - before.bytes_stored;
            println!(
                "codec {name} {label} ~{size} B: raw {raw} B, stored {stored} B ({:.0} %)",
                100.0 * stored as f64 / raw.max(1) as f64
            );
            g.throughput(Throughput::Bytes(raw));
            g.bench_with_input(BenchmarkId::new("store", size), &value, |b, value| {
                b.to_async(&rt)
                    .iter(|| async { region.insert("k", value.clone()).await.expect("insert") })
            });
            g.bench_function(BenchmarkId::new("load", size), |b| {
                b.to_async(&rt).iter(|| async {
                    cache.clear_l1();
                    let v = region.get("probe").await.expect("get").expect("found");
                    std::hint::black_box(v)
                })
            });
        }
        g.finish();
    }
}

fn codecs(c: &mut Criterion) {
    case(c, "bincode", Bincode);
    case(c, "postcard", Postcard);
}

criterion_group!(benches, codecs);
criterion_main!(benches);
