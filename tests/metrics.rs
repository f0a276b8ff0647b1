//! The `metrics` feature against a real redis-server: a debugging recorder installed for the
//! whole binary, real traffic through two instances, and the documented names, labels and
//! values read back from the recorder.
//!
//! The recorder is global and its snapshots drain what they read (counters are re-exported
//! as totals, histograms are not): the tests of this binary take turns.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::{collections::BTreeMap, sync::OnceLock, time::Duration};

use fred::prelude::KeysInterface;
use layercache::{Corruption, FlushReason};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{builder, caught_up, raw_client, redis, wait_until};

/// The label names the documentation allows (`layercache::metrics`).
const LABELS: [&str; 10] = [
    "cache",
    "region",
    "tier",
    "kind",
    "outcome",
    "stage",
    "reason",
    "event",
    "direction",
    "op",
];

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One series: its name and labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// Everything the recorder holds now, for one cache (drains it).
fn readings(cache: &str) -> BTreeMap<Series, DebugValue> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: BTreeMap<String, String> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            ((key.name().to_owned(), labels), value)
        })
        .filter(|((_, labels), _)| labels.get("cache").map(String::as_str) == Some(cache))
        .collect()
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn counter(r: &BTreeMap<Series, DebugValue>, name: &str, labels: &[(&str, &str)]) -> u64 {
    match r.get(&series(name, labels)) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?} in {:#?}", r.keys()),
    }
}

fn gauge(r: &BTreeMap<Series, DebugValue>, name: &str, cache: &str) -> f64 {
    match r.get(&series(name, &[("cache", cache)])) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name}: {other:?}"),
    }
}

fn samples(r: &BTreeMap<Series, DebugValue>, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match r.get(&series(name, labels)) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_traffic_is_exported_under_the_documented_names_and_labels() {
    let _turn = TURNS.lock().await;
    snapshotter();
    let server = redis();
    let raw = raw_client(&server).await;
    let cache = "metrics-a";
    let a = builder(&server, cache)
        .metrics_interval(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let b = builder(&server, cache)
        .metrics_interval(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let (ra, rb) = (
        a.region::<str, u64>("users").build().await.unwrap(),
        b.region::<str, u64>("users").build().await.unwrap(),
    );
    let orders = a.region::<str, u64>("orders").build().await.unwrap();

    // A: one load (a miss, a write to Redis), then two L1 hits. B: one L2 hit.
    let loaded = ra
        .get_or_load("u1", |_| async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    assert_eq!(*loaded, 7);
    for _ in 0..2 {
        assert_eq!(*ra.get("u1").await.unwrap().unwrap(), 7);
    }
    assert_eq!(*rb.get("u1").await.unwrap().unwrap(), 7);
    // A loader that fails.
    assert!(ra
        .get_or_load("u2", |_| async {
            Err::<u64, _>(std::io::Error::other("db down"))
        })
        .await
        .is_err());
    // Garbage under a key: B reads it as a miss, counted by reason.
    let key = rb.redis_key("u3").unwrap();
    let _: () = raw
        .set(&key, b"not an envelope".as_slice(), None, None, false)
        .await
        .unwrap();
    assert!(rb.get("u3").await.unwrap().is_none());
    // A write, announced on the bus to B; and a clear (a flush by reason).
    orders.insert("o1", 1).await.unwrap();
    caught_up(&b, &a).await;
    a.clear().await.unwrap();
    a.run_pending_tasks().await;

    a.export_metrics();
    let r = readings(cache);
    // Every series has only the documented labels, and no label value is a key.
    for (name, labels) in r.keys() {
        assert!(name.starts_with("layercache_"), "{name}");
        for (k, v) in labels {
            assert!(LABELS.contains(&k.as_str()), "{name}: label {k}");
            assert!(
                !["u1", "u2", "u3", "o1"].contains(&v.as_str()),
                "{name}: {k}={v}"
            );
        }
    }
    let users = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("cache", cache), ("region", "users")];
        l.extend_from_slice(extra);
        l
    };
    let stats = ra.stats();
    assert_eq!(
        counter(&r, "layercache_hits_total", &users(&[("tier", "l1")])),
        stats.l1_hits
    );
    assert_eq!(stats.l1_hits, 2);
    assert_eq!(
        counter(&r, "layercache_loads_total", &users(&[("kind", "caller")])),
        2
    );
    assert_eq!(
        counter(&r, "layercache_loads_total", &users(&[("kind", "refresh")])),
        0
    );
    assert_eq!(counter(&r, "layercache_load_errors_total", &users(&[])), 1);
    assert_eq!(counter(&r, "layercache_redis_writes_total", &users(&[])), 1);
    assert_eq!(
        counter(
            &r,
            "layercache_redis_writes_total",
            &[("cache", cache), ("region", "orders")]
        ),
        1
    );
    assert!(counter(&r, "layercache_misses_total", &users(&[])) >= 2);
    assert!(
        counter(
            &r,
            "layercache_bus_messages_total",
            &[("cache", cache), ("region", ""), ("direction", "sent")]
        ) >= 2,
        "the write's and the clear's messages"
    );
    assert_eq!(
        counter(
            &r,
            "layercache_l1_flushes_total",
            &[("cache", cache), ("reason", FlushReason::Clear.as_str())]
        ),
        1
    );
    // Both instances export under the same cache name: the last export wins for a series.
    // Here only A exported: B's hit and decode error are not in yet.
    assert_eq!(
        counter(&r, "layercache_hits_total", &users(&[("tier", "l2")])),
        0
    );
    // Loads were timed (two runs: the value and the failure), Redis round trips too.
    assert_eq!(
        samples(
            &r,
            "layercache_load_duration_seconds",
            &users(&[("kind", "caller")])
        )
        .len(),
        2
    );
    let gets = samples(
        &r,
        "layercache_redis_command_duration_seconds",
        &[("cache", cache), ("op", "redis GET")],
    );
    assert!(
        !gets.is_empty() && gets.iter().all(|s| *s > 0.0),
        "{gets:?}"
    );
    // The bus's round trip, as each instance measures it on its own messages.
    let echoes = samples(&r, "layercache_bus_echo_seconds", &[("cache", cache)]);
    assert!(
        !echoes.is_empty() && echoes.iter().all(|s| *s > 0.0),
        "{echoes:?}"
    );
    assert!(a.bus_status().unwrap().echo.is_some());
    // Gauges.
    assert_eq!(
        gauge(&r, "layercache_l1_entries", cache),
        a.l1_entry_count() as f64
    );
    assert_eq!(gauge(&r, "layercache_redis_connected", cache), 1.0);
    assert_eq!(gauge(&r, "layercache_redis_breaker_open", cache), 0.0);
    assert_eq!(gauge(&r, "layercache_bus_healthy", cache), 1.0);
    assert_eq!(gauge(&r, "layercache_bus_peers", cache), 1.0, "B");
    assert_eq!(gauge(&r, "layercache_write_repairs_pending", cache), 0.0);
    assert_eq!(
        gauge(&r, "layercache_tracking_active", cache),
        0.0,
        "not configured"
    );

    // B's export: its L2 hit and its decode error, by reason.
    b.export_metrics();
    let r = readings(cache);
    assert_eq!(
        counter(&r, "layercache_hits_total", &users(&[("tier", "l2")])),
        1
    );
    assert_eq!(
        counter(
            &r,
            "layercache_decode_errors_total",
            &users(&[("reason", Corruption::NotAnEnvelope.as_str())])
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_exports_without_being_asked_and_outages_show() {
    let _turn = TURNS.lock().await;
    snapshotter();
    let mut server = redis();
    let cache = "metrics-b";
    let c = builder(&server, cache)
        .metrics_interval(Duration::from_millis(50))
        .l2_command_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let r = c.region::<str, u64>("r").build().await.unwrap();
    r.insert("k", 1).await.unwrap();
    wait_until("an export", Duration::from_secs(10), || async {
        let r = readings(cache);
        r.get(&series(
            "layercache_redis_writes_total",
            &[("cache", cache), ("region", "r")],
        )) == Some(&DebugValue::Counter(1))
    })
    .await;

    // Redis goes away: the connection gauge drops, and a write that could not reach it is
    // pending repair.
    server.kill();
    wait_until("the outage shows", Duration::from_secs(10), || {
        let (c, r2) = (c.clone(), r.clone());
        async move {
            let _ = r2.insert("k", 2).await;
            let r = readings(cache);
            let pending = r.get(&series(
                "layercache_write_repairs_pending",
                &[("cache", cache)],
            ));
            let connected = r.get(&series("layercache_redis_connected", &[("cache", cache)]));
            c.pending_repairs() > 0
                && matches!(pending, Some(DebugValue::Gauge(v)) if v.into_inner() >= 1.0)
                && matches!(connected, Some(DebugValue::Gauge(v)) if v.into_inner() == 0.0)
        }
    })
    .await;
    let before = c.stats().l2_errors;
    c.export_metrics();
    let r = readings(cache);
    let after = c.stats().l2_errors;
    // Redis errors by kind, for the region's calls and the cache's own.
    let by_kind = |region: &str| -> u64 {
        ["timeout", "breaker_open", "disconnected", "other"]
            .iter()
            .filter_map(|kind| {
                r.get(&series(
                    "layercache_redis_errors_total",
                    &[("cache", cache), ("region", region), ("kind", kind)],
                ))
            })
            .map(|v| match v {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    };
    let (errors, own) = (by_kind("r"), by_kind(""));
    assert!(
        before <= errors + own && errors + own <= after,
        "{before} <= {} <= {after}: {r:#?}",
        errors + own
    );
    assert!(before > 0);
}
