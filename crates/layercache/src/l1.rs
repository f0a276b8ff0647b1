//! The in-process tier: a moka cache of decoded values.
//!
//! One moka cache serves every region of a [`LayerCache`](crate::LayerCache). Its key is the
//! region's id followed by the user key's bytes; its value is the decoded value behind an
//! `Arc`, type-erased, with the lifetime and weight chosen at insert time. This module knows
//! nothing of Redis.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{future::Cache, Expiry};

/// An L1 key: the region id (4 bytes, little-endian) followed by the user key's bytes.
pub(crate) type L1Key = Box<[u8]>;

/// An L1 value.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) ttl: Duration,
    pub(crate) weight: u32,
}

impl std::fmt::Debug for L1Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1Entry")
            .field("ttl", &self.ttl)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

struct PerEntryTtl;

impl Expiry<L1Key, L1Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &L1Key, v: &L1Entry, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _: &L1Key,
        v: &L1Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// How L1 capacity is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capacity {
    Entries(u64),
    Bytes(u64),
}

/// The in-process tier.
#[derive(Clone)]
pub(crate) struct L1 {
    cache: Cache<L1Key, L1Entry>,
    by_bytes: bool,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.cache.entry_count())
            .field("by_bytes", &self.by_bytes)
            .finish()
    }
}

impl L1 {
    pub(crate) fn new(capacity: Capacity, time_to_idle: Option<Duration>) -> Self {
        let (max, by_bytes) = match capacity {
            Capacity::Entries(n) => (n, false),
            Capacity::Bytes(n) => (n, true),
        };
        let mut b = Cache::builder()
            .max_capacity(max)
            .expire_after(PerEntryTtl)
            .weigher(|_k: &L1Key, v: &L1Entry| v.weight);
        if let Some(tti) = time_to_idle {
            b = b.time_to_idle(tti);
        }
        Self {
            cache: b.build(),
            by_bytes,
        }
    }

    /// Whether entries are weighed by their encoded size (so callers must provide it).
    pub(crate) fn by_bytes(&self) -> bool {
        self.by_bytes
    }

    /// The weight of an entry with `key_len` key bytes and `encoded_len` value bytes.
    pub(crate) fn weight(&self, key_len: usize, encoded_len: usize) -> u32 {
        if self.by_bytes {
            // A fixed overhead for the entry itself, so tiny values still cost something.
            u32::try_from(key_len + encoded_len + 64).unwrap_or(u32::MAX)
        } else {
            1
        }
    }

    pub(crate) async fn get(&self, key: &[u8]) -> Option<L1Entry> {
        self.cache.get(key).await
    }

    pub(crate) async fn insert(&self, key: L1Key, entry: L1Entry) {
        self.cache.insert(key, entry).await;
    }

    pub(crate) async fn remove(&self, key: &[u8]) {
        self.cache.invalidate(key).await;
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub(crate) async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }
}
