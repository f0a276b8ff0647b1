//! [`LayerCache`]: the shared engine behind every region.

use std::{
    any::TypeId,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    builder::LayerCacheBuilder,
    bus::{BusHandle, BusStatus, CoherenceLossPolicy, Entry, FlushReason, InstanceId},
    codec::{Bincode, Codec},
    envelope::FORMAT_VERSION,
    error::{Error, Result},
    flight::Flights,
    freshness::token,
    journal::{Journal, Pending, Recorded},
    key::{
        generation_key, redis_key, region_prefix, tag_key, tag_mark_key, validate_name,
        validate_tags, CacheKey,
    },
    l1::L1,
    l2::L2,
    options::{millis_ceil, EntryOptions, L2ErrorPolicy},
    region::RegionBuilder,
    stats::{Counters, Stats},
};

/// Cache-wide settings fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) time_to_live: Duration,
    pub(crate) entry_options: EntryOptions,
    pub(crate) compression_threshold: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) error_policy: L2ErrorPolicy,
    pub(crate) command_timeout: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) max_key_bytes: usize,
    /// Acknowledged writes: how long `insert`/`invalidate` wait for every live instance.
    pub(crate) ack_timeout: Option<Duration>,
    /// How many keys the write journal remembers one by one.
    pub(crate) repair_capacity: usize,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A region known to this cache: one name, one value type, one schema, one codec, and the
/// region's current generation (part of every Redis key of the region).
#[derive(Debug)]
pub(crate) struct RegionState {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) schema: u32,
    types: TypeId,
    codec: u8,
    /// `{cache}:f{format}:{region}:s{schema}:`; data keys continue with `g{generation}:{key}`.
    pub(crate) key_base: String,
    /// Where the generation lives in Redis.
    pub(crate) generation_key: String,
    /// `{cache}:k{format}:{region}:s{schema}:`: load locks continue with `g{generation}:{key}`.
    lock_base: String,
    generation: AtomicU64,
    /// The highest generation ever seen, even after it was forgotten: a floor for the next one.
    highest: AtomicU64,
}

/// The generation value meaning "not known yet" (Redis was unreachable when it was read).
pub(crate) const UNKNOWN_GENERATION: u64 = u64::MAX;

impl RegionState {
    /// The current generation, `UNKNOWN_GENERATION` when not known.
    pub(crate) fn generation_raw(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current generation, if known.
    pub(crate) fn generation(&self) -> Option<u64> {
        Some(self.generation_raw()).filter(|g| *g != UNKNOWN_GENERATION)
    }

    /// Marks the generation unknown (after a reconnect: Redis may have restarted empty, and
    /// bumps may have been missed). The region bypasses Redis until it is read again.
    pub(crate) fn forget_generation(&self) {
        self.generation.store(UNKNOWN_GENERATION, Ordering::Release);
    }

    /// The highest generation this instance has seen for the region.
    pub(crate) fn highest_seen(&self) -> u64 {
        self.highest.load(Ordering::Acquire)
    }

    /// The floor for a generation created afresh: above every generation seen.
    pub(crate) fn generation_floor(&self) -> u64 {
        self.highest.load(Ordering::Acquire).saturating_add(1)
    }

    /// Raises the generation to `g` (generations only move forward); returns whether it
    /// changed.
    pub(crate) fn raise_generation(&self, g: u64) -> bool {
        if g == UNKNOWN_GENERATION {
            return false;
        }
        self.highest.fetch_max(g, Ordering::AcqRel);
        let mut cur = self.generation.load(Ordering::Acquire);
        loop {
            if cur != UNKNOWN_GENERATION && cur >= g {
                return false;
            }
            match self
                .generation
                .compare_exchange(cur, g, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// The Redis key of a user key (its [`CacheKey`] bytes) at generation `g`.
    pub(crate) fn data_key(&self, generation: u64, key: &[u8]) -> String {
        keyed(&self.key_base, generation, key)
    }

    /// The load-lock key of a user key at generation `g`.
    pub(crate) fn lock_key(&self, generation: u64, key: &[u8]) -> String {
        keyed(&self.lock_base, generation, key)
    }
}

fn keyed(base: &str, generation: u64, key: &[u8]) -> String {
    let mut prefix = String::with_capacity(base.len() + 24 + key.len());
    prefix.push_str(base);
    prefix.push('g');
    prefix.push_str(&generation.to_string());
    prefix.push(':');
    redis_key(&prefix, key)
}

/// What failed in [`Inner::move_generation`].
#[derive(Debug)]
pub(crate) enum GenerationMoveFailed {
    /// The move in Redis (it may or may not have happened).
    Move(Error),
    /// Its announcement (the move happened).
    Announce(Error),
}

impl GenerationMoveFailed {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Self::Move(e) | Self::Announce(e) => e,
        }
    }
}

/// The state shared by a cache and all its regions.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) l1: L1,
    pub(crate) l2: Option<L2>,
    pub(crate) settings: Settings,
    pub(crate) counters: Arc<Counters>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) bus: Option<BusHandle>,
    /// Writes Redis has not confirmed, until they are repaired.
    pub(crate) journal: Journal,
    regions: Mutex<Vec<Arc<RegionState>>>,
    /// The long-running tasks this cache started (the bus publisher and listener), which
    /// `shutdown()` ends and waits for.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Rate limit for warnings about failed Redis calls.
    pub(crate) warnings: crate::telemetry::WarnLimiter,
}

/// How long a region generation lives in Redis without being read or bumped (it is renewed by
/// every instance's bus every few heartbeats).
pub(crate) const GENERATION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Drop for Inner {
    fn drop(&mut self) {
        if let (Some(l2), Ok(rt)) = (self.l2.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { l2.quit().await });
        }
    }
}

impl Inner {
    pub(crate) fn new(
        name: String,
        l1: L1,
        l2: Option<L2>,
        settings: Settings,
        counters: Arc<Counters>,
        bus: Option<BusHandle>,
    ) -> Self {
        Self {
            journal: Journal::new(settings.repair_capacity),
            name,
            l1,
            l2,
            settings,
            counters,
            flights: Arc::new(Flights::default()),
            bus,
            regions: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            warnings: crate::telemetry::WarnLimiter::default(),
        }
    }

    /// Records a long-running task for `shutdown()` to end.
    /// Helpers the bus spawns (generation re-reads, repairs) are adopted too, so that
    /// `shutdown()` returns only once they have ended; finished ones are dropped here.
    pub(crate) fn adopt_task(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Drops every L1 entry and poisons running fetches, for `reason` (subject to the
    /// coherence-loss policy unless it is an explicit clear).
    pub(crate) fn flush_l1(&self, reason: FlushReason) {
        self.counters.flushes[reason.index()].incr();
        let keep = reason.is_loss()
            && self
                .bus
                .as_ref()
                .is_some_and(|b| b.settings.loss_policy == CoherenceLossPolicy::KeepUntilTtl);
        if keep {
            tracing::warn!(cache.name = %self.name, reason = %reason, "coherence may be lost; L1 kept by policy");
            return;
        }
        tracing::warn!(cache.name = %self.name, reason = %reason, "L1 flushed");
        self.flights.poison_all();
        self.l1.clear();
    }

    /// Applies invalidations received from another instance: in-memory work only.
    pub(crate) async fn apply_remote(&self, entries: &[Entry]) {
        for entry in entries {
            match entry {
                Entry::Key { region, key } => {
                    if let Some(state) = self.region_named(region) {
                        let mut k = Vec::with_capacity(4 + key.len());
                        k.extend_from_slice(&state.id.to_le_bytes());
                        k.extend_from_slice(key);
                        self.flights.poison(&k);
                        self.l1.written_elsewhere(&k);
                        self.l1.remove(&k).await;
                    }
                }
                Entry::Region {
                    region,
                    schema,
                    generation,
                } => {
                    if let Some(state) = self.region_named(region) {
                        if state.schema == *schema && self.raise_generation(&state, *generation) {
                            tracing::debug!(cache.name = %self.name, region = %region, generation, "region generation raised by the bus");
                        }
                    }
                }
                Entry::Tag(tag) => self.tags_invalidated(std::slice::from_ref(tag)),
                Entry::All => self.flush_l1(FlushReason::Clear),
                // Acknowledgements are the listener's business.
                Entry::Ack { .. } | Entry::AckPlease => {}
            }
        }
    }

    /// Marks tags invalidated in this instance's L1, and poisons every running fetch (a
    /// fetch does not know its value's tags until it has it, so none may fill the cache with
    /// what it read before the invalidation; they still answer their callers).
    pub(crate) fn tags_invalidated(&self, tags: &[String]) {
        self.flights.poison_all();
        self.l1.invalidate_tags(tags);
    }

    /// Raises a region's generation to `g` (never lowers it); if it moved, poisons the
    /// region's running fetches (see [`generation_moved`](Self::generation_moved)). Every
    /// raise goes through here. Returns whether it moved.
    pub(crate) fn raise_generation(&self, state: &RegionState, g: u64) -> bool {
        let moved = state.raise_generation(g);
        if moved {
            self.generation_moved(state);
        }
        moved
    }

    /// A region's generation moved (or became unknown): poisons the region's running fetches.
    /// Their values belong to the old key space; they may answer the callers already waiting,
    /// but no caller arriving from now on may join them (it must see the new generation), and
    /// they fill neither tier.
    pub(crate) fn generation_moved(&self, state: &RegionState) {
        self.flights.poison_prefix(&state.id.to_le_bytes());
    }

    /// Announces an invalidation on the bus (if there is one) and waits until it was
    /// published.
    pub(crate) async fn announce(&self, entry: Entry) -> Result<()> {
        match &self.bus {
            Some(bus) => {
                let within = self.settings.command_timeout.saturating_mul(2);
                bus.announce(entry, within).await.map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Reads a region's generation from Redis (creating it if missing) and raises the local one
    /// to it. Failures are logged and counted; the region keeps bypassing Redis meanwhile.
    pub(crate) async fn refresh_generation(&self, state: &RegionState) {
        let Some(l2) = &self.l2 else { return };
        let initial = unix_millis().max(state.generation_floor());
        match l2
            .load_generation(&state.generation_key, initial, GENERATION_TTL)
            .await
        {
            Ok(g) if g < state.highest_seen() => {
                // Below a generation this instance has used: the key was lost (FLUSHALL, a
                // restart empty, eviction) and created again by an instance whose clock is
                // behind. Move it above every generation seen here, and announce it, so that
                // every instance converges on one instead of two going on apart.
                tracing::warn!(cache.name = %self.name, region = %state.name, found = g, highest = state.highest_seen(), "region generation in redis is below one already used; moving it forward");
                self.counters.generation_repairs.incr();
                if let Err(GenerationMoveFailed::Move(e)) = self.move_generation(l2, state).await {
                    let _ = self.l2_failed("bump generation", Some(&state.name), e);
                }
            }
            Ok(g) => {
                self.raise_generation(state, g);
            }
            Err(e) => {
                self.counters.l2_errors.incr();
                if e.is_timeout() {
                    self.counters.l2_timeouts.incr();
                }
                if let Some(suppressed) = self.warnings.admit("load generation") {
                    tracing::warn!(cache.name = %self.name, region = %state.name, error = %e, suppressed, "could not read the region generation");
                }
            }
        }
    }

    /// Moves a region's generation in Redis past its current value and above every generation
    /// seen here (a region invalidation, or a repair), raises it here and announces it. When
    /// the move or its announcement is not confirmed, the region is journaled (moved again once
    /// Redis answers); when the move itself failed, the generation is also forgotten (it is
    /// unknown whether the move happened: the old key space must not be used) and the region's
    /// fetches poisoned.
    pub(crate) async fn move_generation(
        &self,
        l2: &L2,
        state: &RegionState,
    ) -> std::result::Result<(), GenerationMoveFailed> {
        let floor = unix_millis().max(state.generation_floor());
        let moved = match l2
            .bump_generation(&state.generation_key, floor, GENERATION_TTL)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                state.forget_generation();
                self.generation_moved(state);
                self.unconfirmed(Pending::Region(state.id), Some(&state.name));
                return Err(GenerationMoveFailed::Move(e));
            }
        };
        self.raise_generation(state, moved);
        let announced = self
            .announce(Entry::Region {
                region: state.name.clone(),
                schema: state.schema,
                generation: moved,
            })
            .await;
        announced.map_err(|e| {
            self.unconfirmed(Pending::Region(state.id), Some(&state.name));
            GenerationMoveFailed::Announce(e)
        })
    }

    /// Registers a region (or finds it again). One name always has one key type, value type,
    /// codec and schema version in a process: a second registration that differs is a
    /// configuration error, not a silent mix-up of two layouts under one name.
    pub(crate) fn register_region(
        &self,
        name: &str,
        types: TypeId,
        schema: u32,
        codec: u8,
    ) -> Result<Arc<RegionState>> {
        let mut regions = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = regions.iter().find(|r| r.name == name) {
            if r.types != types || r.schema != schema || r.codec != codec {
                return Err(Error::config(format!(
                    "region {name:?} is already registered with another key type, value type, \
                     codec or schema version"
                )));
            }
            return Ok(r.clone());
        }
        let id = u32::try_from(regions.len()).map_err(|_| Error::config("too many regions"))?;
        let state = Arc::new(RegionState {
            id,
            name: name.to_owned(),
            schema,
            types,
            codec,
            key_base: region_prefix(&self.name, 'f', FORMAT_VERSION, name, schema),
            lock_base: region_prefix(&self.name, 'k', FORMAT_VERSION, name, schema),
            generation_key: generation_key(&self.name, name, schema),
            // Without Redis the generation is local and starts at 0.
            generation: AtomicU64::new(if self.l2.is_some() {
                UNKNOWN_GENERATION
            } else {
                0
            }),
            highest: AtomicU64::new(0),
        });
        regions.push(state.clone());
        Ok(state)
    }

    /// Counts and logs a Redis failure, and applies the error policy. Calls that skipped Redis
    /// (breaker open, connection down) log at `debug` only; the others at `warn`, at most one per
    /// operation every few seconds, with the number suppressed since (an outage must not turn
    /// into a log storm).
    pub(crate) fn l2_failed(&self, op: &'static str, region: Option<&str>, e: Error) -> Result<()> {
        let c = &self.counters;
        c.l2_errors.incr();
        if e.is_timeout() {
            c.l2_timeouts.incr();
        }
        if e.is_skipped() {
            tracing::debug!(cache.name = %self.name, region = region.unwrap_or(""), op, error = %e, "redis call skipped");
        } else if let Some(suppressed) = self.warnings.admit(op) {
            tracing::warn!(
                cache.name = %self.name,
                region = region.unwrap_or(""),
                op,
                error = %e,
                suppressed,
                "redis call failed"
            );
        }
        match self.settings.error_policy {
            L2ErrorPolicy::Propagate => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves the generation of every region forward in Redis: this instance's regions and
    /// every region with a generation key (`SCAN`). Records each (region, schema, new
    /// generation) in `moved`. A local region whose bump failed forgets its generation (it is
    /// unknown whether the bump happened), and the first error is returned after trying all.
    pub(crate) async fn move_every_generation(
        &self,
        l2: &L2,
        moved: &mut Vec<(String, u32, u64)>,
    ) -> Result<()> {
        let mut regions: Vec<(String, u32)> = self
            .all_regions()
            .iter()
            .map(|r| (r.name.clone(), r.schema))
            .collect();
        let pattern = format!("{}:m{FORMAT_VERSION}:*:gen", self.name);
        let mut cursor = "0".to_owned();
        loop {
            let (next, keys) = l2.scan_page(&cursor, &pattern, 1000).await?;
            for key in keys {
                if let Some(found) = parse_generation_key(&self.name, &key) {
                    if !regions.contains(&found) {
                        regions.push(found);
                    }
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let mut result = Ok(());
        for (region, schema) in regions {
            let local = self
                .region_named(&region)
                .filter(|state| state.schema == schema);
            let floor = local
                .as_ref()
                .map_or(0, |state| state.generation_floor())
                .max(unix_millis());
            let key = generation_key(&self.name, &region, schema);
            match l2.bump_generation(&key, floor, GENERATION_TTL).await {
                Ok(g) => {
                    if let Some(state) = local.as_deref() {
                        self.raise_generation(state, g);
                    }
                    moved.push((region, schema, g));
                }
                Err(e) => {
                    if let Some(state) = local.as_deref() {
                        state.forget_generation();
                        self.generation_moved(state);
                    }
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        result
    }

    /// Remembers a write that Redis did not confirm (see [`journal`](crate::journal)), to be
    /// repaired as soon as Redis answers again.
    pub(crate) fn unconfirmed(&self, pending: Pending, region: Option<&str>) {
        if self.l2.is_none() {
            return;
        }
        self.counters.l2_repairs_recorded.incr();
        if let Recorded::Region(_) = self.journal.record(pending) {
            self.counters.l2_repair_overflows.incr();
            if let Some(suppressed) = self.warnings.admit("repair journal full") {
                tracing::warn!(cache.name = %self.name, region = region.unwrap_or(""), suppressed, "write journal full; the region's generation will be moved when redis answers");
            }
        }
    }

    /// The registered region with this id, if any.
    pub(crate) fn region_by_id(&self, id: u32) -> Option<Arc<RegionState>> {
        let i = usize::try_from(id).ok()?;
        self.regions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
            .cloned()
    }

    /// The registered region of this name, if any.
    pub(crate) fn region_named(&self, name: &str) -> Option<Arc<RegionState>> {
        self.regions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.name == name)
            .cloned()
    }

    /// Every registered region.
    pub(crate) fn all_regions(&self) -> Vec<Arc<RegionState>> {
        self.regions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How long a tag's mark lives after its last invalidation. A load that runs longer than this
/// across an invalidation of one of its tags could see the mark vanish and come back as it
/// was (absent); loads are bounded far below a day in practice.
pub(crate) const TAG_MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The Redis side of `invalidate_tag`: replace the mark, then delete the members page by page.
pub(crate) async fn drop_tag(l2: &L2, cache: &str, tag: &str) -> Result<()> {
    l2.set_mark(
        &tag_mark_key(cache, tag),
        token(),
        millis_ceil(TAG_MARK_TTL),
    )
    .await?;
    let set = tag_key(cache, tag);
    let mut cursor = "0".to_owned();
    loop {
        let (next, members) = l2.sscan_page(&set, &cursor, 500).await?;
        l2.drop_tag_page(&set, members).await?;
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}

/// The region (name, schema) a generation key belongs to:
/// `{cache}:m{format}:{region}:s{schema}:gen`.
fn parse_generation_key(cache: &str, key: &str) -> Option<(String, u32)> {
    let rest = key
        .strip_prefix(cache)?
        .strip_prefix(&format!(":m{FORMAT_VERSION}:"))?
        .strip_suffix(":gen")?;
    let (region, schema) = rest.rsplit_once(":s")?;
    if validate_name("region name", region).is_err() {
        return None;
    }
    Some((region.to_owned(), schema.parse().ok()?))
}

/// The region (name, schema) and generation of a data key:
/// `{cache}:f{format}:{region}:s{schema}:g{generation}:{key}`.
fn parse_data_key<'a>(cache: &str, key: &'a str) -> Option<(&'a str, u32, u64)> {
    let rest = key
        .strip_prefix(cache)?
        .strip_prefix(&format!(":f{FORMAT_VERSION}:"))?;
    let mut parts = rest.splitn(4, ':');
    let region = parts.next()?;
    let schema = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let generation = parts.next()?.strip_prefix('g')?.parse().ok()?;
    parts.next()?;
    Some((region, schema, generation))
}

/// Deletes, in batches (`SCAN … COUNT 1000`, one `UNLINK` per page), the data keys of every
/// region in `moved` whose generation is older than the one it was moved to. Newer keys (filled
/// since) and keys of regions not in `moved` stay: deleting a tombstone there could let a
/// stale fill in.
async fn delete_outdated(l2: &L2, cache: &str, moved: &[(String, u32, u64)]) -> Result<()> {
    let pattern = format!("{cache}:f{FORMAT_VERSION}:*");
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys) = l2.scan_page(&cursor, &pattern, 1000).await?;
        let old: Vec<String> = keys
            .into_iter()
            .filter(|k| {
                parse_data_key(cache, k).is_some_and(|(region, schema, g)| {
                    moved
                        .iter()
                        .any(|(r, s, to)| r == region && *s == schema && g < *to)
                })
            })
            .collect();
        l2.unlink_many(old).await?;
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}

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
    pub(crate) inner: Arc<Inner>,
}

impl LayerCache {
    /// Starts building a cache. The name is part of every Redis key the cache writes, so two
    /// services that should share entries use the same name, and two that should not, different
    /// ones. It must be 1 to 64 characters of `[A-Za-z0-9_.-]`.
    pub fn builder(name: impl Into<String>) -> LayerCacheBuilder {
        LayerCacheBuilder::new(name)
    }

    /// Starts building a typed region: a named kind of entry with key type `K` and value type
    /// `V`, using the default codec ([`Bincode`]). See [`RegionBuilder`].
    pub fn region<K, V>(&self, name: impl Into<String>) -> RegionBuilder<K, V, Bincode>
    where
        K: CacheKey + ?Sized + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        RegionBuilder::new(self.clone(), name.into(), Bincode)
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
        RegionBuilder::new(self.clone(), name.into(), codec)
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
        self.inner.counters.snapshot()
    }

    /// The number of entries in the in-process tier. moka applies some bookkeeping lazily:
    /// call [`run_pending_tasks`](Self::run_pending_tasks) first for an exact figure.
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
        self.inner.l1.sync().await;
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
        self.inner.l2.as_ref().is_some_and(L2::breaker_open)
    }

    /// Whether the Redis connection is up right now; `false` without Redis, and after a
    /// degraded start ([`L2Startup::Degraded`](crate::L2Startup::Degraded)) until Redis
    /// answers.
    pub fn l2_connected(&self) -> bool {
        self.inner.l2.as_ref().is_some_and(L2::is_connected)
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
    /// [`L2ErrorPolicy::Propagate`]. A region whose generation could not be moved stops using
    /// Redis until it has read its generation again.
    pub async fn clear(&self) -> Result<()> {
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
            result = delete_outdated(l2, &inner.name, &moved).await;
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
    /// [`L2ErrorPolicy::Propagate`].
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        let inner = &self.inner;
        let tags = validate_tags(&[tag])?.unwrap_or_else(|| Arc::from(Vec::new()));
        let mut result = Ok(());
        if let Some(l2) = &inner.l2 {
            result = drop_tag(l2, &inner.name, tag).await;
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
        crate::repair::repair_now(inner).await;
        if inner.journal.len() > 0 {
            tracing::warn!(cache.name = %inner.name, pending = inner.journal.len(), "shutting down with writes redis has not confirmed; other instances may serve their old values until their TTL");
        }
        if let Some(bus) = &inner.bus {
            bus.stop();
        }
        // The bus tasks may spawn a helper while ending: wait until none is left.
        loop {
            let tasks: Vec<_> = inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
                .collect();
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        if let Some(l2) = &inner.l2 {
            l2.quit().await;
        }
        tracing::info!(cache.name = %inner.name, "layercache shut down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_keys_parse_back_to_their_region() {
        let key = generation_key("shop", "user.v2", 7);
        assert_eq!(
            parse_generation_key("shop", &key),
            Some(("user.v2".to_owned(), 7))
        );
        assert_eq!(parse_generation_key("sho", &key), None, "another cache");
        assert_eq!(parse_generation_key("shop", "shop:m2:user:sX:gen"), None);
        assert_eq!(parse_generation_key("shop", "shop:m2:us%er:s1:gen"), None);
        assert_eq!(parse_generation_key("shop", "shop:f2:user:s1:gen"), None);
    }

    #[test]
    fn data_keys_parse_back_to_region_schema_and_generation() {
        let state_base = region_prefix("shop", 'f', FORMAT_VERSION, "user", 3);
        let key = keyed(&state_base, 1_700_000_000_000, b"a:b:c");
        assert_eq!(
            parse_data_key("shop", &key),
            Some(("user", 3, 1_700_000_000_000))
        );
        assert_eq!(
            parse_data_key("shop", "shop:f2:user:s3:g12"),
            None,
            "no key"
        );
        assert_eq!(parse_data_key("shop", "shop:f2:user:s3:x12:k"), None);
        assert_eq!(parse_data_key("shop", "shop:t2:user:s3:g12:k"), None);
        assert_eq!(parse_data_key("shopx", &key), None);
    }
}
