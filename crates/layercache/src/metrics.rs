//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (the `metrics` feature), so
//! any exporter works: Prometheus, OpenTelemetry, StatsD.
//!
//! Install a recorder (an exporter) in the service; every cache then reports under the names
//! below. Counters and gauges are **exported, not counted twice**: the cache keeps its own
//! striped counters (what [`Stats`](crate::Stats) reads), and a background task hands their
//! totals to the recorder every `LayerCacheBuilder::metrics_interval`
//! (default 1 s; `LayerCache::export_metrics` does it at
//! once). An L1 hit therefore costs exactly what it costs without the feature. Histograms are
//! recorded as the work happens, only where Redis or a loader is involved (never on an L1
//! hit). With no recorder installed every call is a no-op.
//!
//! Labels: `cache` (the cache's name), `region` (the region's name; empty for what the cache
//! counts outside any region: the bus, the breaker, flushes, Redis calls made for no region),
//! and the fixed label values listed. Cardinality is bounded by the number of caches and
//! regions the code creates: never a label per key, per peer or per error message. A
//! region's series exist from its first export; a cache's own (empty `region`) from the first
//! export at which they are non-zero.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `layercache_hits_total` | counter | `cache`, `region`, `tier` (`l1`, `l2`) | reads answered by a tier |
//! | `layercache_negative_hits_total` | counter | `cache`, `region` | reads answered by a cached "not found" |
//! | `layercache_misses_total` | counter | `cache`, `region` | reads that found nothing usable in either tier |
//! | `layercache_coalesced_total` | counter | `cache`, `region` | reads that joined a fetch or load already running |
//! | `layercache_l1_cooldown_skips_total` | counter | `cache`, `region` | values served but kept out of L1 (another instance wrote the key a moment ago) |
//! | `layercache_l1_door_skips_total` | counter | `cache`, `region` | values read from Redis while L1 was full, kept out of it at their key's first read (the doorkeeper) |
//! | `layercache_l1_fills_overtaken_total` | counter | `cache`, `region` | values read or loaded but kept out of L1 because a write of their key overtook the fetch |
//! | `layercache_loads_total` | counter | `cache`, `region`, `kind` (`caller`, `refresh`) | loader runs: on a caller's path, or an early refresh |
//! | `layercache_load_errors_total` | counter | `cache`, `region` | loader runs that failed, panicked or passed their hard timeout |
//! | `layercache_load_timeouts_total` | counter | `cache`, `region`, `kind` (`soft`, `hard`) | loads past their soft timeout (a stale value was served) or abandoned at the hard one |
//! | `layercache_fail_safe_serves_total` | counter | `cache`, `region` | stale values served because the loader failed or was slow |
//! | `layercache_negative_stores_total` | counter | `cache`, `region` | "not found" results cached |
//! | `layercache_load_locks_total` | counter | `cache`, `region`, `outcome` (`acquired`, `waited`, `taken_over`) | distributed load locks taken, waited for, or given up on |
//! | `layercache_redis_errors_total` | counter | `cache`, `region`, `kind` (`timeout`, `breaker_open`, `disconnected`, `other`) | Redis calls that failed or were skipped |
//! | `layercache_redis_writes_total` | counter | `cache`, `region` | values written to Redis |
//! | `layercache_redis_reads_coalesced_total` | counter | `cache`, `region` | Redis reads that waited for reads in flight and were answered by one shared `MGET` (`l2_read_coalescing`) |
//! | `layercache_redis_bytes_total` | counter | `cache`, `region`, `stage` (`raw`, `stored`) | bytes written to Redis, before and after compression |
//! | `layercache_redis_compressed_writes_total` | counter | `cache`, `region` | values written compressed |
//! | `layercache_redis_extends_total` | counter | `cache`, `region` | sliding-expiration extensions sent |
//! | `layercache_redis_fills_lost_total` | counter | `cache`, `region` | loaded values not written because Redis held newer state |
//! | `layercache_redis_oversize_skips_total` | counter | `cache`, `region` | loaded values above `max_value_bytes`, kept out of Redis |
//! | `layercache_redis_versions_refused_total` | counter | `cache`, `region` | versioned writes refused (Redis held a higher version) |
//! | `layercache_codec_errors_total` | counter | `cache`, `region` | values the codec failed to encode |
//! | `layercache_decode_errors_total` | counter | `cache`, `region`, `reason` (a [`Corruption`](crate::Corruption) name) | entries in Redis rejected as corrupt or foreign |
//! | `layercache_generation_repairs_total` | counter | `cache`, `region` | region generations found below one already used, moved forward |
//! | `layercache_breaker_opens_total` | counter | `cache`, `region` | times the Redis circuit breaker opened |
//! | `layercache_locks_total` | counter | `cache`, `region`, `outcome` (`granted`, `busy`, `lost`) | [`LayerCache::lock`](crate::LayerCache::lock) acquisitions granted, found held for their whole wait, and held locks lost before their release |
//! | `layercache_rate_checks_total` | counter | `cache`, `region`, `outcome` (`allowed`, `refused`, `degraded`) | [`RateLimiter`](crate::RateLimiter) checks allowed, refused, and answered by `WhenRedisFails` because Redis could not be asked |
//! | `layercache_write_repairs_total` | counter | `cache`, `region`, `event` (`recorded`, `done`, `overflow`, `read_bypass`) | unconfirmed writes journaled, repaired, not fitting the journal, and reads that skipped Redis meanwhile |
//! | `layercache_bus_messages_total` | counter | `cache`, `region`, `direction` (`sent`, `received`, `dropped`) | invalidation bus messages (heartbeats included) |
//! | `layercache_bus_publish_errors_total` | counter | `cache`, `region` | bus publishes that failed |
//! | `layercache_l1_flushes_total` | counter | `cache`, `reason` (a [`FlushReason`](crate::FlushReason) name) | L1 flushes |
//! | `layercache_l1_entries` | gauge | `cache` | entries in the in-process tier |
//! | `layercache_l1_weighted_size` | gauge | `cache` | the in-process tier's weight (entries, or bytes with `max_capacity_bytes`) |
//! | `layercache_redis_connected` | gauge | `cache` | 1 while the Redis connection is up |
//! | `layercache_redis_breaker_open` | gauge | `cache` | 1 while the circuit breaker is open |
//! | `layercache_write_repairs_pending` | gauge | `cache` | writes Redis has not confirmed, waiting for repair |
//! | `layercache_bus_healthy` | gauge | `cache` | 1 while this instance's own heartbeats come back |
//! | `layercache_bus_peers` | gauge | `cache` | other instances heard from recently |
//! | `layercache_tracking_active` | gauge | `cache` | 1 while Redis tracks this instance's writes for the others (`server_assisted_tracking`); 0 while it is being turned on again, and always without the option |
//! | `layercache_load_duration_seconds` | histogram | `cache`, `region`, `kind` (`caller`, `refresh`) | loader run time, failures and timeouts included |
//! | `layercache_bus_echo_seconds` | histogram | `cache` | how long this instance's bus messages take to come back to it through Redis: the delivery lag its peers see |
//! | `layercache_redis_command_duration_seconds` | histogram | `cache`, `op` (the command as errors name it: `redis GET`, `redis fill` …) | Redis round trips, failures included (calls skipped by the breaker or a known-down connection are not timed) |
//!
//! The table is kept true by a test that compares it with the series the code exports.
//! Delivery lag is measured by each instance on its own messages (`layercache_bus_echo_seconds`:
//! sent, and heard back through Redis), so every instance reports the lag of the path its
//! peers receive on, under its own scrape target. A lag per receiving peer is not exported:
//! bus messages carry no send time (clocks differ between hosts) and a `peer` label would grow
//! with every restart. `layercache_bus_healthy` and the flush counters say when delivery
//! failed.

// The export of the counters and gauges reads the whole engine: it lives beside the cache
// (`cache/metrics_export.rs`), so this module stays a leaf the engine's parts can record into.
#[cfg(feature = "metrics")]
pub(crate) use record::{record_echo, record_redis, LoadTimer};
#[cfg(all(feature = "metrics", test))]
pub(crate) use record::{BUS_ECHO, LOAD_DURATION, REDIS_DURATION};

/// The histograms, recorded where the work happens (no `Engine` needed).
#[cfg(feature = "metrics")]
mod record {
    use std::time::{Duration, Instant};

    /// The name of the histogram of loader run times.
    pub(crate) const LOAD_DURATION: &str = "layercache_load_duration_seconds";
    /// The name of the histogram of Redis round trips.
    pub(crate) const REDIS_DURATION: &str = "layercache_redis_command_duration_seconds";

    /// Records a loader run's duration when dropped: at the end of the run, whichever way
    /// it ends (a value, an error, a timeout, the caller gone).
    pub(crate) struct LoadTimer<'a> {
        cache: &'a str,
        region: &'a str,
        refresh: bool,
        started: Instant,
    }

    impl<'a> LoadTimer<'a> {
        pub(crate) fn new(cache: &'a str, region: &'a str, refresh: bool) -> Self {
            Self {
                cache,
                region,
                refresh,
                started: Instant::now(),
            }
        }
    }

    impl Drop for LoadTimer<'_> {
        fn drop(&mut self) {
            let kind = if self.refresh { "refresh" } else { "caller" };
            ::metrics::histogram!(
                LOAD_DURATION,
                "cache" => self.cache.to_owned(),
                "region" => self.region.to_owned(),
                "kind" => kind
            )
            .record(self.started.elapsed());
        }
    }

    /// The name of the histogram of the bus's round trip.
    pub(crate) const BUS_ECHO: &str = "layercache_bus_echo_seconds";

    /// Records how long one of this instance's bus messages took to come back.
    pub(crate) fn record_echo(cache: &str, took: Duration) {
        ::metrics::histogram!(BUS_ECHO, "cache" => cache.to_owned()).record(took);
    }

    /// Records one Redis round trip's duration.
    pub(crate) fn record_redis(cache: &str, op: &'static str, took: Duration) {
        ::metrics::histogram!(REDIS_DURATION, "cache" => cache.to_owned(), "op" => op).record(took);
    }
}
