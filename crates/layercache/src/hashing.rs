//! The hasher of the per-key tables on the hot path (a leaf module: everything may use it).

/// The hasher of every per-key table on the hot path (L1, flights, write tickets, the journal,
/// the cooldown): foldhash with a random per-process seed. *Chosen for speed*: SipHash (the
/// standard library's default, and moka's) was ~5 % of a service workload's CPU and a tenth of
/// an L1 hit; foldhash hashes a short key in a few nanoseconds. It is keyed (random seeds), so
/// colliding keys cannot be chosen without first learning the seed from the process's
/// behaviour — the same trade hashbrown's default makes. See docs/BENCHMARKS.md.
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// A `HashMap` with [`KeyHasher`].
pub(crate) type KeyMap<K, V> = std::collections::HashMap<K, V, KeyHasher>;
