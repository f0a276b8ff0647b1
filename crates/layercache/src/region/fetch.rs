//! One flight's work, run as its own task: read Redis, maybe take the distributed lock, run
//! the loader within its timeouts, fall back to a stale value, and fill both tiers. This file
//! decides what happens in what order (`Fetch::work`); the steps are in `fetch/steps.rs`.

mod batch;
mod batch_locks;
mod batch_read;
mod batch_tags;
mod lock_guard;
mod panics;
mod redis_read;
mod steps;

pub(super) use batch::BatchLoadFn;
use lock_guard::LockGuard;
use redis_read::{erase, fill, Read};
pub(super) use redis_read::{AfterRead, Step};

use std::{sync::Arc, time::Instant};

use serde::{de::DeserializeOwned, Serialize};

use super::{Load, Loaded, Region, Stale, WritePlan};
use crate::{
    codec::Codec,
    flight::{Leader, Outcome},
    key::{tag_mark_key, CacheKey},
    options::EntryOptions,
    remote::{SeenEntry, WriteMode},
};

/// Why a fetch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A caller waits for it.
    Caller,
    /// An early refresh in the background: nobody waits; the current value (created at
    /// `created_ms`) stays meanwhile. A newer value found in Redis (another instance
    /// refreshed) is used instead of loading.
    Refresh { created_ms: u64 },
}

/// What the Redis read found, when it found no usable value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RedisHeld {
    /// No Redis tier.
    Off,
    /// No entry: a load fills it with `SET … NX` (a concurrent write wins).
    Nothing,
    /// These bytes (a tombstone, a stale or due value, a corrupt entry): a load replaces them
    /// only if the key still holds exactly them (a concurrent write or invalidation wins).
    SeenEntry(SeenEntry),
    /// Another Redis type at our key: a load overwrites it.
    Foreign,
    /// An entry a load must not replace (a newer format's).
    Keep,
    /// Redis failed (or the generation is unknown): do not pay another timeout writing.
    Down,
}

impl RedisHeld {
    /// How a load may write, if at all.
    fn fill(&self) -> Option<WriteMode> {
        match self {
            Self::Nothing => Some(WriteMode::Nx),
            Self::SeenEntry(seen) => Some(WriteMode::Cas(seen.clone())),
            Self::Foreign => Some(WriteMode::Set),
            Self::Off | Self::Keep | Self::Down => None,
        }
    }
}

/// The flight's work.
pub(super) struct Fetch<K: ?Sized, V, C> {
    pub(super) region: Region<K, V, C>,
    pub(super) options: EntryOptions,
    pub(super) load: Option<Load<V>>,
    pub(super) fallback: Option<Stale<V>>,
    pub(super) mode: Mode,
}

/// What a load's Redis fill depends on.
struct FillContext<'a> {
    /// What the Redis read found.
    found: RedisHeld,
    /// The load's tags' marks, read before it ran.
    marks: &'a [(String, Option<Vec<u8>>)],
    /// When the Redis read was made.
    read_at: Instant,
    /// The region generation the key was made for: the fill lands only while it is still the
    /// region's generation in Redis. A generation key lost with everything else (`FLUSHALL`, a
    /// restart empty) or moved by another instance fences the fill, and the instance re-reads
    /// the generation at once instead of at its next renewal, so two instances never go on
    /// filling two generations.
    fence: Option<u64>,
}

impl FillContext<'_> {
    /// Whether the load may still write. Conditional writes prove that nothing changed since
    /// the read only while what a concurrent write left (a value, a tombstone) still lives: a
    /// fetch that took as long as the shortest lifetime in play does not write.
    fn in_time(&self, plan: &WritePlan, region: &EntryOptions) -> bool {
        self.read_at.elapsed() < plan.ttl.min(region.get_ttl())
    }
}

/// The outcome of trying to take the lock.
enum Lock<V> {
    Held(Box<LockGuard>),
    /// Another instance loaded the value while we waited (`None`: a cached "not found").
    Found(Option<Arc<V>>),
    /// No lock: load anyway (the wait ran out, or Redis refused the lock).
    Without,
}

impl<K, V, C> Fetch<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(super) async fn run(self, leader: Leader<V>) -> Outcome<V> {
        let outcome = self.work(&leader).await;
        leader.finish(outcome)
    }

    async fn work(mut self, leader: &Leader<V>) -> Outcome<V> {
        match self.read(leader).await? {
            Step::Served(value) => Ok(value),
            Step::Load(after) => self.load(leader, after).await,
        }
    }

    /// The flight's first step, reading Redis: it serves the value, or says what the load that
    /// follows must know. (A caller with a loader runs this step in its own task and spawns
    /// only the load: see `Region::fetch`.)
    pub(super) async fn read(&mut self, leader: &Leader<V>) -> crate::error::Result<Step<V>> {
        let r = &self.region;
        let cache = &r.cache;
        // Captured before the read: what is read now is filled as of now.
        let generation = r.shared.state.generation_raw();
        let tag_epoch = cache.l1.tag_epoch();
        let read_at = Instant::now();
        let at = (generation, tag_epoch);
        let want_lock = self.load.is_some() && self.options.get_distributed_lock();
        let read = r
            .read_redis(
                leader,
                &self.options,
                self.mode,
                at,
                &mut self.fallback,
                want_lock,
            )
            .await?;
        Ok(match read {
            Read::Served(value) => Step::Served(value),
            Read::Load {
                found,
                rkey,
                fence,
                lock,
            } => Step::Load(AfterRead {
                found,
                rkey,
                fence,
                lock,
                generation,
                tag_epoch,
                read_at,
            }),
        })
    }

    /// The flight's second step, after a Redis read that served nothing: the load (under the
    /// lock, within its timeouts, falling back to a stale value) and the fills.
    pub(super) async fn load(self, leader: &Leader<V>, after: AfterRead) -> Outcome<V> {
        let Fetch {
            region: r,
            options,
            load,
            fallback,
            mode,
        } = self;
        let cache = &r.cache;
        let span = tracing::Span::current();
        let AfterRead {
            mut found,
            rkey,
            fence,
            lock: early_lock,
            generation,
            tag_epoch,
            read_at,
        } = after;
        if mode == Mode::Caller {
            r.counters().misses.incr();
        }
        let Some(Load { run, tags }) = load else {
            span.record("level", "none");
            return Ok(None);
        };
        span.record("level", "loader");
        // Before the load reads its source: the marks of its tags, which its fill must still
        // find unchanged (a tag invalidated meanwhile replaces its mark).
        let mut marks = Vec::new();
        if let (Some(l2), Some(tags), Some(_)) = (&cache.l2, tags.as_deref(), found.fill()) {
            if !tags.is_empty() && !rkey.is_empty() {
                let keys: Vec<String> = tags.iter().map(|t| tag_mark_key(&cache.name, t)).collect();
                match l2.marks(&rkey, keys.clone()).await {
                    Ok(values) => marks = keys.into_iter().zip(values).collect(),
                    Err(e) => {
                        r.l2_failed("get tag marks", e)?;
                        found = RedisHeld::Down;
                    }
                }
            }
        }

        let lock = if let Some(guard) = early_lock {
            // Taken with the read, which found nothing: one round trip for both.
            Some(guard)
        } else if options.get_distributed_lock() && !rkey.is_empty() && found != RedisHeld::Down {
            match r
                .lock_or_wait(leader, &rkey, &options, (generation, tag_epoch), mode)
                .await
            {
                Lock::Found(v) => return Ok(v),
                Lock::Held(guard) => Some(guard),
                Lock::Without => None,
            }
        } else {
            None
        };

        let early = fallback.as_ref().map(|s| s.value.clone());
        let loaded = r.run_loader(run, &options, early, leader, mode).await;
        let outcome = match loaded {
            Ok((Loaded { value, ttl }, took)) => {
                let options = r.options_after_load(&options, ttl, value.is_some());
                let redis = FillContext {
                    found,
                    marks: &marks,
                    read_at,
                    fence,
                };
                r.store_loaded(
                    leader, &rkey, redis, value, took, tags, &options, generation, tag_epoch,
                )
                .await
            }
            Err(e) => {
                r.fail_safe(leader, fallback, &options, generation, tag_epoch, e)
                    .await
            }
        };
        if let Some(guard) = lock {
            guard.release().await;
        }
        outcome
    }
}
