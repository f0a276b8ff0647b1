//! The flights of a batch (`get_many`, `get_or_load_many`): one flight per key as for a single
//! read, so single-key callers and other batches join them (and the batch joins theirs), but
//! one Redis round trip for all the keys it leads and one loader call for all that missed.
//!
//! Order matters for overlapping batches: a batch never waits for another flight before its own
//! load has run and its own flights have finished, so two batches that lead each other's keys
//! cannot wait on each other.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use super::{FillContext, RedisHeld};
use crate::{
    codec::Codec,
    error::{BoxError, Error, ErrorKind},
    flight::{self, Join, Leader, Outcome},
    key::CacheKey,
    region::{Region, Stale},
    remote::{BatchEntry, BatchWrite, BoxFuture, Filled},
};

/// A batch loader, type-erased: given the positions (in the batch's list of distinct keys) of
/// the keys to load, what it found — by position — and how many keys it returned that were not
/// asked for.
pub(in crate::region) type BatchLoadFn<V> = Box<
    dyn FnMut(Vec<usize>) -> BoxFuture<'static, Result<(Vec<(usize, V)>, usize), BoxError>> + Send,
>;

/// What the Redis read of a key this batch leads came to.
pub(super) enum After<V> {
    /// A fresh value (or a cached "not found"), put in L1.
    Served(Option<Arc<V>>),
    /// To load: what Redis held, the key, the generation it was made for.
    Load(RedisHeld, String, Option<u64>),
    /// The key could not be read, and the error policy says so to its callers.
    Failed(Error),
}

/// Where a batch's answers go when they come early (every key answered, some with a stale value,
/// while the load goes on past its soft timeout).
type Early<V> = tokio::sync::oneshot::Sender<Vec<Outcome<V>>>;

/// A key to load: its position, its flight, and what Redis held, its Redis key, the generation
/// its read was made under.
pub(super) type ToLoad<V> = (usize, Leader<V>, (RedisHeld, String, Option<u64>));

/// What a batch's loads and fills are made under: the region's options, the generation and tag
/// epoch of its read, and when the read began.
#[derive(Clone)]
pub(super) struct LoadContext {
    pub(super) options: crate::options::EntryOptions,
    /// The call's tags (written with every value it loads).
    pub(super) tags: crate::region::Tags,
    pub(super) generation: u64,
    pub(super) tag_epoch: u64,
    pub(super) read_at: Instant,
}

/// A key this batch leads: its position, its flight, and what its read came to.
pub(super) type Led<V> = (usize, Leader<V>, After<V>);

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Fetches the distinct L1 keys `keys` (L1 missed them), loading what neither tier has
    /// with `load` if given; one outcome per key, in order. Runs as its own task, so a caller
    /// that is cancelled does not fail the flights others joined.
    pub(in crate::region) async fn fetch_many(
        &self,
        keys: Vec<Vec<u8>>,
        fallbacks: Vec<Option<Stale<V>>>,
        load: Option<BatchLoadFn<V>>,
        options: crate::options::EntryOptions,
        tags: crate::region::Tags,
    ) -> Vec<Outcome<V>> {
        let region = self.clone();
        let span = tracing::debug_span!(
            "layercache.get_many",
            cache.name = %self.cache.name,
            region = %self.shared.state.name,
            keys = keys.len(),
        );
        let n = keys.len();
        let (early_tx, early_rx) = tokio::sync::oneshot::channel();
        let mut task = tokio::spawn(
            region
                .batch(keys, fallbacks, load, (options, tags), early_tx)
                .instrument(span),
        );
        // Past the loader's soft timeout, with a stale value for every key still loading, the
        // batch answers early (see `lead`) and goes on in its task.
        let joined = tokio::select! {
            biased;
            joined = &mut task => joined,
            Ok(early) = early_rx => return early,
        };
        match joined {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let error = if e.is_panic() {
                    Error::new(ErrorKind::Internal, "the batch task panicked")
                } else {
                    Error::new(ErrorKind::Closed, "the batch task was cancelled")
                };
                vec![Err(error); n]
            }
        }
    }

    async fn batch(
        self,
        keys: Vec<Vec<u8>>,
        mut fallbacks: Vec<Option<Stale<V>>>,
        mut load: Option<BatchLoadFn<V>>,
        options: (crate::options::EntryOptions, crate::region::Tags),
        early: Early<V>,
    ) -> Vec<Outcome<V>> {
        fallbacks.resize_with(keys.len(), || None);
        let mut outcomes: Vec<Option<Outcome<V>>> = keys.iter().map(|_| None).collect();
        let mut waiting = Vec::new();
        let mut led = Vec::new();
        for (at, k) in keys.iter().enumerate() {
            match self.cache.flights.join::<V>(k) {
                Join::Lead(leader) => led.push((at, leader)),
                Join::Wait(rx) => waiting.push((at, rx)),
            }
        }
        // An early answer needs every key answered: not while others' flights have some.
        let mut early = waiting.is_empty().then_some(early);
        self.lead(
            led,
            &options,
            &mut load,
            &mut outcomes,
            &mut fallbacks,
            &mut early,
        )
        .await;
        // Only now (this batch's flights have finished): the keys others were fetching.
        let mut again = Vec::new();
        for (at, rx) in waiting {
            self.counters().coalesced.incr();
            match flight::wait(rx).await {
                // A plain read found nothing: with a loader, the key is this batch's to load.
                Ok(None) if load.is_some() => again.push(at),
                outcome => outcomes[at] = Some(outcome),
            }
        }
        if !again.is_empty() {
            let mut led = Vec::new();
            for at in again {
                match self.cache.flights.join::<V>(&keys[at]) {
                    Join::Lead(leader) => led.push((at, leader)),
                    Join::Wait(rx) => outcomes[at] = Some(flight::wait(rx).await),
                }
            }
            self.lead(
                led,
                &options,
                &mut load,
                &mut outcomes,
                &mut fallbacks,
                &mut None,
            )
            .await;
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "no outcome"))))
            .collect()
    }

    /// Reads the keys this batch leads in one round trip, loads what missed in one call, and
    /// finishes their flights. Past the loader's soft timeout every key with a stale value at
    /// hand is answered with it (its flight's waiters too) while the load goes on, as a single
    /// load does; when that answers the whole batch, the caller gets it through `early`.
    async fn lead(
        &self,
        led: Vec<(usize, Leader<V>)>,
        (options, tags): &(crate::options::EntryOptions, crate::region::Tags),
        load: &mut Option<BatchLoadFn<V>>,
        outcomes: &mut [Option<Outcome<V>>],
        fallbacks: &mut [Option<Stale<V>>],
        early: &mut Option<Early<V>>,
    ) {
        if led.is_empty() {
            return;
        }
        let generation = self.shared.state.generation_raw();
        let tag_epoch = self.cache.l1.tag_epoch();
        let read_at = Instant::now();
        let read = match self
            .read_many(led, options, (generation, tag_epoch), fallbacks)
            .await
        {
            Ok(read) => read,
            Err((leaders, e)) => {
                for (at, leader) in leaders {
                    outcomes[at] = Some(leader.finish(Err(e.clone())));
                }
                return;
            }
        };
        let mut to_load = Vec::new();
        for (at, leader, after) in read {
            match after {
                After::Served(value) => outcomes[at] = Some(leader.finish(Ok(value))),
                After::Failed(e) => outcomes[at] = Some(leader.finish(Err(e))),
                After::Load(held, rkey, fence) => {
                    self.counters().misses.incr();
                    to_load.push((at, leader, (held, rkey, fence)));
                }
            }
        }
        let Some(loader) = load.as_mut() else {
            for (at, leader, _) in to_load {
                outcomes[at] = Some(leader.finish(Ok(None)));
            }
            return;
        };
        if to_load.is_empty() {
            return;
        }
        let ctx = LoadContext {
            options: *options,
            tags: tags.clone(),
            generation,
            tag_epoch,
            read_at,
        };
        if !options.get_distributed_lock() {
            self.load_and_settle(to_load, loader, outcomes, fallbacks, early, &ctx)
                .await;
            return;
        }
        // Under the load lock: this batch loads the keys whose lock it took (or could not
        // ask for), then waits for the instances holding the others to fill them, and loads
        // (in a second call) what they did not fill in time.
        let (mine, theirs, locks) = self.lock_many(to_load).await;
        let early = if theirs.is_empty() { early } else { &mut None };
        self.load_and_settle(mine, loader, outcomes, fallbacks, early, &ctx)
            .await;
        if let Some(locks) = locks {
            locks.release().await;
        }
        let (left, locks) = self.wait_for_holders(theirs, outcomes, &ctx).await;
        self.load_and_settle(left, loader, outcomes, fallbacks, &mut None, &ctx)
            .await;
        if let Some(locks) = locks {
            locks.release().await;
        }
    }

    /// Loads `to_load` with one call of `loader`, writes what it found to both tiers in one
    /// batch command, and finishes the keys' flights (see [`lead`](Self::lead) for the soft
    /// timeout and `early`).
    async fn load_and_settle(
        &self,
        mut to_load: Vec<ToLoad<V>>,
        loader: &mut BatchLoadFn<V>,
        outcomes: &mut [Option<Outcome<V>>],
        fallbacks: &mut [Option<Stale<V>>],
        early: &mut Option<Early<V>>,
        ctx: &LoadContext,
    ) {
        if to_load.is_empty() {
            return;
        }
        let LoadContext {
            options,
            ref tags,
            generation,
            tag_epoch,
            read_at,
        } = *ctx;
        // Tagged: before the loader runs, the marks each key's fill must still find.
        let tags: &[String] = tags.as_deref().unwrap_or_default();
        let marks = self.read_marks(&mut to_load, tags, outcomes).await;
        if to_load.is_empty() {
            return;
        }
        self.counters().loads.incr();
        let started = Instant::now();
        let asked: Vec<usize> = to_load.iter().map(|(at, _, _)| *at).collect();
        let soft = options
            .get_loader_soft_timeout()
            .filter(|_| to_load.iter().any(|(at, _, _)| fallbacks[*at].is_some()));
        let answer_stale = || {
            self.counters().soft_timeouts.incr();
            let mut answers: Vec<Option<Outcome<V>>> = outcomes.to_vec();
            for (at, leader, _) in &to_load {
                if let Some(stale) = &fallbacks[*at] {
                    self.counters().fail_safe_serves.incr();
                    let answer = Ok(Some(stale.value.clone()));
                    leader.answer_early(answer.clone());
                    answers[*at] = Some(answer);
                }
            }
            let every: Option<Vec<Outcome<V>>> = answers.into_iter().collect();
            if let (Some(answers), Some(tx)) = (every, early.take()) {
                let _ = tx.send(answers);
            }
        };
        let hard = options.get_loader_hard_timeout();
        let loaded =
            run_batch_loader(loader(asked), soft, hard, answer_stale, self.counters()).await;
        let took = started.elapsed();
        let mut found = match loaded {
            Ok((found, unasked)) => {
                if unasked > 0 {
                    tracing::warn!(cache.name = %self.cache.name, region = %self.shared.state.name, unasked, "a batch loader returned keys it was not asked for; ignored");
                }
                found
            }
            Err(e) => {
                self.counters().load_errors.incr();
                // Each key serves its stale value if fail-safe allows, as a single load would.
                for (at, leader, _) in to_load {
                    let fallback = fallbacks[at].take();
                    let epoch = (generation, tag_epoch);
                    let outcome = self
                        .fail_safe(&leader, fallback, &options, epoch.0, epoch.1, e.clone())
                        .await;
                    outcomes[at] = Some(leader.finish(outcome));
                }
                return;
            }
        };
        // The value for each position, the last the loader gave when it repeated a key (a
        // table by position: taking each from a sorted list made 100,000 keys quadratic).
        let mut by_at: Vec<Option<V>> = outcomes.iter().map(|_| None).collect();
        for (at, value) in found.drain(..) {
            if let Some(slot) = by_at.get_mut(at) {
                *slot = Some(value);
            }
        }
        // Every write in one batch command: one round trip, one script run per 200 keys.
        let mut prepared = Vec::with_capacity(to_load.len());
        let mut entries = Vec::new();
        let mut slots = Vec::new();
        let mut batch_fence = None;
        let mut expected = marks.expected.into_iter();
        let tags_of = (!tags.is_empty()).then_some(tags);
        for (at, leader, (held, rkey, fence)) in to_load {
            let value = by_at.get_mut(at).and_then(Option::take);
            // (The marks go with the batch entry; the fill context's are a single load's.)
            let redis = FillContext {
                found: held,
                marks: &[],
                read_at,
                fence,
            };
            let expected = expected.next().unwrap_or_default();
            let mut ready = self
                .prepare_loaded(&leader, &rkey, &redis, value, tags_of, &options, took)
                .await;
            if let Some((enc, mode)) = ready.as_mut().and_then(|p| p.write.take()) {
                self.count_write(&enc);
                batch_fence = batch_fence.or(fence);
                slots.push(prepared.len());
                entries.push(BatchEntry {
                    ttl_ms: ready.as_ref().map_or(0, |p| p.plan.physical_ms()),
                    key: rkey,
                    value: enc.bytes,
                    mode,
                    version: None,
                    marks: expected,
                });
            }
            prepared.push((at, leader, ready));
        }
        let mut written: Vec<Option<crate::error::Result<Filled>>> =
            prepared.iter().map(|_| None).collect();
        if let (Some(l2), false) = (&self.cache.l2, entries.is_empty()) {
            let batch = BatchWrite {
                entries,
                fence: batch_fence,
                generation_key: &self.shared.state.generation_key,
                tags: marks.tag_sets,
                marks: marks.keys,
            };
            match l2.fill_many(batch).await {
                Ok(results) => {
                    for (slot, result) in slots.into_iter().zip(results) {
                        written[slot] = Some(result);
                    }
                }
                Err(e) => {
                    for slot in slots {
                        written[slot] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for ((at, leader, ready), written) in prepared.into_iter().zip(written) {
            let outcome = match ready {
                Some(ready) => {
                    let epoch = (generation, tag_epoch);
                    let tags = ctx.tags.clone();
                    self.settle_loaded(&leader, ready, written, took, tags, &options, epoch)
                        .await
                }
                None => Ok(None),
            };
            outcomes[at] = Some(leader.finish(outcome));
        }
    }
}

/// Runs a batch loader as its own task (so a panic is caught), within its timeouts (see
/// [`await_load`](super::steps::await_load)); a hard timeout is counted.
async fn run_batch_loader<T: Send + 'static>(
    load: BoxFuture<'static, Result<T, BoxError>>,
    soft: Option<Duration>,
    hard: Option<Duration>,
    past_soft: impl FnOnce(),
    counters: &crate::stats::Counters,
) -> Result<T, Error> {
    let deadline = hard.map(|h| tokio::time::Instant::now() + h);
    let mut handle = tokio::spawn(load);
    let Some(joined) = super::steps::await_load(&mut handle, soft, deadline, past_soft).await
    else {
        counters.hard_timeouts.incr();
        return Err(Error::new(
            ErrorKind::Loader,
            "the batch loader passed its hard timeout",
        ));
    };
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::new(ErrorKind::Loader, "the batch loader failed").with_source(e)),
        Err(e) if e.is_panic() => Err(Error::new(ErrorKind::Loader, "the batch loader panicked")),
        Err(_) => Err(Error::new(
            ErrorKind::Loader,
            "the batch loader was cancelled",
        )),
    }
}
