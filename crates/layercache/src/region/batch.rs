//! Batch reads: [`Region::get_many`] and [`Region::get_or_load_many`] — L1 first, then one
//! Redis round trip for every key L1 missed and one loader call for every key both tiers
//! missed, with one answer per key in the caller's order.

use std::{
    borrow::Borrow,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use serde::{de::DeserializeOwned, Serialize};

use super::{fetch::BatchLoadFn, read::Hit, Region, Stale};
use crate::{
    codec::Codec,
    error::{BoxError, Result},
    hashing::KeyMap,
    key::{validate_tags, CacheKey},
    options::EntryOptions,
};

/// One answer per position of a batch (`None`: not answered yet).
type Answers<V> = Vec<Option<Result<Option<Arc<V>>>>>;

/// The distinct keys of a batch that L1 did not answer, and where each was asked.
struct Misses<O, V> {
    keys: Vec<Vec<u8>>,
    /// A stale value L1 still held for the key (fail-safe's fallback).
    fallbacks: Vec<Option<Stale<V>>>,
    owned: Vec<O>,
    positions: Vec<Vec<usize>>,
    /// Hot-path note: a [`KeyMap`] (foldhash), as every per-key table; the standard
    /// library's SipHash was a visible share of a batch's CPU.
    index: KeyMap<Vec<u8>, usize>,
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Reads many keys: from L1, else from Redis in one round trip for all of them (commands
    /// of at most 1,000 keys), filling L1. One answer per key, in the order asked: the value,
    /// `Ok(None)` when neither tier has it, or that key's own error (e.g.
    /// [`ErrorKind::KeyTooLarge`](crate::ErrorKind::KeyTooLarge); a Redis error only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate)). A Redis failure is the
    /// failure of the keys its command carried only: on a Redis Cluster, a primary that does not
    /// answer fails the keys it holds, and the other keys are served. A key asked twice is
    /// fetched once. Keys another call is fetching are waited for, not fetched twice.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// # let cache = layercache::LayerCache::builder("app").build().await?;
    /// let users = cache.region::<u64, String>("users").build().await?;
    /// users.insert(&1, "Ada".to_owned()).await?;
    /// let found = users.get_many(&[1, 2, 1]).await;
    /// assert_eq!(found[0].as_ref().unwrap().as_deref().map(String::as_str), Some("Ada"));
    /// assert!(found[1].as_ref().unwrap().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many<'k, Q, I>(&self, keys: I) -> Vec<Result<Option<Arc<V>>>>
    where
        I: IntoIterator<Item = &'k Q>,
        K: Borrow<Q>,
        Q: CacheKey + ?Sized + 'k,
    {
        let (mut answers, misses) = self.answer_from_l1(keys, |_| ());
        if misses.keys.is_empty() {
            return finish(answers);
        }
        let options = self.shared.entry_options;
        let outcomes = self
            .fetch_many(misses.keys, misses.fallbacks, None, options, None)
            .await;
        for (outcome, positions) in outcomes.into_iter().zip(misses.positions) {
            for at in positions {
                answers[at] = Some(outcome.clone());
            }
        }
        finish(answers)
    }

    /// Reads many keys, loading every key that neither tier has with **one** call of
    /// `batch_loader`, which gets exactly those keys and returns the values it found as
    /// `(key, value)` pairs (a `HashMap`, a `Vec` …). A key it does not return is "not
    /// found" (cached for [`EntryOptions::negative_ttl`](crate::EntryOptions::negative_ttl)
    /// when set); keys it returns that were not asked are ignored (and logged). Loaded values
    /// are written to both tiers with the region's entry options (the call's and its tags
    /// with [`many`](Self::many)), each with the same
    /// conditional fill as [`get_or_load`](Self::get_or_load) (a concurrent write or
    /// invalidation wins).
    ///
    /// One answer per key, in the order asked: the value, `Ok(None)` for "not found", or that
    /// key's error — a failing, panicking or timed-out batch loader fails the keys it was
    /// asked for, not the ones found in a tier. Single flight holds per key: a key another call
    /// (single or batch) is already fetching is waited for, not loaded twice. The one exception
    /// makes a second call: a key whose concurrent *plain read* (`get`) found nothing is loaded
    /// after that read ends, in a second call with just those keys.
    ///
    /// A failed batch load serves each key's stale value when fail-safe allows (as a single
    /// load would). The region's loader timeouts apply to the batch loader as to a single
    /// load: past [`EntryOptions::loader_soft_timeout`](crate::EntryOptions::loader_soft_timeout)
    /// every key with a stale value at hand is answered with it (so are single callers waiting
    /// on it) while the load goes on and fills both tiers when it ends — this call returns then
    /// if that answers every key it asked, and waits for the load otherwise; past
    /// [`loader_hard_timeout`](crate::EntryOptions::loader_hard_timeout) the load is abandoned.
    ///
    /// Under [`EntryOptions::distributed_lock`](crate::EntryOptions::distributed_lock) the batch
    /// takes the load locks of the keys it is about to load in one round trip, loads those, waits
    /// for the instances holding the others to fill them, and loads in a second call what they
    /// did not (a lock let go without a fill is taken; past `lock_wait` the keys load without
    /// it). Tags, and options for one call: [`many`](Self::many).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// # let cache = layercache::LayerCache::builder("app").build().await?;
    /// let users = cache.region::<u64, String>("users").build().await?;
    /// let found = users
    ///     .get_or_load_many(&[1, 2, 3], |ids: Vec<u64>| async move {
    ///         // One query for every id both tiers missed; 3 does not exist.
    ///         let rows: Vec<(u64, String)> =
    ///             ids.into_iter().filter(|id| *id != 3).map(|id| (id, format!("user {id}"))).collect();
    ///         Ok::<_, std::io::Error>(rows)
    ///     })
    ///     .await;
    /// assert_eq!(found[1].as_ref().unwrap().as_deref().map(String::as_str), Some("user 2"));
    /// assert!(found[2].as_ref().unwrap().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_load_many<'k, Q, I, F, Fut, R, E>(
        &self,
        keys: I,
        batch_loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        I: IntoIterator<Item = &'k Q>,
        K: Borrow<Q>,
        Q: CacheKey + ToOwned + ?Sized + 'k,
        Q::Owned: Send + 'static,
        F: FnMut(Vec<Q::Owned>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: IntoIterator<Item = (Q::Owned, V)>,
        E: Into<BoxError> + Send + 'static,
    {
        let options = self.shared.entry_options;
        self.get_or_load_many_as(keys, &options, &[], batch_loader)
            .await
    }

    /// [`get_or_load_many`](Self::get_or_load_many) with these options and tags (see
    /// [`ManyRequest::get_or_load`](crate::ManyRequest::get_or_load)).
    pub(in crate::region) async fn get_or_load_many_as<'k, Q, I, F, Fut, R, E>(
        &self,
        keys: I,
        options: &EntryOptions,
        tags: &[&str],
        batch_loader: F,
    ) -> Vec<Result<Option<Arc<V>>>>
    where
        I: IntoIterator<Item = &'k Q>,
        K: Borrow<Q>,
        Q: CacheKey + ToOwned + ?Sized + 'k,
        Q::Owned: Send + 'static,
        F: FnMut(Vec<Q::Owned>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: IntoIterator<Item = (Q::Owned, V)>,
        E: Into<BoxError> + Send + 'static,
    {
        let tags = match options.validate().and_then(|()| validate_tags(tags)) {
            Ok(tags) => tags,
            Err(e) => return vec![Err(e); keys.into_iter().count()],
        };
        let options = *options;
        let (mut answers, misses) = self.answer_from_l1(keys, |q: &Q| q.to_owned());
        if misses.keys.is_empty() {
            return finish(answers);
        }
        let Misses {
            keys,
            fallbacks,
            owned,
            positions,
            index,
        } = misses;
        let owned: Arc<Mutex<Vec<Option<Q::Owned>>>> =
            Arc::new(Mutex::new(owned.into_iter().map(Some).collect()));
        let region = self.clone();
        let mut batch_loader = batch_loader;
        // Shared by every call of the loader (there may be a second one), not copied.
        let index = Arc::new(index);
        let load: BatchLoadFn<V> = Box::new(move |asked: Vec<usize>| {
            // Whether each position was asked of this call: one lookup per row the loader
            // returns (a search of `asked` per row made 100,000 keys quadratic).
            let mut wanted = vec![false; index.len()];
            let keys: Vec<Q::Owned> = {
                let mut owned = owned.lock().unwrap_or_else(PoisonError::into_inner);
                asked
                    .iter()
                    .filter_map(|at| {
                        if let Some(w) = wanted.get_mut(*at) {
                            *w = true;
                        }
                        owned.get_mut(*at)?.take()
                    })
                    .collect()
            };
            let load = batch_loader(keys);
            let (region, index) = (region.clone(), index.clone());
            Box::pin(async move {
                let rows = load.await.map_err(Into::into)?;
                let mut found = Vec::new();
                let mut unasked = 0;
                for (key, value) in rows {
                    match index.get(&*region.l1_key(key.borrow())) {
                        Some(&at) if wanted.get(at).copied().unwrap_or(false) => {
                            found.push((at, value));
                        }
                        _ => unasked += 1,
                    }
                }
                Ok((found, unasked))
            })
        });
        let outcomes = self
            .fetch_many(keys, fallbacks, Some(load), options, tags)
            .await;
        for (outcome, positions) in outcomes.into_iter().zip(positions) {
            for at in positions {
                answers[at] = Some(outcome.clone());
            }
        }
        finish(answers)
    }

    /// Answers what L1 can (and every key's own error), and gathers the distinct rest.
    fn answer_from_l1<'k, Q, I, O>(
        &self,
        keys: I,
        own: impl Fn(&Q) -> O,
    ) -> (Answers<V>, Misses<O, V>)
    where
        I: IntoIterator<Item = &'k Q>,
        Q: CacheKey + ?Sized + 'k,
    {
        let mut answers = Vec::new();
        let mut misses = Misses {
            keys: Vec::new(),
            fallbacks: Vec::new(),
            owned: Vec::new(),
            positions: Vec::new(),
            index: KeyMap::default(),
        };
        let keys: Vec<&Q> = keys.into_iter().collect();
        for (at, key) in keys.into_iter().enumerate() {
            let k = self.l1_key(key);
            if let Err(e) = self.check_key(&k) {
                answers.push(Some(Err(e)));
                continue;
            }
            if let Some(&slot) = misses.index.get(&*k) {
                misses.positions[slot].push(at);
                answers.push(None);
                continue;
            }
            let mut hit = self.classify(&k, self.cache.l1.get(&k));
            if matches!(hit, Hit::Miss) && self.cache.l1.keeps() {
                hit = self.classify_kept(&k);
            }
            let answer = match hit {
                Hit::Fresh(v) | Hit::Refresh(v, _) => Some(Ok(Some(v))),
                Hit::Negative => Some(Ok(None)),
                hit @ (Hit::Stale(_) | Hit::Miss) => {
                    misses.index.insert(k.to_vec(), misses.keys.len());
                    misses.keys.push(k.to_vec());
                    misses.fallbacks.push(match hit {
                        Hit::Stale(s) => Some(s),
                        _ => None,
                    });
                    misses.owned.push(own(key));
                    misses.positions.push(vec![at]);
                    None
                }
            };
            answers.push(answer);
        }
        (answers, misses)
    }
}

fn finish<V>(answers: Answers<V>) -> Vec<Result<Option<Arc<V>>>> {
    answers
        .into_iter()
        .map(|a| {
            a.unwrap_or_else(|| {
                Err(crate::Error::new(
                    crate::ErrorKind::Internal,
                    "a batch left a key without an answer",
                ))
            })
        })
        .collect()
}
