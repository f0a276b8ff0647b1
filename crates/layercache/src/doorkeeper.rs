//! TinyLFU's *doorkeeper* in front of L1, for values read from Redis while L1 is full.
//!
//! When L1 is full, moka's admission policy (TinyLFU) turns away most keys read once: a key of
//! the long tail is less frequent than the entry it would evict. But moka decides after the
//! fact: the entry is inserted into its table, queued, weighed against a victim, and removed
//! again — on a service workload (Zipf 0.99 over 100,000 keys, 10,000 in L1) that churn was
//! ~15 % of the process's CPU (table inserts, removals and rehashes, housekeeping). The
//! doorkeeper remembers keys read from Redis recently (one bit per hashed key); a key's first
//! such read only marks it, its second within the window puts it in L1, where moka's policy
//! decides as before. Hot keys lose one Redis read per window; the long tail stops churning L1.
//!
//! Only reads from Redis pass the door, and only while L1 is full: below capacity every value
//! goes in (nothing would be evicted for it), and values this instance loaded or wrote always
//! go in. A key L1 holds when another instance's write takes it out is marked: it left for the
//! write, not for want of room, and its next read from Redis puts it back. Skipping an L1 fill
//! is always safe: the next read goes to Redis.
//!
//! The bits are a fixed array of atomic words: constant memory (8 KiB), no lock. They are
//! cleared every `BITS / 2` marks (a window of the last ~32,000 Redis reads), so a key must be
//! read twice within that window to be let in; a collision lets a key in at its first read
//! (what happens without the doorkeeper).

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
};

/// Bits in the table (a power of two).
const BITS: usize = 1 << 16;

/// The doorkeeper of one cache's L1.
pub(crate) struct Doorkeeper {
    words: Box<[AtomicU64]>,
    /// Marks since the bits were last cleared.
    marks: AtomicU64,
    hasher: crate::hashing::KeyHasher,
}

impl std::fmt::Debug for Doorkeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorkeeper")
            .field("marks", &self.marks.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Doorkeeper {
    pub(crate) fn new() -> Self {
        Self {
            words: (0..BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            marks: AtomicU64::new(0),
            hasher: crate::hashing::KeyHasher::default(),
        }
    }

    /// Whether `key` was read from Redis within the window (then it may go in L1); marks it
    /// either way.
    pub(crate) fn seen_again(&self, key: &[u8]) -> bool {
        let h = self.hasher.hash_one(key);
        let bit = (h as usize) & (BITS - 1);
        let mask = 1u64 << (bit % 64);
        let Some(word) = self.words.get(bit / 64) else {
            return true;
        };
        if word.load(Ordering::Relaxed) & mask != 0 {
            return true;
        }
        word.fetch_or(mask, Ordering::Relaxed);
        if self.marks.fetch_add(1, Ordering::Relaxed) + 1 >= (BITS / 2) as u64 {
            // The window is over. Concurrent marks during the clearing may be lost: those keys
            // wait for one more read.
            self.marks.store(0, Ordering::Relaxed);
            for w in self.words.iter() {
                w.store(0, Ordering::Relaxed);
            }
        }
        false
    }

    /// Marks `key` as read within the window: its next read from Redis may go in L1.
    pub(crate) fn mark(&self, key: &[u8]) {
        let _ = self.seen_again(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_passes_at_its_second_read() {
        let d = Doorkeeper::new();
        assert!(!d.seen_again(b"k"), "first read: marked only");
        assert!(d.seen_again(b"k"), "second read: let in");
        assert!(d.seen_again(b"k"));
    }

    #[test]
    fn the_window_ends_after_half_the_bits_are_marked() {
        let d = Doorkeeper::new();
        assert!(!d.seen_again(b"k"));
        // Enough other keys to end the window (some collide with each other: count the marks
        // the doorkeeper made, not the keys).
        let mut i = 0u64;
        while d.marks.load(Ordering::Relaxed) != 0 || i == 0 {
            d.seen_again(&i.to_le_bytes());
            i += 1;
            assert!(i < 10 * BITS as u64, "the window never ended");
        }
        assert!(!d.seen_again(b"k"), "forgotten with the window");
    }

    #[test]
    fn other_keys_pass_at_their_first_read_only_by_a_rare_collision() {
        let d = Doorkeeper::new();
        for i in 0..1000u32 {
            d.seen_again(&i.to_le_bytes());
        }
        let passed = (10_000..20_000u32)
            .filter(|i| d.seen_again(&i.to_le_bytes()))
            .count();
        // About 1000 to 11,000 marked bits of 65,536 while these are read: under 17 % collide.
        assert!(passed < 2_000, "{passed} of 10000 unseen keys passed");
    }
}
