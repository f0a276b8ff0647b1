//! Keys another instance wrote a moment ago, kept out of the in-process tier for a while.
//!
//! An in-process copy of a key that another instance writes often is stale from each of its
//! source commits until the announcement is applied here: one trip through Redis, during which
//! L1 serves the old value at memory speed. For such *write-hot* keys L1 costs more staleness
//! than it saves round trips, so after this instance applies another instance's write (or
//! invalidation) of a key, the key is not put back in L1 for a short cooldown: its readers take
//! it from Redis, whose copy the writer updates in the same round trip as it announces it.
//! A key written less often than once per cooldown is unaffected after the first one.
//!
//! The table is a fixed array of slots indexed by a hash of the key, each holding the time of
//! the last remote write that hashed there: constant memory, no lock, no pruning. A collision
//! only keeps another key out of L1 for one cooldown too (a few more Redis reads, never a
//! staler value).

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Slots in the table (a power of two). At a few thousand remote writes per second and a
/// cooldown of milliseconds, a few dozen are live at a time: collisions are rare.
const SLOTS: usize = 4096;

/// The cooldown table of one cache.
pub(crate) struct Cooldown {
    /// Zero: off.
    period_ns: u64,
    /// When each slot was last written, in ns since `epoch` plus one (zero: never).
    slots: Box<[AtomicU64]>,
    epoch: Instant,
    hasher: crate::hashing::KeyHasher,
}

impl std::fmt::Debug for Cooldown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cooldown")
            .field("period_ns", &self.period_ns)
            .finish_non_exhaustive()
    }
}

impl Cooldown {
    /// A table for `period` (zero: off, and no table is allocated).
    pub(crate) fn new(period: Duration) -> Self {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        let len = if period_ns == 0 { 0 } else { SLOTS };
        Self {
            period_ns,
            slots: (0..len).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            hasher: crate::hashing::KeyHasher::default(),
        }
    }

    fn slot(&self, key: &[u8]) -> Option<&AtomicU64> {
        if self.slots.is_empty() {
            return None;
        }
        let h = self.hasher.hash_one(key);
        // `SLOTS` is a power of two: the low bits pick the slot.
        self.slots.get((h as usize) & (self.slots.len() - 1))
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Another instance wrote `key` just now.
    pub(crate) fn written_elsewhere(&self, key: &[u8]) {
        if let Some(slot) = self.slot(key) {
            slot.store(self.now_ns(), Ordering::Relaxed);
        }
    }

    /// Whether `key` is cooling down (another instance wrote it less than one period ago), so
    /// it must not be put in L1.
    pub(crate) fn cooling(&self, key: &[u8]) -> bool {
        let Some(slot) = self.slot(key) else {
            return false;
        };
        let at = slot.load(Ordering::Relaxed);
        at != 0 && self.now_ns().saturating_sub(at) < self.period_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_cools_and_allocates_nothing() {
        let c = Cooldown::new(Duration::ZERO);
        c.written_elsewhere(b"k");
        assert!(!c.cooling(b"k"));
        assert!(c.slots.is_empty());
    }

    #[test]
    fn a_key_cools_for_one_period_after_a_remote_write() {
        let c = Cooldown::new(Duration::from_secs(5));
        assert!(!c.cooling(b"k"), "never written");
        c.written_elsewhere(b"k");
        assert!(c.cooling(b"k"));
        let short = Cooldown::new(Duration::from_millis(20));
        short.written_elsewhere(b"k");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!short.cooling(b"k"), "the period is over");
    }

    #[test]
    fn other_keys_are_not_cooled_except_by_a_rare_collision() {
        let c = Cooldown::new(Duration::from_secs(60));
        for i in 0..16u32 {
            c.written_elsewhere(&i.to_le_bytes());
        }
        let cooled = (1000..11_000u32)
            .filter(|i| c.cooling(&i.to_le_bytes()))
            .count();
        // 16 live slots of 4096: about 0.4 % of other keys collide.
        assert!(cooled < 200, "{cooled} of 10000 keys cooled");
    }
}
