//! The engine behind every region of a cache: its tiers, regions and generations, running
//! fetches, the bus, the write journal, and the coherence rules that tie them together
//! (flushes, remote invalidations, generation moves, failed Redis calls).

mod backplane;
pub(crate) mod repair;

use std::{
    any::TypeId,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::{
    bus::{BusHandle, CoherenceLossPolicy, Entry, FlushReason},
    envelope::FORMAT_VERSION,
    error::{Error, Result},
    flight::Flights,
    freshness::unix_millis,
    journal::{Journal, Pending, Recorded},
    key::{generation_key, parse_generation_key},
    l1::L1,
    options::{EntryOptions, L2ErrorPolicy},
    regions::RegionState,
    remote::Remote,
    stats::Counters,
};

/// Cache-wide settings fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) time_to_live: Duration,
    pub(crate) entry_options: EntryOptions,
    pub(crate) compression_threshold: usize,
    pub(crate) max_value_bytes: usize,
    /// Values whose encoded form reaches this many bytes are encoded and decoded on tokio's
    /// blocking pool.
    pub(crate) offload_threshold: usize,
    pub(crate) error_policy: L2ErrorPolicy,
    pub(crate) command_timeout: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) max_key_bytes: usize,
    /// Acknowledged writes: how long `insert`/`invalidate` wait for every live instance.
    pub(crate) ack_timeout: Option<Duration>,
    /// How many keys the write journal remembers one by one.
    pub(crate) repair_capacity: usize,
    /// Server-assisted tracking reports writes of data keys to other instances.
    pub(crate) tracking: bool,
}

/// What failed in [`Engine::move_generation`].
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
pub(crate) struct Engine {
    pub(crate) name: String,
    pub(crate) l1: L1,
    pub(crate) l2: Option<Remote>,
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
    /// When the cache was built, Unix milliseconds (for its presence record).
    pub(crate) started_ms: u64,
    /// The last L1 flush: why, and when (Unix milliseconds).
    pub(crate) last_flush: Mutex<Option<(FlushReason, u64)>>,
    /// Set by `shutdown()`: background loops of the cache's own (the metrics export) end.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
}

/// How long a region generation lives in Redis without being read or bumped (it is renewed by
/// every instance's bus every few heartbeats).
pub(crate) const GENERATION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Drop for Engine {
    fn drop(&mut self) {
        if let (Some(l2), Ok(rt)) = (self.l2.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { l2.quit().await });
        }
    }
}

impl Engine {
    pub(crate) fn new(
        name: String,
        l1: L1,
        l2: Option<Remote>,
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
            started_ms: unix_millis(),
            last_flush: Mutex::new(None),
            closing: tokio::sync::watch::channel(false).0,
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

    /// Takes the adopted tasks, for `shutdown()` to await.
    pub(crate) fn take_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect()
    }

    /// Drops every L1 entry and poisons running fetches, for `reason` (subject to the
    /// coherence-loss policy unless it is an explicit clear).
    pub(crate) fn flush_l1(&self, reason: FlushReason) {
        self.counters.flushes[reason.index()].incr();
        *self
            .last_flush
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((reason, unix_millis()));
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
                        self.l1.remove(&k);
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

    /// The bus a write of data keys announces itself on: none when server-assisted tracking
    /// reports such writes itself (and no acknowledgement is asked for).
    pub(crate) fn key_bus(&self) -> Option<&BusHandle> {
        let tracked = self.settings.tracking && self.settings.ack_timeout.is_none();
        self.bus.as_ref().filter(|_| !tracked)
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
        // After the raise: a heartbeat seeing this region read yet unknown retries it.
        state.mark_read();
    }

    /// Moves a region's generation in Redis past its current value and above every generation
    /// seen here (a region invalidation, or a repair), raises it here and announces it. When
    /// the move or its announcement is not confirmed, the region is journaled (moved again once
    /// Redis answers); when the move itself failed, the generation is also forgotten (it is
    /// unknown whether the move happened: the old key space must not be used) and the region's
    /// fetches poisoned.
    pub(crate) async fn move_generation(
        &self,
        l2: &Remote,
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
            if !r.same_layout(types, schema, codec) {
                return Err(Error::config(format!(
                    "region {name:?} is already registered with another key type, value type, \
                     codec or schema version"
                )));
            }
            return Ok(r.clone());
        }
        let id = u32::try_from(regions.len()).map_err(|_| Error::config("too many regions"))?;
        let state = Arc::new(RegionState::new(
            id,
            &self.name,
            name,
            (types, schema, codec),
            self.l2.is_some(),
        ));
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

    /// Every (region, schema) with a generation key in Redis, any instance's (a `SCAN` of the
    /// cache's meta keys), sorted.
    pub(crate) async fn regions_with_generation_keys(
        &self,
        l2: &Remote,
    ) -> Result<Vec<(String, u32)>> {
        let prefix = format!("{}:{}{FORMAT_VERSION}:", self.name, crate::key::space::META);
        let mut found: Vec<(String, u32)> = Vec::new();
        crate::walks::scan_all(l2, &prefix, |keys| {
            found.extend(
                keys.iter()
                    .filter_map(|k| parse_generation_key(&self.name, k)),
            );
        })
        .await?;
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Moves the generation of every region forward in Redis: this instance's regions and
    /// every region with a generation key (`SCAN`). Records each (region, schema, new
    /// generation) in `moved`. A local region whose bump failed forgets its generation (it is
    /// unknown whether the bump happened), and the first error is returned after trying all.
    pub(crate) async fn move_every_generation(
        &self,
        l2: &Remote,
        moved: &mut Vec<(String, u32, u64)>,
    ) -> Result<()> {
        let mut regions: Vec<(String, u32)> = self
            .all_regions()
            .iter()
            .map(|r| (r.name.clone(), r.schema))
            .collect();
        for found in self.regions_with_generation_keys(l2).await? {
            if !regions.contains(&found) {
                regions.push(found);
            }
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
