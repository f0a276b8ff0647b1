//! One flight's work, run as its own task: read Redis, maybe take the distributed lock, run
//! the loader within its timeouts, fall back to a stale value, and fill both tiers.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use super::{store::Life, Load, LoadFn, Plan, Region, Stale};
use crate::{
    cache::unix_millis,
    codec::Codec,
    error::{Error, ErrorKind, Result},
    flight::{Leader, Outcome},
    freshness::token,
    key::{tag_mark_key, CacheKey},
    l2::{Fill as L2Fill, Filled, Guard, Seen, L2},
    options::{millis_ceil, EntryOptions},
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
enum Found {
    /// No Redis tier.
    Off,
    /// No entry: a load fills it with `SET … NX` (a concurrent write wins).
    Nothing,
    /// These bytes (a tombstone, a stale or due value, a corrupt entry): a load replaces them
    /// only if the key still holds exactly them (a concurrent write or invalidation wins).
    Seen(Seen),
    /// Another Redis type at our key: a load overwrites it.
    Foreign,
    /// An entry a load must not replace (a newer format's).
    Keep,
    /// Redis failed (or the generation is unknown): do not pay another timeout writing.
    Down,
}

impl Found {
    /// How a load may write, if at all.
    fn fill(&self) -> Option<L2Fill> {
        match self {
            Self::Nothing => Some(L2Fill::Nx),
            Self::Seen(seen) => Some(L2Fill::Cas(seen.clone())),
            Self::Foreign => Some(L2Fill::Set),
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

/// A held distributed lock: renewed in the background until released or dropped.
struct LockGuard {
    l2: L2,
    key: String,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    fn new(l2: &L2, key: String, token: String, ttl: Duration) -> Self {
        let renewal = {
            let (l2, key, token) = (l2.clone(), key.clone(), token.clone());
            tokio::spawn(async move {
                let ttl_ms = millis_ceil(ttl);
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if matches!(l2.renew_lock(&key, &token, ttl_ms).await, Ok(false)) {
                        return; // lost it (expired and taken): nothing left to renew
                    }
                }
            })
        };
        Self {
            l2: l2.clone(),
            key,
            token,
            renewal,
        }
    }

    async fn release(self) {
        self.renewal.abort();
        let _ = self.l2.release_lock(&self.key, &self.token).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Dropped without release (the task was cancelled): stop renewing, let it expire.
        self.renewal.abort();
    }
}

/// What a load's Redis fill depends on.
struct Fill<'a> {
    /// What the Redis read found.
    found: Found,
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

impl Fill<'_> {
    /// Whether the load may still write. Conditional writes prove that nothing changed since
    /// the read only while what a concurrent write left (a value, a tombstone) still lives: a
    /// fetch that took as long as the shortest lifetime in play does not write.
    fn in_time(&self, plan: &Plan, region: &EntryOptions) -> bool {
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
        let born = cache.l1.tag_epoch();
        let read_at = Instant::now();
        let mut found = Found::Off;
        let mut rkey = String::new();
        let mut fence = None;
        if let Some(l2) = &cache.l2 {
            found = match r.l2_generation() {
                // A write of this key (or its region, a tag, a clear) that Redis did not
                // confirm is waiting for its repair: Redis may still hold what it replaced.
                _ if cache.journal.blocks(leader.key()) => {
                    cache.counters.l2_repair_bypasses.incr();
                    Found::Down
                }
                Err(e) => {
                    r.l2_failed("get", e)?;
                    Found::Down
                }
                Ok(g) => {
                    fence = Some(g);
                    rkey = r.shared.state.data_key(g, &leader.key()[4..]);
                    let read = match options.get_sliding() {
                        Some(_) => {
                            cache.counters.l2_extends.incr();
                            let ttl = options.get_ttl() + options.keep_after_expiry();
                            l2.getex(&rkey, millis_ceil(ttl)).await
                        }
                        None => l2.get(&rkey).await,
                    };
                    match read {
                        Ok(Some(bytes)) => match r.decode(&bytes, &rkey) {
                            Ok(d) if d.meta.tombstone => Found::Seen(Seen::of(&bytes)),
                            Ok(d) => {
                                let now_ms = unix_millis();
                                let left = d.left(now_ms);
                                let due = match mode {
                                    Mode::Refresh { created_ms } => {
                                        d.meta.created_at_ms <= created_ms
                                    }
                                    Mode::Caller => false,
                                };
                                if !left.is_zero() && !due {
                                    span.record("level", "l2");
                                    let value = r
                                        .serve_decoded(
                                            leader, &options, d, generation, born, now_ms,
                                        )
                                        .await;
                                    if value.is_none() {
                                        cache.counters.negative_hits.incr();
                                    }
                                    return Ok(value);
                                }
                                let value = d.value.map(Arc::new);
                                if let (Some(value), None) = (value, &fallback) {
                                    // Stale in Redis (kept by fail-safe) or due for refresh.
                                    let stale_for = Duration::from_millis(
                                        now_ms.saturating_sub(d.meta.expires_at_ms),
                                    );
                                    let expired = Instant::now()
                                        .checked_sub(stale_for)
                                        .unwrap_or_else(Instant::now)
                                        + left;
                                    fallback = Some(Stale { value, expired });
                                }
                                Found::Seen(Seen::of(&bytes))
                            }
                            Err(reason) => {
                                cache.counters.decode_errors[reason.index()].incr();
                                tracing::warn!(
                                    cache.name = %cache.name,
                                    region = %r.shared.state.name,
                                    reason = %reason,
                                    bytes = bytes.len(),
                                    "unusable entry in redis, treated as a miss"
                                );
                                if reason.may_overwrite() {
                                    Found::Seen(Seen::of(&bytes))
                                } else {
                                    Found::Keep
                                }
                            }
                        },
                        Ok(None) => Found::Nothing,
                        Err(e) if crate::l2::is_wrong_type(&e) => {
                            // Our key, someone else's type: a miss, and ours to replace.
                            let reason = crate::envelope::Corruption::WrongType;
                            cache.counters.decode_errors[reason.index()].incr();
                            tracing::warn!(
                                cache.name = %cache.name,
                                region = %r.shared.state.name,
                                reason = %reason,
                                "unusable entry in redis, treated as a miss"
                            );
                            Found::Foreign
                        }
                        Err(e) => {
                            r.l2_failed("get", e)?;
                            Found::Down
                        }
                    }
                }
            };
        }
        if mode == Mode::Caller {
            cache.counters.misses.incr();
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
                match l2.marks(keys.clone()).await {
                    Ok(values) => marks = keys.into_iter().zip(values).collect(),
                    Err(e) => {
                        r.l2_failed("get tag marks", e)?;
                        found = Found::Down;
                    }
                }
            }
        }

        let lock = if options.get_distributed_lock() && !rkey.is_empty() && found != Found::Down {
            match r
                .lock_or_wait(leader, &rkey, &options, (generation, born), mode)
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
            Ok((value, took)) => {
                let redis = Fill {
                    found,
                    marks: &marks,
                    read_at,
                    fence,
                };
                r.store_loaded(
                    leader, &rkey, redis, value, took, tags, &options, generation, born,
                )
                .await
            }
            Err(e) => {
                r.fail_safe(leader, fallback, &options, generation, born, e)
                    .await
            }
        };
        if let Some(guard) = lock {
            guard.release().await;
        }
        outcome
    }
}

/// A value as L1 stores it: the typed value, or `()` for a cached "not found".
fn erase<V: Send + Sync + 'static>(value: &Option<Arc<V>>) -> Arc<dyn Any + Send + Sync> {
    match value {
        Some(v) => v.clone(),
        None => Arc::new(()),
    }
}

/// Puts an entry in L1 unless the flight was poisoned; if it was poisoned while the entry
/// went in, takes it out again (the invalidation may have run its own removal first).
async fn fill<K, V, C>(
    r: &Region<K, V, C>,
    leader: &Leader<V>,
    value: Arc<dyn Any + Send + Sync>,
    options: &EntryOptions,
    life: Life,
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
        r.cache.counters.l1_cooldown_skips.incr();
        return;
    }
    let Some(entry) = r.l1_entry(key.len(), value, options, life) else {
        return;
    };
    r.cache.l1.insert(key.into(), entry).await;
    if leader.is_poisoned() {
        r.cache.l1.remove(key).await;
    }
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Serves a fresh value read from Redis: counts the hit, fills L1, returns it (`None` for a
    /// cached "not found").
    async fn serve_decoded(
        &self,
        leader: &Leader<V>,
        options: &EntryOptions,
        d: super::store::Decoded<V>,
        generation: u64,
        born: u64,
        now_ms: u64,
    ) -> Option<Arc<V>> {
        self.cache.counters.l2_hits.incr();
        let value = d.value.map(Arc::new);
        let (logical, refresh_in) = self.life_of_meta(options, &d.meta, now_ms);
        let life = Life {
            logical,
            refresh_in,
            delta: Duration::from_micros(u64::from(d.meta.load_us)),
            keep: options.keep_after_expiry(),
            generation,
            born,
            tags: d.tags,
            raw_len: d.raw_len,
            negative: value.is_none(),
            created_ms: d.meta.created_at_ms,
            stale_since: None,
            version: d.meta.version,
        };
        fill(self, leader, erase(&value), options, life).await;
        value
    }

    /// Takes the load lock, or waits for the holder's value (re-reading Redis with back-off,
    /// and retrying the lock, which may have expired with a dead holder) until `lock_wait`.
    async fn lock_or_wait(
        &self,
        leader: &Leader<V>,
        rkey: &str,
        options: &EntryOptions,
        (generation, born): (u64, u64),
        mode: Mode,
    ) -> Lock<V> {
        let cache = &self.cache;
        let (Some(l2), Some(g)) = (&cache.l2, self.shared.state.generation()) else {
            return Lock::Without;
        };
        let lock_key = self.shared.state.lock_key(g, &leader.key()[4..]);
        let token = token();
        let ttl = cache.settings.lock_ttl;
        match l2.try_lock(&lock_key, &token, millis_ceil(ttl)).await {
            Ok(true) => {
                cache.counters.locks_acquired.incr();
                return Lock::Held(Box::new(LockGuard::new(l2, lock_key, token, ttl)));
            }
            Ok(false) => {}
            Err(e) => {
                let _ = self.l2_failed("lock", e);
                return Lock::Without;
            }
        }
        cache.counters.lock_waits.incr();
        let deadline = Instant::now() + cache.settings.lock_wait;
        let mut backoff = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
            if let Some(d) = self.filled_meanwhile(l2, rkey, mode).await {
                let now_ms = unix_millis();
                let value = self
                    .serve_decoded(leader, options, d, generation, born, now_ms)
                    .await;
                return Lock::Found(value);
            }
            if Instant::now() >= deadline {
                cache.counters.lock_takeovers.incr();
                tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, "gave up waiting for the load lock; loading without it");
                return Lock::Without;
            }
            if let Ok(true) = l2.try_lock(&lock_key, &token, millis_ceil(ttl)).await {
                let guard = LockGuard::new(l2, lock_key, token, ttl);
                // The holder may have filled and released between the read above and this:
                // look again before loading a second time.
                if let Some(d) = self.filled_meanwhile(l2, rkey, mode).await {
                    guard.release().await;
                    let now_ms = unix_millis();
                    let value = self
                        .serve_decoded(leader, options, d, generation, born, now_ms)
                        .await;
                    return Lock::Found(value);
                }
                cache.counters.locks_acquired.incr();
                return Lock::Held(Box::new(guard));
            }
        }
    }

    /// A usable value that another instance's load put in Redis while this one waited (for a
    /// refresh: one newer than the value it replaces).
    async fn filled_meanwhile(
        &self,
        l2: &L2,
        rkey: &str,
        mode: Mode,
    ) -> Option<super::store::Decoded<V>> {
        let Ok(Some(bytes)) = l2.get(rkey).await else {
            return None;
        };
        let d = self.decode(&bytes, rkey).ok()?;
        let newer = match mode {
            Mode::Refresh { created_ms } => d.meta.created_at_ms > created_ms,
            Mode::Caller => true,
        };
        (newer && !d.meta.tombstone && !d.left(unix_millis()).is_zero()).then_some(d)
    }

    /// Runs the loader as its own task (so a panic is caught), within its timeouts. Past the
    /// soft timeout, with a stale value at hand, every waiter gets the stale value while the
    /// load goes on; past the hard timeout the load is aborted.
    async fn run_loader(
        &self,
        run: LoadFn<V>,
        options: &EntryOptions,
        early: Option<Arc<V>>,
        leader: &Leader<V>,
        mode: Mode,
    ) -> Result<(Option<V>, Duration)> {
        let cache = &self.cache;
        match mode {
            Mode::Caller => cache.counters.loads.incr(),
            Mode::Refresh { .. } => cache.counters.refreshes.incr(),
        }
        let started = Instant::now();
        let span = tracing::debug_span!("layercache.load", cache.name = %cache.name, region = %self.shared.state.name, refresh = mode != Mode::Caller);
        let mut handle = tokio::spawn(run().instrument(span));
        let deadline = options
            .get_loader_hard_timeout()
            .map(|h| tokio::time::Instant::from_std(started + h));
        let mut joined = None;
        if let (Some(soft), Some(stale)) = (options.get_loader_soft_timeout(), early) {
            match tokio::time::timeout(soft, &mut handle).await {
                Ok(r) => joined = Some(r),
                Err(_) => {
                    cache.counters.soft_timeouts.incr();
                    cache.counters.fail_safe_serves.incr();
                    leader.answer_early(Ok(Some(stale)));
                }
            }
        }
        let joined = match joined {
            Some(r) => r,
            None => match deadline {
                Some(d) => match tokio::time::timeout_at(d, &mut handle).await {
                    Ok(r) => r,
                    Err(_) => {
                        handle.abort();
                        cache.counters.hard_timeouts.incr();
                        cache.counters.load_errors.incr();
                        return Err(Error::new(
                            ErrorKind::Loader,
                            "the loader passed its hard timeout",
                        ));
                    }
                },
                None => (&mut handle).await,
            },
        };
        match joined {
            Ok(Ok(v)) => Ok((v, started.elapsed())),
            Ok(Err(e)) => {
                cache.counters.load_errors.incr();
                Err(Error::new(ErrorKind::Loader, "the loader failed").with_source(e))
            }
            Err(e) => {
                cache.counters.load_errors.incr();
                let what = if e.is_panic() {
                    tracing::error!(cache.name = %cache.name, region = %self.shared.state.name, "the loader panicked");
                    "the loader panicked"
                } else {
                    tracing::error!(cache.name = %cache.name, region = %self.shared.state.name, "the loader was cancelled");
                    "the loader was cancelled"
                };
                Err(Error::new(ErrorKind::Loader, what))
            }
        }
    }

    /// Stores what a loader returned in both tiers (a "not found" only with a negative TTL).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all of it flight state"
    )]
    async fn store_loaded(
        &self,
        leader: &Leader<V>,
        rkey: &str,
        redis: Fill<'_>,
        value: Option<V>,
        took: Duration,
        tags: super::Tags,
        options: &EntryOptions,
        generation: u64,
        born: u64,
    ) -> Outcome<V> {
        let cache = &self.cache;
        let plan = match (&value, options.get_negative_ttl()) {
            (Some(_), _) => Plan::value(options, took),
            (None, Some(ttl)) => Plan::negative(ttl),
            (None, None) => return Ok(None),
        };
        let value = value.map(Arc::new);
        let fill_mode = match redis.found.fill().filter(|_| !rkey.is_empty()) {
            Some(_) if !redis.in_time(&plan, &self.shared.entry_options) => {
                cache.counters.l2_fills_lost.incr();
                tracing::debug!(cache.name = %cache.name, region = %self.shared.state.name, "the fetch outlived the entries it raced with; the loaded value is not written to redis");
                None
            }
            mode => mode,
        };
        let write = fill_mode.is_some();
        let mut raw_len = 0;
        if write || cache.l1.by_bytes() {
            match self.encode(value.as_deref(), &plan, tags.as_deref(), rkey) {
                Ok(enc) => {
                    raw_len = enc.raw_len;
                    if let (Some(mode), false) = (&fill_mode, leader.is_poisoned()) {
                        let written = self
                            .write_l2(
                                rkey,
                                enc,
                                &plan,
                                tags.as_deref(),
                                Guard {
                                    mode,
                                    marks: redis.marks,
                                    fence: redis.fence,
                                    version: None,
                                },
                            )
                            .await;
                        match written {
                            Ok(Filled::Written) => {}
                            Ok(Filled::Fenced) => {
                                cache.counters.l2_fills_lost.incr();
                                tracing::debug!(cache.name = %cache.name, region = %self.shared.state.name, "the region's generation in redis is not the one this load read under; not written, generation re-read");
                                cache.refresh_generation(&self.shared.state).await;
                            }
                            // Loads carry no source version: never refused as older.
                            Ok(Filled::Refused | Filled::Older) => {
                                cache.counters.l2_fills_lost.incr();
                                tracing::debug!(cache.name = %cache.name, region = %self.shared.state.name, "redis changed during the load; the newer state wins and the loaded value is not written");
                            }
                            // The value was loaded; a failed fill is not the caller's error.
                            Err(e) => {
                                let _ = self.l2_failed("set", e);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::ValueTooLarge => {
                    cache.counters.l2_oversize_skips.incr();
                    tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, error = %e, "loaded value not written to redis");
                }
                Err(e) => {
                    tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, error = %e, "loaded value could not be encoded; kept in L1 only");
                }
            }
        }
        if plan.negative {
            cache.counters.negative_stores.incr();
        }
        let (logical, refresh_in) = self.life_of_plan(options, &plan);
        let life = Life {
            logical,
            refresh_in,
            delta: took,
            keep: plan.keep,
            generation,
            born,
            tags,
            raw_len,
            negative: plan.negative,
            created_ms: unix_millis(),
            stale_since: None,
            version: None,
        };
        fill(self, leader, erase(&value), options, life).await;
        Ok(value)
    }

    /// The loader failed: serve the stale value if fail-safe allows (and treat it as fresh for
    /// the throttle), else return the error.
    async fn fail_safe(
        &self,
        leader: &Leader<V>,
        fallback: Option<Stale<V>>,
        options: &EntryOptions,
        generation: u64,
        born: u64,
        error: Error,
    ) -> Outcome<V> {
        let keep = options.keep_after_expiry();
        let usable = fallback.filter(|s| !keep.is_zero() && s.expired.elapsed() <= keep);
        let Some(stale) = usable else {
            return Err(error);
        };
        let cache = &self.cache;
        cache.counters.fail_safe_serves.incr();
        tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, error = %error, "serving a stale value (fail-safe)");
        let life = Life {
            logical: options.get_fail_safe_throttle(),
            refresh_in: None,
            delta: Duration::ZERO,
            keep,
            generation,
            born,
            tags: None,
            raw_len: 0,
            negative: false,
            created_ms: unix_millis(),
            stale_since: Some(stale.expired),
            version: None,
        };
        let value: Arc<dyn Any + Send + Sync> = stale.value.clone();
        fill(self, leader, value, options, life).await;
        Ok(Some(stale.value))
    }
}
