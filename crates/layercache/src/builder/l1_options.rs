//! Options of [`LayerCacheBuilder`] for the in-process tier's admission.

use super::LayerCacheBuilder;

impl LayerCacheBuilder {
    /// While the in-process tier is full, a value read from Redis is put in it only at its
    /// key's second read from Redis within a short window (the last ~32,000 such reads):
    /// TinyLFU's *doorkeeper*. moka's admission policy would turn most first-time keys away
    /// anyway, but only after inserting, weighing and removing them, which on a long-tailed
    /// workload is a large share of the process's CPU (see `docs/BENCHMARKS.md`). Hot keys
    /// pay one more Redis read per window; while the tier has room, and for values this
    /// instance loaded or wrote, nothing changes. Counted in
    /// [`Stats::l1_door_skips`](crate::Stats::l1_door_skips). `false` puts every value read
    /// from Redis in the tier (and leaves admission to moka alone).
    ///
    /// Default: `true`.
    pub fn l1_doorkeeper(mut self, on: bool) -> Self {
        self.l1_doorkeeper = on;
        self
    }
}
