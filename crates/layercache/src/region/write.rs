//! The write API of [`Region`]: `insert` and its variants, `invalidate`, `invalidate_all`, and
//! the settling of every write (journal, acknowledgements).

use std::borrow::Borrow;

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codec::Codec,
    engine::GenerationMoveFailed,
    error::{Error, ErrorKind, Result},
    key::CacheKey,
    options::EntryOptions,
};

mod batch;
mod insert;

pub(super) use insert::Insert;

use super::{Region, WritePlan};

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Stores `value` under `key` in both tiers with the region's entry options.
    ///
    /// The value is encoded once, written to Redis with its TTL (counted as written only while
    /// the region's generation is the one the key was made for), put in the in-process
    /// tier, and announced on the bus so other instances drop their copy. Fetches of `key`
    /// already running will not overwrite it; and if something newer touches the key while
    /// the Redis write is in flight (another write, an invalidation received from another
    /// instance), the value is not put in the in-process tier at all, so it never keeps an
    /// older value than Redis.
    ///
    /// # What `Ok` means when Redis does not answer
    ///
    /// With the default [`L2ErrorPolicy::Fallback`](crate::L2ErrorPolicy::Fallback), `Ok` is
    /// returned even when Redis failed, timed out or was skipped, or the announcement failed.
    /// The write is then *journaled*: as soon as this instance reaches Redis again, a tombstone
    /// is written over the key (never this value: another instance may have written a newer
    /// one meanwhile) and announced, and until then this instance serves nothing for `key`
    /// from Redis. Other instances cannot hear of the write before that; they serve what they
    /// hold meanwhile (from L1 at most `time_to_live`). See
    /// [`LayerCache::pending_repairs`](crate::LayerCache::pending_repairs) and
    /// [`LayerCacheBuilder::l2_repair_capacity`](crate::LayerCacheBuilder::l2_repair_capacity).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`] or [`ErrorKind::ValueTooLarge`] before anything is written; a
    /// Redis error (after the in-process tier was updated, and the write journaled) only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn insert<Q>(&self, key: &Q, value: V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        self.write_value(key, value, &self.shared.entry_options, &[], None)
            .await
            .map(|_| ())
    }

    /// [`insert`](Self::insert) with the value's *source version*: a number that grows with
    /// every change of the value in the source of truth (a row version, an update counter, an
    /// update time in ms). Redis keeps the value with the highest version: a write older than
    /// what Redis holds is refused (`Ok(false)`, counted in
    /// [`Stats::l2_versions_refused`](crate::Stats)), so concurrent writers of one key converge
    /// on the newest value whatever order their writes reach Redis in. Without it, two tasks
    /// that update the source to v5 and v6 and then insert can leave v5 in Redis (if v5's write
    /// arrives last) until the entry expires.
    ///
    /// Returns `Ok(true)` when written. Like `insert`, this instance serves the value at once,
    /// while the write travels (unless its in-process tier holds a newer version already); a
    /// refused write takes it out again (the next read takes the newer value from Redis) and
    /// still announces the key, so other instances drop their copies too. Versions are compared between versioned
    /// writes: an entry written without one (`insert`, a load) or a tombstone (`invalidate`) is
    /// replaced by any versioned write. Without a Redis tier, versions are compared in the
    /// in-process tier instead (an older write is refused there, and counted the same way).
    ///
    /// Entries written with a version are read by releases before this one as
    /// [`Corruption::UnknownFlags`](crate::Corruption::UnknownFlags) (a miss), never as a wrong
    /// value.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn insert_versioned<Q>(&self, key: &Q, value: V, version: u64) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        self.write_value(key, value, &self.shared.entry_options, &[], Some(version))
            .await
    }

    /// Every `insert`: returns whether the value was written (false: refused as older than the
    /// source version Redis holds).
    pub(super) async fn write_value<Q>(
        &self,
        key: &Q,
        value: V,
        options: &EntryOptions,
        tags: &[&str],
        version: Option<u64>,
    ) -> Result<bool>
    where
        Q: CacheKey + ?Sized,
    {
        let mut insert = Insert::begin(self, key, value, options, tags, version, true).await?;
        let written = insert.write().await;
        insert.end(written).await
    }

    /// The end of every `insert` and `invalidate`: if Redis did not confirm the write or its
    /// announcement, journals the key for repair (a tombstone written and announced as soon as
    /// Redis answers; until then this instance serves nothing for the key from Redis). A
    /// confirmed write settles an earlier unconfirmed one of the key. With acknowledged writes,
    /// then waits for every live instance to acknowledge the announcement.
    pub(super) async fn settle_write(
        &self,
        k: &[u8],
        started: u64,
        confirmed: bool,
        announced: Result<u64>,
        result: Result<()>,
    ) -> Result<()> {
        let cache = &self.cache;
        if cache.l2.is_none() {
            return result;
        }
        let seq = match (confirmed, announced) {
            (true, Ok(seq)) => {
                cache.journal.confirmed(k, started);
                Ok(seq)
            }
            (_, announced) => {
                let tombstone = crate::journal::Tombstone {
                    ttl: self.shared.entry_options.get_ttl(),
                    retention: self.shared.entry_options.keep_after_expiry(),
                    codec: C::ID,
                };
                cache.unconfirmed(
                    crate::journal::Pending::Key(k.into(), tombstone),
                    Some(&self.shared.state.name),
                );
                Err(announced.err())
            }
        };
        if let (Some(within), Some(bus)) = (cache.settings.ack_timeout, &cache.bus) {
            match &seq {
                Ok(seq) => return bus.wait_for_acks(*seq, within).await,
                // Not in Redis (or not announced): no live instance can have heard of it.
                Err(_) => {
                    let live = bus.live_peers();
                    if !live.is_empty() {
                        return Err(Error::unacknowledged_by(live, within));
                    }
                }
            }
        }
        match (result, seq) {
            (Err(e), _) => Err(e),
            // The write landed but its announcement did not: the policy decides, as for a
            // failed write.
            (Ok(()), Err(Some(e))) if confirmed => self.l2_failed("publish", e),
            (Ok(()), _) => Ok(()),
        }
    }

    /// Removes `key`: replaces it in Redis with a tombstone (a miss for every reader, with the
    /// region's TTL, so a load that began before this cannot put the old value back), drops it
    /// from this instance's in-process tier, and announces it so other instances drop theirs.
    /// When Redis does not confirm it, it is journaled and repaired as described under
    /// [`insert`](Self::insert): `Ok` is never undone by reading the old value back.
    ///
    /// # Errors
    ///
    /// A Redis error (after the in-process tier was updated, and the invalidation journaled)
    /// only with [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn invalidate<Q>(&self, key: &Q) -> Result<()>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let k = self.l1_key(key);
        self.check_key(&k)?;
        let cache = &self.cache;
        cache.flights.poison(&k);
        // Dropped before the write travels: this instance's readers stop serving the old value
        // at once, and their Redis reads go out on the same connection after the tombstone.
        cache.l1.remove(&k);
        // Held until the write settled: a repair of the key never writes over it.
        let writing = match &cache.l2 {
            Some(_) => Some(cache.journal.writing(&k).await),
            None => None,
        };
        let started = cache.journal.stamp();
        let mut result = Ok(());
        let mut confirmed = cache.l2.is_none();
        let mut announced: Result<u64> = Err(Error::new(ErrorKind::Redis, "not announced"));
        if cache.l2.is_some() {
            // A tombstone, not UNLINK: a load that began before this cannot fill the key
            // afterwards (fills are `SET NX`, or replace only the entry they saw).
            let plan = WritePlan::tombstone(&self.shared.entry_options);
            let encode = |rk: &str| self.encode(None, &plan, None, rk);
            let generation = match self.write_generation().await {
                Some(g) => Ok(g),
                None => self.l2_generation(),
            };
            let removed = match generation {
                Ok(g) => {
                    let rk = self.shared.state.data_key(g, &k[4..]);
                    match encode(&rk) {
                        Ok(enc) => self
                            .write_fenced(&k, (g, rk, enc), &plan, None, encode)
                            .await
                            .map(|(_, _, published)| published),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match removed {
                Ok(published) => {
                    confirmed = true;
                    announced = published;
                }
                Err(e) => result = self.l2_failed("invalidate", e),
            }
            cache.flights.poison(&k);
        }
        cache.l1.remove(&k);
        let settled = self
            .settle_write(&k, started, confirmed, announced, result)
            .await;
        drop(writing);
        settled
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
    /// by default the failure is logged and counted, this instance bypasses Redis for the
    /// region, and the generation is moved (again) and announced as soon as Redis answers — it
    /// is not read back as it was, which would bring the old entries back.
    pub async fn invalidate_all(&self) -> Result<()> {
        let state = &self.shared.state;
        let cache = &self.cache;
        let Some(l2) = &cache.l2 else {
            cache.raise_generation(state, state.generation_floor());
            return Ok(());
        };
        // Journaled when not confirmed (so the invalidation is never undone by reading the
        // old generation back): see `Engine::move_generation`.
        match cache.move_generation(l2, state).await {
            Ok(()) => Ok(()),
            Err(GenerationMoveFailed::Move(e)) => self.l2_failed("invalidate_all", e),
            Err(GenerationMoveFailed::Announce(e)) => self.l2_failed("publish", e),
        }
    }
}
