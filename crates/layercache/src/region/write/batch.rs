//! Batch writes: [`Region::insert_many`] and [`Region::invalidate_many`] — every key through
//! the same steps as `insert` and `invalidate`, but one store command and one bus message per
//! chunk of keys (at most 200 keys and about 1 MiB of values), not one of each per key.

use std::borrow::Borrow;

use serde::{de::DeserializeOwned, Serialize};

use super::insert::{Insert, Written};
use crate::{
    bus::Entry,
    codec::Codec,
    envelope::Encoded,
    error::{Error, ErrorKind, Result},
    key::{tag_key, validate_tags, CacheKey},
    options::EntryOptions,
    region::{read::KeyBuf, Region, WritePlan},
    remote::{Announcement, BatchEntry, BatchWrite, Filled, WriteMode, MAX_BATCH_WRITE},
};

/// At most this many bytes of values go into one batch command.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One key's write in a batch: its L1 key, the Redis key and entry (under `generation`).
struct Item {
    k: Vec<u8>,
    rk: String,
    enc: Encoded,
    plan: WritePlan,
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Stores many values with the region's entry options, as [`insert`](Self::insert) stores
    /// one — same promise, same journal when Redis does not confirm — but in one store command
    /// and one bus message per chunk of keys (at most 200 keys and about 1 MiB of values).
    /// One answer per item, in order; a key given twice ends with the later value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// # let cache = layercache::LayerCache::builder("app").build().await?;
    /// let users = cache.region::<u64, String>("users").build().await?;
    /// let done = users.insert_many([(&1, "Ada".to_owned()), (&2, "Grace".to_owned())]).await;
    /// assert!(done.iter().all(Result::is_ok));
    /// users.invalidate_many(&[1, 2]).await;
    /// assert!(users.get(&1).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn insert_many<'k, Q, I>(&self, items: I) -> Vec<Result<()>>
    where
        I: IntoIterator<Item = (&'k Q, V)>,
        K: Borrow<Q>,
        Q: CacheKey + ?Sized + 'k,
    {
        let options = self.shared.entry_options;
        let items = items.into_iter().map(|(k, v)| (k, v, None));
        let done = self.insert_many_as(items, &options, &[]).await;
        done.into_iter().map(|r| r.map(|_| ())).collect()
    }

    /// [`insert_many`](Self::insert_many) with these options and tags, each item with its
    /// source version if any (see [`ManyRequest`](crate::ManyRequest)): whether each was
    /// written (`false`: Redis holds a higher source version).
    pub(in crate::region) async fn insert_many_as<'k, Q, I>(
        &self,
        items: I,
        options: &EntryOptions,
        tags: &[&str],
    ) -> Vec<Result<bool>>
    where
        I: IntoIterator<Item = (&'k Q, V, Option<u64>)>,
        K: Borrow<Q>,
        Q: CacheKey + ?Sized + 'k,
    {
        let items: Vec<(&Q, V, Option<u64>)> = items.into_iter().collect();
        // The tags' sets in Redis, which the batch commands record every key written in.
        let tag_sets: Vec<String> = match options.validate().and_then(|()| validate_tags(tags)) {
            Ok(tags) => tags
                .iter()
                .flat_map(|t| t.iter())
                .map(|t| tag_key(&self.cache.name, t))
                .collect(),
            Err(e) => return vec![Err(e); items.len()],
        };
        let options = *options;
        let mut answers: Vec<Option<Result<bool>>> = Vec::new();
        let mut inserts = Vec::new();
        // Every key's stripe, held until the batch settled (see `Journal::writing`).
        let _writing = match &self.cache.l2 {
            Some(_) => {
                let keys: Vec<KeyBuf> = items.iter().map(|(k, ..)| self.l1_key(*k)).collect();
                self.cache
                    .journal
                    .writing_all(keys.iter().map(|k| &k[..]))
                    .await
            }
            None => Vec::new(),
        };
        for (at, (key, value, version)) in items.into_iter().enumerate() {
            answers.push(None);
            match Insert::begin(self, key, value, &options, tags, version, false).await {
                Ok(insert) => inserts.push((at, insert)),
                Err(e) => answers[at] = Some(Err(e)),
            }
        }
        // Those that go to Redis under the generation this instance knows, in one batch.
        let generation = inserts.iter().find_map(|(_, i)| i.known);
        let mut batched = Vec::new();
        let mut items = Vec::new();
        let mut single = Vec::new();
        for (at, mut insert) in inserts {
            let ready = self.cache.l2.is_some() && insert.known == generation;
            match (ready, insert.rk.take(), insert.encoded.take()) {
                (true, Some(rk), Some(enc)) => {
                    items.push(Item {
                        k: insert.k.to_vec(),
                        rk,
                        enc,
                        plan: insert.plan,
                    });
                    batched.push((at, insert));
                }
                (_, rk, enc) => {
                    insert.rk = rk;
                    insert.encoded = enc;
                    single.push((at, insert));
                }
            }
        }
        let written = self.write_batch(items, generation, &tag_sets).await;
        let mut fenced = Vec::new();
        for ((at, insert), written) in batched.into_iter().zip(written) {
            match written {
                // The region moved on under the batch: written again below.
                Ok((_, Filled::Fenced, _)) => fenced.push((at, insert)),
                other => answers[at] = Some(insert.end(Some(other)).await),
            }
        }
        if !fenced.is_empty() {
            // Once more, all together, under the generation Redis has now (one read of it, one
            // batch: key by key, 100,000 fenced keys took 200,000 round trips); a key fenced
            // again goes alone, as `insert` would.
            self.cache.refresh_generation(&self.shared.state).await;
            let g = self.shared.state.generation();
            let mut items = Vec::new();
            let mut again = Vec::new();
            for (at, mut insert) in fenced {
                if let Err(e) = self.rekey(&mut insert, g) {
                    answers[at] = Some(insert.end(Some(Err(e))).await);
                    continue;
                }
                match (insert.rk.take(), insert.encoded.take()) {
                    (Some(rk), Some(enc)) => {
                        items.push(Item {
                            k: insert.k.to_vec(),
                            rk,
                            enc,
                            plan: insert.plan,
                        });
                        again.push((at, insert));
                    }
                    // No generation to write under: as `insert` would, alone.
                    (rk, enc) => {
                        insert.rk = rk;
                        insert.encoded = enc;
                        single.push((at, insert));
                    }
                }
            }
            let written = self.write_batch(items, g, &tag_sets).await;
            for ((at, mut insert), written) in again.into_iter().zip(written) {
                let written = match written {
                    Ok((_, Filled::Fenced, _)) => self.rewrite(&mut insert).await,
                    other => Some(other),
                };
                answers[at] = Some(insert.end(written).await);
            }
        }
        for (at, mut insert) in single {
            let written = insert.write().await;
            answers[at] = Some(insert.end(written).await);
        }
        finish(answers)
    }

    /// Removes many keys, as [`invalidate`](Self::invalidate) removes one — tombstones, the
    /// same promise and journal — in one store command and one bus message per chunk of keys.
    /// One answer per key, in order.
    pub async fn invalidate_many<'k, Q, I>(&self, keys: I) -> Vec<Result<()>>
    where
        I: IntoIterator<Item = &'k Q>,
        K: Borrow<Q>,
        Q: CacheKey + ?Sized + 'k,
    {
        let cache = &self.cache;
        let mut answers: Vec<Option<Result<()>>> = Vec::new();
        let mut removing: Vec<(usize, KeyBuf, u64)> = Vec::new();
        let mut valid = Vec::new();
        for (at, key) in keys.into_iter().enumerate() {
            answers.push(None);
            let k = self.l1_key(key);
            match self.check_key(&k) {
                Ok(()) => valid.push((at, k)),
                Err(e) => answers[at] = Some(Err(e)),
            }
        }
        // Every key's stripe, held until the batch settled (see `Journal::writing`).
        let _writing = match &cache.l2 {
            Some(_) => {
                cache
                    .journal
                    .writing_all(valid.iter().map(|(_, k)| &k[..]))
                    .await
            }
            None => Vec::new(),
        };
        for (at, k) in valid {
            cache.flights.poison(&k);
            // Dropped before the write travels (see `invalidate`).
            cache.l1.remove(&k);
            let started = cache.journal.stamp();
            removing.push((at, k, started));
        }
        let mut written: Vec<Option<Written>> = removing.iter().map(|_| None).collect();
        if cache.l2.is_some() && !removing.is_empty() {
            let plan = WritePlan::tombstone(&self.shared.entry_options);
            let generation = match self.write_generation().await {
                Some(g) => Ok(g),
                None => self.l2_generation(),
            };
            match generation {
                Ok(g) => {
                    let mut items = Vec::with_capacity(removing.len());
                    let mut slots = Vec::with_capacity(removing.len());
                    for (slot, (_, k, _)) in removing.iter().enumerate() {
                        let rk = self.shared.state.data_key(g, &k[4..]);
                        match self.encode(None, &plan, None, &rk) {
                            Ok(enc) => {
                                slots.push(slot);
                                items.push(Item {
                                    k: k.to_vec(),
                                    rk,
                                    enc,
                                    plan,
                                });
                            }
                            Err(e) => written[slot] = Some(Err(e)),
                        }
                    }
                    let results = self.write_batch(items, Some(g), &[]).await;
                    let mut fenced = Vec::new();
                    for (slot, result) in slots.into_iter().zip(results) {
                        match result {
                            Ok((_, Filled::Fenced, _)) => fenced.push(slot),
                            other => written[slot] = Some(other),
                        }
                    }
                    if !fenced.is_empty() {
                        self.tombstones_again(&removing, fenced, &plan, &mut written)
                            .await;
                    }
                }
                Err(e) => {
                    for w in &mut written {
                        *w = Some(Err(e.clone()));
                    }
                }
            }
        }
        for ((at, k, started), written) in removing.into_iter().zip(written) {
            let mut result = Ok(());
            let mut confirmed = cache.l2.is_none();
            let mut announced: Result<u64> = Err(Error::new(ErrorKind::Redis, "not announced"));
            if let Some(written) = written {
                match written {
                    Ok((_, _, published)) => {
                        confirmed = true;
                        announced = published;
                    }
                    Err(e) => result = self.l2_failed("invalidate", e),
                }
                cache.flights.poison(&k);
            }
            cache.l1.remove(&k);
            answers[at] = Some(
                self.settle_write(&k, started, confirmed, announced, result)
                    .await,
            );
        }
        finish(answers)
    }

    /// The store writes of a batch (every item under `generation`, set unconditionally, with
    /// its source version, recorded in the sets `tag_sets`), chunked, each chunk with one
    /// announcement naming its keys. One result per item, in order.
    async fn write_batch(
        &self,
        items: Vec<Item>,
        generation: Option<u64>,
        tag_sets: &[String],
    ) -> Vec<Written> {
        let (Some(l2), Some(g)) = (&self.cache.l2, generation) else {
            return items
                .iter()
                .map(|_| {
                    Err(Error::new(
                        ErrorKind::Unavailable,
                        "no generation to write under",
                    ))
                })
                .collect();
        };
        let bus = self.cache.key_bus();
        let mut results = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some(item) = items.next_if(|i| {
                chunk.is_empty()
                    || (chunk.len() < MAX_BATCH_WRITE
                        && bytes + i.enc.bytes.len() <= MAX_BATCH_BYTES)
            }) {
                bytes += item.enc.bytes.len();
                chunk.push(item);
            }
            let n = chunk.len();
            let announced: Vec<Entry> = chunk
                .iter()
                .map(|i| Entry::Key {
                    region: self.shared.state.name.clone(),
                    key: i.k[4..].to_vec(),
                })
                .chain(self.cache.settings.ack_timeout.map(|_| Entry::AckPlease))
                .collect();
            let entries: Vec<BatchEntry> = chunk
                .into_iter()
                .map(|i| {
                    self.count_write(&i.enc);
                    BatchEntry {
                        ttl_ms: i.plan.physical_ms(),
                        key: i.rk,
                        value: i.enc.bytes,
                        mode: WriteMode::Set,
                        version: i.plan.version,
                        marks: Vec::new(),
                    }
                })
                .collect();
            let batch = BatchWrite {
                entries,
                fence: Some(g),
                generation_key: &self.shared.state.generation_key,
                tags: tag_sets.to_vec(),
                marks: Vec::new(),
            };
            let outcome = match bus {
                Some(bus) => {
                    let id = bus.sequencer.id;
                    let message = |seq| crate::bus::message::encode(&id.0, seq, &announced);
                    let announcement = Announcement {
                        sequencer: &bus.sequencer,
                        message: &message,
                    };
                    l2.fill_many_announced(batch, announcement).await
                }
                None => l2.fill_many(batch).await.map(|f| (f, Ok(0))),
            };
            match outcome {
                Ok((filled, published)) if filled.len() == n => {
                    // An entry whose command failed (its node did not answer) is that entry's
                    // failure alone.
                    results.extend(
                        filled
                            .into_iter()
                            .map(|f| f.map(|f| (g, f, published.clone()))),
                    );
                }
                Ok(_) => results.extend((0..n).map(|_| {
                    Err(Error::new(
                        ErrorKind::Redis,
                        "the batch write answered for other keys",
                    ))
                })),
                Err(e) => results.extend((0..n).map(|_| Err(e.clone()))),
            }
        }
        results
    }

    /// Tombstones whose batch write was fenced (the region moved on under it): once more, all
    /// together, under the generation Redis has now (one read of it and one batch, not both per
    /// key); a key fenced again goes alone.
    async fn tombstones_again(
        &self,
        removing: &[(usize, KeyBuf, u64)],
        fenced: Vec<usize>,
        plan: &WritePlan,
        written: &mut [Option<Written>],
    ) {
        self.cache.refresh_generation(&self.shared.state).await;
        let g = match self.l2_generation() {
            Ok(g) => g,
            Err(e) => {
                for slot in fenced {
                    written[slot] = Some(Err(e.clone()));
                }
                return;
            }
        };
        let mut items = Vec::with_capacity(fenced.len());
        let mut again = Vec::with_capacity(fenced.len());
        for slot in fenced {
            let k = &removing[slot].1;
            let rk = self.shared.state.data_key(g, &k[4..]);
            match self.encode(None, plan, None, &rk) {
                Ok(enc) => {
                    again.push(slot);
                    items.push(Item {
                        k: k.to_vec(),
                        rk,
                        enc,
                        plan: *plan,
                    });
                }
                Err(e) => written[slot] = Some(Err(e)),
            }
        }
        let results = self.write_batch(items, Some(g), &[]).await;
        for (slot, result) in again.into_iter().zip(results) {
            written[slot] = Some(match result {
                Ok((_, Filled::Fenced, _)) => self.tombstone_alone(&removing[slot].1, plan).await,
                other => other,
            });
        }
    }

    /// A tombstone fenced twice: under the generation Redis has now, alone.
    async fn tombstone_alone(&self, k: &[u8], plan: &WritePlan) -> Written {
        let encode = |rk: &str| self.encode(None, plan, None, rk);
        self.cache.refresh_generation(&self.shared.state).await;
        let g = self.l2_generation()?;
        let rk = self.shared.state.data_key(g, &k[4..]);
        let enc = encode(&rk)?;
        self.write_fenced(k, (g, rk, enc), plan, None, encode).await
    }

    /// An insert whose batch write was fenced: under the generation Redis has now, alone.
    async fn rewrite(&self, insert: &mut Insert<'_, K, V, C>) -> Option<Written> {
        self.cache.refresh_generation(&self.shared.state).await;
        if let Err(e) = self.rekey(insert, self.shared.state.generation()) {
            return Some(Err(e));
        }
        insert.write().await
    }

    /// Points `insert` at generation `g`: its Redis key, and its value encoded for that key
    /// (neither when there is no generation to write under).
    fn rekey(&self, insert: &mut Insert<'_, K, V, C>, g: Option<u64>) -> Result<()> {
        insert.known = g;
        insert.rk = g.map(|g| self.shared.state.data_key(g, &insert.k[4..]));
        insert.encoded = match &insert.rk {
            Some(rk) => Some(insert.encode_for(rk)?),
            None => None,
        };
        Ok(())
    }
}

fn finish<T>(answers: Vec<Option<Result<T>>>) -> Vec<Result<T>> {
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "no answer"))))
        .collect()
}
