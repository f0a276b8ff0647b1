//! [`Region`]: a typed view of the cache.
//!
//! Here: the type, its key handling and L1 hit classification. The read API (`get`,
//! `get_or_load*`) is in `read.rs`, the fetch it starts on an L1 miss in `fetch.rs`; the write
//! API (`insert*`, `invalidate*`) in `write.rs`; encoding, lifetimes and Redis writes of entries
//! in `store.rs`; the builder in `builder.rs`.

mod builder;
mod entry;
mod fetch;
mod read;
mod store;
mod write;

use std::{
    borrow::Borrow, future::Future, marker::PhantomData, pin::Pin, sync::Arc, time::Instant,
};

use serde::{de::DeserializeOwned, Serialize};

pub(crate) use crate::plan::WritePlan;
pub use builder::RegionBuilder;
pub use entry::EntryRequest;

use crate::{
    codec::{Bincode, Codec},
    engine::Engine,
    error::{BoxError, Error, ErrorKind, Result},
    freshness::{rand01, xfetch},
    key::CacheKey,
    l1::{EntryExtras, L1Entry},
    options::EntryOptions,
    regions::RegionState,
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
struct RegionCore<C> {
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
    shared: Arc<RegionCore<C>>,
    cache: Arc<Engine>,
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

    /// The entry options the region's calls use when they pass none (the region's, or the
    /// cache's default): a base for a call's own options, e.g.
    /// `r.entry(&k).options(&r.entry_options().ttl(short))`.
    pub fn entry_options(&self) -> &EntryOptions {
        &self.shared.entry_options
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
    fn classify_extra(&self, k: &[u8], entry: &L1Entry, extra: &EntryExtras) -> Hit<V> {
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
                if let Err(e) = l2.touch(&rk, ttl_ms).await {
                    let _ = cache.l2_failed("pexpire", None, e);
                }
            });
        }
    }

    /// The generation to use for a Redis operation, or the error that stands for "skip Redis".
    fn l2_generation(&self) -> Result<u64> {
        self.shared.state.generation().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "the region's generation is not known yet (redis was unreachable)",
            )
        })
    }

    /// The generation for a write: when it is not known (just after a reconnection, which
    /// forgets it, or Redis was unreachable when it was read), it is read once now, so the
    /// write goes to Redis rather than to the repair journal. Still unknown (Redis down):
    /// `None`, and the write is journaled.
    async fn write_generation(&self) -> Option<u64> {
        let state = &self.shared.state;
        if state.generation().is_none() && self.cache.l2.is_some() {
            self.cache.refresh_generation(state).await;
        }
        state.generation()
    }

    /// Counts and logs a Redis failure, and applies the error policy.
    fn l2_failed(&self, op: &'static str, e: Error) -> Result<()> {
        self.cache.l2_failed(op, Some(&self.shared.state.name), e)
    }
}
