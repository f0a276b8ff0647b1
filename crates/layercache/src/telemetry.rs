//! Tracing: the spans and events layercache emits.
//!
//! layercache logs through [`tracing`](https://docs.rs/tracing); install any subscriber to see
//! them. Nothing is emitted on an L1 hit, so the hot path stays free of telemetry cost beyond
//! a counter increment. User keys are never logged above `trace`.
//!
//! | name | kind | level | fields | when |
//! |---|---|---|---|---|
//! | `layercache.get` | span | debug | `cache.name`, `region`, `level` (`l2`, `loader`, `none`) | an L1 miss: the flight that reads Redis and maybe loads |
//! | `layercache.l2.get` | span | debug | `hit`, `bytes` | one `GET` |
//! | `layercache.l2.set` | span | debug | `bytes`, `nx` | one `SET … PX` |
//! | `layercache.l2.unlink` | span | debug | | one `UNLINK` |
//! | `layercache.load` | span | debug | `cache.name`, `region` | one loader run |
//! | `layercache.invalidation.publish` | span | debug | `cache.name`, `instance.id`, `seq`, `entries` | one bus message (a batch of invalidations, or a heartbeat) |
//! | `L1 flushed` | event | warn | `cache.name`, `reason` | a flush after a possible loss of invalidations, or a clear ([`FlushReason`](crate::FlushReason)) |
//! | `coherence may be lost; L1 kept by policy` | event | warn | `cache.name`, `reason` | as above, with `CoherenceLossPolicy::KeepUntilTtl` |
//! | `bus listener lagged; messages lost` | event | warn | `cache.name`, `missed` | the listener fell behind its buffer |
//! | `bus sequence gap; messages lost` | event | warn | `cache.name`, `sender`, `seq` | a sender's message went missing |
//! | `own bus heartbeat missed; subscription presumed broken` | event | warn | `cache.name` | self-echo watchdog |
//! | `bus publish failed; receivers will see a sequence gap` | event | warn | `cache.name`, `seq`, `entries`, `error` | a failed `PUBLISH` |
//! | `dropped a message that is not ours on the bus channel` | event | debug | `cache.name`, `reason` | garbage on the channel |
//! | `redis call failed` | event | warn | `cache.name`, `region`, `op`, `error` | a Redis error or timeout |
//! | `unusable entry in redis, treated as a miss` | event | warn | `cache.name`, `region`, `reason`, `bytes` | a corrupt or foreign entry ([`Corruption`](crate::Corruption)) |
//! | `loaded value not written to redis` | event | warn | `cache.name`, `region`, `error` | a loaded value above `max_value_bytes` |
//! | `the loader panicked` | event | error | `cache.name`, `region` | a loader panic (callers get an error) |
//! | `redis circuit breaker opened: calls skip redis until a probe succeeds` | event | warn | `cache.name`, `failures`, `cooldown` | the breaker opened |
//! | `redis circuit breaker closed` | event | info | `cache.name` | a probe succeeded |
//! | `serving a stale value (fail-safe)` | event | warn | `cache.name`, `region`, `error` | fail-safe served a stale value |
//! | `gave up waiting for the load lock; loading without it` | event | warn | `cache.name`, `region` | a lock wait ran out |
//! | `layercache started` | event | info | `cache.name`, `l2`, `instance.id` | `build()` succeeded |
//!
//! Counters are read with [`LayerCache::stats`](crate::LayerCache::stats).
