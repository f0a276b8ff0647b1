//! [`LayerCache`]: the shared engine behind every region.

use std::{
    any::TypeId,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    builder::LayerCacheBuilder,
    codec::{Bincode, Codec},
    error::{Error, Result},
    flight::Flights,
    key::CacheKey,
    l1::L1,
    l2::L2,
    options::{EntryOptions, L2ErrorPolicy},
    region::RegionBuilder,
    stats::{Counters, Stats},
};

/// Cache-wide settings fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) time_to_live: Duration,
    pub(crate) entry_options: EntryOptions,
    pub(crate) compression_threshold: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) error_policy: L2ErrorPolicy,
}

/// A region known to this cache: one name, one value type, one schema, one codec.
#[derive(Debug)]
struct RegionRecord {
    name: String,
    types: TypeId,
    schema: u32,
    codec: u8,
}

/// The state shared by a cache and all its regions.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) l1: L1,
    pub(crate) l2: Option<L2>,
    pub(crate) settings: Settings,
    pub(crate) counters: Counters,
    pub(crate) flights: Arc<Flights>,
    regions: Mutex<Vec<RegionRecord>>,
}

impl Inner {
    pub(crate) fn new(name: String, l1: L1, l2: Option<L2>, settings: Settings) -> Self {
        Self {
            name,
            l1,
            l2,
            settings,
            counters: Counters::default(),
            flights: Arc::new(Flights::default()),
            regions: Mutex::new(Vec::new()),
        }
    }

    /// Registers a region (or finds it again) and returns its id. One name always has one key
    /// type, value type, codec and schema version in a process: a second registration that
    /// differs is a configuration error, not a silent mix-up of two layouts under one name.
    pub(crate) fn register_region(
        &self,
        name: &str,
        types: TypeId,
        schema: u32,
        codec: u8,
    ) -> Result<u32> {
        let mut regions = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((i, r)) = regions.iter().enumerate().find(|(_, r)| r.name == name) {
            if r.types != types || r.schema != schema || r.codec != codec {
                return Err(Error::config(format!(
                    "region {name:?} is already registered with another key type, value type, \
                     codec or schema version"
                )));
            }
            return u32::try_from(i).map_err(|_| Error::config("too many regions"));
        }
        let id = u32::try_from(regions.len()).map_err(|_| Error::config("too many regions"))?;
        regions.push(RegionRecord {
            name: name.to_owned(),
            types,
            schema,
            codec,
        });
        Ok(id)
    }
}

/// A two-level cache: an in-process moka tier in front of an optional shared Redis tier.
///
/// `LayerCache` holds the connection, the in-process tier, the counters and the options. It is
/// cheap to clone (an `Arc` inside) and can be shared by every task of a service. Values are
/// read and written through typed [`Region`](crate::Region)s made by
/// [`region`](Self::region).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// use layercache::LayerCache;
///
/// let cache = LayerCache::builder("shop").build().await?; // L1-only: no Redis configured
/// let users = cache.region::<u64, String>("user").build()?;
/// users.insert(&7, "Ada".to_owned()).await?;
/// assert_eq!(users.get(&7).await?.as_deref().map(String::as_str), Some("Ada"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub(crate) inner: Arc<Inner>,
}

impl LayerCache {
    /// Starts building a cache. The name is part of every Redis key the cache writes, so two
    /// services that should share entries use the same name, and two that should not, different
    /// ones. It must be 1 to 64 characters of `[A-Za-z0-9_.-]`.
    pub fn builder(name: impl Into<String>) -> LayerCacheBuilder {
        LayerCacheBuilder::new(name)
    }

    /// Starts building a typed region: a named kind of entry with key type `K` and value type
    /// `V`, using the default codec ([`Bincode`]). See [`RegionBuilder`].
    pub fn region<K, V>(&self, name: impl Into<String>) -> RegionBuilder<K, V, Bincode>
    where
        K: CacheKey + ?Sized + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        RegionBuilder::new(self.clone(), name.into(), Bincode)
    }

    /// Like [`region`](Self::region) with another codec.
    pub fn region_with_codec<K, V, C>(
        &self,
        name: impl Into<String>,
        codec: C,
    ) -> RegionBuilder<K, V, C>
    where
        K: CacheKey + ?Sized + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        RegionBuilder::new(self.clone(), name.into(), codec)
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether a Redis tier is configured.
    pub fn has_l2(&self) -> bool {
        self.inner.l2.is_some()
    }

    /// A snapshot of the counters, for all regions together.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// The number of entries in the in-process tier. moka applies some bookkeeping lazily:
    /// call [`run_pending_tasks`](Self::run_pending_tasks) first for an exact figure.
    pub fn l1_entry_count(&self) -> u64 {
        self.inner.l1.entry_count()
    }

    /// The in-process tier's total weight: entries, or bytes with
    /// [`max_capacity_bytes`](crate::LayerCacheBuilder::max_capacity_bytes).
    pub fn l1_weighted_size(&self) -> u64 {
        self.inner.l1.weighted_size()
    }

    /// Runs the in-process tier's pending maintenance (evictions, counts) now.
    pub async fn run_pending_tasks(&self) {
        self.inner.l1.sync().await;
    }

    /// Drops every entry of this instance's in-process tier (Redis is untouched), and keeps
    /// fetches already running from filling it with what they read before.
    pub fn clear_l1(&self) {
        self.inner.flights.poison_all();
        self.inner.l1.clear();
    }

    /// Closes the Redis connection. Reads and writes made afterwards fall back as when Redis
    /// is down.
    pub async fn shutdown(&self) {
        if let Some(l2) = &self.inner.l2 {
            l2.quit().await;
        }
    }
}
