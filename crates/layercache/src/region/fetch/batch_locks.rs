//! The load lock for batch loads (`EntryOptions::distributed_lock`): a batch takes the locks of
//! the keys it is about to load in one round trip, loads those, waits for the instances holding
//! the others to fill them, and loads (in a second loader call) what they did not fill before
//! `lock_wait` — as a single load does, key by key, but with one command per step for all keys.

use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};

use super::{
    batch::{LoadContext, ToLoad},
    RedisHeld,
};
use crate::{
    codec::Codec,
    error::Error,
    flight::Outcome,
    freshness::{token, unix_millis},
    key::CacheKey,
    options::millis_ceil,
    region::Region,
    remote::Remote,
};

/// The load locks a batch holds: renewed together in the background until released, and
/// released in the background if dropped without release.
pub(super) struct BatchLocks {
    l2: Remote,
    keys: Vec<String>,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl BatchLocks {
    fn new(l2: &Remote, keys: Vec<String>, token: String, ttl: Duration) -> Self {
        let renewal = {
            let (l2, keys, token) = (l2.clone(), keys.clone(), token.clone());
            tokio::spawn(async move {
                let ttl_ms = millis_ceil(ttl);
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    for key in &keys {
                        // A lock lost (expired and taken) is not renewed: `Ok(false)`.
                        let _ = l2.renew_lock(key, &token, ttl_ms).await;
                    }
                }
            })
        };
        Self {
            l2: l2.clone(),
            keys,
            token,
            renewal,
        }
    }

    /// Releases every lock (those still holding this batch's token), all at once.
    pub(super) async fn release(mut self) {
        self.renewal.abort();
        let keys = std::mem::take(&mut self.keys);
        let mut releases = release_all(&self.l2, keys, &self.token);
        while releases.join_next().await.is_some() {}
    }
}

impl Drop for BatchLocks {
    fn drop(&mut self) {
        self.renewal.abort();
        // Dropped without release (the batch task ended on its way): released in the
        // background rather than left for other instances to wait out.
        if !self.keys.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            let keys = std::mem::take(&mut self.keys);
            release_all(&self.l2, keys, &self.token).detach_all();
        }
    }
}

/// A task per lock releasing it (fred sends the commands back to back).
fn release_all(l2: &Remote, keys: Vec<String>, token: &str) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for key in keys {
        let (l2, token) = (l2.clone(), token.to_owned());
        set.spawn(async move {
            let _ = l2.release_lock(&key, &token).await;
        });
    }
    set
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Takes the load locks of `to_load` in one round trip: the keys whose lock it took or could
    /// not ask for (Redis down for it: loaded without, as a single load would), the keys whose
    /// lock another instance holds, and the locks taken.
    pub(super) async fn lock_many(
        &self,
        to_load: Vec<ToLoad<V>>,
    ) -> (Vec<ToLoad<V>>, Vec<ToLoad<V>>, Option<BatchLocks>) {
        let (Some(l2), Some(g)) = (&self.cache.l2, self.shared.state.generation()) else {
            return (to_load, Vec::new(), None);
        };
        let (lockable, mut mine): (Vec<_>, Vec<_>) = to_load
            .into_iter()
            .partition(|(_, _, (held, rkey, _))| *held != RedisHeld::Down && !rkey.is_empty());
        let lock_keys: Vec<String> = lockable
            .iter()
            .map(|(_, leader, _)| self.shared.state.lock_key(g, &leader.key()[4..]))
            .collect();
        let token = token();
        let ttl = self.cache.settings.lock_ttl;
        let taken = l2.try_lock_many(&lock_keys, &token, millis_ceil(ttl)).await;
        if taken.len() != lockable.len() {
            mine.extend(lockable);
            return (mine, Vec::new(), None);
        }
        let mut held = Vec::new();
        let mut theirs = Vec::new();
        for ((entry, key), taken) in lockable.into_iter().zip(lock_keys).zip(taken) {
            match taken {
                Ok(true) => {
                    self.counters().locks_acquired.incr();
                    held.push(key);
                    mine.push(entry);
                }
                Ok(false) => {
                    self.counters().lock_waits.incr();
                    theirs.push(entry);
                }
                Err(e) => {
                    let _ = self.l2_failed("lock", e);
                    mine.push(entry);
                }
            }
        }
        let locks = (!held.is_empty()).then(|| BatchLocks::new(l2, held, token, ttl));
        (mine, theirs, locks)
    }

    /// Waits (backing off, up to `lock_wait`) for the instances holding the locks of `theirs` to
    /// fill them, serving each key once its value is in Redis. Returns the keys still to load —
    /// those whose lock came free without a fill (taken now) and, past `lock_wait`, the rest
    /// (loaded without the lock, as a single load would) — and the locks taken.
    pub(super) async fn wait_for_holders(
        &self,
        theirs: Vec<ToLoad<V>>,
        outcomes: &mut [Option<Outcome<V>>],
        ctx: &LoadContext,
    ) -> (Vec<ToLoad<V>>, Option<BatchLocks>) {
        let (Some(l2), Some(g)) = (&self.cache.l2, self.shared.state.generation()) else {
            return (theirs, None);
        };
        if theirs.is_empty() {
            return (theirs, None);
        }
        let cache = &self.cache;
        let deadline = Instant::now() + cache.settings.lock_wait;
        let (token, ttl) = (token(), cache.settings.lock_ttl);
        let mut backoff = Duration::from_millis(1);
        let mut waiting = theirs;
        let mut taken = Vec::new();
        let mut taken_keys = Vec::new();
        // Keys whose read or lock Redis did not answer: they stop waiting and load without the
        // lock (the holder's value could not be seen even if it came), as a single load does.
        let mut without = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
            // What the holders filled meanwhile.
            let (still, failed) = self.serve_filled(l2, waiting, outcomes, ctx).await;
            waiting = still;
            self.stop_waiting(failed, &mut without);
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                cache.counters.lock_takeovers.add(waiting.len() as u64);
                tracing::warn!(cache.name = %cache.name, region = %self.shared.state.name, keys = waiting.len(), "gave up waiting for the load locks of a batch; loading without them");
                break;
            }
            // A lock its holder let go without a fill (its load failed): take it and load.
            let lock_keys: Vec<String> = waiting
                .iter()
                .map(|(_, leader, _)| self.shared.state.lock_key(g, &leader.key()[4..]))
                .collect();
            let now_taken = l2.try_lock_many(&lock_keys, &token, millis_ceil(ttl)).await;
            if now_taken.len() == waiting.len() {
                let mut still = Vec::with_capacity(waiting.len());
                let mut failed = Vec::new();
                for ((entry, key), t) in waiting.into_iter().zip(lock_keys).zip(now_taken) {
                    match t {
                        Ok(true) => {
                            self.counters().locks_acquired.incr();
                            taken_keys.push(key);
                            taken.push(entry);
                        }
                        Ok(false) => still.push(entry),
                        Err(e) => failed.push((entry, e)),
                    }
                }
                waiting = still;
                self.stop_waiting(failed, &mut without);
            }
            if waiting.is_empty() {
                break;
            }
        }
        // A holder may have filled and let go between the last read and the lock: look once
        // more at the keys whose lock was taken before loading them.
        let (mut taken, failed) = self.serve_filled(l2, taken, outcomes, ctx).await;
        taken.extend(failed.into_iter().map(|(entry, _)| entry));
        taken.extend(waiting);
        taken.extend(without);
        let locks = (!taken_keys.is_empty()).then(|| BatchLocks::new(l2, taken_keys, token, ttl));
        (taken, locks)
    }

    /// Keys whose read or lock Redis did not answer during the wait: out of the wait, into
    /// `without` (loaded without the lock); counted as takeovers and as Redis failures.
    fn stop_waiting(&self, failed: Vec<(ToLoad<V>, Error)>, without: &mut Vec<ToLoad<V>>) {
        let mut first = true;
        for (entry, e) in failed {
            self.counters().lock_takeovers.incr();
            if std::mem::take(&mut first) {
                let _ = self.l2_failed("lock", e);
            }
            without.push(entry);
        }
    }

    /// Serves every key of `waiting` whose value is in Redis now (a holder filled it); returns
    /// the others, apart from those whose read failed (with their error).
    async fn serve_filled(
        &self,
        l2: &Remote,
        waiting: Vec<ToLoad<V>>,
        outcomes: &mut [Option<Outcome<V>>],
        ctx: &LoadContext,
    ) -> (Vec<ToLoad<V>>, Vec<(ToLoad<V>, Error)>) {
        let mut failed = Vec::new();
        if waiting.is_empty() {
            return (waiting, failed);
        }
        let rkeys: Vec<String> = waiting
            .iter()
            .map(|(_, _, (_, rk, _))| rk.clone())
            .collect();
        let reads = l2.get_many(&rkeys).await;
        if reads.len() != waiting.len() {
            return (waiting, failed);
        }
        let now_ms = unix_millis();
        let mut still = Vec::with_capacity(waiting.len());
        for (entry, read) in waiting.into_iter().zip(reads) {
            let usable = match read {
                Ok(Some(bytes)) => self
                    .decode(&bytes, &entry.2 .1)
                    .ok()
                    .filter(|d| !d.meta.tombstone && !d.left(now_ms).is_zero()),
                Ok(None) => None,
                Err(e) if e.is_wrong_type() => None,
                Err(e) => {
                    failed.push((entry, e));
                    continue;
                }
            };
            match usable {
                Some(d) => {
                    let (at, leader, _) = entry;
                    let value = self
                        .serve_decoded(
                            &leader,
                            &ctx.options,
                            d,
                            ctx.generation,
                            ctx.tag_epoch,
                            now_ms,
                        )
                        .await;
                    outcomes[at] = Some(leader.finish(Ok(value)));
                }
                None => still.push(entry),
            }
        }
        (still, failed)
    }
}
