//! One `insert` from start to end: what it does before the store write (poison older fetches,
//! serve the value from L1 at once) and after it (poison fetches that began meanwhile, fill L1
//! under the generation written, settle: journal or acknowledgements). The store write itself
//! is the caller's: one for `insert`, one batch for `insert_many`.

use std::{sync::Arc, time::Duration};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codec::Codec,
    envelope::Encoded,
    error::{Error, ErrorKind, Result},
    flight::WriteTicket,
    key::{validate_tags, CacheKey},
    options::EntryOptions,
    region::{read::KeyBuf, store::L1Life, Region, Tags, WritePlan},
    remote::Filled,
};

/// What the store write of an [`Insert`] came to: the generation written under, what became
/// of the write, and of its announcement.
pub(in crate::region) type Written = Result<(u64, Filled, Result<u64>)>;

/// An `insert` in flight.
pub(in crate::region) struct Insert<'r, K: ?Sized, V, C> {
    region: &'r Region<K, V, C>,
    pub(in crate::region) k: KeyBuf,
    options: EntryOptions,
    pub(in crate::region) plan: WritePlan,
    pub(in crate::region) tags: Tags,
    value: Arc<V>,
    version: Option<u64>,
    /// The region's generation, when there is a Redis tier and it is known.
    pub(in crate::region) known: Option<u64>,
    /// The Redis key under `known`.
    pub(in crate::region) rk: Option<String>,
    /// The encoded entry (for `rk`), when there is a Redis tier or L1 weighs bytes.
    pub(in crate::region) encoded: Option<Encoded>,
    raw_len: usize,
    tag_epoch: u64,
    ticket: WriteTicket,
    started: u64,
    logical: Duration,
    refresh_in: Option<Duration>,
    created_ms: u64,
    /// The region's generation when the write began (what L1 is filled under unless the
    /// store says which one it was written under).
    generation: u64,
    /// Refused as older than what L1 holds (no Redis tier).
    older: bool,
    /// The key's stripe, held shared until the write has settled (`Journal::writing`): a
    /// repair of the key never writes its tombstone over this write. `None` without a Redis
    /// tier, or when the caller holds it (a batch).
    writing: Option<tokio::sync::RwLockReadGuard<'r, ()>>,
}

impl<'r, K, V, C> Insert<'r, K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Validates and encodes, poisons what is older, and serves the value from this
    /// instance's L1 at once, while the write travels (the source the caller wrote first
    /// already holds it): its readers do not wait a round trip for it.
    pub(in crate::region) async fn begin<Q: CacheKey + ?Sized>(
        region: &'r Region<K, V, C>,
        key: &Q,
        value: V,
        options: &EntryOptions,
        tags: &[&str],
        version: Option<u64>,
        take_stripe: bool,
    ) -> Result<Self> {
        options.validate()?;
        let tags = validate_tags(tags)?;
        let k = region.l1_key(key);
        region.check_key(&k)?;
        let cache = &region.cache;
        let mut plan = WritePlan::value(options, Duration::ZERO);
        plan.version = version;
        let known = match cache.l2 {
            Some(_) => region.write_generation().await,
            None => None,
        };
        let rk = known.map(|g| region.shared.state.data_key(g, &k[4..]));
        let value = Arc::new(value);
        let encoded = if cache.l2.is_some() || cache.l1.by_bytes() {
            let key = rk.as_deref().unwrap_or("");
            Some(
                region
                    .encode_value(Some(&value), &plan, tags.as_deref(), key)
                    .await?,
            )
        } else {
            None
        };
        let raw_len = encoded.as_ref().map_or(0, |e| e.raw_len);
        let tag_epoch = cache.l1.tag_epoch();
        let writing = match (&cache.l2, take_stripe) {
            (Some(_), true) => Some(cache.journal.writing(&k).await),
            _ => None,
        };
        // Anything older touching the key loses (fetches, other writes waiting to fill L1); this
        // write's own L1 fill is lost in turn to anything newer (see `Flights::ticket`).
        cache.flights.poison_for_write(&k, version);
        let ticket = cache.flights.ticket(&k, version);
        let started = cache.journal.stamp();
        let (logical, refresh_in) = region.life_of_plan(options, &plan);
        let mut insert = Self {
            region,
            k,
            options: *options,
            plan,
            tags,
            value,
            version,
            known,
            rk,
            encoded,
            raw_len,
            tag_epoch,
            ticket,
            started,
            logical,
            refresh_in,
            created_ms: crate::freshness::unix_millis(),
            generation: region.shared.state.generation_raw(),
            older: false,
            writing,
        };
        // Without Redis, versions are compared in L1.
        insert.older = insert.fill_l1(insert.generation) && cache.l2.is_none();
        Ok(insert)
    }

    /// The entry encoded for another Redis key (after the generation moved).
    pub(in crate::region) fn encode_for(&self, rk: &str) -> Result<Encoded> {
        self.region
            .encode(Some(&*self.value), &self.plan, self.tags.as_deref(), rk)
    }

    /// The store write as `insert` makes it alone: fenced, announced, written again under a
    /// moved generation. `None`: nothing goes to Redis.
    pub(in crate::region) async fn write(&mut self) -> Option<Written> {
        let region = self.region;
        region.cache.l2.as_ref()?;
        let enc = self.encoded.take()?;
        Some(match (self.known, self.rk.take()) {
            (Some(g), Some(rk)) => {
                let encode = |rk: &str| self.encode_for(rk);
                region
                    .write_fenced(
                        &self.k,
                        (g, rk, enc),
                        &self.plan,
                        self.tags.as_deref(),
                        encode,
                    )
                    .await
            }
            _ => region.l2_generation().map(|g| (g, Filled::Written, Ok(0))),
        })
    }

    /// After the store write (`None`: there was none): fetches that began meanwhile may have
    /// read the old value, so they must not fill L1, and the value goes in again (unless
    /// something newer arrived) under the generation written; a versioned write Redis refused
    /// as older takes its copy out again. Then the write settles. Returns whether the value was
    /// written (false: refused as older).
    pub(in crate::region) async fn end(self, written: Option<Written>) -> Result<bool> {
        let region = self.region;
        let cache = &region.cache;
        let mut older = self.older;
        let mut result = Ok(());
        let mut confirmed = cache.l2.is_none();
        let mut announced: Result<u64> = Err(Error::new(ErrorKind::Redis, "not announced"));
        if let Some(written) = written {
            let mut generation = self.generation;
            match written {
                Ok((g, filled, published)) => {
                    generation = g;
                    confirmed = true;
                    announced = published;
                    older = filled == Filled::Older;
                }
                Err(e) => result = region.l2_failed("insert", e),
            }
            cache.flights.poison_fetch(&self.k);
            if older {
                region.counters().l2_versions_refused.incr();
                tracing::debug!(cache.name = %cache.name, region = %region.shared.state.name, "redis holds a newer source version; the write is refused");
                if !self.ticket.is_poisoned() {
                    cache.l1.remove(&self.k);
                }
            } else {
                self.fill_l1(generation);
            }
        }
        if older && cache.l2.is_none() {
            region.counters().l2_versions_refused.incr();
        }
        let Self {
            k,
            ticket,
            started,
            writing,
            ..
        } = self;
        drop(ticket);
        let settled = region
            .settle_write(&k, started, confirmed, announced, result)
            .await
            .map(|()| !older);
        drop(writing);
        settled
    }

    /// Puts the value in L1 under `generation`, unless something newer touched the key;
    /// returns whether L1 holds a newer source version (the entry was not put in).
    fn fill_l1(&self, generation: u64) -> bool {
        let cache = &self.region.cache;
        let k = &self.k;
        let life = L1Life {
            logical: self.logical,
            refresh_in: self.refresh_in,
            delta: Duration::ZERO,
            fail_safe_keep: self.plan.fail_safe_keep,
            generation,
            tag_epoch: self.tag_epoch,
            tags: self.tags.clone(),
            raw_len: self.raw_len,
            negative: false,
            created_ms: self.created_ms,
            stale_since: None,
            version: self.version,
        };
        let value: Arc<dyn std::any::Any + Send + Sync> = self.value.clone();
        if self.ticket.is_poisoned() {
            // Something newer touched the key during the write (another write, an invalidation
            // or a flush applied). A fetch that began after it may have filled L1 from Redis
            // before this write landed there: drop whatever L1 holds, so the next read goes to
            // Redis (the checker found this on a cluster, where a write fenced by a generation
            // move it had not heard of yet takes a few round trips).
            cache.l1.remove(k);
            return false;
        }
        let Some(entry) = self.region.l1_entry(k.len(), value, &self.options, life) else {
            return false;
        };
        if !cache.l1.admits(k) {
            // Another instance wrote the key a moment ago: it lives in Redis only for now (and
            // whatever L1 held is older than this write).
            self.region.counters().l1_cooldown_skips.incr();
            cache.l1.remove(k);
            return false;
        }
        if let Some(v) = self.version {
            // A versioned write never replaces a newer version in L1 (read from Redis or
            // written by another task of this instance).
            let held = cache.l1.get_any(k).filter(|e| cache.l1.usable(e));
            if held.and_then(|e| e.version).is_some_and(|held| held > v) {
                return true;
            }
        }
        // Something newer may arrive while the entry goes in: then it is never served and goes
        // out again (see `L1::insert_guarded`), and whatever L1 holds goes too, as above.
        let put = cache.l1.insert_guarded(k, entry, self.ticket.guard());
        if !put {
            cache.l1.remove(k);
        }
        false
    }
}
