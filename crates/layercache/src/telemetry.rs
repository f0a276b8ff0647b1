//! Tracing: the spans and events layercache emits.
//!
//! layercache logs through [`tracing`](https://docs.rs/tracing); install any subscriber to see
//! them. Nothing is emitted on an L1 hit, so the hot path stays free of telemetry cost beyond
//! a counter increment. User keys are never logged above `trace`.
//!
//! | name | kind | level | fields | when |
//! |---|---|---|---|---|
//! | `layercache.get` | span | debug | `cache.name`, `region`, `level` (`l2`, `loader`, `none`) | an L1 miss: the flight that reads Redis and maybe loads |
//! | `layercache.get_many` | span | debug | `cache.name`, `region`, `keys` | the fetch of a batch's L1 misses (`get_many`, `get_or_load_many`) |
//! | `layercache.l2.get` | span | debug | OTel: `db.system`, `db.operation.name` (`GET`, `GETEX`, `EVALSHA`), `otel.kind`; `hit`, `bytes`; `sliding` (`GETEX`); `locked` (the read that takes the load lock when it finds nothing) | one read of an entry |
//! | `layercache.l2.get_many` | span | debug | OTel (`MGET`); `keys`; `sliding` (a `PEXPIRE` per key with each `MGET`) | a batch read (`MGET`s of at most 1,000 keys) |
//! | `layercache.l2.get_coalesced` | span | debug | OTel (`MGET`); `keys` | single-key reads that waited for reads in flight, sent together (`l2_read_coalescing`; on a task of its own, so outside the readers' spans) |
//! | `layercache.l2.set` | span | debug | OTel (`SET`, `EVALSHA`); `bytes`, `nx` (plain `SET`); `mode` (`set`, `nx`, `cas`), `fenced`, `announced` (a conditional write: the fill script, or on one server a plain fenced write's `SET`; `announced`: pipelined with the bus message) | one write to Redis |
//! | `layercache.l2.set_many` | span | debug | OTel (`EVALSHA`); `entries` | a batch of writes (`fill_batch.lua`, one run per 200 entries) |
//! | `layercache.load` | span | debug | `cache.name`, `region` | one loader run |
//! | `layercache.invalidation.publish` | span | debug | `cache.name`, `instance.id`, `seq`, `entries` | one bus message from the publisher (a batch of announcements that did not travel with their write, or a heartbeat) |
//! | `L1 flushed` | event | warn | `cache.name`, `reason` | a flush after a possible loss of invalidations, or a clear ([`FlushReason`](crate::FlushReason)) |
//! | `coherence may be lost; L1 kept by policy` | event | warn | `cache.name`, `reason` | as above, with `CoherenceLossPolicy::KeepUntilTtl` |
//! | `bus listener lagged; messages lost` | event | warn | `cache.name`, `missed` | the listener fell behind its buffer |
//! | `bus sequence gap; messages lost` | event | warn | `cache.name`, `sender`, `seq` | a sender's message went missing |
//! | `own bus heartbeat missed; subscription presumed broken` | event | warn | `cache.name` | self-echo watchdog |
//! | `bus publish failed; receivers will see a sequence gap` | event | warn | `cache.name`, `seq`, `entries`, `error`, `suppressed` | a failed `PUBLISH` (rate-limited as `redis call failed`) |
//! | `dropped a message that is not ours on the bus channel` | event | debug | `cache.name`, `reason` | garbage on the channel |
//! | `redis call failed` | event | warn | `cache.name`, `region`, `op`, `error`, `suppressed` | a Redis error or timeout; at most one per `op` every 5 s, `suppressed` counting those not logged since |
//! | `redis call skipped` | event | debug | `cache.name`, `region`, `op`, `error` | a call that skipped Redis (breaker open, connection down) |
//! | `could not read the region generation` | event | warn | `cache.name`, `region`, `error`, `suppressed` | rate-limited as `redis call failed` |
//! | `layercache shut down` | event | info | `cache.name` | `shutdown()` ended every task |
//! | `unusable entry in redis, treated as a miss` | event | warn | `cache.name`, `region`, `reason`, `bytes` | a corrupt or foreign entry ([`Corruption`](crate::Corruption)) |
//! | `another redis type at a data key; deleted` | event | warn | `cache.name`, `reason` | a fill "if absent" was refused by a key of another Redis type that a coalesced read (`MGET`) saw as nothing: deleted, the next load fills it |
//! | `checking a refused fill's key failed` | event | debug | `error` | the check above failed (the key stays as it is) |
//! | `loaded value not written to redis` | event | warn | `cache.name`, `region`, `error` | a loaded value above `max_value_bytes` |
//! | `the loader panicked` | event | error | `cache.name`, `region` | a loader panic (callers get an error) |
//! | `redis circuit breaker opened: calls skip redis until a probe succeeds` | event | warn | `cache.name`, `failures`, `cooldown` | the breaker opened |
//! | `redis circuit breaker closed` | event | info | `cache.name` | a probe succeeded |
//! | `serving a stale value (fail-safe)` | event | warn | `cache.name`, `region`, `error` | fail-safe served a stale value |
//! | `gave up waiting for the load lock; loading without it` | event | warn | `cache.name`, `region` | a lock wait ran out |
//! | `gave up waiting for the load locks of a batch; loading without them` | event | warn | `cache.name`, `region`, `keys` | a batch load's lock wait ran out |
//! | `lock lost: its key expired or was taken over` | event | warn | `cache.name` | a held [`Lock`](crate::Lock)'s renewal found it gone |
//! | `lock lost: redis did not confirm a renewal within its ttl` | event | warn | `cache.name`, `error` | a held [`Lock`](crate::Lock)'s renewals failed until its lifetime ran out |
//! | `rate limit not checked: redis failed` | event | debug | `cache.name`, `error`, `allowed` | a [`RateLimiter`](crate::RateLimiter) check answered by [`WhenRedisFails`](crate::WhenRedisFails) |
//! | `layercache started` | event | info | `cache.name`, `l2`, `instance.id` | `build()` succeeded |
//! | `write journal full; the region's generation will be moved when redis answers` | event | warn | `cache.name`, `region`, `suppressed` | an unconfirmed write did not fit in the journal (`l2_repair_capacity`) |
//! | `region generation in redis is below one already used; moving it forward` | event | warn | `cache.name`, `region`, `found`, `highest` | a generation lost and created again by an instance whose clock is behind |
//! | `repaired writes that redis had not confirmed` | event | info | `cache.name`, `done`, `left` | a repair run made progress |
//! | `write repair interrupted; retried at the next heartbeat` | event | debug | `cache.name`, `error`, `done`, `total` | a repair run stopped at a failure |
//! | `shutting down with writes redis has not confirmed; other instances may serve their old values until their TTL` | event | warn | `cache.name`, `pending` | `shutdown()` could not repair everything |
//! | `bus subscriber connection error` | event | warn | `cache.name`, `error` | the subscriber connection failed (L1 is flushed at the first one) |
//! | `a batch loader returned keys it was not asked for; ignored` | event | warn | `cache.name`, `region`, `unasked` | a batch loader's extra keys |
//! | `the lifetime a loader set is invalid with the call's options; the call's is used` | event | warn | `cache.name`, `region`, `error` | a `LoadContext::set_ttl` the call's options reject |
//! | `bus re-subscribe failed; retrying` | event | warn | `cache.name`, `error` | `SUBSCRIBE` after a reconnection failed |
//! | `bus re-subscribe failed` | event | debug | `cache.name`, `error` | `SUBSCRIBE` again while connected but deaf to our own heartbeats failed (tried once per heartbeat tick) |
//! | `Redis reports its database emptied` | event | warn | `cache.name` | with server-assisted tracking: `FLUSHALL`/`FLUSHDB` reported; L1 flushed (`server_flush`) |
//! | `tracked connection error` | event | warn | `cache.name`, `error` | with server-assisted tracking: the tracked (main) connection failed; L1 flushed once (`tracking_lost`) |
//! | `server-assisted tracking found off; turning it on again` | event | warn | `cache.name` | the heartbeat tick's `CLIENT TRACKINGINFO` found tracking off or pointed at an old subscriber |
//! | `turning on server-assisted tracking failed; retried at the next heartbeat tick` | event | warn | `cache.name`, `error` | `CLIENT TRACKING ON` failed (the tracked connection is down) |
//! | `reading the tracking state failed` | event | debug | `cache.name`, `error` | the tick's `CLIENT TRACKINGINFO` got no answer; L1 flushed once |
//! | `own bus heartbeat is back` | event | info | `cache.name` | the self-echo returned after a miss (L1 is flushed once more) |
//! | `redis unreachable at start; running degraded until it answers` | event | warn | `error` or `timeout` | `L2Startup::Degraded` and no connection at `build()` |
//! | `region generation raised by the bus` | event | debug | `cache.name`, `region`, `generation` | another instance moved a region's generation |
//! | `loaded value could not be encoded; kept in L1 only` | event | warn | `cache.name`, `region`, `error` | the codec failed on a loaded value |
//! | `the loader was cancelled` | event | error | `cache.name`, `region` | the loader's task was cancelled (callers get an error) |
//! | `redis changed during the load; the newer state wins and the loaded value is not written` | event | debug | `cache.name`, `region` | a load's conditional fill lost to a write (`l2_fills_lost`) |
//! | `the fetch outlived the entries it raced with; the loaded value is not written to redis` | event | debug | `cache.name`, `region` | a load slower than the lifetimes in play (`l2_fills_lost`) |
//! | `the region's generation in redis is not the one this load read under; not written, generation re-read` | event | debug | `cache.name`, `region` | a load's fill fenced out by a generation move (`l2_fills_lost`) |
//! | `the region's generation moved; writing again under the current one` | event | debug | `cache.name`, `region`, `generation` | a write fenced out by a generation move, retried |
//! | `redis holds a newer source version; the write is refused` | event | debug | `cache.name`, `region` | an `insert_versioned` older than Redis's (`l2_versions_refused`) |
//!
//! **OpenTelemetry.** The Redis spans (`layercache.l2.*`) follow OpenTelemetry's semantic
//! conventions for database client calls: `db.system = "redis"`, `db.operation.name` (the
//! command: `GET`, `SET`, `GETEX`, `MGET`, or `EVALSHA` for the scripts that carry the
//! conditional writes and the locked read) and `otel.kind = "client"`, which
//! `tracing-opentelemetry` turns into the span kind. They are children of the cache's own
//! spans (`layercache.get`, `layercache.load` …), which stay internal spans under their
//! `layercache.*` names. Not recorded, on purpose: `db.query.text` (keys and values are user
//! data) and `server.address` (on a cluster one span may reach several nodes). The `otel`
//! example exports them; a test (`tests/otel.rs`) checks kind, attributes and parentage through
//! the OpenTelemetry SDK.
//!
//! The table is kept true by a test that reads the crate's sources: every span and event they
//! emit is listed here with its kind and level, and nothing else is.
//!
//! Counters are read with [`LayerCache::stats`](crate::LayerCache::stats).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How often one kind of warning may be logged.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Rate limit for repeated warnings: one per kind every [`WARN_EVERY`], counting the rest.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl WarnLimiter {
    /// Whether a warning of `kind` may be logged now: `Some(n)` with the number suppressed since
    /// the last one logged, or `None` (suppressed, and counted).
    pub(crate) fn admit(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match kinds.get_mut(kind) {
            Some((last, suppressed)) if now.duration_since(*last) < WARN_EVERY => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::WarnLimiter;

    /// (name, kind, level) of every span and event: a span's name, an event's message.
    type Emitted = BTreeSet<(String, String, String)>;

    /// What the table in this module's docs lists.
    fn documented() -> Emitted {
        let source = include_str!("telemetry.rs");
        source
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .map(|row| {
                let (name, rest) = row.split_once('`').unwrap();
                let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
                (name.to_owned(), cells[1].to_owned(), cells[2].to_owned())
            })
            .collect()
    }

    /// The top-level arguments of the macro call whose `(` is at `open` (string literals and
    /// nested brackets respected), and where the call ends.
    fn macro_args(src: &str, open: usize) -> Vec<String> {
        let b = src.as_bytes();
        let (mut depth, mut i, mut start) = (0usize, open, open + 1);
        let mut args = Vec::new();
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i += 1;
                    while b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        args.push(src[start..i].trim().to_owned());
                        return args;
                    }
                }
                b',' if depth == 1 => {
                    args.push(src[start..i].trim().to_owned());
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unterminated macro call at byte {open}");
    }

    /// Every span and event the crate's sources emit, found by reading them.
    fn emitted() -> Emitted {
        let mut found = Emitted::new();
        for (_, file) in crate::layering::sources() {
            let src = std::fs::read_to_string(&file).unwrap();
            for level in ["trace", "debug", "info", "warn", "error"] {
                for (kind, call) in [
                    ("event", format!("tracing::{level}!(")),
                    ("span", format!("tracing::{level}_span!(")),
                ] {
                    for (at, _) in src.match_indices(&call) {
                        let args = macro_args(&src, at + call.len() - 1);
                        // A span's name is its first argument; an event's message is its one
                        // argument that is a bare string literal (fields are `name = value`).
                        let literal = if kind == "span" {
                            args.first().filter(|a| a.starts_with('"'))
                        } else {
                            args.iter().find(|a| a.starts_with('"'))
                        };
                        let Some(literal) = literal else {
                            panic!(
                                "{}: a {level} {kind} without a literal name: {args:?}",
                                file.display()
                            );
                        };
                        let name = literal.trim_matches('"').to_owned();
                        assert!(
                            !name.contains('{'),
                            "{}: the {kind} {name:?} is formatted; names must be fixed",
                            file.display()
                        );
                        found.insert((name, kind.to_owned(), level.to_owned()));
                    }
                }
            }
        }
        found
    }

    /// The table in this module's docs lists exactly the spans and events the code emits,
    /// with their kind and level.
    #[test]
    fn the_documented_spans_and_events_are_exactly_the_emitted_ones() {
        let (documented, emitted) = (documented(), emitted());
        assert!(
            emitted.len() > 20,
            "the source scan found too little: {emitted:?}"
        );
        let undocumented: Vec<_> = emitted.difference(&documented).collect();
        let not_emitted: Vec<_> = documented.difference(&emitted).collect();
        assert!(
            undocumented.is_empty() && not_emitted.is_empty(),
            "emitted but not in the table: {undocumented:#?}\nin the table but not emitted: {not_emitted:#?}"
        );
    }

    #[test]
    fn one_warning_per_kind_then_a_count() {
        let w = WarnLimiter::default();
        assert_eq!(w.admit("get"), Some(0));
        assert_eq!(w.admit("get"), None);
        assert_eq!(w.admit("get"), None);
        assert_eq!(w.admit("set"), Some(0), "kinds are limited apart");
        let mut kinds = w.kinds.lock().unwrap();
        kinds.get_mut("get").unwrap().0 -= super::WARN_EVERY;
        drop(kinds);
        assert_eq!(
            w.admit("get"),
            Some(2),
            "the next one says how many were suppressed"
        );
    }
}
