//! [`Region`]: a typed view of the cache, and its read and write API.

mod builder;
mod fetch;
mod store;

use std::{
    borrow::Borrow,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

pub use builder::RegionBuilder;
use fetch::{Fetch, Mode};
use store::Life;
pub(crate) use store::{seal_tombstone, Plan};

use crate::{
    cache::{GenerationMoveFailed, Inner, RegionState},
    codec::{Bincode, Codec},
    error::{BoxError, Error, ErrorKind, Result},
    flight::{self, Join},
    freshness::{rand01, xfetch},
    key::{validate_tags, CacheKey},
    l1::{Extra, L1Entry},
    l2::Filled,
    options::EntryOptions,
};

type LoadFuture<V> = Pin<Box<dyn Future<Output = Result<Option<V>, BoxError>> + Send>>;
type LoadFn<V> = Box<dyn FnOnce() -> LoadFuture<V> + Send>;
/// Tags attached to an entry.
type Tags = Option<Arc<[String]>>;

/// A loader and the tags for what it loads.
struct Load<V> {
    run: LoadFn<V>,
    tags: Tags,
}

/// How many times a caller with a loader re-joins after waiting on plain reads that found
/// nothing, before it loads on its own.
const MAX_REJOINS: usize = 16;

#[derive(Debug)]
struct Shared<C> {
    state: Arc<RegionState>,
    /// The value type's [fingerprint](crate::fingerprint), checked on every Redis read.
    fingerprint: u64,
    entry_options: EntryOptions,
    codec: C,
}

/// A typed view of a [`LayerCache`](crate::LayerCache): entries of one kind, with key type
/// `K`, value type `V` and codec `C`.
///
/// Values come back as `Arc<V>`: the in-process tier holds them decoded, so a hit costs a hash
/// lookup and a reference-count increment, never a decode or a copy. A region is cheap to
/// clone and can be used from many tasks.
///
/// # Consistency
///
/// - After `insert` returns, this instance's reads return the new value (read your own
///   writes); after `invalidate` returns, they do not return the old one.
/// - A fetch or load that began before a write or invalidation of its key (on this instance,
///   or received from another over the bus) never fills either tier after it: callers that
///   joined it still get its answer (their reads began before the write), later callers start
///   afresh.
/// - Other instances drop their copy when the invalidation reaches them; see the `bus` module
///   and `docs/CONSISTENCY.md` for the bounds when messages are lost.
pub struct Region<K: ?Sized, V, C = Bincode> {
    shared: Arc<Shared<C>>,
    cache: Arc<Inner>,
    _types: PhantomData<fn(&K) -> V>,
}

impl<K: ?Sized, V, C> Clone for Region<K, V, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            cache: self.cache.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: ?Sized, V, C: std::fmt::Debug> std::fmt::Debug for Region<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("cache", &self.cache.name)
            .field("name", &self.shared.state.name)
            .field("schema_version", &self.shared.state.schema)
            .field("codec", &self.shared.codec)
            .finish_non_exhaustive()
    }
}

/// Key bytes, inline when short.
enum KeyBuf {
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

/// A value past its logical expiry, kept as a fail-safe fallback.
#[derive(Debug)]
struct Stale<V> {
    value: Arc<V>,
    /// When it first went stale (the fail-safe maximum age counts from here).
    expired: Instant,
}

/// What L1 had for a key.
enum Hit<V> {
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

/// Wraps a loader of `V` as one of `Option<V>`.
fn boxed<V, F, Fut, E>(loader: F) -> LoadFn<V>
where
    V: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    Box::new(move || Box::pin(async move { loader().await.map_err(Into::into) }) as LoadFuture<V>)
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The region's name.
    pub fn name(&self) -> &str {
        &self.shared.state.name
    }

    /// The region's schema version.
    pub fn schema_version(&self) -> u32 {
        self.shared.state.schema
    }

    /// The fingerprint of `V`'s serde shape, stored in every entry this region writes to
    /// Redis: an entry written by another value type under the same region and schema version
    /// (a deploy that changed `V` without bumping
    /// [`schema_version`](RegionBuilder::schema_version)) is a miss, counted as
    /// [`Corruption::TypeMismatch`](crate::Corruption::TypeMismatch), never a wrong value. It
    /// is derived from the type's `Deserialize` impl (field and variant names, their types and
    /// order), not from its Rust name or module path, so it is the same in every build of the
    /// same shape.
    ///
    /// It catches a field added, removed, renamed or retyped, fields reordered, a struct or
    /// enum renamed (its serde name), a variant added, removed, renamed or reshaped, `u64`
    /// against `(bool, u32)`. It cannot catch a change of meaning with the same shape (a field
    /// now in milliseconds instead of seconds), a hand-written `Deserialize` that reads other
    /// than what its `Serialize` writes, shapes decided at run time (`deserialize_any`, as in
    /// `#[serde(untagged)]`: one opaque token), or differences past a point where the type's
    /// `Deserialize` rejects the tracer's placeholder values (`1` for numbers, `""` for
    /// strings). For those, bump `schema_version`. It costs one trace per region build and
    /// eight bytes per stored entry.
    pub fn type_fingerprint(&self) -> u64 {
        self.shared.fingerprint
    }

    /// The region's current generation: part of every Redis key of the region, moved forward
    /// by [`invalidate_all`](Self::invalidate_all) on any instance. `None` while it is not
    /// known (Redis was unreachable when it was to be read). Without Redis it is local and
    /// starts at 0.
    pub fn generation(&self) -> Option<u64> {
        self.shared.state.generation()
    }

    /// The Redis key under which `key` is stored at the current generation (`None` while the
    /// generation is not known).
    pub fn redis_key<Q>(&self, key: &Q) -> Option<String>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let mut bytes = Vec::new();
        key.write_key(&mut bytes);
        let generation = self.shared.state.generation()?;
        Some(self.shared.state.data_key(generation, &bytes))
    }

    /// Rejects keys over `max_key_bytes` (the L1 key holds 4 bytes of region id first).
    fn check_key(&self, k: &[u8]) -> Result<()> {
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
    fn l1_key<Q: CacheKey + ?Sized>(&self, key: &Q) -> KeyBuf {
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
    fn classify(&self, k: &[u8], entry: Option<L1Entry>) -> Hit<V> {
        let Some(entry) = entry else {
            return Hit::Miss;
        };
        // An entry filled under an older generation belongs to an invalidated key space.
        if entry.generation != self.shared.state.generation_raw() {
            return Hit::Miss;
        }
        if let Some(extra) = entry.extra.as_deref() {
            return self.classify_extra(k, &entry, extra);
        }
        if entry.negative {
            self.cache.counters.negative_hits.incr();
            return Hit::Negative;
        }
        let Ok(value) = entry.value.downcast::<V>() else {
            return Hit::Miss;
        };
        self.cache.counters.l1_hits.incr();
        Hit::Fresh(value)
    }

    /// The rest of [`classify`](Self::classify), for entries with tags, freshness or sliding
    /// state: kept out of line so plain hits stay short.
    #[cold]
    fn classify_extra(&self, k: &[u8], entry: &L1Entry, extra: &Extra) -> Hit<V> {
        if !self.cache.l1.usable(entry) {
            return Hit::Miss;
        }
        if entry.negative {
            self.cache.counters.negative_hits.incr();
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
        self.cache.counters.l1_hits.incr();
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
            cache.counters.l2_extends.incr();
            rt.spawn(async move {
                if let Err(e) = l2.pexpire(&rk, ttl_ms).await {
                    let _ = cache.l2_failed("pexpire", None, e);
                }
            });
        }
    }

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
        match self.classify(&k, self.cache.l1.get(&k).await) {
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
    /// other callers' loaders are dropped unused. The shared work runs as its own task, so a
    /// caller that is cancelled (its future dropped) does not cancel it for the others — this
    /// is why the loader must be `Send + 'static`. A loader that fails or panics gives every
    /// waiting caller an [`ErrorKind::Loader`] error and caches nothing (unless fail-safe
    /// serves a stale value); the next call runs a loader again. With
    /// [`EntryOptions::distributed_lock`], one instance loads while the others wait for its
    /// value.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Loader`] when the loader fails, panics or passes its hard timeout and no
    /// stale value can be served; a Redis error only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn get_or_load<Q, F, Fut, E>(&self, key: &Q, loader: F) -> Result<Arc<V>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.get_or_load_tagged(key, &self.shared.entry_options, &[], loader)
            .await
    }

    /// [`get_or_load`](Self::get_or_load) with entry options for this call.
    ///
    /// # Errors
    ///
    /// As `get_or_load`, and [`ErrorKind::Config`] for invalid options.
    pub async fn get_or_load_with<Q, F, Fut, E>(
        &self,
        key: &Q,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Arc<V>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.get_or_load_tagged(key, options, &[], loader).await
    }

    /// [`get_or_load_with`](Self::get_or_load_with) that attaches tags to a loaded value (see
    /// [`LayerCache::invalidate_tag`](crate::LayerCache::invalidate_tag)). A value found in
    /// Redis keeps the tags it was written with.
    ///
    /// # Errors
    ///
    /// As `get_or_load`, and [`ErrorKind::Config`] for invalid options or tags (at most 32
    /// tags of 1 to 128 bytes).
    pub async fn get_or_load_tagged<Q, F, Fut, E>(
        &self,
        key: &Q,
        options: &EntryOptions,
        tags: &[&str],
        loader: F,
    ) -> Result<Arc<V>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let load = boxed(move || async move { loader().await.map(Some) });
        match self.read_through(key, options, tags, load, false).await? {
            Some(v) => Ok(v),
            None => Err(Error::new(ErrorKind::Loader, "the load produced no value")),
        }
    }

    /// Read-through for sources that may find nothing: `loader` returns `Ok(None)` for "not
    /// found", which is cached for [`EntryOptions::negative_ttl`] (in both tiers) when that is
    /// set, so the source is not asked again meanwhile. A cached "not found" answers `Ok(None)`.
    ///
    /// # Errors
    ///
    /// As [`get_or_load_with`](Self::get_or_load_with).
    pub async fn get_or_load_optional<Q, F, Fut, E>(
        &self,
        key: &Q,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.read_through(key, options, &[], boxed(loader), true)
            .await
    }

    async fn read_through<Q>(
        &self,
        key: &Q,
        options: &EntryOptions,
        tags: &[&str],
        load: LoadFn<V>,
        negative_ok: bool,
    ) -> Result<Option<Arc<V>>>
    where
        Q: CacheKey + ?Sized,
    {
        options.validate()?;
        let tags = validate_tags(tags)?;
        let k = self.l1_key(key);
        self.check_key(&k)?;
        let fallback = match self.classify(&k, self.cache.l1.get(&k).await) {
            Hit::Fresh(v) => return Ok(Some(v)),
            Hit::Refresh(v, created_ms) => {
                self.start_refresh(k.to_vec(), *options, Load { run: load, tags }, created_ms);
                return Ok(Some(v));
            }
            Hit::Negative if negative_ok => return Ok(None),
            Hit::Negative | Hit::Miss => None,
            Hit::Stale(s) => Some(s),
        };
        let load = Load { run: load, tags };
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
                ErrorKind::Closed,
                "layercache must be used inside a tokio runtime",
            )
        })?;
        let mut fallback = fallback;
        for attempt in 0..=MAX_REJOINS {
            let leader = match self.cache.flights.join::<V>(&k) {
                Join::Wait(rx) if attempt < MAX_REJOINS => {
                    self.cache.counters.coalesced.incr();
                    match flight::wait(rx).await {
                        Ok(None) if load.is_some() => continue,
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
            let handle = runtime.spawn(task.run(leader).instrument(span));
            if let Some(answer) = answer {
                return flight::wait(answer).await;
            }
            return match handle.await {
                Ok(outcome) => outcome,
                Err(e) => Err(Error::new(
                    ErrorKind::Loader,
                    if e.is_panic() {
                        "the fetch task panicked"
                    } else {
                        "the fetch task was cancelled"
                    },
                )),
            };
        }
        Ok(None)
    }

    /// Stores `value` under `key` in both tiers with the region's entry options.
    ///
    /// The value is encoded once, written to Redis with its TTL (a script that writes only
    /// while the region's generation is the one the key was made for), put in the in-process
    /// tier, and announced on the bus so other instances drop their copy. Fetches of `key`
    /// already running will not overwrite it; and if something newer touches the key while
    /// the Redis write is in flight (another write, an invalidation received from another
    /// instance), the value is not put in the in-process tier at all, so it never keeps an
    /// older value than Redis.
    ///
    /// # What `Ok` means when Redis does not answer
    ///
    /// With the default [`L2ErrorPolicy::Fallback`](crate::L2ErrorPolicy::Fallback), `Ok` is
    /// returned even when Redis failed, timed out or was skipped, or the announcement failed.
    /// The write is then *journaled*: as soon as this instance reaches Redis again, a tombstone
    /// is written over the key (never this value: another instance may have written a newer
    /// one meanwhile) and announced, and until then this instance serves nothing for `key`
    /// from Redis. Other instances cannot hear of the write before that; they serve what they
    /// hold meanwhile (from L1 at most `time_to_live`). See
    /// [`LayerCache::pending_repairs`](crate::LayerCache::pending_repairs) and
    /// [`LayerCacheBuilder::l2_repair_capacity`](crate::LayerCacheBuilder::l2_repair_capacity).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`] or [`ErrorKind::ValueTooLarge`] before anything is written; a
    /// Redis error (after the in-process tier was updated, and the write journaled) only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn insert<Q>(&self, key: &Q, value: V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        self.insert_tagged(key, value, &self.shared.entry_options, &[])
            .await
    }

    /// [`insert`](Self::insert) with entry options for this call.
    ///
    /// # Errors
    ///
    /// As `insert`, and [`ErrorKind::Config`] for invalid options.
    pub async fn insert_with<Q>(&self, key: &Q, value: V, options: &EntryOptions) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        self.insert_tagged(key, value, options, &[]).await
    }

    /// [`insert_with`](Self::insert_with) that attaches tags to the entry, so that
    /// [`LayerCache::invalidate_tag`](crate::LayerCache::invalidate_tag) removes it (on every
    /// instance).
    ///
    /// # Errors
    ///
    /// As `insert`, and [`ErrorKind::Config`] for invalid options or tags (at most 32 tags of
    /// 1 to 128 bytes).
    pub async fn insert_tagged<Q>(
        &self,
        key: &Q,
        value: V,
        options: &EntryOptions,
        tags: &[&str],
    ) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        self.write_value(key, value, options, tags, None)
            .await
            .map(|_| ())
    }

    /// [`insert`](Self::insert) with the value's *source version*: a number that grows with
    /// every change of the value in the source of truth (a row version, an update counter, an
    /// update time in ms). Redis keeps the value with the highest version: a write older than
    /// what Redis holds is refused (`Ok(false)`, counted in
    /// [`Stats::l2_versions_refused`](crate::Stats)), so concurrent writers of one key converge
    /// on the newest value whatever order their writes reach Redis in. Without it, two tasks
    /// that update the source to v5 and v6 and then insert can leave v5 in Redis (if v5's write
    /// arrives last) until the entry expires.
    ///
    /// Returns `Ok(true)` when written. Like `insert`, this instance serves the value at once,
    /// while the write travels (unless its in-process tier holds a newer version already); a
    /// refused write takes it out again (the next read takes the newer value from Redis) and
    /// still announces the key, so other instances drop their copies too. Versions are compared between versioned
    /// writes: an entry written without one (`insert`, a load) or a tombstone (`invalidate`) is
    /// replaced by any versioned write. Without a Redis tier, versions are compared in the
    /// in-process tier instead (an older write is refused there, and counted the same way).
    ///
    /// Entries written with a version are read by releases before this one as
    /// [`Corruption::UnknownFlags`](crate::Corruption::UnknownFlags) (a miss), never as a wrong
    /// value.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn insert_versioned<Q>(&self, key: &Q, value: V, version: u64) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let written = self
            .write_value(key, value, &self.shared.entry_options, &[], Some(version))
            .await?;
        Ok(written)
    }

    /// Every `insert`: returns whether the value was written (false: refused as older than the
    /// source version Redis holds).
    async fn write_value<Q>(
        &self,
        key: &Q,
        value: V,
        options: &EntryOptions,
        tags: &[&str],
        version: Option<u64>,
    ) -> Result<bool>
    where
        Q: CacheKey + ?Sized,
    {
        options.validate()?;
        let tags = validate_tags(tags)?;
        let k = self.l1_key(key);
        self.check_key(&k)?;
        let cache = &self.cache;
        let mut plan = Plan::value(options, Duration::ZERO);
        plan.version = version;
        // The Redis key, when there is a Redis tier and the generation is known.
        let known = cache
            .l2
            .as_ref()
            .and_then(|_| self.shared.state.generation());
        let rk = known.map(|g| self.shared.state.data_key(g, &k[4..]));
        let encoded = if cache.l2.is_some() || cache.l1.by_bytes() {
            let key = rk.as_deref().unwrap_or("");
            Some(self.encode(Some(&value), &plan, tags.as_deref(), key)?)
        } else {
            None
        };
        let raw_len = encoded.as_ref().map_or(0, |e| e.raw_len);
        let born = cache.l1.tag_epoch();
        // Anything older touching the key loses (fetches, other writes waiting to fill L1); this
        // write's own L1 fill is lost in turn to anything newer (see `Flights::ticket`).
        cache.flights.poison(&k);
        let ticket = cache.flights.ticket(&k);
        let started = cache.journal.stamp();
        let value = Arc::new(value);
        let (logical, refresh_in) = self.life_of_plan(options, &plan);
        let created_ms = crate::cache::unix_millis();
        let fill_l1 = |generation: u64| {
            let life = Life {
                logical,
                refresh_in,
                delta: Duration::ZERO,
                keep: plan.keep,
                generation,
                born,
                tags: tags.clone(),
                raw_len,
                negative: false,
                created_ms,
                stale_since: None,
                version,
            };
            let entry = self.l1_entry(k.len(), value.clone(), options, life);
            let (k, ticket) = (&k, &ticket);
            // Returns whether L1 holds a newer source version (the entry was not put in).
            async move {
                let Some(entry) = entry.filter(|_| !ticket.is_poisoned()) else {
                    return false;
                };
                if !cache.l1.admits(k) {
                    // Another instance wrote the key a moment ago: it lives in Redis only for
                    // now (and whatever L1 held is older than this write).
                    cache.counters.l1_cooldown_skips.incr();
                    cache.l1.remove(k).await;
                    return false;
                }
                if let Some(v) = version {
                    // A versioned write never replaces a newer version in L1 (read from Redis
                    // or written by another task of this instance).
                    let held = cache.l1.get(k).await.filter(|e| cache.l1.usable(e));
                    if held.and_then(|e| e.version).is_some_and(|held| held > v) {
                        return true;
                    }
                }
                cache.l1.insert(Box::from(&**k), entry).await;
                if ticket.is_poisoned() {
                    // Something newer arrived while the entry went in: drop it rather than
                    // keep an older value than Redis holds.
                    cache.l1.remove(k).await;
                }
                false
            }
        };
        // This instance serves the new value at once, while the write travels (the source the
        // caller wrote first already holds it): its readers do not wait a round trip for it.
        // A versioned write that Redis then refuses as older takes its copy out again. Without
        // Redis, versions are compared in L1.
        let mut generation = self.shared.state.generation_raw();
        let mut older = fill_l1(generation).await && cache.l2.is_none();
        let mut result = Ok(());
        let mut confirmed = cache.l2.is_none();
        let mut announced: Result<u64> = Err(Error::new(ErrorKind::Redis, "not announced"));
        if let Some(enc) = encoded.filter(|_| cache.l2.is_some()) {
            let written = match (known, rk) {
                (Some(g), Some(rk)) => {
                    let encode = |rk: &str| self.encode(Some(&*value), &plan, tags.as_deref(), rk);
                    self.write_fenced(&k, (g, rk, enc), &plan, tags.as_deref(), encode)
                        .await
                }
                _ => self.l2_generation().map(|g| (g, Filled::Written, Ok(0))),
            };
            match written {
                Ok((g, filled, published)) => {
                    generation = g;
                    confirmed = true;
                    announced = published;
                    older = filled == Filled::Older;
                }
                Err(e) => result = self.l2_failed("insert", e),
            }
            // A fetch that began while the write was in flight may have read the old value:
            // it must not fill L1, and if it already did, the value goes in again (unless
            // something newer arrived meanwhile), under the generation written.
            cache.flights.poison_fetch(&k);
            if older {
                cache.counters.l2_versions_refused.incr();
                tracing::debug!(cache.name = %cache.name, region = %self.shared.state.name, "redis holds a newer source version; the write is refused");
                if !ticket.is_poisoned() {
                    cache.l1.remove(&k).await;
                }
            } else {
                fill_l1(generation).await;
            }
        }
        if older && cache.l2.is_none() {
            cache.counters.l2_versions_refused.incr();
        }
        drop(ticket);
        self.settle_write(&k, started, confirmed, announced, result)
            .await
            .map(|()| !older)
    }

    /// The end of every `insert` and `invalidate`: if Redis did not confirm the write or its
    /// announcement, journals the key for repair (a tombstone written and announced as soon as
    /// Redis answers; until then this instance serves nothing for the key from Redis). A
    /// confirmed write settles an earlier unconfirmed one of the key. With acknowledged writes,
    /// then waits for every live instance to acknowledge the announcement.
    async fn settle_write(
        &self,
        k: &[u8],
        started: u64,
        confirmed: bool,
        announced: Result<u64>,
        result: Result<()>,
    ) -> Result<()> {
        let cache = &self.cache;
        if cache.l2.is_none() {
            return result;
        }
        let seq = match (confirmed, announced) {
            (true, Ok(seq)) => {
                cache.journal.confirmed(k, started);
                Ok(seq)
            }
            (_, announced) => {
                let tombstone = crate::journal::Tombstone {
                    ttl: self.shared.entry_options.get_ttl(),
                    retention: self.shared.entry_options.keep_after_expiry(),
                    codec: C::ID,
                };
                cache.unconfirmed(
                    crate::journal::Pending::Key(k.into(), tombstone),
                    Some(&self.shared.state.name),
                );
                Err(announced.err())
            }
        };
        if let (Some(within), Some(bus)) = (cache.settings.ack_timeout, &cache.bus) {
            match &seq {
                Ok(seq) => return bus.wait_for_acks(*seq, within).await,
                // Not in Redis (or not announced): no live instance can have heard of it.
                Err(_) => {
                    let live = bus.live_peers();
                    if !live.is_empty() {
                        return Err(Error::unacknowledged_by(live, within));
                    }
                }
            }
        }
        match (result, seq) {
            (Err(e), _) => Err(e),
            // The write landed but its announcement did not: the policy decides, as for a
            // failed write.
            (Ok(()), Err(Some(e))) if confirmed => self.l2_failed("publish", e),
            (Ok(()), _) => Ok(()),
        }
    }

    /// Removes `key`: replaces it in Redis with a tombstone (a miss for every reader, with the
    /// region's TTL, so a load that began before this cannot put the old value back), drops it
    /// from this instance's in-process tier, and announces it so other instances drop theirs.
    /// When Redis does not confirm it, it is journaled and repaired as described under
    /// [`insert`](Self::insert): `Ok` is never undone by reading the old value back.
    ///
    /// # Errors
    ///
    /// A Redis error (after the in-process tier was updated, and the invalidation journaled)
    /// only with [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn invalidate<Q>(&self, key: &Q) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let k = self.l1_key(key);
        self.check_key(&k)?;
        let cache = &self.cache;
        cache.flights.poison(&k);
        // Dropped before the write travels: this instance's readers stop serving the old value
        // at once, and their Redis reads go out on the same connection after the tombstone.
        cache.l1.remove(&k).await;
        let started = cache.journal.stamp();
        let mut result = Ok(());
        let mut confirmed = cache.l2.is_none();
        let mut announced: Result<u64> = Err(Error::new(ErrorKind::Redis, "not announced"));
        if cache.l2.is_some() {
            // A tombstone, not UNLINK: a load that began before this cannot fill the key
            // afterwards (fills are `SET NX`, or replace only the entry they saw).
            let plan = Plan::tombstone(&self.shared.entry_options);
            let encode = |rk: &str| self.encode(None, &plan, None, rk);
            let removed = match self.l2_generation() {
                Ok(g) => {
                    let rk = self.shared.state.data_key(g, &k[4..]);
                    match encode(&rk) {
                        Ok(enc) => self
                            .write_fenced(&k, (g, rk, enc), &plan, None, encode)
                            .await
                            .map(|(_, _, published)| published),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match removed {
                Ok(published) => {
                    confirmed = true;
                    announced = published;
                }
                Err(e) => result = self.l2_failed("invalidate", e),
            }
            cache.flights.poison(&k);
        }
        cache.l1.remove(&k).await;
        self.settle_write(&k, started, confirmed, announced, result)
            .await
    }

    /// Invalidates every entry of the region, on every instance, in O(1): the region's
    /// generation (part of every Redis key of the region) is moved forward with one atomic
    /// script, and the new generation is announced on the bus. Entries under the old
    /// generation are never read again and expire by their TTL. Without Redis the generation
    /// is local.
    ///
    /// # Errors
    ///
    /// A Redis error only with [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate);
    /// by default the failure is logged and counted, this instance bypasses Redis for the
    /// region, and the generation is moved (again) and announced as soon as Redis answers — it
    /// is not read back as it was, which would bring the old entries back.
    pub async fn invalidate_all(&self) -> Result<()> {
        let state = &self.shared.state;
        let cache = &self.cache;
        let Some(l2) = &cache.l2 else {
            cache.raise_generation(state, state.generation_floor());
            return Ok(());
        };
        // Journaled when not confirmed (so the invalidation is never undone by reading the
        // old generation back): see `Inner::move_generation`.
        match cache.move_generation(l2, state).await {
            Ok(()) => Ok(()),
            Err(GenerationMoveFailed::Move(e)) => self.l2_failed("invalidate_all", e),
            Err(GenerationMoveFailed::Announce(e)) => self.l2_failed("publish", e),
        }
    }

    /// The generation to use for a Redis operation, or the error that stands for "skip Redis".
    fn l2_generation(&self) -> Result<u64> {
        self.shared.state.generation().ok_or_else(|| {
            Error::new(
                ErrorKind::Redis,
                "the region's generation is not known yet (redis was unreachable)",
            )
        })
    }

    /// Counts and logs a Redis failure, and applies the error policy.
    fn l2_failed(&self, op: &'static str, e: Error) -> Result<()> {
        self.cache.l2_failed(op, Some(&self.shared.state.name), e)
    }
}
