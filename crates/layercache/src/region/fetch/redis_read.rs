//! A flight's first step: the Redis read, what it found, and serving (and filling L1 with)
//! a value read there.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};

use super::{LockGuard, Mode, RedisHeld};
use crate::{
    codec::Codec,
    flight::Leader,
    freshness::unix_millis,
    key::CacheKey,
    options::{millis_ceil, EntryOptions},
    region::{store::L1Life, Region, Stale},
    remote::SeenEntry,
};

/// Where a flight stands after its Redis read.
pub(in crate::region) enum Step<V> {
    /// Served (a fresh value, or a cached "not found"): the flight is done.
    Served(Option<Arc<V>>),
    /// A load follows.
    Load(AfterRead),
}

/// What the Redis read leaves for the load.
pub(in crate::region) struct AfterRead {
    pub(super) found: RedisHeld,
    pub(super) rkey: String,
    pub(super) fence: Option<u64>,
    /// The load lock, when the read took it (it found nothing).
    pub(super) lock: Option<Box<LockGuard>>,
    /// The region generation and tag epoch when the read began.
    pub(super) generation: u64,
    pub(super) tag_epoch: u64,
    pub(super) read_at: Instant,
}

/// What a fetch's Redis read came to.
pub(super) enum Read<V> {
    /// A fresh value (or a cached "not found") was served and put in L1: the fetch is done.
    Served(Option<Arc<V>>),
    /// The fetch goes on to load: what Redis held, at which key, under which generation.
    Load {
        found: RedisHeld,
        rkey: String,
        fence: Option<u64>,
        /// The load lock, when the read took it (it found nothing).
        lock: Option<Box<LockGuard>>,
    },
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Reads the key from Redis (unless there is no Redis tier, its generation is unknown, or a
    /// repair covering it is pending) and serves a fresh value; otherwise says what the load
    /// that follows must know. A stale value kept by fail-safe becomes the `fallback`.
    pub(super) async fn read_redis(
        &self,
        leader: &Leader<V>,
        options: &EntryOptions,
        mode: Mode,
        at: (u64, u64),
        fallback: &mut Option<Stale<V>>,
        want_lock: bool,
    ) -> crate::error::Result<Read<V>> {
        let cache = &self.cache;
        let mut rkey = String::new();
        let Some(l2) = &cache.l2 else {
            return Ok(Read::Load {
                found: RedisHeld::Off,
                rkey,
                fence: None,
                lock: None,
            });
        };
        let g = match self.l2_generation() {
            // A write of this key (or its region, a tag, a clear) that Redis did not confirm
            // is waiting for its repair: Redis may still hold what it replaced.
            _ if cache.journal.blocks(leader.key()) => {
                self.counters().l2_repair_bypasses.incr();
                return Ok(Read::Load {
                    found: RedisHeld::Down,
                    rkey,
                    fence: None,
                    lock: None,
                });
            }
            Err(e) => {
                self.l2_failed("get", e)?;
                return Ok(Read::Load {
                    found: RedisHeld::Down,
                    rkey,
                    fence: None,
                    lock: None,
                });
            }
            Ok(g) => g,
        };
        rkey = self.shared.state.data_key(g, &leader.key()[4..]);
        let mut lock = None;
        let read = match options.get_sliding() {
            Some(_) => {
                self.counters().l2_extends.incr();
                let ttl = options.get_ttl() + options.keep_after_expiry();
                l2.get_and_touch(&rkey, millis_ceil(ttl)).await
            }
            // Under the load lock, a read that finds nothing takes the lock in the same step.
            None if want_lock => {
                let lock_key = self.shared.state.lock_key(g, &leader.key()[4..]);
                let token = crate::freshness::token();
                let ttl = cache.settings.lock_ttl;
                match l2
                    .get_or_lock(&rkey, &lock_key, &token, millis_ceil(ttl))
                    .await
                {
                    Ok((value, taken)) => {
                        if taken {
                            self.counters().locks_acquired.incr();
                            lock = Some(Box::new(LockGuard::new(l2, lock_key, token, ttl)));
                        }
                        Ok(value)
                    }
                    Err(e) => Err(e),
                }
            }
            None => l2.get(&rkey).await,
        };
        let found = match read {
            Ok(Some(bytes)) => {
                match self
                    .found_in_redis(leader, options, mode, at, bytes, &rkey, fallback)
                    .await
                {
                    Ok(value) => return Ok(Read::Served(value)),
                    Err(found) => found,
                }
            }
            Ok(None) => RedisHeld::Nothing,
            Err(e) if e.is_wrong_type() => {
                // Our key, someone else's type: a miss, and ours to replace.
                let reason = crate::envelope::Corruption::WrongType;
                self.counters().decode_errors[reason.index()].incr();
                tracing::warn!(
                    cache.name = %cache.name,
                    region = %self.shared.state.name,
                    reason = %reason,
                    "unusable entry in redis, treated as a miss"
                );
                RedisHeld::Foreign
            }
            Err(e) => {
                self.l2_failed("get", e)?;
                RedisHeld::Down
            }
        };
        Ok(Read::Load {
            found,
            rkey,
            fence: Some(g),
            lock,
        })
    }

    /// Decodes what Redis held: a fresh value is served (`Ok`); anything else is what the load
    /// must find again to fill (`Err`): a tombstone, a value stale or due for refresh (kept as
    /// the fail-safe fallback), or an unusable entry.
    #[expect(
        clippy::too_many_arguments,
        reason = "the read's context, passed through"
    )]
    pub(super) async fn found_in_redis(
        &self,
        leader: &Leader<V>,
        options: &EntryOptions,
        mode: Mode,
        (generation, tag_epoch): (u64, u64),
        bytes: Vec<u8>,
        rkey: &str,
        fallback: &mut Option<Stale<V>>,
    ) -> Result<Option<Arc<V>>, RedisHeld> {
        let cache = &self.cache;
        let (decoded, bytes) = self.decode_read(bytes, rkey).await;
        let bytes = &bytes[..];
        let mut d = match decoded {
            Ok(d) => d,
            Err(reason) => {
                self.counters().decode_errors[reason.index()].incr();
                tracing::warn!(
                    cache.name = %cache.name,
                    region = %self.shared.state.name,
                    reason = %reason,
                    bytes = bytes.len(),
                    "unusable entry in redis, treated as a miss"
                );
                return Err(if reason.may_overwrite() {
                    RedisHeld::SeenEntry(SeenEntry::of(bytes))
                } else {
                    RedisHeld::Keep
                });
            }
        };
        if d.meta.tombstone {
            return Err(RedisHeld::SeenEntry(SeenEntry::of(bytes)));
        }
        let now_ms = unix_millis();
        if options.get_sliding().is_some() {
            // A sliding read extends the key as it reads it (`GETEX … PX`, a batch's
            // `PEXPIRE`): the entry lives `ttl` from now. Its envelope says when it was first to
            // expire, which reads on any instance may have pushed back since.
            let ttl_ms = millis_ceil(options.get_ttl() + options.keep_after_expiry());
            d.meta.expires_at_ms = d.meta.expires_at_ms.max(now_ms.saturating_add(ttl_ms));
        }
        let left = d.left(now_ms);
        let due = match mode {
            Mode::Refresh { created_ms } => d.meta.created_at_ms <= created_ms,
            Mode::Caller => false,
        };
        if !left.is_zero() && !due {
            tracing::Span::current().record("level", "l2");
            let value = self
                .serve_decoded(leader, options, d, generation, tag_epoch, now_ms)
                .await;
            if value.is_none() {
                self.counters().negative_hits.incr();
            }
            return Ok(value);
        }
        let value = d.value.map(Arc::new);
        if let (Some(value), None) = (value, &*fallback) {
            // Stale in Redis (kept by fail-safe) or due for refresh.
            let stale_for = Duration::from_millis(now_ms.saturating_sub(d.meta.expires_at_ms));
            let expired = Instant::now()
                .checked_sub(stale_for)
                .unwrap_or_else(Instant::now)
                + left;
            *fallback = Some(Stale { value, expired });
        }
        Err(RedisHeld::SeenEntry(SeenEntry::of(bytes)))
    }

    /// Serves a fresh value read from Redis: counts the hit, fills L1, returns it (`None` for a
    /// cached "not found").
    pub(super) async fn serve_decoded(
        &self,
        leader: &Leader<V>,
        options: &EntryOptions,
        d: crate::region::store::Decoded<V>,
        generation: u64,
        tag_epoch: u64,
        now_ms: u64,
    ) -> Option<Arc<V>> {
        self.counters().l2_hits.incr();
        let value = d.value.map(Arc::new);
        let (logical, refresh_in) = self.life_of_meta(options, &d.meta, now_ms);
        let life = L1Life {
            logical,
            refresh_in,
            delta: Duration::from_micros(u64::from(d.meta.load_us)),
            fail_safe_keep: options.keep_after_expiry(),
            generation,
            tag_epoch,
            tags: d.tags,
            raw_len: d.raw_len,
            negative: value.is_none(),
            created_ms: d.meta.created_at_ms,
            stale_since: None,
            version: d.meta.version,
        };
        let key = leader.key();
        // A full L1 takes a key read from Redis at its second read in the doorkeeper's window
        // (hot path: the long tail no longer churns moka); an entry it holds (one being
        // refreshed) is always replaced.
        if !self.cache.l1.admits_from_redis(key) && !self.cache.l1.contains(key) {
            self.counters().l1_door_skips.incr();
            return value;
        }
        fill(self, leader, erase(&value), options, life);
        value
    }
}

/// A value as L1 stores it: the typed value, or `()` for a cached "not found".
pub(super) fn erase<V: Send + Sync + 'static>(
    value: &Option<Arc<V>>,
) -> Arc<dyn Any + Send + Sync> {
    match value {
        Some(v) => v.clone(),
        None => Arc::new(()),
    }
}

/// Puts an entry in L1 unless the flight was poisoned; the entry carries the flight's poison
/// flag, so it is never served once a write overtakes the fill (see `L1::insert_guarded`).
pub(super) fn fill<K, V, C>(
    r: &Region<K, V, C>,
    leader: &Leader<V>,
    value: Arc<dyn Any + Send + Sync>,
    options: &EntryOptions,
    life: L1Life,
) where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    if leader.is_poisoned() {
        r.counters().l1_fills_overtaken.incr();
        return;
    }
    let key = leader.key();
    if !r.cache.l1.admits(key) {
        r.counters().l1_cooldown_skips.incr();
        return;
    }
    let Some(entry) = r.l1_entry(key.len(), value, options, life) else {
        return;
    };
    if !r.cache.l1.insert_guarded(key, entry, leader.guard()) {
        r.counters().l1_fills_overtaken.incr();
    }
}
