//! One flight's work, run as its own task: read Redis, maybe take the distributed lock, run
//! the loader within its timeouts, fall back to a stale value, and fill both tiers. This file
//! decides what happens in what order (`Fetch::work`); the steps are in `fetch/steps.rs`.

mod batch;
mod lock_guard;
mod panics;
mod steps;

pub(super) use batch::BatchLoadFn;
use lock_guard::LockGuard;

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};

use super::{store::L1Life, Load, Loaded, Region, Stale, WritePlan};
use crate::{
    codec::Codec,
    flight::{Leader, Outcome},
    freshness::unix_millis,
    key::{tag_mark_key, CacheKey},
    options::{millis_ceil, EntryOptions},
    remote::{SeenEntry, WriteMode},
};

/// Why a fetch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A caller waits for it.
    Caller,
    /// An early refresh in the background: nobody waits; the current value (created at
    /// `created_ms`) stays meanwhile. A newer value found in Redis (another instance
    /// refreshed) is used instead of loading.
    Refresh { created_ms: u64 },
}

/// What the Redis read found, when it found no usable value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RedisHeld {
    /// No Redis tier.
    Off,
    /// No entry: a load fills it with `SET … NX` (a concurrent write wins).
    Nothing,
    /// These bytes (a tombstone, a stale or due value, a corrupt entry): a load replaces them
    /// only if the key still holds exactly them (a concurrent write or invalidation wins).
    SeenEntry(SeenEntry),
    /// Another Redis type at our key: a load overwrites it.
    Foreign,
    /// An entry a load must not replace (a newer format's).
    Keep,
    /// Redis failed (or the generation is unknown): do not pay another timeout writing.
    Down,
}

impl RedisHeld {
    /// How a load may write, if at all.
    fn fill(&self) -> Option<WriteMode> {
        match self {
            Self::Nothing => Some(WriteMode::Nx),
            Self::SeenEntry(seen) => Some(WriteMode::Cas(seen.clone())),
            Self::Foreign => Some(WriteMode::Set),
            Self::Off | Self::Keep | Self::Down => None,
        }
    }
}

/// The flight's work.
pub(super) struct Fetch<K: ?Sized, V, C> {
    pub(super) region: Region<K, V, C>,
    pub(super) options: EntryOptions,
    pub(super) load: Option<Load<V>>,
    pub(super) fallback: Option<Stale<V>>,
    pub(super) mode: Mode,
}

/// What a load's Redis fill depends on.
struct FillContext<'a> {
    /// What the Redis read found.
    found: RedisHeld,
    /// The load's tags' marks, read before it ran.
    marks: &'a [(String, Option<Vec<u8>>)],
    /// When the Redis read was made.
    read_at: Instant,
    /// The region generation the key was made for: the fill lands only while it is still the
    /// region's generation in Redis. A generation key lost with everything else (`FLUSHALL`, a
    /// restart empty) or moved by another instance fences the fill, and the instance re-reads
    /// the generation at once instead of at its next renewal, so two instances never go on
    /// filling two generations.
    fence: Option<u64>,
}

impl FillContext<'_> {
    /// Whether the load may still write. Conditional writes prove that nothing changed since
    /// the read only while what a concurrent write left (a value, a tombstone) still lives: a
    /// fetch that took as long as the shortest lifetime in play does not write.
    fn in_time(&self, plan: &WritePlan, region: &EntryOptions) -> bool {
        self.read_at.elapsed() < plan.ttl.min(region.get_ttl())
    }
}

/// The outcome of trying to take the lock.
enum Lock<V> {
    Held(Box<LockGuard>),
    /// Another instance loaded the value while we waited (`None`: a cached "not found").
    Found(Option<Arc<V>>),
    /// No lock: load anyway (the wait ran out, or Redis refused the lock).
    Without,
}

impl<K, V, C> Fetch<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(super) async fn run(self, leader: Leader<V>) -> Outcome<V> {
        let outcome = self.work(&leader).await;
        leader.finish(outcome)
    }

    async fn work(self, leader: &Leader<V>) -> Outcome<V> {
        let Fetch {
            region: r,
            options,
            load,
            mut fallback,
            mode,
        } = self;
        let cache = &r.cache;
        let span = tracing::Span::current();
        // Captured before the read: what is read now is filled as of now.
        let generation = r.shared.state.generation_raw();
        let tag_epoch = cache.l1.tag_epoch();
        let read_at = Instant::now();
        let at = (generation, tag_epoch);
        let want_lock = load.is_some() && options.get_distributed_lock();
        let (mut found, rkey, fence, early_lock) = match r
            .read_redis(leader, &options, mode, at, &mut fallback, want_lock)
            .await?
        {
            Read::Served(value) => return Ok(value),
            Read::Load {
                found,
                rkey,
                fence,
                lock,
            } => (found, rkey, fence, lock),
        };
        if mode == Mode::Caller {
            r.counters().misses.incr();
        }
        let Some(Load { run, tags }) = load else {
            span.record("level", "none");
            return Ok(None);
        };
        span.record("level", "loader");
        // Before the load reads its source: the marks of its tags, which its fill must still
        // find unchanged (a tag invalidated meanwhile replaces its mark).
        let mut marks = Vec::new();
        if let (Some(l2), Some(tags), Some(_)) = (&cache.l2, tags.as_deref(), found.fill()) {
            if !tags.is_empty() && !rkey.is_empty() {
                let keys: Vec<String> = tags.iter().map(|t| tag_mark_key(&cache.name, t)).collect();
                match l2.marks(&rkey, keys.clone()).await {
                    Ok(values) => marks = keys.into_iter().zip(values).collect(),
                    Err(e) => {
                        r.l2_failed("get tag marks", e)?;
                        found = RedisHeld::Down;
                    }
                }
            }
        }

        let lock = if let Some(guard) = early_lock {
            // Taken with the read, which found nothing: one round trip for both.
            Some(guard)
        } else if options.get_distributed_lock() && !rkey.is_empty() && found != RedisHeld::Down {
            match r
                .lock_or_wait(leader, &rkey, &options, (generation, tag_epoch), mode)
                .await
            {
                Lock::Found(v) => return Ok(v),
                Lock::Held(guard) => Some(guard),
                Lock::Without => None,
            }
        } else {
            None
        };

        let early = fallback.as_ref().map(|s| s.value.clone());
        let loaded = r.run_loader(run, &options, early, leader, mode).await;
        let outcome = match loaded {
            Ok((Loaded { value, ttl }, took)) => {
                let options = r.options_after_load(&options, ttl, value.is_some());
                let redis = FillContext {
                    found,
                    marks: &marks,
                    read_at,
                    fence,
                };
                r.store_loaded(
                    leader, &rkey, redis, value, took, tags, &options, generation, tag_epoch,
                )
                .await
            }
            Err(e) => {
                r.fail_safe(leader, fallback, &options, generation, tag_epoch, e)
                    .await
            }
        };
        if let Some(guard) = lock {
            guard.release().await;
        }
        outcome
    }
}

/// What a fetch's Redis read came to.
enum Read<V> {
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
    async fn read_redis(
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
    async fn found_in_redis(
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
        let d = match decoded {
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
    async fn serve_decoded(
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
        fill(self, leader, erase(&value), options, life).await;
        value
    }
}

/// A value as L1 stores it: the typed value, or `()` for a cached "not found".
fn erase<V: Send + Sync + 'static>(value: &Option<Arc<V>>) -> Arc<dyn Any + Send + Sync> {
    match value {
        Some(v) => v.clone(),
        None => Arc::new(()),
    }
}

/// Puts an entry in L1 unless the flight was poisoned; the entry carries the flight's poison
/// flag, so it is never served once a write overtakes the fill (see `L1::insert_guarded`).
async fn fill<K, V, C>(
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
    r.cache.l1.insert_guarded(key, entry, leader.guard()).await;
}
