//! The in-process tier: a moka cache of decoded values.
//!
//! One moka cache serves every region of a [`LayerCache`](crate::LayerCache). Its key is the
//! region's id followed by the user key's bytes; its value is the decoded value behind an
//! `Arc`, type-erased, with the lifetime and weight chosen at insert time. This module knows
//! nothing of Redis.
//!
//! # Lifetimes without per-entry expiry on the hit path
//!
//! moka's per-entry expiry (its `Expiry` trait) costs every hit ~45 ns (moka calls it and
//! converts instants on each read), 0.15× of a raw moka hit. So the cache that serves hits has
//! one time to live, the cache-wide bound ([`LayerCacheBuilder::time_to_live`]); an entry that
//! must go sooner (a shorter `ttl`, a Redis entry with less time left) carries a deadline on a
//! cheap clock ([`clock`]), checked by the hit. An entry that must stay *longer* than the bound
//! (a fail-safe copy kept past its expiry) is also put in a second cache with per-entry
//! expiry, the *kept* table, which a read looks in only when the first misses and only once
//! something was ever kept.
//!
//! # moka's synchronous cache, in async code
//!
//! The tables are `moka::sync::Cache`s, not `moka::future::Cache`s. Hot-path note: a hit is then
//! a plain function call with no future around it. Measured (`benches/compare.rs` `l1_hit`,
//! 2026-12-03): `Region::get` answered by L1 went from ~430 ns to ~305 ns, as fast as a raw
//! `future::Cache::get`, and an insert into a full table is ~20 % cheaper. What the
//! synchronous cache may do on the caller's thread, and why that is acceptable here: its
//! upkeep (applying the read and write logs, evicting) runs inline under a `try_lock` — a
//! thread that finds another one at it skips it, so no reader ever waits for it; a write
//! finding moka's write log full (several hundred writes behind the upkeep) sleeps 50 µs and
//! retries until the upkeep has drained it (the future cache spins, then awaits an event
//! instead). That needs writes to outrun upkeep that runs on every write. An explicit
//! [`L1::sync`] waits for the upkeep lock. No other moka call here blocks: L1 uses no
//! eviction listener and no `get_with` (whose waiters would block a worker thread).
//!
//! [`LayerCacheBuilder::time_to_live`]: crate::LayerCacheBuilder::time_to_live

pub(crate) mod clock;
mod entry;

use entry::PerEntryTtl;
pub(crate) use entry::{
    expired, guard_set, slid_out, EntryExtras, FillGuard, Freshness, L1Entry, SlidingState,
};

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use moka::sync::Cache;

use crate::{cooldown::Cooldown, doorkeeper::Doorkeeper, hashing::KeyHasher};

/// An L1 key: the region id (4 bytes, little-endian) followed by the user key's bytes.
pub(crate) type L1Key = Box<[u8]>;

/// How L1 capacity is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capacity {
    Entries(u64),
    Bytes(u64),
}

/// When each tag was last invalidated, as a tag epoch.
#[derive(Debug, Default)]
struct TagTable {
    epoch: AtomicU64,
    invalidated: RwLock<HashMap<String, (u64, Instant)>>,
}

/// Past this many remembered tag invalidations, the ones older than the L1 lifetime bound
/// (which no live entry can predate) are forgotten.
const TAG_TABLE_PRUNE_AT: usize = 4096;

/// The in-process tier.
#[derive(Clone)]
pub(crate) struct L1 {
    /// Every entry, each for at most the cache-wide bound (one moka time to live).
    cache: Cache<L1Key, L1Entry, KeyHasher>,
    /// Copies of the entries that live past the bound (fail-safe keeps), with per-entry expiry.
    kept: Cache<L1Key, L1Entry, KeyHasher>,
    /// Whether anything was ever put in `kept` (until then no read or removal looks there).
    keeps: Arc<AtomicBool>,
    by_bytes: bool,
    tags: Arc<TagTable>,
    max_lifetime: Duration,
    /// Keys another instance wrote a moment ago, kept out for a while.
    cooldown: Arc<Cooldown>,
    /// Values read from Redis while L1 is full go in at their key's second read (`None`: off).
    door: Option<Arc<Doorkeeper>>,
    /// The capacity (entries, or bytes when weighed by bytes).
    max: u64,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.cache.entry_count())
            .field("by_bytes", &self.by_bytes)
            .finish()
    }
}

impl L1 {
    pub(crate) fn new(
        capacity: Capacity,
        time_to_idle: Option<Duration>,
        max_lifetime: Duration,
        cooldown: Duration,
        doorkeeper: bool,
    ) -> Self {
        let (max, by_bytes) = match capacity {
            Capacity::Entries(n) => (n, false),
            Capacity::Bytes(n) => (n, true),
        };
        let mut b = Cache::builder()
            .max_capacity(max)
            .time_to_live(max_lifetime)
            .weigher(|_k: &L1Key, v: &L1Entry| v.weight);
        let mut kept = Cache::builder()
            .max_capacity(max)
            .expire_after(PerEntryTtl)
            .weigher(|_k: &L1Key, v: &L1Entry| v.weight);
        if let Some(tti) = time_to_idle {
            b = b.time_to_idle(tti);
            kept = kept.time_to_idle(tti);
        }
        Self {
            cache: b.build_with_hasher(KeyHasher::default()),
            kept: kept.build_with_hasher(KeyHasher::default()),
            keeps: Arc::new(AtomicBool::new(false)),
            by_bytes,
            tags: Arc::new(TagTable::default()),
            max_lifetime,
            cooldown: Arc::new(Cooldown::new(cooldown)),
            door: doorkeeper.then(|| Arc::new(Doorkeeper::new())),
            max,
        }
    }

    /// Whether a value just read from Redis may go in L1: always while L1 has room; when it is
    /// full, only at its key's second read from Redis within the doorkeeper's window (see
    /// [`crate::doorkeeper`]).
    pub(crate) fn admits_from_redis(&self, key: &[u8]) -> bool {
        let Some(door) = &self.door else {
            return true;
        };
        // moka's counts lag its table by a few operations: "full" is approximate, as is the
        // capacity itself.
        let used = if self.by_bytes {
            self.cache.weighted_size()
        } else {
            self.cache.entry_count()
        };
        used < self.max || door.seen_again(key)
    }

    /// The current tag epoch: record it when a read or write begins, as the entry's `tag_epoch`.
    pub(crate) fn tag_epoch(&self) -> u64 {
        self.tags.epoch.load(Ordering::Acquire)
    }

    /// Marks tags invalidated now: entries carrying one of them that were born before this
    /// call are no longer served.
    pub(crate) fn invalidate_tags(&self, tags: &[String]) {
        let mut table = self
            .tags
            .invalidated
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let epoch = self.tags.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let now = Instant::now();
        for tag in tags {
            table.insert(tag.clone(), (epoch, now));
        }
        if table.len() > TAG_TABLE_PRUNE_AT {
            let bound = self.max_lifetime;
            table.retain(|_, (_, at)| at.elapsed() <= bound);
        }
    }

    /// Whether a tag of the entry was invalidated after the entry was born.
    pub(crate) fn tag_invalidated(&self, entry: &L1Entry) -> bool {
        let Some(tags) = entry.extra.as_ref().and_then(|x| x.tags.as_ref()) else {
            return false;
        };
        let table = self
            .tags
            .invalidated
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        tags.iter().any(|t| {
            table
                .get(t)
                .is_some_and(|(epoch, _)| *epoch > entry.tag_epoch)
        })
    }

    /// Whether entries are weighed by their encoded size (so callers must provide it).
    pub(crate) fn by_bytes(&self) -> bool {
        self.by_bytes
    }

    /// The weight of an entry with `key_len` key bytes and `encoded_len` value bytes.
    pub(crate) fn weight(&self, key_len: usize, encoded_len: usize) -> u32 {
        if self.by_bytes {
            // A fixed overhead for the entry itself, so tiny values still cost something.
            u32::try_from(key_len + encoded_len + 64).unwrap_or(u32::MAX)
        } else {
            1
        }
    }

    /// The cache-wide bound on an entry's life in L1.
    pub(crate) fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// Looks an entry up in the table that serves hits. The caller must check it with
    /// [`usable`](Self::usable) before serving it.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<L1Entry> {
        self.cache.get(key)
    }

    /// Whether anything was ever kept past the bound (so a miss should look in the kept
    /// table, see [`get_kept`](Self::get_kept)).
    #[inline]
    pub(crate) fn keeps(&self) -> bool {
        self.keeps.load(Ordering::Acquire)
    }

    /// Looks an entry up in the kept table (entries living past the bound: fail-safe copies).
    /// For a read that missed the first table and wants a fail-safe fallback.
    pub(crate) fn get_kept(&self, key: &[u8]) -> Option<L1Entry> {
        if !self.keeps() {
            return None;
        }
        self.kept.get(key)
    }

    /// Looks an entry up in either table (off the hot path).
    pub(crate) fn get_any(&self, key: &[u8]) -> Option<L1Entry> {
        match self.cache.get(key) {
            Some(e) => Some(e),
            None => self.get_kept(key),
        }
    }

    /// Whether a looked-up entry may be served: its own lifetime is not over (nor, for a
    /// sliding entry, its sliding lifetime), its fill was not poisoned, and none of its tags was
    /// invalidated after it was born. (An unusable entry is left to be overwritten by the fetch
    /// that follows, or to expire.)
    pub(crate) fn usable(&self, entry: &L1Entry) -> bool {
        !expired(entry) && !slid_out(entry) && !guard_set(entry) && !self.tag_invalidated(entry)
    }

    /// Whether L1 holds an entry for `key` (usable or not), without counting as a read.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.cache.contains_key(key) || (self.keeps() && self.kept.contains_key(key))
    }

    /// Puts an entry in for a fill whose poison flag is `guard`, unless the flag is already
    /// set; returns whether the entry stayed in. The entry carries the flag, and a hit on an
    /// entry whose flag is set is a miss ([`usable`](Self::usable), and the plain hit path
    /// checks it too). A write is applied as "poison, then remove": a fill that checked its flag
    /// before the poison may put its older value in after the removal, but no read can serve
    /// it, and the check after the insert takes it out again.
    ///
    /// Hot-path note: this replaced moka's per-key compute lock (`and_compute_with` around the
    /// check and the put, and around every removal), which closed the same window at ~10–20 %
    /// of the service workload's CPU and ~30 MiB of peak RSS. The flag costs a hit one more
    /// reference count and one atomic load.
    pub(crate) fn insert_guarded(&self, key: &[u8], mut entry: L1Entry, guard: &FillGuard) -> bool {
        if guard.load(Ordering::Acquire) {
            return false;
        }
        entry.guard = Some(guard.clone());
        if entry.ttl > self.max_lifetime {
            // Lives past the bound: a copy goes in the kept table too (same value, same flag).
            self.keeps.store(true, Ordering::Release);
            self.kept.insert(Box::from(key), entry.clone());
        } else if self.keeps() {
            // An older kept copy must not outlive this value as a fallback.
            self.kept.invalidate(key);
        }
        self.cache.insert(Box::from(key), entry);
        if guard.load(Ordering::Acquire) {
            self.remove(key);
            return false;
        }
        true
    }

    /// Another instance wrote `key`: keeps it out of L1 for the cooldown (see
    /// [`crate::cooldown`]). The caller removes it.
    pub(crate) fn written_elsewhere(&self, key: &[u8]) {
        self.cooldown.written_elsewhere(key);
        // A copy held here goes out for a write, not for want of room: the key keeps its place
        // at the door, so its next read from Redis puts it back at once. (A key that came in
        // by a load or a write of this instance never passed the door: without this, each
        // write elsewhere cost a hot key one more Redis read, and its readers with it.)
        if let Some(door) = &self.door {
            if self.contains(key) {
                door.mark(key);
            }
        }
    }

    /// Whether `key` may be put in L1 now (it is not cooling down after another instance's
    /// write).
    pub(crate) fn admits(&self, key: &[u8]) -> bool {
        !self.cooldown.cooling(key)
    }

    /// Takes out an entry of the first table that a read found past its own (or sliding)
    /// lifetime, so it holds no memory, and does not count toward a full table, until the
    /// bound would have ended it. It may take out a fresher entry put in since the read looked:
    /// a miss then, never a stale read.
    #[cold]
    pub(crate) fn drop_dead(&self, key: &[u8]) {
        self.cache.invalidate(key);
    }

    /// Removes `key` (from both tables).
    pub(crate) fn remove(&self, key: &[u8]) {
        self.cache.invalidate(key);
        if self.keeps() {
            self.kept.invalidate(key);
        }
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
        self.kept.invalidate_all();
    }

    /// Entries in the table that serves hits (kept copies past the bound are not counted: each
    /// is the copy of an entry counted here, or a fail-safe fallback only).
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The weight of the table that serves hits (as [`entry_count`](Self::entry_count)).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub(crate) fn sync(&self) {
        self.cache.run_pending_tasks();
        self.kept.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> L1Entry {
        L1Entry {
            value: Arc::new(7u32),
            ttl: Duration::from_secs(60),
            expires: clock::NEVER,
            generation: 0,
            tag_epoch: 0,
            weight: 1,
            negative: false,
            version: None,
            extra: None,
            guard: None,
        }
    }

    fn l1() -> L1 {
        L1::new(
            Capacity::Entries(100),
            None,
            Duration::from_secs(60),
            Duration::from_millis(100),
            false,
        )
    }

    #[test]
    fn an_entry_whose_fill_is_poisoned_after_it_went_in_is_never_served() {
        let l1 = l1();
        let guard: FillGuard = Arc::new(AtomicBool::new(false));
        assert!(l1.insert_guarded(b"k", entry(), &guard));
        let held = l1.get(b"k").expect("the fill went in");
        assert!(l1.usable(&held));
        // A write of the key is applied after the fill checked its flag: the entry may still
        // be in moka until the fill's own check takes it out, but it is no longer served.
        guard.store(true, Ordering::Release);
        let held = l1.get(b"k").expect("still in moka");
        assert!(guard_set(&held));
        assert!(!l1.usable(&held));
    }

    #[test]
    fn a_fill_whose_flag_is_already_set_stays_out() {
        let l1 = l1();
        let guard: FillGuard = Arc::new(AtomicBool::new(true));
        assert!(!l1.insert_guarded(b"k", entry(), &guard));
        assert!(!l1.contains(b"k"));
        // An unguarded neighbour is unaffected.
        let other: FillGuard = Arc::new(AtomicBool::new(false));
        assert!(l1.insert_guarded(b"j", entry(), &other));
        assert!(l1.contains(b"j"));
    }

    #[test]
    fn an_entry_living_past_the_bound_is_kept_and_a_shorter_write_takes_the_copy_away() {
        let l1 = l1();
        let guard: FillGuard = Arc::new(AtomicBool::new(false));
        assert!(!l1.keeps(), "nothing kept yet: misses do not look");
        let mut long = entry();
        long.ttl = Duration::from_secs(3600);
        assert!(l1.insert_guarded(b"k", long, &guard));
        assert!(l1.keeps());
        assert!(l1.get_kept(b"k").is_some(), "a copy in the kept table");
        assert!(l1.get(b"k").is_some(), "and the entry in the first");
        // A value that lives within the bound replaces it: no old copy stays as a fallback.
        assert!(l1.insert_guarded(b"k", entry(), &guard));
        assert!(l1.get_kept(b"k").is_none());
        // A removal takes both.
        let mut long = entry();
        long.ttl = Duration::from_secs(3600);
        assert!(l1.insert_guarded(b"j", long, &guard));
        l1.remove(b"j");
        assert!(l1.get_any(b"j").is_none());
    }

    #[test]
    fn an_entry_past_its_own_deadline_is_not_usable() {
        let l1 = l1();
        let guard: FillGuard = Arc::new(AtomicBool::new(false));
        let mut short = entry();
        short.expires = clock::now();
        assert!(l1.insert_guarded(b"k", short, &guard));
        let held = l1.get(b"k").expect("still in moka until the bound");
        assert!(expired(&held));
        assert!(!l1.usable(&held));
        let mut fresh = entry();
        fresh.expires = clock::deadline(Duration::from_secs(60));
        assert!(l1.insert_guarded(b"j", fresh, &guard));
        let held = l1.get(b"j").expect("in");
        assert!(!expired(&held) && l1.usable(&held));
    }

    #[test]
    fn a_sliding_entry_unread_for_its_lifetime_is_not_usable() {
        let l1 = l1();
        let guard: FillGuard = Arc::new(AtomicBool::new(false));
        let sliding = |until| {
            let mut e = entry();
            e.extra = Some(Arc::new(EntryExtras {
                tags: None,
                fresh: None,
                slide: Some(SlidingState {
                    interval: Duration::from_secs(1),
                    ttl_ms: 60_000,
                    last: std::sync::Mutex::new(Instant::now()),
                    life: Duration::from_secs(60),
                    until: AtomicU64::new(until),
                }),
            }));
            e
        };
        assert!(l1.insert_guarded(b"gone", sliding(clock::now()), &guard));
        let held = l1.get(b"gone").expect("still in moka until the bound");
        assert!(slid_out(&held) && !l1.usable(&held));
        assert!(l1.insert_guarded(
            b"live",
            sliding(clock::deadline(Duration::from_secs(60))),
            &guard
        ));
        let held = l1.get(b"live").expect("in");
        assert!(!slid_out(&held) && l1.usable(&held));
    }
}
