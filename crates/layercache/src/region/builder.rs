//! [`RegionBuilder`]: a region's name, schema version, codec and default entry options.

use std::{any::TypeId, marker::PhantomData, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};

use super::{Region, RegionCore};
use crate::{
    codec::{Bincode, Codec},
    engine::Engine,
    error::{Error, Result},
    key::{validate_name, CacheKey},
    options::EntryOptions,
};

/// Builds a [`Region`]. Created by [`LayerCache::region`](crate::LayerCache::region).
#[must_use = "a region builder does nothing until build() is awaited"]
pub struct RegionBuilder<K: ?Sized, V, C = Bincode> {
    cache: Arc<Engine>,
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
    pub(crate) fn new(cache: Arc<Engine>, name: String, codec: C) -> Self {
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
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the name is not 1 to 64
    /// characters of `[A-Za-z0-9_.-]`, when the entry options are invalid, or when this cache
    /// already has a region of this name with another key type, value type, codec or schema
    /// version.
    pub async fn build(self) -> Result<Region<K, V, C>> {
        validate_name("region name", &self.name)?;
        let inner = self.cache;
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
            shared: Arc::new(RegionCore {
                state,
                fingerprint: crate::fingerprint::of::<V>(),
                entry_options,
                codec: self.codec,
                last_raw_len: std::sync::atomic::AtomicUsize::new(0),
            }),
            cache: inner,
            _types: PhantomData,
        })
    }
}
