//! What a cache holds in Redis, for operators: the regions every instance has written (from
//! their generation keys) and how many keys a region's current generation has.

use crate::{
    cache::LayerCache,
    envelope::FORMAT_VERSION,
    error::{Error, ErrorKind, Result},
    key::{generation_key, presence_prefix, region_prefix, space},
    walks::scan_all,
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

/// An instance's presence record, found by [`LayerCache::instances_in_redis`]. Every instance
/// with a Redis tier writes one every five bus heartbeats (30 s lifetime) and removes it at
/// [`shutdown`](LayerCache::shutdown); fields a release does not write are `None`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct InstanceInRedis {
    /// Its bus id (hex), as in [`BusStatus`](crate::BusStatus) and bus messages.
    pub id: String,
    /// The layercache version it runs.
    pub version: Option<String>,
    /// When it was built, Unix milliseconds.
    pub started_ms: Option<u64>,
    /// Entries in its L1 when it wrote the record.
    pub l1_entries: Option<u64>,
    /// Its L1 flushes so far, all reasons.
    pub flushes: Option<u64>,
    /// Its last L1 flush: the reason ([`FlushReason`](crate::FlushReason) name) and when
    /// (Unix milliseconds).
    pub last_flush: Option<(String, u64)>,
    /// The regions it has opened.
    pub regions: Vec<String>,
}

impl InstanceInRedis {
    /// Reads a record (`key=value` pairs separated by spaces); unknown pairs are ignored.
    fn parse(id: &str, record: &str) -> Self {
        let mut found = Self {
            id: id.to_owned(),
            version: None,
            started_ms: None,
            l1_entries: None,
            flushes: None,
            last_flush: None,
            regions: Vec::new(),
        };
        for (k, v) in record.split(' ').filter_map(|pair| pair.split_once('=')) {
            match k {
                "version" => found.version = Some(v.to_owned()),
                "started_ms" => found.started_ms = v.parse().ok(),
                "l1_entries" => found.l1_entries = v.parse().ok(),
                "flushes" => found.flushes = v.parse().ok(),
                "last_flush" => {
                    found.last_flush = v
                        .split_once('@')
                        .and_then(|(r, at)| Some((r.to_owned(), at.parse().ok()?)));
                }
                "regions" => {
                    found.regions = v
                        .split(',')
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                _ => {}
            }
        }
        found
    }
}

impl LayerCache {
    /// The presence records of this cache's instances in Redis ([`InstanceInRedis`]), sorted
    /// by id: who runs the cache, which version, and when each last flushed its L1 and why.
    /// This instance's own record is among them once written (at its first heartbeat).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] without a Redis tier; a Redis error or timeout.
    pub async fn instances_in_redis(&self) -> Result<Vec<InstanceInRedis>> {
        let inner = &self.inner;
        let l2 = inner.l2.as_ref().ok_or_else(no_redis)?;
        let prefix = presence_prefix(&inner.name);
        let mut keys: Vec<String> = Vec::new();
        scan_all(l2, &prefix, |page| keys.extend(page)).await?;
        keys.sort();
        keys.dedup();
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(id) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(bytes) = l2.get_meta(&key).await? {
                let record = String::from_utf8_lossy(&bytes);
                if record != "stopped" {
                    found.push(InstanceInRedis::parse(id, &record));
                }
            }
        }
        Ok(found)
    }

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
        let found = inner.regions_with_generation_keys(l2).await?;
        let mut regions = Vec::with_capacity(found.len());
        for (name, schema) in found {
            let bytes = l2
                .get_meta(&generation_key(&inner.name, &name, schema))
                .await?;
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
        let mut count = 0u64;
        scan_all(l2, &prefix, |keys| {
            count += keys.len() as u64;
            progress(count);
        })
        .await?;
        Ok(count)
    }
}

fn no_redis() -> Error {
    Error::new(ErrorKind::Unavailable, "this cache has no Redis tier")
}

#[cfg(test)]
mod tests {
    use super::InstanceInRedis;

    #[test]
    fn presence_records_parse_and_ignore_what_they_do_not_know() {
        let i = InstanceInRedis::parse(
            "ab",
            "version=0.1.0 started_ms=5 l1_entries=7 flushes=2 regions=a,b last_flush=gap@9 new=1",
        );
        assert_eq!(i.version.as_deref(), Some("0.1.0"));
        assert_eq!(i.started_ms, Some(5));
        assert_eq!(i.l1_entries, Some(7));
        assert_eq!(i.flushes, Some(2));
        assert_eq!(i.regions, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(i.last_flush, Some(("gap".to_owned(), 9)));
        let bare = InstanceInRedis::parse("cd", "garbage");
        assert_eq!(bare.version, None);
        assert!(bare.regions.is_empty());
    }
}
