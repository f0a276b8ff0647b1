//! [`Region`]: a typed view of the cache.
//!
//! Here: the type, its accessors and the generation helpers its calls share. The read API
//! (`get`, `get_or_load`), its keys and L1 hit classification are in `read.rs`, the fetch it
//! starts on an L1 miss in `fetch.rs`; the write API (`insert*`, `invalidate*`) in `write.rs`;
//! one call with its own options or tags in `entry.rs`; encoding, lifetimes and Redis writes of
//! entries in `store.rs`; the builder in `builder.rs`.

mod batch;
mod builder;
mod entry;
mod explain;
mod fetch;
mod many;
mod offload;
mod read;
mod store;
mod write;

use std::{
    borrow::Borrow, future::Future, marker::PhantomData, pin::Pin, sync::Arc, time::Instant,
};

use serde::{de::DeserializeOwned, Serialize};

pub(crate) use crate::plan::WritePlan;
pub use builder::RegionBuilder;
pub use entry::{EntryRequest, LoadContext};
pub use explain::{EntryState, Explanation, Held, NextGet};
pub use many::ManyRequest;

use crate::{
    codec::{Bincode, Codec},
    engine::Engine,
    error::{BoxError, Error, ErrorKind, Result},
    key::CacheKey,
    options::EntryOptions,
    regions::RegionState,
};

type LoadFuture<V> = Pin<Box<dyn Future<Output = Result<Loaded<V>, BoxError>> + Send>>;
type LoadFn<V> = Box<dyn FnOnce() -> LoadFuture<V> + Send>;
/// Tags attached to an entry.
type Tags = Option<Arc<[String]>>;

/// What a loader produced: the value (`None`: not found) and the lifetime its context set, if
/// any.
struct Loaded<V> {
    value: Option<V>,
    ttl: Option<std::time::Duration>,
}

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
    /// The encoded size of the region's last value written or loaded: a write encodes off the
    /// async workers while it is at least `offload_threshold`.
    last_raw_len: std::sync::atomic::AtomicUsize,
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

/// A value past its logical expiry, kept as a fail-safe fallback.
#[derive(Debug)]
struct Stale<V> {
    value: Arc<V>,
    /// When it first went stale (the fail-safe maximum age counts from here).
    expired: Instant,
}

/// Wraps a loader of `Option<V>` (and the context it was given, if any) as the fetch runs it.
fn boxed<V, F, Fut, E>(loader: F, context: Option<LoadContext>) -> LoadFn<V>
where
    V: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    Box::new(move || {
        Box::pin(async move {
            let value = loader().await.map_err(Into::into)?;
            let ttl = context.and_then(|c| c.ttl());
            Ok(Loaded { value, ttl })
        }) as LoadFuture<V>
    })
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
    /// generation is not known). On a Redis Cluster, with its bucket's hash tag: the name
    /// `redis-cli` finds it under.
    pub fn redis_key<Q>(&self, key: &Q) -> Option<String>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let mut bytes = Vec::new();
        key.write_key(&mut bytes);
        let generation = self.shared.state.generation()?;
        let logical = self.shared.state.data_key(generation, &bytes);
        Some(match &self.cache.l2 {
            Some(l2) => l2.locate(&logical),
            None => logical,
        })
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

    /// This region's counters.
    fn counters(&self) -> &crate::stats::Counters {
        &self.shared.state.counters
    }

    /// What this region's calls did: the counters of [`LayerCache::stats`](crate::LayerCache::stats)
    /// that belong to one region (reads, loads, writes, decode errors …; the bus, the breaker and
    /// failed Redis calls are the cache's and stay zero here).
    pub fn stats(&self) -> crate::Stats {
        self.counters().snapshot()
    }

    /// Counts and logs a Redis failure, and applies the error policy.
    fn l2_failed(&self, op: &'static str, e: Error) -> Result<()> {
        self.cache.l2_failed(op, Some(&self.shared.state.name), e)
    }
}
