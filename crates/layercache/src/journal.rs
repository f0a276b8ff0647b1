//! The write journal: writes and invalidations that Redis has not confirmed, kept until they
//! are repaired.
//!
//! A write that failed, timed out (it may or may not have landed) or was skipped (breaker
//! open, connection down, generation unknown) still returned `Ok` to its caller under
//! [`L2ErrorPolicy::Fallback`](crate::L2ErrorPolicy::Fallback), and Redis may still hold what
//! it was meant to replace. The journal remembers it so that:
//!
//! - while it is pending, this instance never serves the key (or, for a region, tag or clear,
//!   anything it covers) from Redis: [`Journal::blocks`] sends such reads to the loader;
//! - once Redis answers again, the repair (see `repair.rs`) writes a *tombstone* over the key —
//!   never the value it failed to write, since another instance may have written a newer one
//!   meanwhile — or moves the region's generation, and announces it on the bus.
//!
//! A key's repair and a write of the same key exclude each other (a lock per stripe of keys:
//! writes share it, a repair takes it alone): the repair waits for the writes in flight to
//! settle, writes its tombstone only if the key is still pending (a later write Redis confirmed
//! has replaced whatever the failed one left, and settled the repair), and a write that begins
//! meanwhile waits for the tombstone. Without it a repair run that had read the key as pending
//! could write its tombstone over a later write that had already returned `Ok` (seen in a
//! Sentinel failover under load: `tests/tracking.rs`).
//!
//! It is bounded: a key that does not fit turns into a repair of its whole region (a generation
//! move), which covers every key of the region at once.
//!
//! This module is a leaf: it knows keys and stamps, not Redis.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
};

use std::hash::BuildHasher;

use crate::{
    hashing::{KeyHasher, KeyMap},
    l1::L1Key,
};

/// How many stripes of keys writes and repairs exclude each other on.
const STRIPES: usize = 64;

/// What a key's repair writes: a tombstone with the region's lifetimes and codec id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tombstone {
    /// The tombstone's logical lifetime (the region's TTL).
    pub(crate) ttl: std::time::Duration,
    /// How long past it the tombstone is kept (fail-safe retention).
    pub(crate) retention: std::time::Duration,
    pub(crate) codec: u8,
}

/// One pending repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    /// A key (region id and key bytes, as L1 keys them): write a tombstone.
    Key(L1Key, Tombstone),
    /// A region (by id): move its generation.
    Region(u32),
    /// A tag: replace its mark and remove its members.
    Tag(String),
    /// Everything: move every region's generation.
    Clear,
}

/// The region id at the front of an L1 key.
pub(crate) fn region_of(key: &[u8]) -> Option<u32> {
    let id: [u8; 4] = key.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(id))
}

#[derive(Debug, Default)]
struct State {
    keys: KeyMap<L1Key, (u64, Tombstone)>,
    regions: HashMap<u32, u64>,
    tags: HashMap<String, u64>,
    clear: Option<u64>,
}

impl State {
    fn len(&self) -> usize {
        self.keys.len() + self.regions.len() + self.tags.len() + usize::from(self.clear.is_some())
    }
}

/// What [`Journal::record`] kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The repair asked for.
    AsAsked,
    /// The journal was full: the key's whole region will be repaired instead.
    Region(u32),
}

/// The pending repairs of one cache.
#[derive(Debug)]
pub(crate) struct Journal {
    /// At most this many keys are remembered one by one.
    capacity: usize,
    /// How many repairs are pending: the read path looks at this alone while it is zero.
    pending: AtomicUsize,
    /// Hands out stamps, in order: every record and the start of every write takes one.
    clock: AtomicU64,
    /// A repair run is going on (one at a time).
    running: AtomicBool,
    state: Mutex<State>,
    /// Writes of a key hold its stripe shared, its repair alone (see the module's docs).
    stripes: Box<[tokio::sync::RwLock<()>]>,
    /// Picks a key's stripe.
    hasher: KeyHasher,
}

impl Journal {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            pending: AtomicUsize::new(0),
            clock: AtomicU64::new(1),
            running: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            stripes: (0..STRIPES).map(|_| tokio::sync::RwLock::new(())).collect(),
            hasher: KeyHasher::default(),
        }
    }

    fn stripe(&self, key: &[u8]) -> usize {
        // The modulo keeps the index in range whatever the hash.
        (self.hasher.hash_one(key) % STRIPES as u64) as usize
    }

    /// Held by a write of `key` from before its stamp is taken until it has settled in the
    /// journal (confirmed, or recorded for repair): a repair of the key waits for it, and it
    /// waits for a repair of the key that is writing its tombstone. A task holds at most one
    /// set of stripes at a time ([`writing_all`](Self::writing_all) for a batch): taking one
    /// again while a repair waits for it would wait for ever.
    pub(crate) async fn writing(&self, key: &[u8]) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.stripes[self.stripe(key)].read().await
    }

    /// The stripes of `keys`, each once and in order, for a batch of writes (see
    /// [`writing`](Self::writing)).
    pub(crate) async fn writing_all<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Vec<tokio::sync::RwLockReadGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].read().await);
        }
        guards
    }

    /// Held by the repair of `key` while it checks that the key is still pending and writes
    /// its tombstone: no write of the key is in flight meanwhile.
    pub(crate) async fn repairing(&self, key: &[u8]) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.stripes[self.stripe(key)].write().await
    }

    /// Whether `key` itself is pending (a later confirmed write removes it).
    pub(crate) fn holds_key(&self, key: &[u8]) -> bool {
        self.len() != 0 && self.lock().keys.contains_key(key)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the maps consistent; a panic elsewhere cannot break them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_len(&self, state: &State) {
        self.pending.store(state.len(), Ordering::Release);
    }

    /// A new stamp: later than every record made so far.
    pub(crate) fn stamp(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel)
    }

    /// The number of pending repairs.
    pub(crate) fn len(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Remembers a write Redis did not confirm. A key that does not fit (the journal holds
    /// `capacity` keys) becomes a repair of its region, which replaces the region's keys.
    pub(crate) fn record(&self, pending: Pending) -> Recorded {
        let stamp = self.stamp();
        let mut state = self.lock();
        let recorded = match pending {
            Pending::Key(key, tombstone) => {
                let region = region_of(&key);
                if let Some(id) = region.filter(|id| state.regions.contains_key(id)) {
                    // The region is repaired as a whole already: that covers the key.
                    state.regions.insert(id, stamp);
                    Recorded::AsAsked
                } else if state.keys.len() < self.capacity || state.keys.contains_key(&key) {
                    state.keys.insert(key, (stamp, tombstone));
                    Recorded::AsAsked
                } else {
                    let id = region.unwrap_or(0);
                    state.keys.retain(|k, _| region_of(k) != Some(id));
                    state.regions.insert(id, stamp);
                    Recorded::Region(id)
                }
            }
            Pending::Region(id) => {
                state.keys.retain(|k, _| region_of(k) != Some(id));
                state.regions.insert(id, stamp);
                Recorded::AsAsked
            }
            Pending::Tag(tag) => {
                state.tags.insert(tag, stamp);
                Recorded::AsAsked
            }
            Pending::Clear => {
                state.clear = Some(stamp);
                Recorded::AsAsked
            }
        };
        self.publish_len(&state);
        recorded
    }

    /// Whether reads of `key` must not be served from Redis: its own write, its region, a tag
    /// (the read cannot know its value's tags before reading it) or a clear is pending.
    #[inline]
    pub(crate) fn blocks(&self, key: &[u8]) -> bool {
        if self.len() == 0 {
            return false;
        }
        let state = self.lock();
        state.clear.is_some()
            || !state.tags.is_empty()
            || region_of(key).is_some_and(|id| state.regions.contains_key(&id))
            || state.keys.contains_key(key)
    }

    /// A write of `key` that took its stamp at `started` was confirmed by Redis: it replaced
    /// whatever an earlier unconfirmed write of the key may have left (commands on one
    /// connection run in order, and one given up on is never sent after), so that write's
    /// repair is no longer needed.
    pub(crate) fn confirmed(&self, key: &[u8], started: u64) {
        if self.len() == 0 {
            return;
        }
        let mut state = self.lock();
        if state.keys.get(key).is_some_and(|(s, _)| *s < started) {
            state.keys.remove(key);
            self.publish_len(&state);
        }
    }

    /// Every pending repair with its stamp: clear first, then regions, tags and keys.
    pub(crate) fn snapshot(&self) -> Vec<(Pending, u64)> {
        let state = self.lock();
        let mut out = Vec::with_capacity(state.len());
        if let Some(stamp) = state.clear {
            out.push((Pending::Clear, stamp));
        }
        out.extend(
            state
                .regions
                .iter()
                .map(|(id, s)| (Pending::Region(*id), *s)),
        );
        out.extend(
            state
                .tags
                .iter()
                .map(|(t, s)| (Pending::Tag(t.clone()), *s)),
        );
        out.extend(
            state
                .keys
                .iter()
                .map(|(k, (s, t))| (Pending::Key(k.clone(), *t), *s)),
        );
        out
    }

    /// A repair that was read with `stamp` is done: forgets it unless it was recorded again
    /// since. A region's repair also settles its keys recorded before it began (`began`).
    pub(crate) fn settle(&self, pending: &Pending, stamp: u64, began: u64) {
        let mut state = self.lock();
        match pending {
            Pending::Key(k, _) => {
                if state.keys.get(k).is_some_and(|(s, _)| *s == stamp) {
                    state.keys.remove(k);
                }
            }
            Pending::Region(id) => {
                if state.regions.get(id) == Some(&stamp) {
                    state.regions.remove(id);
                }
                let id = *id;
                state
                    .keys
                    .retain(|k, (s, _)| region_of(k) != Some(id) || *s > began);
            }
            Pending::Tag(t) => {
                if state.tags.get(t) == Some(&stamp) {
                    state.tags.remove(t);
                }
            }
            Pending::Clear => {
                if state.clear == Some(stamp) {
                    state.clear = None;
                }
            }
        }
        self.publish_len(&state);
    }

    /// Starts a repair run, unless one is going on.
    pub(crate) fn try_run(&self) -> Option<RunGuard<'_>> {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| RunGuard(self))
    }
}

/// One repair run at a time: released on drop.
#[derive(Debug)]
pub(crate) struct RunGuard<'a>(&'a Journal);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(region: u32, k: &[u8]) -> L1Key {
        let mut v = region.to_le_bytes().to_vec();
        v.extend_from_slice(k);
        v.into()
    }

    const T: Tombstone = Tombstone {
        ttl: Duration::from_secs(1),
        retention: Duration::ZERO,
        codec: 1,
    };

    #[tokio::test]
    async fn a_keys_repair_waits_for_its_writes_and_its_writes_for_the_repair() {
        let j = Journal::new(10);
        let k = key(1, b"a");
        let other = (0..1000u32)
            .map(|i| key(1, &i.to_le_bytes()))
            .find(|o| j.stripe(o) != j.stripe(&k))
            .unwrap();
        let write = j.writing(&k).await;
        let within = Duration::from_millis(20);
        assert!(
            tokio::time::timeout(within, j.repairing(&k)).await.is_err(),
            "a repair went ahead of a write in flight"
        );
        // Another stripe's repair does not wait; writes share a stripe.
        drop(
            tokio::time::timeout(within, j.repairing(&other))
                .await
                .unwrap(),
        );
        let second = tokio::time::timeout(within, j.writing(&k)).await.unwrap();
        drop((write, second));
        let repair = j.repairing(&k).await;
        assert!(
            tokio::time::timeout(within, j.writing(&k)).await.is_err(),
            "a write went ahead of the repair"
        );
        assert!(tokio::time::timeout(within, j.writing_all([&other[..]]))
            .await
            .is_ok());
        drop(repair);
        assert_eq!(j.writing_all([&k[..], &k[..], &other[..]]).await.len(), 2);
        // A confirmed later write leaves nothing for the repair to do.
        assert!(!j.holds_key(&k));
        j.record(Pending::Key(k.clone(), T));
        assert!(j.holds_key(&k));
        j.confirmed(&k, j.stamp());
        assert!(!j.holds_key(&k));
    }

    #[test]
    fn a_recorded_key_blocks_reads_until_settled() {
        let j = Journal::new(10);
        assert!(!j.blocks(&key(1, b"a")));
        assert_eq!(j.record(Pending::Key(key(1, b"a"), T)), Recorded::AsAsked);
        assert!(j.blocks(&key(1, b"a")));
        assert!(!j.blocks(&key(1, b"b")));
        assert!(!j.blocks(&key(2, b"a")));
        let snap = j.snapshot();
        assert_eq!(snap.len(), 1);
        let (p, s) = &snap[0];
        j.settle(p, *s, j.stamp());
        assert_eq!(j.len(), 0);
        assert!(!j.blocks(&key(1, b"a")));
    }

    #[test]
    fn a_key_recorded_again_during_its_repair_stays() {
        let j = Journal::new(10);
        j.record(Pending::Key(key(1, b"a"), T));
        let (p, s) = j.snapshot().remove(0);
        j.record(Pending::Key(key(1, b"a"), T));
        j.settle(&p, s, j.stamp());
        assert!(
            j.blocks(&key(1, b"a")),
            "the newer failure still needs its repair"
        );
    }

    #[test]
    fn overflow_turns_into_a_region_repair_that_covers_its_keys() {
        let j = Journal::new(2);
        j.record(Pending::Key(key(1, b"a"), T));
        j.record(Pending::Key(key(2, b"b"), T));
        assert_eq!(j.record(Pending::Key(key(1, b"c"), T)), Recorded::Region(1));
        // Region 1's keys folded into the region repair; region 2's key stays on its own.
        assert_eq!(j.len(), 2);
        assert!(j.blocks(&key(1, b"zzz")), "the whole region is blocked");
        assert!(j.blocks(&key(2, b"b")));
        assert!(!j.blocks(&key(2, b"other")));
        // Later keys of the region join the region repair, whatever the capacity.
        assert_eq!(j.record(Pending::Key(key(1, b"d"), T)), Recorded::AsAsked);
        assert_eq!(j.len(), 2);
    }

    #[test]
    fn a_region_repair_settles_the_keys_recorded_before_it_began() {
        let j = Journal::new(10);
        j.record(Pending::Key(key(1, b"a"), T));
        j.record(Pending::Region(1));
        assert_eq!(j.len(), 1, "the region repair replaces its keys");
        let (p, s) = j.snapshot().remove(0);
        let began = j.stamp();
        j.record(Pending::Key(key(1, b"late"), T));
        j.settle(&p, s, began);
        // Recorded while the region repair ran: folded into the region with a new stamp, so
        // the region stays pending (the late write may have landed after the move).
        assert_eq!(j.len(), 1);
        assert!(j.blocks(&key(1, b"late")));
        let (p, s) = j.snapshot().remove(0);
        j.settle(&p, s, j.stamp());
        assert_eq!(j.len(), 0);
    }

    #[test]
    fn a_confirmed_later_write_settles_an_earlier_failure_only() {
        let j = Journal::new(10);
        let before = j.stamp();
        j.record(Pending::Key(key(1, b"a"), T));
        j.confirmed(&key(1, b"a"), before);
        assert!(
            j.blocks(&key(1, b"a")),
            "a write that began before the failure"
        );
        let after = j.stamp();
        j.confirmed(&key(1, b"a"), after);
        assert!(!j.blocks(&key(1, b"a")));
    }

    #[test]
    fn tags_and_clear_block_every_read() {
        let j = Journal::new(10);
        j.record(Pending::Tag("t".into()));
        assert!(j.blocks(&key(7, b"x")));
        let (p, s) = j.snapshot().remove(0);
        j.settle(&p, s, j.stamp());
        assert!(!j.blocks(&key(7, b"x")));
        j.record(Pending::Clear);
        assert!(j.blocks(&key(7, b"x")));
        assert_eq!(j.snapshot()[0].0, Pending::Clear);
    }

    #[test]
    fn one_run_at_a_time() {
        let j = Journal::new(1);
        let g = j.try_run().unwrap();
        assert!(j.try_run().is_none());
        drop(g);
        assert!(j.try_run().is_some());
    }
}
