//! The steps of a fetch: serve what Redis held, take the load lock or wait for its holder,
//! run the loader, store what it loaded, fall back to a stale value.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use crate::region::{store::L1Life, LoadFn, Loaded, Region, Stale, WritePlan};
use crate::{
    codec::Codec,
    error::{Error, ErrorKind, Result},
    flight::{Leader, Outcome},
    freshness::token,
    freshness::unix_millis,
    key::CacheKey,
    options::{millis_ceil, EntryOptions},
    remote::{Filled, Remote, WriteCondition},
};

use super::{
    erase, fill,
    lock_guard::LockGuard,
    panics::{CatchPanic, LoadAborted},
    FillContext, Lock, Mode,
};

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Takes the load lock, or waits for the holder's value (re-reading Redis with back-off,
    /// and retrying the lock, which may have expired with a dead holder) until `lock_wait`.
    pub(super) async fn lock_or_wait(
        &self,
        leader: &Leader<V>,
        rkey: &str,
        options: &EntryOptions,
        (generation, tag_epoch): (u64, u64),
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
                self.counters().locks_acquired.incr();
                return Lock::Held(Box::new(LockGuard::new(l2, lock_key, token, ttl)));
            }
            Ok(false) => {}
            Err(e) => {
                let _ = self.l2_failed("lock", e);
                return Lock::Without;
            }
        }
        self.counters().lock_waits.incr();
        let deadline = Instant::now() + cache.settings.lock_wait;
        let mut backoff = Duration::from_millis(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
            match self.filled_meanwhile(l2, rkey, mode).await {
                Ok(Some(d)) => {
                    let now_ms = unix_millis();
                    let value = self
                        .serve_decoded(leader, options, d, generation, tag_epoch, now_ms)
                        .await;
                    return Lock::Found(value);
                }
                Ok(None) => {}
                // Redis stopped answering: the holder's value could not be seen even if it
                // came, so waiting on would only turn the outage into this caller's stall.
                Err(e) => return self.lock_wait_failed(e),
            }
            if Instant::now() >= deadline {
                self.counters().lock_takeovers.incr();
                tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, "gave up waiting for the load lock; loading without it");
                return Lock::Without;
            }
            match l2.try_lock(&lock_key, &token, millis_ceil(ttl)).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return self.lock_wait_failed(e),
            }
        }
        let guard = LockGuard::new(l2, lock_key, token, ttl);
        // The holder may have filled and released between the read above and this: look
        // again before loading a second time.
        if let Ok(Some(d)) = self.filled_meanwhile(l2, rkey, mode).await {
            guard.release().await;
            let now_ms = unix_millis();
            let value = self
                .serve_decoded(leader, options, d, generation, tag_epoch, now_ms)
                .await;
            return Lock::Found(value);
        }
        self.counters().locks_acquired.incr();
        Lock::Held(Box::new(guard))
    }

    /// A usable value that another instance's load put in Redis while this one waited (for a
    /// refresh: one newer than the value it replaces); an error when Redis did not answer.
    pub(super) async fn filled_meanwhile(
        &self,
        l2: &Remote,
        rkey: &str,
        mode: Mode,
    ) -> crate::error::Result<Option<crate::region::store::Decoded<V>>> {
        let bytes = match l2.get(rkey).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            // Our key, another Redis type: not the holder's value, and not an outage.
            Err(e) if e.is_wrong_type() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(d) = self.decode(&bytes, rkey) else {
            return Ok(None);
        };
        let newer = match mode {
            Mode::Refresh { created_ms } => d.meta.created_at_ms > created_ms,
            Mode::Caller => true,
        };
        Ok((newer && !d.meta.tombstone && !d.left(unix_millis()).is_zero()).then_some(d))
    }

    /// A lock wait ended by Redis failing (a read of the value or a retry of the lock): counted
    /// and logged as a Redis failure and as a takeover, and the load goes on without the lock,
    /// as when the lock could not be asked for at all.
    fn lock_wait_failed(&self, e: crate::error::Error) -> Lock<V> {
        self.counters().lock_takeovers.incr();
        let _ = self.l2_failed("lock", e);
        Lock::Without
    }

    /// Runs the loader as its own task (so a panic is caught), within its timeouts. Past the
    /// soft timeout, with a stale value at hand, every waiter gets the stale value while the
    /// load goes on; past the hard timeout the load is aborted.
    pub(super) async fn run_loader(
        &self,
        run: LoadFn<V>,
        options: &EntryOptions,
        early: Option<Arc<V>>,
        leader: &Leader<V>,
        mode: Mode,
    ) -> Result<(Loaded<V>, Duration)> {
        let cache = &self.cache;
        match mode {
            Mode::Caller => self.counters().loads.incr(),
            Mode::Refresh { .. } => self.counters().refreshes.incr(),
        }
        let started = Instant::now();
        #[cfg(feature = "metrics")]
        let _timed = crate::metrics::LoadTimer::new(
            &cache.name,
            &self.shared.state.name,
            mode != Mode::Caller,
        );
        let span = tracing::debug_span!("layercache.load", cache.name = %cache.name, region = %self.shared.state.name, refresh = mode != Mode::Caller);
        let soft = options.get_loader_soft_timeout().zip(early);
        let deadline = options
            .get_loader_hard_timeout()
            .map(|h| tokio::time::Instant::from_std(started + h));
        // Hot path: without a loader timeout the loader runs in this (already spawned) fetch
        // task, its panics caught here, rather than in a task of its own: one spawn (a
        // cache-line-aligned allocation and a copy of the loader's future) less per load.
        let joined: std::result::Result<_, LoadAborted> = if soft.is_none() && deadline.is_none() {
            CatchPanic(run())
                .instrument(span)
                .await
                .map_err(|_| LoadAborted::Panicked)
        } else {
            let mut handle = tokio::spawn(run().instrument(span));
            let (soft, stale) = soft.unzip();
            let past_soft = || {
                self.counters().soft_timeouts.incr();
                self.counters().fail_safe_serves.incr();
                if let Some(stale) = stale {
                    leader.answer_early(Ok(Some(stale)));
                }
            };
            let Some(joined) = await_load(&mut handle, soft, deadline, past_soft).await else {
                self.counters().hard_timeouts.incr();
                self.counters().load_errors.incr();
                return Err(Error::new(
                    ErrorKind::Loader,
                    "the loader passed its hard timeout",
                ));
            };
            joined.map_err(|e| {
                if e.is_panic() {
                    LoadAborted::Panicked
                } else {
                    LoadAborted::Cancelled
                }
            })
        };
        match joined {
            Ok(Ok(v)) => Ok((v, started.elapsed())),
            Ok(Err(e)) => {
                self.counters().load_errors.incr();
                Err(Error::new(ErrorKind::Loader, "the loader failed").with_source(e))
            }
            Err(e) => {
                self.counters().load_errors.incr();
                let what = match e {
                    LoadAborted::Panicked => {
                        tracing::error!(cache.name = %cache.name, region = %self.shared.state.name, "the loader panicked");
                        "the loader panicked"
                    }
                    LoadAborted::Cancelled => {
                        tracing::error!(cache.name = %cache.name, region = %self.shared.state.name, "the loader was cancelled");
                        "the loader was cancelled"
                    }
                };
                Err(Error::new(ErrorKind::Loader, what))
            }
        }
    }

    /// The call's options with the lifetime the loader's context set (as the negative TTL for a
    /// "not found"), when it is valid with them.
    pub(super) fn options_after_load(
        &self,
        options: &EntryOptions,
        ttl: Option<Duration>,
        found: bool,
    ) -> EntryOptions {
        let Some(ttl) = ttl else { return *options };
        let set = if found {
            options.ttl(ttl)
        } else {
            options.negative_ttl(ttl)
        };
        match set.validate() {
            Ok(()) => set,
            Err(e) => {
                tracing::warn!(cache.name = %self.cache.name, region = %self.shared.state.name, error = %e, "the lifetime a loader set is invalid with the call's options; the call's is used");
                *options
            }
        }
    }

    /// Stores what a loader returned in both tiers (a "not found" only with a negative TTL).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all of it flight state"
    )]
    pub(super) async fn store_loaded(
        &self,
        leader: &Leader<V>,
        rkey: &str,
        redis: FillContext<'_>,
        value: Option<V>,
        took: Duration,
        tags: crate::region::Tags,
        options: &EntryOptions,
        generation: u64,
        tag_epoch: u64,
    ) -> Outcome<V> {
        let Some(mut prepared) = self
            .prepare_loaded(leader, rkey, &redis, value, tags.as_deref(), options, took)
            .await
        else {
            return Ok(None);
        };
        let written = match prepared.write.take() {
            Some((enc, mode)) => {
                let condition = WriteCondition {
                    mode: &mode,
                    marks: redis.marks,
                    fence: redis.fence,
                    version: None,
                };
                let plan = &prepared.plan;
                Some(
                    self.write_l2(rkey, enc, plan, tags.as_deref(), condition)
                        .await,
                )
            }
            None => None,
        };
        self.settle_loaded(
            leader,
            prepared,
            written,
            took,
            tags,
            options,
            (generation, tag_epoch),
        )
        .await
    }

    /// The first half of storing a loaded value: its plan and, when it is to be written to
    /// Redis (the read saw something a load may replace, the fetch is still in time, and
    /// nothing newer touched the key), its encoded form and write mode. `None`: a "not found"
    /// without a negative TTL, nothing to store.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fetch's state, passed through"
    )]
    pub(super) async fn prepare_loaded(
        &self,
        leader: &Leader<V>,
        rkey: &str,
        redis: &FillContext<'_>,
        value: Option<V>,
        tags: Option<&[String]>,
        options: &EntryOptions,
        took: Duration,
    ) -> Option<Prepared<V>> {
        let cache = &self.cache;
        let plan = match (&value, options.get_negative_ttl()) {
            (Some(_), _) => WritePlan::value(options, took),
            (None, Some(ttl)) => WritePlan::negative(ttl),
            (None, None) => return None,
        };
        let value = value.map(Arc::new);
        let fill_mode = match redis.found.fill().filter(|_| !rkey.is_empty()) {
            Some(_) if !redis.in_time(&plan, &self.shared.entry_options) => {
                self.counters().l2_fills_lost.incr();
                tracing::debug!(cache.name = %cache.name, region = %self.shared.state.name, "the fetch outlived the entries it raced with; the loaded value is not written to redis");
                None
            }
            mode => mode,
        };
        let mut raw_len = 0;
        let mut write = None;
        if fill_mode.is_some() || cache.l1.by_bytes() {
            match self.encode_value(value.as_ref(), &plan, tags, rkey).await {
                Ok(enc) => {
                    raw_len = enc.raw_len;
                    if let (Some(mode), false) = (fill_mode, leader.is_poisoned()) {
                        write = Some((enc, mode));
                    }
                }
                Err(e) if e.kind() == ErrorKind::ValueTooLarge => {
                    self.counters().l2_oversize_skips.incr();
                    tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, error = %e, "loaded value not written to redis");
                }
                Err(e) => {
                    tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, error = %e, "loaded value could not be encoded; kept in L1 only");
                }
            }
        }
        Some(Prepared {
            plan,
            value,
            write,
            raw_len,
        })
    }

    /// The second half: what became of the Redis write (`None`: none was made), then L1.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fetch's state, passed through"
    )]
    pub(super) async fn settle_loaded(
        &self,
        leader: &Leader<V>,
        prepared: Prepared<V>,
        written: Option<Result<Filled>>,
        took: Duration,
        tags: crate::region::Tags,
        options: &EntryOptions,
        (generation, tag_epoch): (u64, u64),
    ) -> Outcome<V> {
        let cache = &self.cache;
        match written {
            None | Some(Ok(Filled::Written)) => {}
            Some(Ok(Filled::Fenced)) => {
                self.counters().l2_fills_lost.incr();
                tracing::debug!(cache.name = %cache.name, region = %self.shared.state.name, "the region's generation in redis is not the one this load read under; not written, generation re-read");
                cache.refresh_generation(&self.shared.state).await;
            }
            // Loads carry no source version: never refused as older.
            Some(Ok(Filled::Refused | Filled::Older)) => {
                self.counters().l2_fills_lost.incr();
                tracing::debug!(cache.name = %cache.name, region = %self.shared.state.name, "redis changed during the load; the newer state wins and the loaded value is not written");
            }
            // The value was loaded; a failed fill is not the caller's error.
            Some(Err(e)) => {
                let _ = self.l2_failed("set", e);
            }
        }
        let Prepared {
            plan,
            value,
            raw_len,
            ..
        } = prepared;
        if plan.negative {
            self.counters().negative_stores.incr();
        }
        let (logical, refresh_in) = self.life_of_plan(options, &plan);
        let life = L1Life {
            logical,
            refresh_in,
            delta: took,
            fail_safe_keep: plan.fail_safe_keep,
            generation,
            tag_epoch,
            tags,
            raw_len,
            negative: plan.negative,
            created_ms: unix_millis(),
            stale_since: None,
            version: None,
        };
        fill(self, leader, erase(&value), options, life);
        Ok(value)
    }

    /// The loader failed: serve the stale value if fail-safe allows (and treat it as fresh for
    /// the throttle), else return the error.
    pub(super) async fn fail_safe(
        &self,
        leader: &Leader<V>,
        fallback: Option<Stale<V>>,
        options: &EntryOptions,
        generation: u64,
        tag_epoch: u64,
        error: Error,
    ) -> Outcome<V> {
        let keep = options.keep_after_expiry();
        let usable = fallback.filter(|s| !keep.is_zero() && s.expired.elapsed() <= keep);
        let Some(stale) = usable else {
            return Err(error);
        };
        let cache = &self.cache;
        self.counters().fail_safe_serves.incr();
        tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, error = %error, "serving a stale value (fail-safe)");
        let life = L1Life {
            logical: options.get_fail_safe_throttle(),
            refresh_in: None,
            delta: Duration::ZERO,
            fail_safe_keep: keep,
            generation,
            tag_epoch,
            tags: None,
            raw_len: 0,
            negative: false,
            created_ms: unix_millis(),
            stale_since: Some(stale.expired),
            version: None,
        };
        let value: Arc<dyn Any + Send + Sync> = stale.value.clone();
        fill(self, leader, value, options, life);
        Ok(Some(stale.value))
    }
}

/// A loaded value made ready to store ([`Region::prepare_loaded`]).
pub(super) struct Prepared<V> {
    pub(super) plan: WritePlan,
    value: Option<Arc<V>>,
    /// The encoded entry and the mode to write it with, when it goes to Redis.
    pub(super) write: Option<(crate::envelope::Encoded, crate::remote::WriteMode)>,
    raw_len: usize,
}

/// Awaits a load spawned as `handle` (a single load's or a batch's): past `soft` (when given)
/// calls `past_soft` and goes on waiting; past `deadline` (when given) aborts it and returns
/// `None`.
pub(super) async fn await_load<T>(
    handle: &mut tokio::task::JoinHandle<T>,
    soft: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
    past_soft: impl FnOnce(),
) -> Option<std::result::Result<T, tokio::task::JoinError>> {
    if let Some(soft) = soft {
        match tokio::time::timeout(soft, &mut *handle).await {
            Ok(joined) => return Some(joined),
            Err(_) => past_soft(),
        }
    }
    match deadline {
        Some(d) => match tokio::time::timeout_at(d, &mut *handle).await {
            Ok(joined) => Some(joined),
            Err(_) => {
                handle.abort();
                None
            }
        },
        None => Some((&mut *handle).await),
    }
}
