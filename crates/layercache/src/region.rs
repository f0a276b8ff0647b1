//! [`Region`]: a typed view of the cache, and the read and write paths.

use std::{
    any::TypeId, borrow::Borrow, future::Future, marker::PhantomData, pin::Pin, sync::Arc,
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use crate::{
    cache::{unix_millis, Inner, LayerCache, RegionState},
    codec::{Bincode, Codec},
    envelope::{self, Corruption, Encoded, Meta, HEADER_LEN},
    error::{BoxError, Error, ErrorKind, Result},
    flight::{self, Join, Leader, Outcome},
    key::{tag_key, validate_name, validate_tags, CacheKey},
    l1::L1Entry,
    options::EntryOptions,
};

type LoadFuture<V> = Pin<Box<dyn Future<Output = Result<V, BoxError>> + Send>>;
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

/// Builds a [`Region`]. Created by [`LayerCache::region`].
#[must_use = "a region builder does nothing until build() is called"]
pub struct RegionBuilder<K: ?Sized, V, C = Bincode> {
    cache: LayerCache,
    name: String,
    codec: C,
    schema_version: u32,
    entry_options: Option<EntryOptions>,
    _types: PhantomData<fn(&K) -> V>,
}

impl<K: ?Sized, V, C: std::fmt::Debug> std::fmt::Debug for RegionBuilder<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionBuilder")
            .field("name", &self.name)
            .field("codec", &self.codec)
            .field("schema_version", &self.schema_version)
            .field("entry_options", &self.entry_options)
            .finish()
    }
}

impl<K, V, C> RegionBuilder<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(crate) fn new(cache: LayerCache, name: String, codec: C) -> Self {
        Self {
            cache,
            name,
            codec,
            schema_version: 1,
            entry_options: None,
            _types: PhantomData,
        }
    }

    /// The version of `V`'s serialized layout. It is part of every Redis key of the region:
    /// bump it whenever `V` changes shape, and entries written by the old layout become misses
    /// instead of being decoded wrongly (bincode is not self-describing).
    ///
    /// Default: 1.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Entry options for this region's calls that do not pass their own.
    ///
    /// Default: the cache's
    /// [`default_entry_options`](crate::LayerCacheBuilder::default_entry_options).
    pub fn entry_options(mut self, options: EntryOptions) -> Self {
        self.entry_options = Some(options);
        self
    }

    /// Checks the options, registers the region and, with Redis, reads the region's
    /// generation (see [`Region::invalidate_all`]). If Redis cannot be reached then, the region
    /// still builds: it bypasses Redis until the generation is known (the bus retries).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when the name is not 1 to 64 characters of `[A-Za-z0-9_.-]`, when
    /// the entry options are invalid, or when this cache already has a region of this name
    /// with another key type, value type, codec or schema version.
    pub async fn build(self) -> Result<Region<K, V, C>> {
        validate_name("region name", &self.name)?;
        let inner = self.cache.inner;
        let entry_options = self.entry_options.unwrap_or(inner.settings.entry_options);
        entry_options
            .validate()
            .map_err(|e| Error::config(format!("region entry_options: {}", e.context())))?;
        let state = inner.register_region(
            &self.name,
            TypeId::of::<fn(&K) -> (V, C)>(),
            self.schema_version,
            C::ID,
        )?;
        if state.generation().is_none() {
            inner.refresh_generation(&state).await;
        }
        Ok(Region {
            shared: Arc::new(Shared {
                state,
                entry_options,
                codec: self.codec,
            }),
            cache: inner,
            _types: PhantomData,
        })
    }
}

#[derive(Debug)]
struct Shared<C> {
    state: Arc<RegionState>,
    entry_options: EntryOptions,
    codec: C,
}

/// A typed view of a [`LayerCache`]: entries of one kind, with key type `K`, value type `V`
/// and codec `C`.
///
/// Values come back as `Arc<V>`: the in-process tier holds them decoded, so a hit costs a hash
/// lookup and a reference-count increment, never a decode or a copy. A region is cheap to
/// clone and can be used from many tasks.
///
/// # Consistency within one instance
///
/// - After `insert` returns, this instance's reads return the new value (read your own
///   writes); after `invalidate` returns, they do not return the old one.
/// - A fetch or load that began before a write or invalidation of its key never fills either
///   tier after it: concurrent callers that joined it still get its answer (their reads began
///   before the write), later callers start afresh.
///
/// Keeping *other* instances' in-process tiers coherent needs the invalidation bus, which is
/// not part of this release: until then they keep a value for at most its L1 lifetime
/// ([`time_to_live`](crate::LayerCacheBuilder::time_to_live) bounds it).
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

/// What the Redis read of a fetch found, when it found no usable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L2Found {
    /// No Redis tier.
    Off,
    /// No entry: a load may fill it with `SET … NX`.
    Nothing,
    /// An entry that is not a usable value; `overwrite` says whether a load may replace it.
    Unusable { overwrite: bool },
    /// Redis failed; do not pay another timeout writing to it.
    Down,
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

    fn l1_key<Q: CacheKey + ?Sized>(&self, key: &Q) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        k.extend_from_slice(&self.shared.state.id.to_le_bytes());
        key.write_key(&mut k);
        k
    }

    /// Serves an L1 entry, if it is still valid: same generation, no tag invalidated since
    /// it was born, and of the region's value type.
    fn l1_hit(&self, entry: Option<L1Entry>) -> Option<Arc<V>> {
        let entry = entry?;
        // An entry filled under an older generation belongs to an invalidated key space.
        if entry.generation != self.shared.state.generation_raw() || !self.cache.l1.usable(&entry) {
            return None;
        }
        let v = entry.value.downcast::<V>().ok()?;
        self.cache.counters.l1_hits.incr();
        Some(v)
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

    /// Reads `key`: from the in-process tier, else from Redis (filling the in-process tier).
    /// `Ok(None)` when neither has it. Concurrent reads of one key share one Redis read.
    ///
    /// # Errors
    ///
    /// Only with [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate), when Redis
    /// fails. By default a Redis failure
    /// is logged and counted and the read answers `Ok(None)`. A corrupt or foreign entry in
    /// Redis is always a miss, counted in [`Stats::decode_errors`](crate::Stats).
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<Arc<V>>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let k = self.l1_key(key);
        if let Some(v) = self.l1_hit(self.cache.l1.get(&k).await) {
            return Ok(Some(v));
        }
        // Boxed: the miss path's large future must not be part of every hit's.
        Box::pin(self.fetch(k, self.shared.entry_options, None)).await
    }

    /// Reads `key`, or runs `loader` to produce it, stores it in both tiers and returns it
    /// (read-through).
    ///
    /// # Concurrent calls on the same key
    ///
    /// Concurrent callers in this process share one Redis read and at most one loader run; the
    /// other callers' loaders are dropped unused. The shared work runs as its own task, so a
    /// caller that is cancelled (its future dropped) does not cancel it for the others — this
    /// is why the loader must be `Send + 'static`. A loader that fails or panics gives every
    /// waiting caller an [`ErrorKind::Loader`] error and caches nothing; the next call runs a
    /// loader again.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Loader`] when the loader fails or panics; a Redis error only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn get_or_load<Q, F, Fut, E>(&self, key: &Q, loader: F) -> Result<Arc<V>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.get_or_load_with(key, &self.shared.entry_options, loader)
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
    /// [`LayerCache::invalidate_tag`]). A value found in Redis keeps the tags it was written
    /// with.
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
        options.validate()?;
        let tags = validate_tags(tags)?;
        let k = self.l1_key(key);
        if let Some(v) = self.l1_hit(self.cache.l1.get(&k).await) {
            return Ok(v);
        }
        let load: LoadFn<V> = Box::new(move || {
            Box::pin(async move { loader().await.map_err(Into::into) }) as LoadFuture<V>
        });
        match self
            .fetch(k, *options, Some(Load { run: load, tags }))
            .await?
        {
            Some(v) => Ok(v),
            None => Err(Error::new(ErrorKind::Loader, "the load produced no value")),
        }
    }

    /// The miss path: join or lead the single flight for `k`.
    async fn fetch(
        &self,
        k: Vec<u8>,
        options: EntryOptions,
        mut loader: Option<Load<V>>,
    ) -> Result<Option<Arc<V>>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Closed,
                "layercache must be used inside a tokio runtime",
            )
        })?;
        for attempt in 0..=MAX_REJOINS {
            let leader = match self.cache.flights.join::<V>(&k) {
                Join::Wait(rx) if attempt < MAX_REJOINS => {
                    self.cache.counters.coalesced.incr();
                    match flight::wait(rx).await {
                        Ok(None) if loader.is_some() => continue,
                        other => return other,
                    }
                }
                Join::Wait(_) => self.cache.flights.lead_detached::<V>(&k),
                Join::Lead(leader) => leader,
            };
            let task = Fetch {
                region: self.clone(),
                options,
                loader: loader.take(),
            };
            let span = tracing::debug_span!(
                "layercache.get",
                cache.name = %self.cache.name,
                region = %self.shared.state.name,
                level = tracing::field::Empty,
            );
            let handle = runtime.spawn(task.run(leader).instrument(span));
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
    /// The value is encoded once, written to Redis with its TTL (`SET … PX`), then put in the
    /// in-process tier. Fetches of `key` already running will not overwrite it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`] or [`ErrorKind::ValueTooLarge`] before anything is written; a
    /// Redis error (after the in-process tier was updated) only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn insert<Q>(&self, key: &Q, value: V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        self.insert_with(key, value, &self.shared.entry_options)
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
    /// [`LayerCache::invalidate_tag`] removes it (on every instance).
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
        options.validate()?;
        let tags = validate_tags(tags)?;
        let k = self.l1_key(key);
        let cache = &self.cache;
        let encoded = if cache.l2.is_some() || cache.l1.by_bytes() {
            Some(self.encode(&value, options, tags.as_deref())?)
        } else {
            None
        };
        let raw_len = encoded.as_ref().map_or(0, |e| e.raw_len);
        let value = Arc::new(value);
        let generation = self.shared.state.generation_raw();
        let born = cache.l1.tag_epoch();
        cache.flights.poison(&k);
        let mut result = Ok(());
        if let Some(enc) = encoded.filter(|_| cache.l2.is_some()) {
            let written = match self.l2_generation() {
                Ok(g) => {
                    let rk = self.shared.state.data_key(g, &k[4..]);
                    self.write_l2(&rk, enc, options, false, tags.as_deref())
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                result = self.l2_failed("insert", e);
            }
            // A fetch that began while the SET was in flight may have read the old value.
            cache.flights.poison(&k);
        }
        let entry = L1Entry {
            value,
            ttl: options.l1_lifetime(cache.settings.time_to_live),
            weight: cache.l1.weight(k.len(), raw_len),
            generation,
            tags,
            born,
        };
        let user_key = k[4..].to_vec();
        cache.l1.insert(k.into_boxed_slice(), entry).await;
        let announced = cache.announce_key(&self.shared.state, user_key).await;
        result.and(announced)
    }

    /// Removes `key` from Redis (`UNLINK`) and from this instance's in-process tier.
    ///
    /// # Errors
    ///
    /// A Redis error (after the in-process tier was updated) only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn invalidate<Q>(&self, key: &Q) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let k = self.l1_key(key);
        let cache = &self.cache;
        cache.flights.poison(&k);
        let mut result = Ok(());
        if let Some(l2) = &cache.l2 {
            let removed = match self.l2_generation() {
                Ok(g) => l2.unlink(&self.shared.state.data_key(g, &k[4..])).await,
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                result = self.l2_failed("invalidate", e);
            }
            cache.flights.poison(&k);
        }
        cache.l1.remove(&k).await;
        let announced = cache
            .announce_key(&self.shared.state, k[4..].to_vec())
            .await;
        result.and(announced)
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
    /// by default the failure is logged and counted, and this instance bypasses Redis for the
    /// region until it can read the generation again (it no longer knows which one is
    /// current), which the bus retries every heartbeat.
    pub async fn invalidate_all(&self) -> Result<()> {
        let state = &self.shared.state;
        let cache = &self.cache;
        let Some(l2) = &cache.l2 else {
            state.raise_generation(state.generation_floor());
            return Ok(());
        };
        let floor = unix_millis().max(state.generation_floor());
        let bumped = l2
            .bump_generation(&state.generation_key, floor, crate::cache::GENERATION_TTL)
            .await;
        let generation = match bumped {
            Ok(g) => g,
            Err(e) => {
                // We do not know whether the bump happened: stop using the old key space.
                state.forget_generation();
                return self.l2_failed("invalidate_all", e);
            }
        };
        state.raise_generation(generation);
        let announced = cache
            .announce(crate::bus::Entry::Region {
                region: state.name.clone(),
                schema: state.schema,
                generation,
            })
            .await;
        match announced {
            Ok(()) => Ok(()),
            Err(e) => self.l2_failed("publish", e),
        }
    }

    /// Writes an encoded value (and its tag bookkeeping) to Redis; counts the write.
    async fn write_l2(
        &self,
        rk: &str,
        enc: Encoded,
        options: &EntryOptions,
        nx: bool,
        tags: Option<&[String]>,
    ) -> Result<bool> {
        let Some(l2) = &self.cache.l2 else {
            return Ok(false);
        };
        self.count_write(&enc);
        match tags {
            Some(tags) if !tags.is_empty() => {
                let tag_keys = tags.iter().map(|t| tag_key(&self.cache.name, t)).collect();
                l2.set_tagged(rk, enc.bytes, options.ttl_millis(), nx, tag_keys)
                    .await
            }
            _ => l2.set(rk, enc.bytes, options.ttl_millis(), nx).await,
        }
    }

    fn encode(
        &self,
        value: &V,
        options: &EntryOptions,
        tags: Option<&[String]>,
    ) -> Result<Encoded> {
        let mut buf = vec![0u8; HEADER_LEN];
        if let Err(e) = self.shared.codec.encode(value, &mut buf) {
            self.cache.counters.codec_errors.incr();
            return Err(Error::new(
                ErrorKind::Codec,
                format!("{} could not encode the value", C::NAME),
            )
            .with_source(e));
        }
        let raw_len = buf.len() - HEADER_LEN;
        let max = self.cache.settings.max_value_bytes;
        if raw_len > max {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!("the encoded value has {raw_len} bytes; max_value_bytes is {max}"),
            ));
        }
        let now = unix_millis();
        let meta = Meta {
            created_at_ms: now,
            expires_at_ms: now.saturating_add(options.ttl_millis()),
        };
        Ok(envelope::seal(
            buf,
            C::ID,
            meta,
            self.cache.settings.compression_threshold,
            tags.unwrap_or(&[]),
        ))
    }

    fn decode(&self, bytes: &[u8]) -> std::result::Result<Decoded<V>, Corruption> {
        let opened = envelope::open(bytes, C::ID, self.cache.settings.max_value_bytes)?;
        let value = self
            .shared
            .codec
            .decode(&opened.raw)
            .map_err(|_| Corruption::Deserialize)?;
        let tags = (!opened.tags.is_empty()).then(|| Arc::from(opened.tags));
        Ok(Decoded {
            value,
            meta: opened.meta,
            raw_len: opened.raw.len(),
            tags,
        })
    }

    fn count_write(&self, enc: &Encoded) {
        let c = &self.cache.counters;
        c.l2_writes.incr();
        c.bytes_raw.add(enc.raw_len as u64);
        c.bytes_stored.add(enc.stored_len as u64);
        if enc.compressed {
            c.compressed_writes.incr();
        }
    }

    /// Counts and logs a Redis failure, and applies the error policy.
    fn l2_failed(&self, op: &'static str, e: Error) -> Result<()> {
        self.cache.l2_failed(op, Some(&self.shared.state.name), e)
    }

    /// Puts a fetched or loaded value in L1 unless the flight was poisoned; if it was poisoned
    /// while the value went in, takes it out again (the invalidation may have run its own L1
    /// removal before this insert).
    async fn fill_l1(&self, leader: &Leader<V>, entry: L1Entry) {
        if entry.ttl.is_zero() || leader.is_poisoned() {
            return;
        }
        let key = leader.key();
        self.cache.l1.insert(key.into(), entry).await;
        if leader.is_poisoned() {
            self.cache.l1.remove(key).await;
        }
    }

    /// An L1 entry for a value fetched by `leader`.
    fn entry(&self, leader: &Leader<V>, value: Arc<V>, fill: Fill) -> L1Entry {
        L1Entry {
            value,
            ttl: fill.ttl,
            weight: self.cache.l1.weight(leader.key().len(), fill.raw_len),
            generation: fill.generation,
            tags: fill.tags,
            born: fill.born,
        }
    }
}

/// What an L1 fill records besides the value.
struct Fill {
    ttl: Duration,
    raw_len: usize,
    generation: u64,
    born: u64,
    tags: Tags,
}

/// A value read from Redis.
struct Decoded<V> {
    value: V,
    meta: Meta,
    raw_len: usize,
    tags: Tags,
}

/// One flight's work, run as its own task.
struct Fetch<K: ?Sized, V, C> {
    region: Region<K, V, C>,
    options: EntryOptions,
    /// The loader and the tags for what it loads.
    loader: Option<Load<V>>,
}

impl<K, V, C> Fetch<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    async fn run(self, leader: Leader<V>) -> Outcome<V> {
        let outcome = self.work(&leader).await;
        leader.finish(outcome)
    }

    async fn work(self, leader: &Leader<V>) -> Outcome<V> {
        let Fetch {
            region,
            options,
            loader,
        } = self;
        let r = &region;
        let cache = &r.cache;
        let max_l1 = options.l1_lifetime(cache.settings.time_to_live);
        let span = tracing::Span::current();
        // Captured before the read: a value read under this generation is only ever filled
        // into L1 as belonging to it.
        let generation = r.shared.state.generation_raw();
        let born = cache.l1.tag_epoch();
        let mut found = L2Found::Off;
        let mut rkey = String::new();
        if let Some(l2) = &cache.l2 {
            let read = match r.l2_generation() {
                Ok(g) => {
                    rkey = r.shared.state.data_key(g, &leader.key()[4..]);
                    l2.get(&rkey).await
                }
                Err(e) => Err(e),
            };
            found = match read {
                Ok(Some(bytes)) => match r.decode(&bytes) {
                    Ok(d) => {
                        cache.counters.l2_hits.incr();
                        span.record("level", "l2");
                        let left = d.meta.expires_at_ms.saturating_sub(unix_millis());
                        let ttl = max_l1.min(Duration::from_millis(left));
                        let value = Arc::new(d.value);
                        let fill = Fill {
                            ttl,
                            raw_len: d.raw_len,
                            generation,
                            born,
                            tags: d.tags,
                        };
                        r.fill_l1(leader, r.entry(leader, value.clone(), fill))
                            .await;
                        return Ok(Some(value));
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
                        L2Found::Unusable {
                            overwrite: reason.may_overwrite(),
                        }
                    }
                },
                Ok(None) => L2Found::Nothing,
                Err(e) => {
                    r.l2_failed("get", e)?;
                    L2Found::Down
                }
            };
        }
        cache.counters.misses.incr();
        let Some(Load { run: loader, tags }) = loader else {
            span.record("level", "none");
            return Ok(None);
        };
        span.record("level", "loader");
        let value = Arc::new(load(r, loader).await?);

        let write_l2 = matches!(
            found,
            L2Found::Nothing | L2Found::Unusable { overwrite: true }
        );
        let mut raw_len = 0;
        if write_l2 || cache.l1.by_bytes() {
            match r.encode(&value, &options, tags.as_deref()) {
                Ok(enc) => {
                    raw_len = enc.raw_len;
                    if write_l2 && !leader.is_poisoned() {
                        let nx = found == L2Found::Nothing;
                        let written = r.write_l2(&rkey, enc, &options, nx, tags.as_deref()).await;
                        if let Err(e) = written {
                            // The value was loaded; a failed fill is not the caller's error.
                            let _ = r.l2_failed("set", e);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::ValueTooLarge => {
                    cache.counters.l2_oversize_skips.incr();
                    tracing::warn!(cache.name = %cache.name, region = %r.shared.state.name, error = %e, "loaded value not written to redis");
                }
                Err(e) => {
                    tracing::warn!(cache.name = %cache.name, region = %r.shared.state.name, error = %e, "loaded value could not be encoded; kept in L1 only");
                }
            }
        }
        let fill = Fill {
            ttl: max_l1,
            raw_len,
            generation,
            born,
            tags,
        };
        r.fill_l1(leader, r.entry(leader, value.clone(), fill))
            .await;
        Ok(Some(value))
    }
}

/// Runs a loader as its own task, so a panic is caught and reported as an error.
async fn load<K, V, C>(region: &Region<K, V, C>, loader: LoadFn<V>) -> Result<V>
where
    K: ?Sized,
    V: Send + 'static,
{
    let cache = &region.cache;
    cache.counters.loads.incr();
    let span = tracing::debug_span!("layercache.load", cache.name = %cache.name, region = %region.shared.state.name);
    match tokio::spawn(loader().instrument(span)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            cache.counters.load_errors.incr();
            Err(Error::new(ErrorKind::Loader, "the loader failed").with_source(e))
        }
        Err(e) => {
            cache.counters.load_errors.incr();
            let what = if e.is_panic() {
                "the loader panicked"
            } else {
                "the loader was cancelled"
            };
            tracing::error!(cache.name = %cache.name, region = %region.shared.state.name, "{what}");
            Err(Error::new(ErrorKind::Loader, what))
        }
    }
}
