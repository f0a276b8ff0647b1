//! What a cache holds in Redis, for operators: the regions every instance has written (from
//! their generation keys) and how many keys a region's current generation has.

use crate::{
    cache::LayerCache,
    envelope::FORMAT_VERSION,
    error::{Error, ErrorKind, Result},
    key::{generation_key, parse_generation_key, region_prefix, space},
};

/// A region found in Redis by [`LayerCache::regions_in_redis`]: any instance of the cache
/// (this one or another, of any version of the service) has used it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RegionInRedis {
    /// The region's name.
    pub name: String,
    /// Its schema version ([`RegionBuilder::schema_version`](crate::RegionBuilder::schema_version)).
    pub schema: u32,
    /// Its current generation (part of every data key), `None` when its key vanished or does
    /// not hold a number.
    pub generation: Option<u64>,
}

impl LayerCache {
    /// Every region of this cache that has a generation key in Redis, sorted by name and
    /// schema: the regions any instance has used (a `SCAN` of the cache's meta keys, on every
    /// primary of a cluster; it reads and changes nothing else).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] without a Redis tier; a Redis error or timeout.
    pub async fn regions_in_redis(&self) -> Result<Vec<RegionInRedis>> {
        let inner = &self.inner;
        let l2 = inner.l2.as_ref().ok_or_else(no_redis)?;
        let prefix = format!("{}:{}{FORMAT_VERSION}:", inner.name, space::META);
        let mut found: Vec<(String, u32)> = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let (next, keys) = l2.scan_prefix(&prefix, &cursor, 1000).await?;
            for key in keys {
                if let Some(region) = parse_generation_key(&inner.name, &key) {
                    if !found.contains(&region) {
                        found.push(region);
                    }
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        found.sort();
        let mut regions = Vec::with_capacity(found.len());
        for (name, schema) in found {
            let bytes = l2.get(&generation_key(&inner.name, &name, schema)).await?;
            let generation = bytes
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse().ok());
            regions.push(RegionInRedis {
                name,
                schema,
                generation,
            });
        }
        Ok(regions)
    }

    /// Counts the data keys of one generation of a region (its entries, tombstones and
    /// "not found" entries) with `SCAN … COUNT 1000`, calling `progress` with the running count
    /// after every page: a walk of the whole keyspace, for an operator's tool. Dropping the
    /// future stops it between pages.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an invalid region name; [`ErrorKind::Unavailable`] without a
    /// Redis tier; a Redis error or timeout.
    pub async fn count_region_keys(
        &self,
        region: &str,
        schema: u32,
        generation: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        crate::key::validate_name("region name", region)?;
        let inner = &self.inner;
        let l2 = inner.l2.as_ref().ok_or_else(no_redis)?;
        let prefix = format!(
            "{}g{generation}:",
            region_prefix(&inner.name, space::DATA, FORMAT_VERSION, region, schema)
        );
        let (mut count, mut cursor) = (0u64, "0".to_owned());
        loop {
            let (next, keys) = l2.scan_prefix(&prefix, &cursor, 1000).await?;
            count += keys.len() as u64;
            progress(count);
            if next == "0" {
                return Ok(count);
            }
            cursor = next;
        }
    }
}

fn no_redis() -> Error {
    Error::new(ErrorKind::Unavailable, "this cache has no Redis tier")
}
