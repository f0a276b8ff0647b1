//! Repairs of the writes the [journal](crate::journal) holds, once Redis answers again.
//!
//! A key gets a tombstone (fenced on its region's generation, like every write) and an
//! announcement; a region a generation move and an announcement; a tag a new mark, its members
//! removed, and an announcement; a clear every region's generation moved and an announcement.
//! A repair is settled only when both its Redis write and its announcement were confirmed: until
//! then this instance keeps bypassing Redis for what it covers, and the next run tries again.
//!
//! Runs are started by the bus listener on every heartbeat tick and on every (re)connection,
//! one at a time, each in a task of its own (the listener never waits on Redis).

use std::sync::Arc;

use crate::{
    bus::Entry,
    engine::{Engine, GenerationMoveFailed},
    error::Result,
    journal::{Pending, Tombstone},
    l1::L1Key,
    plan::seal_tombstone,
    remote::{Filled, Remote, Write, WriteCondition, WriteMode},
    walks::drop_tag,
};

/// Starts a repair run in the background if repairs are pending and Redis looks reachable.
pub(crate) fn spawn_repair(inner: &Arc<Engine>) {
    let Some(l2) = &inner.l2 else { return };
    if inner.journal.len() == 0 || !l2.is_connected() || l2.breaker_open() {
        return;
    }
    let weak = Arc::downgrade(inner);
    inner.adopt_task(tokio::spawn(async move {
        let Some(inner) = weak.upgrade() else { return };
        let Some(_run) = inner.journal.try_run() else {
            return;
        };
        run(&inner).await;
    }));
}

/// Runs the pending repairs now (unless a run is going on), for `shutdown()`: a process that
/// stops with repairs pending cannot make them later.
pub(crate) async fn repair_now(inner: &Engine) {
    let Some(l2) = &inner.l2 else { return };
    if inner.journal.len() == 0 || !l2.is_connected() || l2.breaker_open() {
        return;
    }
    if let Some(_run) = inner.journal.try_run() {
        run(inner).await;
    }
}

/// One repair run: every pending repair in order; stops at the first one that fails (Redis is
/// still unwell: the next run starts over).
async fn run(inner: &Engine) {
    let Some(l2) = &inner.l2 else { return };
    let began = inner.journal.stamp();
    let pending = inner.journal.snapshot();
    let total = pending.len();
    let mut done = 0usize;
    for (item, stamp) in pending {
        let repaired = match &item {
            Pending::Key(key, tombstone) => repair_key(inner, l2, key, tombstone).await,
            Pending::Region(id) => repair_region(inner, l2, *id).await,
            Pending::Tag(tag) => repair_tag(inner, l2, tag).await,
            Pending::Clear => repair_clear(inner, l2).await,
        };
        match repaired {
            Ok(()) => {
                inner.journal.settle(&item, stamp, began);
                inner.counters.l2_repairs_done.incr();
                done += 1;
            }
            Err(e) => {
                tracing::debug!(cache.name = %inner.name, error = %e, done, total, "write repair interrupted; retried at the next heartbeat");
                break;
            }
        }
    }
    if done > 0 {
        tracing::info!(cache.name = %inner.name, done, left = inner.journal.len(), "repaired writes that redis had not confirmed");
    }
}

/// A key: a tombstone under the region's current generation, then the announcement.
async fn repair_key(inner: &Engine, l2: &Remote, key: &L1Key, tombstone: &Tombstone) -> Result<()> {
    let Some(state) = crate::journal::region_of(key).and_then(|id| inner.region_by_id(id)) else {
        // A region this instance never registered cannot have been written: nothing to do.
        return Ok(());
    };
    // No write of the key in flight while the tombstone is decided and written; one that
    // Redis confirmed since the run's snapshot replaced whatever the failed one left.
    let _repairing = inner.journal.repairing(key).await;
    if !inner.journal.holds_key(key) {
        return Ok(());
    }
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let generation = match state.generation() {
            Some(g) => g,
            None => {
                inner.refresh_generation(&state).await;
                state.generation().ok_or_else(|| {
                    crate::Error::new(
                        crate::ErrorKind::Unavailable,
                        "the region's generation is not known yet",
                    )
                })?
            }
        };
        let rk = state.data_key(generation, &key[4..]);
        let enc = seal_tombstone(tombstone, &rk);
        let px = crate::options::millis_ceil(tombstone.ttl + tombstone.retention);
        let guard = WriteCondition {
            mode: &WriteMode::Set,
            marks: &[],
            fence: Some(generation),
            version: None,
        };
        let write = Write {
            key: &rk,
            value: enc.bytes,
            ttl_ms: px,
            tags: Vec::new(),
            condition: guard,
            generation_key: &state.generation_key,
        };
        match l2.fill(write).await? {
            Filled::Fenced => inner.refresh_generation(&state).await,
            Filled::Written | Filled::Refused | Filled::Older => {
                // A fetch that began before the tombstone landed must not fill L1 after it.
                inner.flights.poison(key);
                return inner
                    .announce(Entry::Key {
                        region: state.name.clone(),
                        key: key[4..].to_vec(),
                    })
                    .await;
            }
        }
    }
    Err(crate::Error::new(
        crate::ErrorKind::Redis,
        "the region's generation kept moving during the repair",
    ))
}

/// A region: its generation moved forward, then announced.
async fn repair_region(inner: &Engine, l2: &Remote, id: u32) -> Result<()> {
    let Some(state) = inner.region_by_id(id) else {
        return Ok(());
    };
    inner
        .move_generation(l2, &state)
        .await
        .map_err(GenerationMoveFailed::into_error)
}

/// A tag: its mark replaced and members removed, then announced.
async fn repair_tag(inner: &Engine, l2: &Remote, tag: &str) -> Result<()> {
    drop_tag(l2, &inner.name, tag, &mut |_| {}).await?;
    inner.tags_invalidated(std::slice::from_ref(&tag.to_owned()));
    inner.announce(Entry::Tag(tag.to_owned())).await
}

/// A clear: every region's generation moved, the moves and a flush announced.
async fn repair_clear(inner: &Engine, l2: &Remote) -> Result<()> {
    let mut moved = Vec::new();
    inner.move_every_generation(l2, &mut moved).await?;
    for (region, schema, generation) in moved {
        inner
            .announce(Entry::Region {
                region,
                schema,
                generation,
            })
            .await?;
    }
    inner.announce(Entry::All).await
}
