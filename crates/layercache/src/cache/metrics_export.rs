//! Handing the cache's counters to the `metrics` recorder, and recording histograms.

use crate::{coherence::FlushReason, engine::Engine, envelope::Corruption, stats::Stats};

/// One exported counter: its name, its fixed labels, and how to read it from a snapshot.
pub(super) struct CounterSpec {
    pub(super) name: &'static str,
    pub(super) labels: &'static [(&'static str, &'static str)],
    read: fn(&Stats) -> u64,
}

const fn spec(
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    read: fn(&Stats) -> u64,
) -> CounterSpec {
    CounterSpec { name, labels, read }
}

/// Every counter read from [`Stats`], exported per region (and for the cache's own counts).
pub(super) const COUNTERS: &[CounterSpec] = &[
    spec("layercache_hits_total", &[("tier", "l1")], |s| s.l1_hits),
    spec("layercache_hits_total", &[("tier", "l2")], |s| s.l2_hits),
    spec("layercache_negative_hits_total", &[], |s| s.negative_hits),
    spec("layercache_misses_total", &[], |s| s.misses),
    spec("layercache_coalesced_total", &[], |s| s.coalesced),
    spec("layercache_l1_cooldown_skips_total", &[], |s| {
        s.l1_cooldown_skips
    }),
    spec("layercache_l1_door_skips_total", &[], |s| s.l1_door_skips),
    spec("layercache_l1_fills_overtaken_total", &[], |s| {
        s.l1_fills_overtaken
    }),
    spec("layercache_loads_total", &[("kind", "caller")], |s| s.loads),
    spec("layercache_loads_total", &[("kind", "refresh")], |s| {
        s.refreshes
    }),
    spec("layercache_load_errors_total", &[], |s| s.load_errors),
    spec("layercache_load_timeouts_total", &[("kind", "soft")], |s| {
        s.soft_timeouts
    }),
    spec("layercache_load_timeouts_total", &[("kind", "hard")], |s| {
        s.hard_timeouts
    }),
    spec("layercache_fail_safe_serves_total", &[], |s| {
        s.fail_safe_serves
    }),
    spec("layercache_negative_stores_total", &[], |s| {
        s.negative_stores
    }),
    spec(
        "layercache_load_locks_total",
        &[("outcome", "acquired")],
        |s| s.locks_acquired,
    ),
    spec(
        "layercache_load_locks_total",
        &[("outcome", "waited")],
        |s| s.lock_waits,
    ),
    spec(
        "layercache_load_locks_total",
        &[("outcome", "taken_over")],
        |s| s.lock_takeovers,
    ),
    spec(
        "layercache_redis_errors_total",
        &[("kind", "timeout")],
        |s| s.l2_timeouts,
    ),
    spec(
        "layercache_redis_errors_total",
        &[("kind", "breaker_open")],
        |s| s.breaker_rejections,
    ),
    spec(
        "layercache_redis_errors_total",
        &[("kind", "disconnected")],
        |s| s.l2_disconnected_skips,
    ),
    spec("layercache_redis_errors_total", &[("kind", "other")], |s| {
        s.l2_errors
            .saturating_sub(s.l2_timeouts)
            .saturating_sub(s.breaker_rejections)
            .saturating_sub(s.l2_disconnected_skips)
    }),
    spec("layercache_redis_writes_total", &[], |s| s.l2_writes),
    spec("layercache_redis_reads_coalesced_total", &[], |s| {
        s.l2_reads_coalesced
    }),
    spec("layercache_redis_bytes_total", &[("stage", "raw")], |s| {
        s.bytes_raw
    }),
    spec(
        "layercache_redis_bytes_total",
        &[("stage", "stored")],
        |s| s.bytes_stored,
    ),
    spec("layercache_redis_compressed_writes_total", &[], |s| {
        s.compressed_writes
    }),
    spec("layercache_redis_extends_total", &[], |s| s.l2_extends),
    spec("layercache_redis_fills_lost_total", &[], |s| {
        s.l2_fills_lost
    }),
    spec("layercache_redis_oversize_skips_total", &[], |s| {
        s.l2_oversize_skips
    }),
    spec("layercache_redis_versions_refused_total", &[], |s| {
        s.l2_versions_refused
    }),
    spec("layercache_codec_errors_total", &[], |s| s.codec_errors),
    spec("layercache_generation_repairs_total", &[], |s| {
        s.generation_repairs
    }),
    spec("layercache_breaker_opens_total", &[], |s| s.breaker_opens),
    spec("layercache_locks_total", &[("outcome", "granted")], |s| {
        s.lock_grants
    }),
    spec("layercache_locks_total", &[("outcome", "busy")], |s| {
        s.lock_refusals
    }),
    spec("layercache_locks_total", &[("outcome", "lost")], |s| {
        s.lock_losses
    }),
    spec(
        "layercache_rate_checks_total",
        &[("outcome", "allowed")],
        |s| s.rate_allowed,
    ),
    spec(
        "layercache_rate_checks_total",
        &[("outcome", "refused")],
        |s| s.rate_refused,
    ),
    spec(
        "layercache_rate_checks_total",
        &[("outcome", "degraded")],
        |s| s.rate_degraded,
    ),
    spec(
        "layercache_write_repairs_total",
        &[("event", "recorded")],
        |s| s.l2_repairs_recorded,
    ),
    spec(
        "layercache_write_repairs_total",
        &[("event", "done")],
        |s| s.l2_repairs_done,
    ),
    spec(
        "layercache_write_repairs_total",
        &[("event", "overflow")],
        |s| s.l2_repair_overflows,
    ),
    spec(
        "layercache_write_repairs_total",
        &[("event", "read_bypass")],
        |s| s.l2_repair_bypasses,
    ),
    spec(
        "layercache_bus_messages_total",
        &[("direction", "sent")],
        |s| s.bus_sent,
    ),
    spec(
        "layercache_bus_messages_total",
        &[("direction", "received")],
        |s| s.bus_received,
    ),
    spec(
        "layercache_bus_messages_total",
        &[("direction", "dropped")],
        |s| s.bus_dropped,
    ),
    spec("layercache_bus_publish_errors_total", &[], |s| {
        s.bus_publish_errors
    }),
];

/// Counters exported with a label of their own besides `cache` and `region`.
pub(super) const DECODE_ERRORS: &str = "layercache_decode_errors_total";
/// L1 flushes by reason (cache-wide: no `region`).
pub(super) const FLUSHES: &str = "layercache_l1_flushes_total";
/// The gauges, cache-wide.
pub(super) const GAUGES: [&str; 8] = [
    "layercache_l1_entries",
    "layercache_l1_weighted_size",
    "layercache_redis_connected",
    "layercache_redis_breaker_open",
    "layercache_write_repairs_pending",
    "layercache_bus_healthy",
    "layercache_bus_peers",
    "layercache_tracking_active",
];

/// The labels of one series.
fn labels(
    cache: &str,
    region: Option<&str>,
    extra: &[(&'static str, &'static str)],
) -> Vec<::metrics::Label> {
    let mut labels = Vec::with_capacity(2 + extra.len());
    labels.push(::metrics::Label::new("cache", cache.to_owned()));
    if let Some(region) = region {
        labels.push(::metrics::Label::new("region", region.to_owned()));
    }
    labels.extend(extra.iter().map(|(k, v)| ::metrics::Label::new(*k, *v)));
    labels
}

/// Exports one snapshot's counters: every series for a region, the non-zero ones for the
/// cache's own counts (`region` empty).
fn export_stats(cache: &str, region: &str, stats: &Stats, all: bool) {
    for c in COUNTERS {
        let value = (c.read)(stats);
        if all || value > 0 {
            ::metrics::counter!(c.name, labels(cache, Some(region), c.labels)).absolute(value);
        }
    }
    for reason in Corruption::ALL {
        let value = stats.decode_errors_for(reason);
        if all || value > 0 {
            let extra = [("reason", reason.as_str())];
            ::metrics::counter!(DECODE_ERRORS, labels(cache, Some(region), &extra)).absolute(value);
        }
    }
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// Hands every counter and gauge of the cache to the installed recorder (absolute values).
pub(crate) fn export(engine: &Engine) {
    let cache = engine.name.as_str();
    export_stats(cache, "", &engine.counters.snapshot(), false);
    for region in engine.all_regions() {
        export_stats(cache, &region.name, &region.counters.snapshot(), true);
    }
    for reason in FlushReason::ALL {
        let extra = [("reason", reason.as_str())];
        ::metrics::counter!(FLUSHES, labels(cache, None, &extra))
            .absolute(engine.counters.flushes[reason.index()].get());
    }
    let l2 = engine.l2.as_ref();
    let bus = engine.bus.as_ref().map(|b| b.status());
    #[expect(clippy::cast_precision_loss, reason = "a gauge is an f64")]
    let values = [
        engine.l1.entry_count() as f64,
        engine.l1.weighted_size() as f64,
        flag(l2.is_some_and(|l2| l2.is_connected())),
        flag(l2.is_some_and(|l2| l2.breaker_open())),
        engine.journal.len() as f64,
        flag(bus.as_ref().is_some_and(|b| b.healthy)),
        bus.as_ref().map_or(0, |b| b.peers.len()) as f64,
        flag(bus.as_ref().is_some_and(|b| b.tracking == Some(true))),
    ];
    for (name, value) in GAUGES.into_iter().zip(values) {
        ::metrics::gauge!(name, labels(cache, None, &[])).set(value);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (name, type, label names) of every row of the module's table.
    fn documented() -> BTreeSet<(String, String, String)> {
        include_str!("../metrics.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .map(|row| {
                let (name, rest) = row.split_once('`').unwrap_or_default();
                let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
                // `cache`, `region`, `tier` (`l1`, `l2`): the names, without their values.
                let mut names = String::new();
                let mut depth = 0;
                for ch in cells[2].chars() {
                    match ch {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        '`' | ' ' => {}
                        _ if depth == 0 => names.push(ch),
                        _ => {}
                    }
                }
                let labels: Vec<&str> = names.split(',').collect();
                (name.to_owned(), cells[1].to_owned(), labels.join(","))
            })
            .collect()
    }

    /// (name, type, label names) of every series the code exports.
    fn exported() -> BTreeSet<(String, String, String)> {
        let with = |extra: &[&str]| {
            let mut l = vec!["cache", "region"];
            l.extend(extra);
            l.join(",")
        };
        let mut found = BTreeSet::new();
        for c in COUNTERS {
            let extra: Vec<&str> = c.labels.iter().map(|(k, _)| *k).collect();
            found.insert((c.name.to_owned(), "counter".to_owned(), with(&extra)));
        }
        found.insert((DECODE_ERRORS.into(), "counter".into(), with(&["reason"])));
        found.insert((FLUSHES.into(), "counter".into(), "cache,reason".into()));
        for g in GAUGES {
            found.insert((g.into(), "gauge".into(), "cache".into()));
        }
        found.insert((
            crate::metrics::LOAD_DURATION.into(),
            "histogram".into(),
            with(&["kind"]),
        ));
        found.insert((
            crate::metrics::BUS_ECHO.into(),
            "histogram".into(),
            "cache".into(),
        ));
        found.insert((
            crate::metrics::REDIS_DURATION.into(),
            "histogram".into(),
            "cache,op".into(),
        ));
        found
    }

    #[test]
    fn the_documented_metrics_are_exactly_the_exported_ones() {
        let (documented, exported) = (documented(), exported());
        assert!(exported.len() > 30, "{exported:?}");
        let undocumented: Vec<_> = exported.difference(&documented).collect();
        let not_exported: Vec<_> = documented.difference(&exported).collect();
        assert!(
            undocumented.is_empty() && not_exported.is_empty(),
            "exported but not in the table: {undocumented:#?}\nin the table but not exported: {not_exported:#?}"
        );
    }

    #[test]
    fn no_series_is_exported_twice() {
        let series: BTreeSet<(&str, Vec<(&str, &str)>)> = COUNTERS
            .iter()
            .map(|c| (c.name, c.labels.to_vec()))
            .collect();
        assert_eq!(series.len(), COUNTERS.len());
    }

    #[test]
    fn redis_errors_by_kind_add_up_to_the_errors_counted() {
        let c = crate::stats::Counters::default();
        c.l2_errors.add(10);
        c.l2_timeouts.add(3);
        c.breaker_rejections.add(2);
        c.l2_disconnected_skips.add(1);
        let s = c.snapshot();
        let by_kind: u64 = COUNTERS
            .iter()
            .filter(|c| c.name == "layercache_redis_errors_total")
            .map(|c| (c.read)(&s))
            .sum();
        assert_eq!(by_kind, 10);
    }
}
