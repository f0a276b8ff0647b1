//! The read API of [`Region`]: `get` and the `get_or_load` family, and the fetch they start
//! on an L1 miss.

use std::{borrow::Borrow, future::Future, sync::Arc, time::Instant};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use crate::{
    codec::Codec,
    error::{BoxError, Error, ErrorKind, Result},
    flight::{self, Join, Outcome},
    freshness::{rand01, xfetch},
    key::{validate_tags, CacheKey},
    l1::{expired, guard_set, EntryExtras, L1Entry},
    options::EntryOptions,
};

use super::{
    fetch::{Fetch, Mode, Step},
    Load, LoadFn, Region, Stale, MAX_REJOINS,
};

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Reads `key`: from the in-process tier, else from Redis (filling the in-process tier).
    /// `Ok(None)` when neither has it (or a "not found" is cached). Concurrent reads of one
    /// key share one Redis read.
    ///
    /// # Errors
    ///
    /// Only with [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate), when Redis
    /// fails. By default a Redis failure is logged and counted and the read answers
    /// `Ok(None)`. A corrupt or foreign entry in Redis is always a miss, counted in
    /// [`Stats::decode_errors`](crate::Stats).
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<Arc<V>>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let k = self.l1_key(key);
        self.check_key(&k)?;
        match self.classify(&k, self.cache.l1.get(&k)) {
            Hit::Fresh(v) | Hit::Refresh(v, _) => return Ok(Some(v)),
            Hit::Negative => return Ok(None),
            Hit::Stale(_) | Hit::Miss => {}
        }
        // Boxed: the miss path's large future must not be part of every hit's.
        Box::pin(self.fetch(k.to_vec(), self.shared.entry_options, None, None)).await
    }

    /// Reads `key`, or runs `loader` to produce it, stores it in both tiers and returns it
    /// (read-through), with the region's entry options.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Concurrent callers in this process share one Redis read and at most one loader run; the
    /// other callers' loaders are dropped unused. The shared load runs as its own task, so a
    /// caller that is cancelled (its future dropped) does not cancel it for the others — this
    /// is why the loader must be `Send + 'static`. (The Redis read before it runs in the
    /// leading caller's task; if that caller is cancelled, the others read again.) A loader
    /// that fails or panics gives every waiting caller an [`ErrorKind::Loader`] error and
    /// caches nothing (unless fail-safe serves a stale value); the next call runs a loader
    /// again. With [`EntryOptions::distributed_lock`], one instance loads while the others
    /// wait for its value.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Loader`] when the loader fails, panics or passes its hard timeout and no
    /// stale value can be served; a Redis error only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn get_or_load<Q, F, Fut, E>(&self, key: &Q, loader: F) -> Result<Arc<V>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ToOwned + ?Sized,
        Q::Owned: Send + 'static,
        F: FnOnce(Q::Owned) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.entry(key).or_load(loader).await
    }

    /// Every read-through: `make_load` makes the loader, on the miss path only (nothing is
    /// allocated for it on an L1 hit).
    pub(super) async fn read_through<Q>(
        &self,
        key: &Q,
        options: &EntryOptions,
        tags: &[&str],
        make_load: impl FnOnce() -> LoadFn<V>,
        negative_ok: bool,
    ) -> Result<Option<Arc<V>>>
    where
        Q: CacheKey + ?Sized,
    {
        options.validate()?;
        let tags = validate_tags(tags)?;
        let k = self.l1_key(key);
        self.check_key(&k)?;
        let mut hit = self.classify(&k, self.cache.l1.get(&k));
        if matches!(hit, Hit::Miss) && self.cache.l1.keeps() {
            hit = self.classify_kept(&k);
        }
        let fallback = match hit {
            Hit::Fresh(v) => return Ok(Some(v)),
            Hit::Refresh(v, created_ms) => {
                let load = Load {
                    run: make_load(),
                    tags,
                };
                self.start_refresh(k.to_vec(), *options, load, created_ms);
                return Ok(Some(v));
            }
            Hit::Negative if negative_ok => return Ok(None),
            Hit::Negative | Hit::Miss => None,
            Hit::Stale(s) => Some(s),
        };
        let load = Load {
            run: make_load(),
            tags,
        };
        Box::pin(self.fetch(k.to_vec(), *options, Some(load), fallback)).await
    }

    /// Starts one background refresh of `k` (whose current value was created at
    /// `created_ms`), unless a fetch of it is already running.
    fn start_refresh(&self, k: Vec<u8>, options: EntryOptions, load: Load<V>, created_ms: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Join::Lead(leader) = self.cache.flights.join::<V>(&k) {
            let task = Fetch {
                region: self.clone(),
                options,
                load: Some(load),
                fallback: None,
                mode: Mode::Refresh { created_ms },
            };
            drop(rt.spawn(task.run(leader)));
        }
    }

    /// The miss path: join or lead the single flight for `k`.
    async fn fetch(
        &self,
        k: Vec<u8>,
        options: EntryOptions,
        mut load: Option<Load<V>>,
        fallback: Option<Stale<V>>,
    ) -> Result<Option<Arc<V>>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::NoRuntime,
                "layercache must be used inside a tokio runtime",
            )
        })?;
        let mut fallback = fallback;
        for attempt in 0..=MAX_REJOINS {
            let leader = match self.cache.flights.join::<V>(&k) {
                Join::Wait(rx) if attempt < MAX_REJOINS => {
                    self.counters().coalesced.incr();
                    match flight::wait(rx).await {
                        Ok(None) if load.is_some() => continue,
                        // The leader went away without an answer: a plain read's leader runs
                        // in its caller's task (below) and ends with it if that caller is
                        // cancelled. Try again (at worst, lead).
                        Err(e) if e.kind() == ErrorKind::Closed => continue,
                        other => return other,
                    }
                }
                Join::Wait(_) => self.cache.flights.lead_detached::<V>(&k),
                Join::Lead(leader) => leader,
            };
            // A load past its soft timeout answers early with the stale value while it goes
            // on: then the caller waits on the flight's answer, as every joiner does.
            // Otherwise it awaits the task itself (the cheaper wake-up).
            let early = fallback.is_some() && options.get_loader_soft_timeout().is_some();
            let answer = early.then(|| leader.subscribe());
            let task = Fetch {
                region: self.clone(),
                options,
                load: load.take(),
                fallback: fallback.take(),
                mode: Mode::Caller,
            };
            let span = tracing::debug_span!(
                "layercache.get",
                cache.name = %self.cache.name,
                region = %self.shared.state.name,
                level = tracing::field::Empty,
            );
            if answer.is_none() {
                // Hot-path note: the Redis read runs in the caller's task, and only a load
                // that follows is spawned (a spawn per read cost ~7 % of the process's CPU on
                // reads answered by Redis). Cancelling the caller during the read ends it;
                // its waiters then try again (above). A load, once started, runs to its end
                // whoever waits.
                let mut task = task;
                let after = match task.read(&leader).instrument(span.clone()).await {
                    Ok(Step::Served(value)) => return leader.finish(Ok(value)),
                    Err(e) => return leader.finish(Err(e)),
                    Ok(Step::Load(after)) => after,
                };
                if task.load.is_none() {
                    // Boxed: the load path's future must not be part of every Redis read's.
                    let outcome = Box::pin(task.load(&leader, after)).await;
                    return leader.finish(outcome);
                }
                let load = async move {
                    let outcome = task.load(&leader, after).await;
                    leader.finish(outcome)
                };
                return joined(runtime.spawn(load.instrument(span)).await);
            }
            let handle = runtime.spawn(task.run(leader).instrument(span));
            if let Some(answer) = answer {
                return flight::wait(answer).await;
            }
            return joined(handle.await);
        }
        Ok(None)
    }

    /// Rejects keys over `max_key_bytes` (the L1 key holds 4 bytes of region id first).
    pub(super) fn check_key(&self, k: &[u8]) -> Result<()> {
        let len = k.len() - 4;
        let max = self.cache.settings.max_key_bytes;
        if len > max {
            return Err(Error::new(
                ErrorKind::KeyTooLarge,
                format!("the key has {len} bytes; max_key_bytes is {max}"),
            ));
        }
        Ok(())
    }

    /// The L1 key: region id and key bytes, built without a heap allocation for short keys
    /// (the hit path's largest cost of ours after moka itself).
    pub(super) fn l1_key<Q: CacheKey + ?Sized>(&self, key: &Q) -> KeyBuf {
        let id = self.shared.state.id.to_le_bytes();
        if let Some(bytes) = key.key_bytes() {
            return KeyBuf::joined(&id, bytes);
        }
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            buf.extend_from_slice(&id);
            key.write_key(&mut buf);
            KeyBuf::joined(&[], &buf)
        })
    }

    /// Classifies what L1 returned. Plain entries (no fail-safe, no early refresh) read no
    /// clock.
    #[inline]
    pub(super) fn classify(&self, k: &[u8], entry: Option<L1Entry>) -> Hit<V> {
        let Some(entry) = entry else {
            return Hit::Miss;
        };
        // An entry filled under an older generation belongs to an invalidated key space.
        if entry.generation != self.shared.state.generation_raw() {
            return Hit::Miss;
        }
        // Lived shorter than the cache-wide bound, and that life is over.
        if expired(&entry) {
            self.cache.l1.drop_dead(k);
            return Hit::Miss;
        }
        // Put in by a fill that a write overtook (see `L1::insert_guarded`).
        if guard_set(&entry) {
            return Hit::Miss;
        }
        if let Some(extra) = entry.extra.as_deref() {
            return self.classify_extra(k, &entry, extra);
        }
        if entry.negative {
            self.counters().negative_hits.incr();
            return Hit::Negative;
        }
        let Ok(value) = entry.value.downcast::<V>() else {
            return Hit::Miss;
        };
        self.counters().l1_hits.incr();
        Hit::Fresh(value)
    }

    /// [`classify`](Self::classify) of what the kept table holds for `k`: after a miss, the
    /// fail-safe copy kept past the cache-wide bound, as the fallback.
    pub(super) fn classify_kept(&self, k: &[u8]) -> Hit<V> {
        self.classify(k, self.cache.l1.get_kept(k))
    }

    /// The rest of [`classify`](Self::classify), for entries with tags, freshness or sliding
    /// state: kept out of line so plain hits stay short.
    #[cold]
    fn classify_extra(&self, k: &[u8], entry: &L1Entry, extra: &EntryExtras) -> Hit<V> {
        // A sliding entry unread for its whole lifetime is gone; a read starts it over.
        if extra.slide.as_ref().is_some_and(|s| !s.read()) {
            self.cache.l1.drop_dead(k);
            return Hit::Miss;
        }
        // (`classify` already checked the entry's own deadline and its fill's flag.)
        if self.cache.l1.tag_invalidated(entry) {
            return Hit::Miss;
        }
        if entry.negative {
            self.counters().negative_hits.incr();
            return Hit::Negative;
        }
        let Ok(value) = entry.value.clone().downcast::<V>() else {
            return Hit::Miss;
        };
        let mut refresh = None;
        if let Some(f) = extra.fresh {
            let now = Instant::now();
            if now >= f.expires {
                return Hit::Stale(Stale {
                    value,
                    expired: f.stale_since.unwrap_or(f.expires),
                });
            }
            let due = f.refresh_at.is_some_and(|r| now >= r)
                || xfetch(f.expires - now, f.delta, f.beta, rand01());
            refresh = due.then_some(f.created_ms);
        }
        self.counters().l1_hits.incr();
        if let Some(slide) = &extra.slide {
            if slide.due() {
                self.extend_l2(k, slide.ttl_ms);
            }
        }
        match refresh {
            Some(created_ms) => Hit::Refresh(value, created_ms),
            None => Hit::Fresh(value),
        }
    }

    /// Sliding expiration: extends the Redis entry in the background.
    fn extend_l2(&self, k: &[u8], ttl_ms: u64) {
        let (Some(l2), Some(g)) = (&self.cache.l2, self.shared.state.generation()) else {
            return;
        };
        let l2 = l2.clone();
        let rk = self.shared.state.data_key(g, &k[4..]);
        let cache = self.cache.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.counters().l2_extends.incr();
            rt.spawn(async move {
                if let Err(e) = l2.touch(&rk, ttl_ms).await {
                    let _ = cache.l2_failed("pexpire", None, e);
                }
            });
        }
    }
}

/// Key bytes, inline when short.
pub(super) enum KeyBuf {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Vec<u8>),
}

const INLINE_KEY: usize = 62;

impl KeyBuf {
    /// `head` followed by `tail`.
    fn joined(head: &[u8], tail: &[u8]) -> Self {
        let n = head.len() + tail.len();
        match u8::try_from(n) {
            Ok(len) if n <= INLINE_KEY => {
                let mut bytes = [0u8; INLINE_KEY];
                bytes[..head.len()].copy_from_slice(head);
                bytes[head.len()..n].copy_from_slice(tail);
                Self::Inline { len, bytes }
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                v.extend_from_slice(head);
                v.extend_from_slice(tail);
                Self::Heap(v)
            }
        }
    }
}

impl std::ops::Deref for KeyBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(v) => v,
        }
    }
}

/// What L1 had for a key.
pub(super) enum Hit<V> {
    /// A fresh value.
    Fresh(Arc<V>),
    /// A fresh value due for an early refresh (soft TTL or XFetch), and when it was created.
    Refresh(Arc<V>, u64),
    /// A cached "not found".
    Negative,
    /// Only a stale value (fail-safe fallback).
    Stale(Stale<V>),
    Miss,
}

/// A fetch task's outcome as its caller sees it.
fn joined<V>(
    done: std::result::Result<Outcome<V>, tokio::task::JoinError>,
) -> Result<Option<Arc<V>>> {
    match done {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => Err(Error::new(ErrorKind::Internal, "the fetch task panicked")),
        Err(_) => Err(Error::new(
            ErrorKind::Closed,
            "the fetch task was cancelled (its runtime is shutting down)",
        )),
    }
}
