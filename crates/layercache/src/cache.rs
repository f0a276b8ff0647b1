//! [`LayerCache`]: the handle users hold; every call goes to the shared [`Engine`].

#[cfg(feature = "metrics")]
pub(crate) mod metrics_export;

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    bus::{BusHandle, BusStatus, Entry, FlushReason, InstanceId},
    codec::{Bincode, Codec},
    engine::Engine,
    error::Result,
    journal::Pending,
    key::{validate_tags, CacheKey},
    region::RegionBuilder,
    stats::Stats,
    walks::{delete_outdated, drop_tag},
};

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
/// let users = cache.region::<u64, String>("user").build().await?;
/// users.insert(&7, "Ada".to_owned()).await?;
/// assert_eq!(users.get(&7).await?.as_deref().map(String::as_str), Some("Ada"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub(crate) inner: Arc<Engine>,
}

impl LayerCache {
    /// Starts building a typed region: a named kind of entry with key type `K` and value type
    /// `V`, using the default codec ([`Bincode`]). See [`RegionBuilder`].
    pub fn region<K, V>(&self, name: impl Into<String>) -> RegionBuilder<K, V, Bincode>
    where
        K: CacheKey + ?Sized + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        RegionBuilder::new(self.inner.clone(), name.into(), Bincode)
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
        RegionBuilder::new(self.inner.clone(), name.into(), codec)
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
        let mut stats = self.inner.counters.snapshot();
        for region in self.inner.all_regions() {
            stats.merge(&region.counters.snapshot());
        }
        stats
    }

    /// Hands every counter and gauge of this cache to the installed `metrics` recorder now
    /// (absolute values; see [`crate::metrics`]). The background task of
    /// [`metrics_interval`](crate::LayerCacheBuilder::metrics_interval) does this periodically;
    /// call it yourself before a scrape for figures that are exact to the moment.
    #[cfg(feature = "metrics")]
    pub fn export_metrics(&self) {
        metrics_export::export(&self.inner);
    }

    /// The number of entries in the in-process tier. moka applies some bookkeeping lazily:
    /// call [`run_pending_tasks`](Self::run_pending_tasks) first for an exact figure. An entry
    /// whose own lifetime ended counts until it is read again, evicted or
    /// [`time_to_live`](crate::LayerCacheBuilder::time_to_live) ends it; the copies of fail-safe
    /// values kept past `time_to_live` (a second table of the same capacity) do not count.
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
        self.inner.l1.sync();
    }

    /// Drops every entry of this instance's in-process tier (Redis is untouched), and keeps
    /// fetches already running from filling it with what they read before.
    pub fn clear_l1(&self) {
        self.inner.flights.poison_all();
        self.inner.l1.clear();
    }

    /// Every region registered in this instance with its current generation (`None` while
    /// unknown; see [`Region::generation`](crate::Region::generation)).
    pub fn generations(&self) -> Vec<(String, Option<u64>)> {
        self.inner
            .all_regions()
            .iter()
            .map(|r| (r.name.clone(), r.generation()))
            .collect()
    }

    /// How many writes and invalidations Redis has not confirmed yet (failed, timed out, or
    /// skipped while it was unreachable), waiting to be repaired. Each is repaired as soon as
    /// this instance reaches Redis again (a tombstone for a key, a generation move for a region,
    /// and an announcement on the bus), and until then this instance serves nothing it covers
    /// from Redis. See [`Region::insert`](crate::Region::insert) for what `Ok` means.
    pub fn pending_repairs(&self) -> usize {
        self.inner.journal.len()
    }

    /// Counters of L1 flushes by reason (see [`FlushReason`]).
    pub fn flushes(&self, reason: FlushReason) -> u64 {
        self.inner.counters.flushes[reason.index()].get()
    }

    /// Whether the Redis circuit breaker is open (calls skip Redis); `false` without Redis.
    pub fn l2_breaker_open(&self) -> bool {
        self.inner.l2.as_ref().is_some_and(|l2| l2.breaker_open())
    }

    /// Whether the Redis connection is up right now; `false` without Redis, and after a
    /// degraded start ([`L2Startup::Degraded`](crate::L2Startup::Degraded)) until Redis
    /// answers.
    pub fn l2_connected(&self) -> bool {
        self.inner.l2.as_ref().is_some_and(|l2| l2.is_connected())
    }

    /// This instance's id on the invalidation bus (`None` without Redis).
    pub fn instance_id(&self) -> Option<InstanceId> {
        self.inner.bus.as_ref().map(|b| b.id)
    }

    /// What this instance knows of the invalidation bus (`None` without Redis).
    pub fn bus_status(&self) -> Option<BusStatus> {
        self.inner.bus.as_ref().map(BusHandle::status)
    }

    /// Removes every entry of this cache, in every region and on every instance.
    ///
    /// In Redis, every region's generation (those found with `SCAN` and this instance's own)
    /// is moved forward, as [`Region::invalidate_all`](crate::Region::invalidate_all) does,
    /// so every entry — including one that a load which began before this call writes
    /// afterwards — is under an outdated key. The new generations and a flush are announced to
    /// every instance; then the outdated data keys are deleted in batches (`SCAN … COUNT 1000`
    /// then `UNLINK`, never `KEYS`) to give the memory back at once rather than at their TTL.
    /// Tag sets are left to expire with their members.
    ///
    /// # Errors
    ///
    /// A Redis error (after this instance's L1 was flushed) only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate). A region whose generation could not be moved stops using
    /// Redis until it has read its generation again.
    pub async fn clear(&self) -> Result<()> {
        self.clear_with_progress(|_| {}).await
    }

    /// [`clear`](Self::clear), calling `progress` with the number of outdated data keys
    /// deleted from Redis so far after every batch (for an operator's tool: a big keyspace is
    /// a long walk). Dropping the future during the walk is safe: every region has moved to a
    /// new generation by then, and the keys left behind expire by their TTL.
    ///
    /// # Errors
    ///
    /// As [`clear`](Self::clear).
    pub async fn clear_with_progress(&self, mut progress: impl FnMut(u64) + Send) -> Result<()> {
        let inner = &self.inner;
        let mut result = Ok(());
        let mut moved = Vec::new();
        if let Some(l2) = &inner.l2 {
            result = inner.move_every_generation(l2, &mut moved).await;
        }
        inner.flush_l1(FlushReason::Clear);
        let mut announced = Ok(());
        for (region, schema, generation) in &moved {
            announced = inner
                .announce(Entry::Region {
                    region: region.clone(),
                    schema: *schema,
                    generation: *generation,
                })
                .await;
            if announced.is_err() {
                break;
            }
        }
        if announced.is_ok() {
            announced = inner.announce(Entry::All).await;
        }
        if let (Some(l2), Ok(())) = (&inner.l2, &result) {
            result = delete_outdated(l2, &inner.name, &moved, &mut progress).await;
        }
        if result.is_err() || announced.is_err() {
            // Not confirmed: moved again (and announced) once Redis answers; until then no
            // read of this instance is served from Redis.
            inner.unconfirmed(Pending::Clear, None);
        }
        match result.and(announced) {
            Err(e) => inner.l2_failed("clear", None, e),
            Ok(()) => Ok(()),
        }
    }

    /// Invalidates every entry carrying `tag` (in any region), on every instance.
    ///
    /// In Redis, the tag's mark is replaced first (a load carrying the tag that began before
    /// this will not fill Redis: it fills only if the mark it read before running is
    /// unchanged); then the tag's set of data keys is walked in bounded batches
    /// (`SSCAN … COUNT 500`), each batch deleted and taken out of the set in one short script
    /// (a member written again meanwhile keeps its membership); then every instance is told
    /// over the bus. In-process tiers check an entry's tags on read against the time each tag
    /// was last invalidated, so a fetch that began before this call cannot put a tagged value
    /// back in L1 either.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for an empty tag or one over 128 bytes;
    /// a Redis error (after this instance's L1 was updated) only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        self.invalidate_tag_with_progress(tag, |_| {}).await
    }

    /// [`invalidate_tag`](Self::invalidate_tag), calling `progress` with the number of
    /// tagged entries deleted from Redis so far after every batch (for an operator's tool: a
    /// tag with a million members is a long walk). Dropping the future stops the walk between
    /// batches: the tag is already invalidated then (its mark moved first), and what is left
    /// of its set expires with its members.
    ///
    /// # Errors
    ///
    /// As [`invalidate_tag`](Self::invalidate_tag).
    pub async fn invalidate_tag_with_progress(
        &self,
        tag: &str,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<()> {
        let inner = &self.inner;
        let tags = validate_tags(&[tag])?.unwrap_or_else(|| Arc::from(Vec::new()));
        let mut result = Ok(());
        if let Some(l2) = &inner.l2 {
            result = drop_tag(l2, &inner.name, tag, &mut progress).await;
        }
        inner.tags_invalidated(&tags);
        if result.is_ok() {
            result = inner.announce(Entry::Tag(tag.to_owned())).await;
        }
        if result.is_err() {
            inner.unconfirmed(Pending::Tag(tag.to_owned()), None);
        }
        match result {
            Err(e) => inner.l2_failed("invalidate_tag", None, e),
            Ok(()) => Ok(()),
        }
    }

    /// Stops the cache's use of Redis and ends every task it started: the bus publisher and
    /// listener (the subscriber connection is closed) and the data connection. First, if writes
    /// that Redis did not confirm are pending ([`pending_repairs`](Self::pending_repairs)) and
    /// Redis answers, they are repaired.
    ///
    /// Returns once the tasks have ended (when Redis does not answer, each close is bounded by `l2_command_timeout`,
    /// and a second at least). Reads and writes made afterwards work as while Redis is down:
    /// L1 and the loader, Redis skipped at once. Fetches still running finish on their own,
    /// within their timeouts.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        // Writes Redis has not confirmed can only be repaired by this process: try once more.
        crate::engine::repair::repair_now(inner).await;
        if inner.journal.len() > 0 {
            tracing::warn!(cache.name = %inner.name, pending = inner.journal.len(), "shutting down with writes redis has not confirmed; other instances may serve their old values until their TTL");
        }
        let _ = inner.closing.send(true);
        if let Some(bus) = &inner.bus {
            bus.stop();
        }
        // The bus tasks may spawn a helper while ending: wait until none is left.
        loop {
            let tasks = inner.take_tasks();
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        if let (Some(l2), Some(bus)) = (&inner.l2, &inner.bus) {
            // The presence record goes with the instance (a 1 ms lifetime: a meta key is set,
            // never placed, so this works the same on a cluster).
            let key = crate::key::presence_key(&inner.name, bus.id);
            let _ = l2.set_meta(&key, b"stopped".to_vec(), 1).await;
        }
        if let Some(l2) = &inner.l2 {
            l2.quit().await;
        }
        #[cfg(feature = "metrics")]
        metrics_export::export(inner);
        tracing::info!(cache.name = %inner.name, "layercache shut down");
    }
}
