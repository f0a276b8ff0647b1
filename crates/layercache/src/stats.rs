//! Counters and their snapshot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::{coherence::FlushReason, envelope::Corruption};

const STRIPES: usize = 8;

/// One cache line per stripe, so threads counting at once do not share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter striped over cache lines: increments from many threads do not contend.
#[derive(Debug, Default)]
pub(crate) struct Counter([Padded; STRIPES]);

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn incr(&self) {
        self.add(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, p| acc.wrapping_add(p.0.load(Ordering::Relaxed)))
    }
}

/// The live counters of one cache.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) l1_hits: Counter,
    pub(crate) l2_hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) loads: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) l2_errors: Counter,
    pub(crate) l2_timeouts: Counter,
    pub(crate) l2_writes: Counter,
    pub(crate) l2_oversize_skips: Counter,
    pub(crate) decode_errors: [Counter; Corruption::ALL.len()],
    pub(crate) codec_errors: Counter,
    pub(crate) bytes_raw: Counter,
    pub(crate) bytes_stored: Counter,
    pub(crate) compressed_writes: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) bus_sent: Counter,
    pub(crate) bus_received: Counter,
    pub(crate) bus_dropped: Counter,
    pub(crate) bus_publish_errors: Counter,
    pub(crate) refreshes: Counter,
    pub(crate) fail_safe_serves: Counter,
    pub(crate) soft_timeouts: Counter,
    pub(crate) hard_timeouts: Counter,
    pub(crate) negative_hits: Counter,
    pub(crate) negative_stores: Counter,
    pub(crate) locks_acquired: Counter,
    pub(crate) lock_waits: Counter,
    pub(crate) lock_takeovers: Counter,
    pub(crate) l2_extends: Counter,
    pub(crate) l2_fills_lost: Counter,
    pub(crate) breaker_opens: Counter,
    pub(crate) breaker_rejections: Counter,
    pub(crate) l2_disconnected_skips: Counter,
    pub(crate) l2_reads_coalesced: Counter,
    pub(crate) l2_repairs_recorded: Counter,
    pub(crate) l2_repairs_done: Counter,
    pub(crate) l2_repair_overflows: Counter,
    pub(crate) l2_repair_bypasses: Counter,
    pub(crate) l2_versions_refused: Counter,
    pub(crate) l1_cooldown_skips: Counter,
    pub(crate) l1_door_skips: Counter,
    pub(crate) l1_fills_overtaken: Counter,
    pub(crate) generation_repairs: Counter,
    pub(crate) lock_grants: Counter,
    pub(crate) lock_refusals: Counter,
    pub(crate) lock_losses: Counter,
    pub(crate) rate_allowed: Counter,
    pub(crate) rate_refused: Counter,
    pub(crate) rate_degraded: Counter,
    pub(crate) flushes: [Counter; FlushReason::ALL.len()],
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let mut decode = [0u64; Corruption::ALL.len()];
        for (slot, c) in decode.iter_mut().zip(&self.decode_errors) {
            *slot = c.get();
        }
        Stats {
            l1_hits: self.l1_hits.get(),
            l2_hits: self.l2_hits.get(),
            misses: self.misses.get(),
            loads: self.loads.get(),
            load_errors: self.load_errors.get(),
            l2_errors: self.l2_errors.get(),
            l2_timeouts: self.l2_timeouts.get(),
            l2_writes: self.l2_writes.get(),
            l2_oversize_skips: self.l2_oversize_skips.get(),
            decode_errors: decode.iter().sum(),
            codec_errors: self.codec_errors.get(),
            bytes_raw: self.bytes_raw.get(),
            bytes_stored: self.bytes_stored.get(),
            compressed_writes: self.compressed_writes.get(),
            coalesced: self.coalesced.get(),
            bus_sent: self.bus_sent.get(),
            bus_received: self.bus_received.get(),
            bus_dropped: self.bus_dropped.get(),
            bus_publish_errors: self.bus_publish_errors.get(),
            refreshes: self.refreshes.get(),
            fail_safe_serves: self.fail_safe_serves.get(),
            soft_timeouts: self.soft_timeouts.get(),
            hard_timeouts: self.hard_timeouts.get(),
            negative_hits: self.negative_hits.get(),
            negative_stores: self.negative_stores.get(),
            locks_acquired: self.locks_acquired.get(),
            lock_waits: self.lock_waits.get(),
            lock_takeovers: self.lock_takeovers.get(),
            l2_extends: self.l2_extends.get(),
            l2_fills_lost: self.l2_fills_lost.get(),
            breaker_opens: self.breaker_opens.get(),
            breaker_rejections: self.breaker_rejections.get(),
            l2_disconnected_skips: self.l2_disconnected_skips.get(),
            l2_reads_coalesced: self.l2_reads_coalesced.get(),
            l2_repairs_recorded: self.l2_repairs_recorded.get(),
            l2_repairs_done: self.l2_repairs_done.get(),
            l2_repair_overflows: self.l2_repair_overflows.get(),
            l2_repair_bypasses: self.l2_repair_bypasses.get(),
            l2_versions_refused: self.l2_versions_refused.get(),
            l1_cooldown_skips: self.l1_cooldown_skips.get(),
            l1_fills_overtaken: self.l1_fills_overtaken.get(),
            l1_door_skips: self.l1_door_skips.get(),
            generation_repairs: self.generation_repairs.get(),
            lock_grants: self.lock_grants.get(),
            lock_refusals: self.lock_refusals.get(),
            lock_losses: self.lock_losses.get(),
            rate_allowed: self.rate_allowed.get(),
            rate_refused: self.rate_refused.get(),
            rate_degraded: self.rate_degraded.get(),
            l1_flushes: self.flushes.iter().map(Counter::get).sum(),
            decode_by_reason: ByReason(decode),
        }
    }
}

/// A point-in-time copy of a cache's counters (all regions together), from
/// [`LayerCache::stats`](crate::LayerCache::stats). Counters only grow.
///
/// `Display` shows what is non-zero, grouped (reads, loads, Redis, repairs, bus, decode
/// errors), one group per line — for a log line or a terminal; `Debug` shows every field.
/// With the `serde` feature it serializes (every counter by its field name, and
/// `decode_by_reason` as a map from reason to count), for a service's `/stats` endpoint.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    /// Reads answered by the in-process tier.
    pub l1_hits: u64,
    /// Reads answered by Redis (after an L1 miss).
    pub l2_hits: u64,
    /// Reads that found nothing usable in either tier (before any load).
    pub misses: u64,
    /// Loader runs on the callers' path (each shared by every caller that waited on it).
    pub loads: u64,
    /// Loader runs in the background: early refreshes (soft TTL or XFetch).
    pub refreshes: u64,
    /// Loader runs that returned an error or panicked.
    pub load_errors: u64,
    /// Redis calls that failed (timeouts included).
    pub l2_errors: u64,
    /// Redis calls that ran out of time (also counted in `l2_errors`).
    pub l2_timeouts: u64,
    /// Values written to Redis.
    pub l2_writes: u64,
    /// Loaded values above `max_value_bytes`: returned and kept in L1, not written to Redis.
    pub l2_oversize_skips: u64,
    /// Entries in Redis that were rejected as corrupt or foreign (sum of every reason).
    pub decode_errors: u64,
    /// Values the codec failed to encode.
    pub codec_errors: u64,
    /// Bytes written to Redis before compression (codec output).
    pub bytes_raw: u64,
    /// Bytes written to Redis after compression (payload, without the envelope header).
    pub bytes_stored: u64,
    /// Values written to Redis compressed.
    pub compressed_writes: u64,
    /// Reads that joined a fetch or load already running for the same key.
    pub coalesced: u64,
    /// Messages this instance published on the invalidation bus (heartbeats included).
    pub bus_sent: u64,
    /// Messages this instance received on the bus (its own echoes included).
    pub bus_received: u64,
    /// Messages on the bus channel that were not valid bus messages: dropped.
    pub bus_dropped: u64,
    /// Bus publishes that failed.
    pub bus_publish_errors: u64,
    /// Stale values served because the loader failed or timed out (fail-safe).
    pub fail_safe_serves: u64,
    /// Loads that passed their soft timeout (a stale value was returned meanwhile).
    pub soft_timeouts: u64,
    /// Loads abandoned at their hard timeout.
    pub hard_timeouts: u64,
    /// Reads answered by a cached "not found".
    pub negative_hits: u64,
    /// "Not found" results cached.
    pub negative_stores: u64,
    /// Distributed load locks taken.
    pub locks_acquired: u64,
    /// Loads that found another instance holding the lock and waited for its value.
    pub lock_waits: u64,
    /// Lock waits that ran out (the holder may have died) or that Redis stopped answering: the
    /// waiter loaded itself (for a batch, one per key).
    pub lock_takeovers: u64,
    /// Sliding-expiration extensions sent to Redis (`PEXPIRE` or `GETEX`).
    pub l2_extends: u64,
    /// Loaded values not written to Redis because the key had changed since the load read it
    /// (a concurrent `insert`, `invalidate` or tag invalidation, or another instance's fill):
    /// the newer state wins.
    pub l2_fills_lost: u64,
    /// Times the Redis circuit breaker opened.
    pub breaker_opens: u64,
    /// Redis calls skipped because the breaker was open (each also counted in `l2_errors`).
    pub breaker_rejections: u64,
    /// Redis calls skipped at once because the connection was known to be down (reconnecting;
    /// each also counted in `l2_errors`).
    pub l2_disconnected_skips: u64,
    /// Redis reads that waited for others in flight and were answered by one shared `MGET`
    /// (see `LayerCacheBuilder::l2_read_coalescing`).
    pub l2_reads_coalesced: u64,
    /// Writes and invalidations Redis did not confirm (failed, timed out or skipped), recorded
    /// in the write journal for repair.
    pub l2_repairs_recorded: u64,
    /// Repairs completed (a tombstone or generation move written and announced).
    pub l2_repairs_done: u64,
    /// Keys that did not fit in the write journal (their region is repaired as a whole).
    pub l2_repair_overflows: u64,
    /// Reads that skipped Redis because a repair covering their key was pending.
    pub l2_repair_bypasses: u64,
    /// Versioned writes refused because Redis (or, for a cache without a Redis tier, the
    /// in-process tier) held a higher source version
    /// ([`Region::insert_versioned`](crate::Region::insert_versioned)).
    pub l2_versions_refused: u64,
    /// Values served but not put in L1 because another instance wrote their key within the
    /// [`l1_write_cooldown`](crate::LayerCacheBuilder::l1_write_cooldown).
    pub l1_cooldown_skips: u64,
    /// Values read from Redis while L1 was full, not put in L1 because it was their key's
    /// first read from Redis within the doorkeeper's window (see
    /// [`LayerCacheBuilder::l1_doorkeeper`](crate::LayerCacheBuilder::l1_doorkeeper)).
    pub l1_door_skips: u64,
    /// Values read from Redis or loaded, served to their callers but not kept in L1 because a
    /// write of their key (here, or another instance's, announced) overtook the fetch: the
    /// next read fetches again. Many per write on a write-hot key.
    pub l1_fills_overtaken: u64,
    /// Region generations found in Redis below one already used here (lost and created again
    /// by an instance whose clock is behind), moved forward and announced.
    pub generation_repairs: u64,
    /// [`LayerCache::lock`](crate::LayerCache::lock) acquisitions granted.
    pub lock_grants: u64,
    /// Lock acquisitions that found the lock held for their whole wait (`Ok(None)`).
    pub lock_refusals: u64,
    /// Held locks found lost before their release (taken over, or not renewed within their TTL).
    pub lock_losses: u64,
    /// [`RateLimiter`](crate::RateLimiter) checks allowed by the limit.
    pub rate_allowed: u64,
    /// Rate-limiter checks refused by the limit.
    pub rate_refused: u64,
    /// Rate-limiter checks Redis could not answer, answered by [`WhenRedisFails`](crate::WhenRedisFails).
    pub rate_degraded: u64,
    /// L1 flushes for any reason (see [`LayerCache::flushes`](crate::LayerCache::flushes)).
    pub l1_flushes: u64,
    decode_by_reason: ByReason,
}

impl Stats {
    /// Adds `other`'s counters to these (a cache's stats are its own and its regions').
    pub(crate) fn merge(&mut self, other: &Stats) {
        self.l1_hits += other.l1_hits;
        self.l2_hits += other.l2_hits;
        self.misses += other.misses;
        self.loads += other.loads;
        self.refreshes += other.refreshes;
        self.load_errors += other.load_errors;
        self.l2_errors += other.l2_errors;
        self.l2_timeouts += other.l2_timeouts;
        self.l2_writes += other.l2_writes;
        self.l2_oversize_skips += other.l2_oversize_skips;
        self.decode_errors += other.decode_errors;
        self.codec_errors += other.codec_errors;
        self.bytes_raw += other.bytes_raw;
        self.bytes_stored += other.bytes_stored;
        self.compressed_writes += other.compressed_writes;
        self.coalesced += other.coalesced;
        self.bus_sent += other.bus_sent;
        self.bus_received += other.bus_received;
        self.bus_dropped += other.bus_dropped;
        self.bus_publish_errors += other.bus_publish_errors;
        self.fail_safe_serves += other.fail_safe_serves;
        self.soft_timeouts += other.soft_timeouts;
        self.hard_timeouts += other.hard_timeouts;
        self.negative_hits += other.negative_hits;
        self.negative_stores += other.negative_stores;
        self.locks_acquired += other.locks_acquired;
        self.lock_waits += other.lock_waits;
        self.lock_takeovers += other.lock_takeovers;
        self.l2_extends += other.l2_extends;
        self.l2_fills_lost += other.l2_fills_lost;
        self.breaker_opens += other.breaker_opens;
        self.breaker_rejections += other.breaker_rejections;
        self.l2_disconnected_skips += other.l2_disconnected_skips;
        self.l2_reads_coalesced += other.l2_reads_coalesced;
        self.l2_repairs_recorded += other.l2_repairs_recorded;
        self.l2_repairs_done += other.l2_repairs_done;
        self.l2_repair_overflows += other.l2_repair_overflows;
        self.l2_repair_bypasses += other.l2_repair_bypasses;
        self.l2_versions_refused += other.l2_versions_refused;
        self.l1_cooldown_skips += other.l1_cooldown_skips;
        self.l1_fills_overtaken += other.l1_fills_overtaken;
        self.l1_door_skips += other.l1_door_skips;
        self.generation_repairs += other.generation_repairs;
        self.lock_grants += other.lock_grants;
        self.lock_refusals += other.lock_refusals;
        self.lock_losses += other.lock_losses;
        self.rate_allowed += other.rate_allowed;
        self.rate_refused += other.rate_refused;
        self.rate_degraded += other.rate_degraded;
        self.l1_flushes += other.l1_flushes;
        for (mine, theirs) in self
            .decode_by_reason
            .0
            .iter_mut()
            .zip(other.decode_by_reason.0)
        {
            *mine += theirs;
        }
    }

    /// Decode errors counted for one reason.
    pub fn decode_errors_for(&self, reason: Corruption) -> u64 {
        self.decode_by_reason.0[reason.index()]
    }
}

/// Decode errors per [`Corruption`] reason; `Debug` shows the non-zero ones by name.
#[derive(Clone, PartialEq, Eq)]
struct ByReason([u64; Corruption::ALL.len()]);

impl ByReason {
    /// The non-zero reasons, by name.
    fn non_zero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Corruption::ALL
            .iter()
            .filter(|r| self.0[r.index()] > 0)
            .map(|r| (r.as_str(), self.0[r.index()]))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for ByReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.non_zero())
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: [(&str, &[(&str, u64)]); 6] = [
            (
                "reads",
                &[
                    ("l1 hits", self.l1_hits),
                    ("l2 hits", self.l2_hits),
                    ("misses", self.misses),
                    ("coalesced", self.coalesced),
                    ("negative hits", self.negative_hits),
                    ("kept out of l1 (cooldown)", self.l1_cooldown_skips),
                    ("kept out of l1 (doorkeeper)", self.l1_door_skips),
                    ("kept out of l1 (overtaken)", self.l1_fills_overtaken),
                ],
            ),
            (
                "loads",
                &[
                    ("loads", self.loads),
                    ("refreshes", self.refreshes),
                    ("errors", self.load_errors),
                    ("soft timeouts", self.soft_timeouts),
                    ("hard timeouts", self.hard_timeouts),
                    ("fail-safe serves", self.fail_safe_serves),
                    ("not-found stored", self.negative_stores),
                    ("locks taken", self.locks_acquired),
                    ("lock waits", self.lock_waits),
                    ("lock takeovers", self.lock_takeovers),
                ],
            ),
            (
                "redis",
                &[
                    ("writes", self.l2_writes),
                    ("bytes raw", self.bytes_raw),
                    ("bytes stored", self.bytes_stored),
                    ("compressed writes", self.compressed_writes),
                    ("extends", self.l2_extends),
                    ("fills lost to newer state", self.l2_fills_lost),
                    ("errors", self.l2_errors),
                    ("timeouts", self.l2_timeouts),
                    ("oversize skips", self.l2_oversize_skips),
                    ("breaker opens", self.breaker_opens),
                    ("breaker rejections", self.breaker_rejections),
                    ("skipped while disconnected", self.l2_disconnected_skips),
                    ("reads coalesced", self.l2_reads_coalesced),
                    ("older versions refused", self.l2_versions_refused),
                    ("generation repairs", self.generation_repairs),
                    ("codec errors", self.codec_errors),
                ],
            ),
            (
                "repairs",
                &[
                    ("recorded", self.l2_repairs_recorded),
                    ("done", self.l2_repairs_done),
                    ("overflows", self.l2_repair_overflows),
                    ("reads bypassing redis", self.l2_repair_bypasses),
                ],
            ),
            (
                "locks and rate limits",
                &[
                    ("locks granted", self.lock_grants),
                    ("locks busy", self.lock_refusals),
                    ("locks lost", self.lock_losses),
                    ("rate checks allowed", self.rate_allowed),
                    ("rate checks refused", self.rate_refused),
                    ("rate checks degraded", self.rate_degraded),
                ],
            ),
            (
                "bus",
                &[
                    ("sent", self.bus_sent),
                    ("received", self.bus_received),
                    ("dropped", self.bus_dropped),
                    ("publish errors", self.bus_publish_errors),
                    ("l1 flushes", self.l1_flushes),
                ],
            ),
        ];
        let mut any = false;
        for (group, counters) in groups {
            let mut shown = counters.iter().filter(|(_, v)| *v > 0).peekable();
            if shown.peek().is_none() {
                continue;
            }
            if any {
                writeln!(f)?;
            }
            any = true;
            write!(f, "{group}:")?;
            for (i, (name, value)) in shown.enumerate() {
                write!(f, "{} {name} {value}", if i == 0 { "" } else { "," })?;
            }
        }
        let mut reasons = self.decode_by_reason.non_zero().peekable();
        if reasons.peek().is_some() {
            if any {
                writeln!(f)?;
            }
            any = true;
            write!(f, "decode errors:")?;
            for (i, (reason, n)) in reasons.enumerate() {
                write!(f, "{} {reason} {n}", if i == 0 { "" } else { "," })?;
            }
        }
        if !any {
            write!(f, "no activity")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ByReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.non_zero()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = std::sync::Arc::new(Counter::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.incr();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(c.get(), 4000);
    }

    #[test]
    fn display_shows_what_is_non_zero_grouped() {
        let c = Counters::default();
        assert_eq!(c.snapshot().to_string(), "no activity");
        c.l1_hits.add(7);
        c.misses.incr();
        c.bus_sent.add(3);
        c.decode_errors[Corruption::Checksum.index()].incr();
        assert_eq!(
            c.snapshot().to_string(),
            "reads: l1 hits 7, misses 1\nbus: sent 3\ndecode errors: checksum 1"
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn stats_serialize_every_counter_and_the_reasons_by_name() {
        let c = Counters::default();
        c.l2_hits.add(4);
        c.decode_errors[Corruption::Checksum.index()].add(2);
        let json = serde_json::to_value(c.snapshot()).unwrap();
        assert_eq!(json["l2_hits"], 4);
        assert_eq!(json["l1_hits"], 0);
        assert_eq!(json["decode_errors"], 2);
        assert_eq!(
            json["decode_by_reason"],
            serde_json::json!({ "checksum": 2 })
        );
    }

    #[test]
    fn snapshot_reports_reasons() {
        let c = Counters::default();
        c.decode_errors[Corruption::Checksum.index()].add(2);
        c.decode_errors[Corruption::BadLength.index()].incr();
        let s = c.snapshot();
        assert_eq!(s.decode_errors, 3);
        assert_eq!(s.decode_errors_for(Corruption::Checksum), 2);
        assert_eq!(s.decode_errors_for(Corruption::Deserialize), 0);
        let shown = format!("{s:?}");
        assert!(
            shown.contains(r#"decode_by_reason: {"bad_length": 1, "checksum": 2}"#),
            "{shown}"
        );
    }
}
