//! The regions a cache knows: each one's name, key and value types, schema, codec, Redis key
//! prefixes, and its generation (part of every Redis key of the region; moved forward to
//! invalidate the whole region at once).

use std::{
    any::TypeId,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use crate::{
    envelope::FORMAT_VERSION,
    key::{generation_key, keyed, region_prefix, space},
};

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
    /// Whether a generation read has ended (either way) since the region was registered: until
    /// then the read `RegionBuilder::build` makes is the only one (the heartbeat's retry of
    /// unknown generations waits for it, or a new region would be read twice).
    read_once: AtomicBool,
    /// The counters of what this region's calls did (the cache's stats sum them with its own).
    pub(crate) counters: crate::stats::Counters,
}

/// The generation value meaning "not known yet" (Redis was unreachable when it was read).
pub(crate) const UNKNOWN_GENERATION: u64 = u64::MAX;

impl RegionState {
    /// A region's state as `register_region` makes it: keys under `cache`'s name; without a
    /// Redis tier the generation is local and starts at 0.
    pub(crate) fn new(
        id: u32,
        cache: &str,
        name: &str,
        (types, schema, codec): (TypeId, u32, u8),
        with_redis: bool,
    ) -> Self {
        Self {
            id,
            name: name.to_owned(),
            schema,
            types,
            codec,
            key_base: region_prefix(cache, space::DATA, FORMAT_VERSION, name, schema),
            lock_base: region_prefix(cache, space::LOCK, FORMAT_VERSION, name, schema),
            generation_key: generation_key(cache, name, schema),
            generation: AtomicU64::new(if with_redis { UNKNOWN_GENERATION } else { 0 }),
            highest: AtomicU64::new(0),
            read_once: AtomicBool::new(!with_redis),
            counters: crate::stats::Counters::default(),
        }
    }

    /// Whether the region was registered with this key and value type, schema and codec.
    pub(crate) fn same_layout(&self, types: TypeId, schema: u32, codec: u8) -> bool {
        self.types == types && self.schema == schema && self.codec == codec
    }

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

    /// Whether the heartbeat should read the generation again: it is unknown, and not because
    /// the first read (by `RegionBuilder::build`) is still under way.
    pub(crate) fn needs_generation_retry(&self) -> bool {
        self.generation().is_none() && self.read_once.load(Ordering::Acquire)
    }

    /// Records that a generation read has ended (answered or failed).
    pub(crate) fn mark_read(&self) {
        self.read_once.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn region(with_redis: bool) -> RegionState {
        RegionState::new(0, "c", "r", (TypeId::of::<u8>(), 1, 0), with_redis)
    }

    #[test]
    fn a_new_region_is_retried_only_after_its_first_read_ended_without_a_generation() {
        let r = region(true);
        // The build's own read is under way: the heartbeat leaves it alone.
        assert!(!r.needs_generation_retry());
        r.mark_read();
        // That read failed (nothing raised): now the heartbeat retries.
        assert!(r.needs_generation_retry());
        assert!(r.raise_generation(7));
        assert!(!r.needs_generation_retry());
        r.forget_generation();
        assert!(r.needs_generation_retry());
        // Without Redis the generation is local and known from the start.
        assert!(!region(false).needs_generation_retry());
    }
}
