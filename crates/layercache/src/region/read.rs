//! The read API of [`Region`]: `get` and the `get_or_load` family, and the fetch they start
//! on an L1 miss.

use std::{borrow::Borrow, future::Future, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use crate::{
    codec::Codec,
    error::{BoxError, Error, ErrorKind, Result},
    flight::{self, Join},
    key::{validate_tags, CacheKey},
    options::EntryOptions,
};

use super::{
    fetch::{Fetch, Mode},
    Hit, Load, LoadFn, Region, Stale, MAX_REJOINS,
};

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Reads `key`: from the in-process tier, else from Redis (filling the in-process tier).
    /// `Ok(None)` when neither has it (or a "not found" is cached). Concurrent reads of one
    /// key share one Redis read.
    ///
    /// # Errors
    ///
    /// Only with [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate), when Redis
    /// fails. By default a Redis failure is logged and counted and the read answers
    /// `Ok(None)`. A corrupt or foreign entry in Redis is always a miss, counted in
    /// [`Stats::decode_errors`](crate::Stats).
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<Arc<V>>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ?Sized,
    {
        let k = self.l1_key(key);
        self.check_key(&k)?;
        match self.classify(&k, self.cache.l1.get(&k).await) {
            Hit::Fresh(v) | Hit::Refresh(v, _) => return Ok(Some(v)),
            Hit::Negative => return Ok(None),
            Hit::Stale(_) | Hit::Miss => {}
        }
        // Boxed: the miss path's large future must not be part of every hit's.
        Box::pin(self.fetch(k.to_vec(), self.shared.entry_options, None, None)).await
    }

    /// Reads `key`, or runs `loader` to produce it, stores it in both tiers and returns it
    /// (read-through), with the region's entry options.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Concurrent callers in this process share one Redis read and at most one loader run; the
    /// other callers' loaders are dropped unused. The shared work runs as its own task, so a
    /// caller that is cancelled (its future dropped) does not cancel it for the others — this
    /// is why the loader must be `Send + 'static`. A loader that fails or panics gives every
    /// waiting caller an [`ErrorKind::Loader`] error and caches nothing (unless fail-safe
    /// serves a stale value); the next call runs a loader again. With
    /// [`EntryOptions::distributed_lock`], one instance loads while the others wait for its
    /// value.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Loader`] when the loader fails, panics or passes its hard timeout and no
    /// stale value can be served; a Redis error only with
    /// [`L2ErrorPolicy::Propagate`](crate::L2ErrorPolicy::Propagate).
    pub async fn get_or_load<Q, F, Fut, E>(&self, key: &Q, loader: F) -> Result<Arc<V>>
    where
        K: Borrow<Q>,
        Q: CacheKey + ToOwned + ?Sized,
        Q::Owned: Send + 'static,
        F: FnOnce(Q::Owned) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.entry(key).or_load(loader).await
    }

    /// Every read-through: `make_load` makes the loader, on the miss path only (nothing is
    /// allocated for it on an L1 hit).
    pub(super) async fn read_through<Q>(
        &self,
        key: &Q,
        options: &EntryOptions,
        tags: &[&str],
        make_load: impl FnOnce() -> LoadFn<V>,
        negative_ok: bool,
    ) -> Result<Option<Arc<V>>>
    where
        Q: CacheKey + ?Sized,
    {
        options.validate()?;
        let tags = validate_tags(tags)?;
        let k = self.l1_key(key);
        self.check_key(&k)?;
        let fallback = match self.classify(&k, self.cache.l1.get(&k).await) {
            Hit::Fresh(v) => return Ok(Some(v)),
            Hit::Refresh(v, created_ms) => {
                let load = Load {
                    run: make_load(),
                    tags,
                };
                self.start_refresh(k.to_vec(), *options, load, created_ms);
                return Ok(Some(v));
            }
            Hit::Negative if negative_ok => return Ok(None),
            Hit::Negative | Hit::Miss => None,
            Hit::Stale(s) => Some(s),
        };
        let load = Load {
            run: make_load(),
            tags,
        };
        Box::pin(self.fetch(k.to_vec(), *options, Some(load), fallback)).await
    }

    /// Starts one background refresh of `k` (whose current value was created at
    /// `created_ms`), unless a fetch of it is already running.
    fn start_refresh(&self, k: Vec<u8>, options: EntryOptions, load: Load<V>, created_ms: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Join::Lead(leader) = self.cache.flights.join::<V>(&k) {
            let task = Fetch {
                region: self.clone(),
                options,
                load: Some(load),
                fallback: None,
                mode: Mode::Refresh { created_ms },
            };
            drop(rt.spawn(task.run(leader)));
        }
    }

    /// The miss path: join or lead the single flight for `k`.
    async fn fetch(
        &self,
        k: Vec<u8>,
        options: EntryOptions,
        mut load: Option<Load<V>>,
        fallback: Option<Stale<V>>,
    ) -> Result<Option<Arc<V>>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::NoRuntime,
                "layercache must be used inside a tokio runtime",
            )
        })?;
        let mut fallback = fallback;
        for attempt in 0..=MAX_REJOINS {
            let leader = match self.cache.flights.join::<V>(&k) {
                Join::Wait(rx) if attempt < MAX_REJOINS => {
                    self.cache.counters.coalesced.incr();
                    match flight::wait(rx).await {
                        Ok(None) if load.is_some() => continue,
                        other => return other,
                    }
                }
                Join::Wait(_) => self.cache.flights.lead_detached::<V>(&k),
                Join::Lead(leader) => leader,
            };
            // A load past its soft timeout answers early with the stale value while it goes
            // on: then the caller waits on the flight's answer, as every joiner does.
            // Otherwise it awaits the task itself (the cheaper wake-up).
            let early = fallback.is_some() && options.get_loader_soft_timeout().is_some();
            let answer = early.then(|| leader.subscribe());
            let task = Fetch {
                region: self.clone(),
                options,
                load: load.take(),
                fallback: fallback.take(),
                mode: Mode::Caller,
            };
            let span = tracing::debug_span!(
                "layercache.get",
                cache.name = %self.cache.name,
                region = %self.shared.state.name,
                level = tracing::field::Empty,
            );
            let handle = runtime.spawn(task.run(leader).instrument(span));
            if let Some(answer) = answer {
                return flight::wait(answer).await;
            }
            return match handle.await {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => {
                    Err(Error::new(ErrorKind::Internal, "the fetch task panicked"))
                }
                Err(_) => Err(Error::new(
                    ErrorKind::Closed,
                    "the fetch task was cancelled (its runtime is shutting down)",
                )),
            };
        }
        Ok(None)
    }
}
