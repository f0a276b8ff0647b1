#![doc = include_str!("../../../README.md")]
//!
//! # Guide
//!
//! ## How a read flows
//!
//! 1. **L1** (moka, in process): a hit returns the decoded `Arc<V>` — no decode, no Redis.
//! 2. On an L1 miss, one *flight* per key runs as its own task (concurrent callers join it):
//!    `GET` from **Redis** with a timeout; the envelope is checked (magic, version, codec,
//!    lengths, checksum) and the value decoded. A usable value fills L1 and is returned.
//! 3. On a Redis miss, with [`Region::get_or_load`], the **loader** runs once; its value is
//!    encoded once, written to Redis with a TTL — only if the key still holds what the read
//!    found (nothing: as `SET … PX … NX`; a tombstone, stale or corrupt entry: a compare-and-set
//!    script), so a concurrent write or invalidation wins, and only while the region's
//!    generation in Redis is still the one the key was made for (else the generation is
//!    re-read) — put in L1 and returned to every caller.
//!
//! Redis failures along the way are logged, counted and skipped by default
//! ([`L2ErrorPolicy`]); corrupt entries are misses, counted by [`Corruption`] reason.
//!
//! ## How a write flows
//!
//! [`Region::insert`] encodes once, writes the key with its TTL (a script fenced on the
//! region's generation), puts the value in L1 unless something newer touched the key
//! meanwhile, and announces the change on the invalidation bus ([`bus`]); [`Region::invalidate`] replaces
//! the key with a *tombstone* (a miss for every reader that no earlier load can overwrite),
//! drops it from L1 and announces it. Either one *poisons* fetches of that key already running
//! (here and, on receipt, on every other instance), so they cannot put an older value back in
//! L1, and the conditional fills above keep a load on another instance that has not heard of it
//! yet from putting it back in Redis. [`Region::invalidate_all`] moves the region to a new
//! generation (one command); [`LayerCache::invalidate_tag`] removes every entry carrying a tag
//! (and changes the tag's mark, which loads check before filling); [`LayerCache::clear`] moves
//! every region to a new generation and deletes the old entries.
//!
//! ## Architecture (as the code is today)
//!
//! - **Facade**: [`LayerCache`] (`cache.rs`), [`Region`] (`region.rs`, with `region/read.rs`
//!   for `get`/`get_or_load*` and `region/write.rs` for `insert*`/`invalidate*`), the builders
//!   (`builder.rs`, `builder/build.rs`, `region/builder.rs`), options and errors.
//! - **Engine** (`engine.rs`): one per cache, shared by its regions — the tiers, the regions
//!   and their generations (`regions.rs`), running fetches (`flight.rs`), the bus handle, the
//!   write journal (`journal.rs`, repaired by `engine/repair.rs`), and the coherence rules every path
//!   goes through: flushes, remote invalidations, generation moves, failed Redis calls. A
//!   fetch's order of steps is in `region/fetch.rs`, the steps in `region/fetch/steps.rs`;
//!   encoding, lifetimes and the fenced Redis write in `region/store.rs`.
//! - **Redis** (`l2.rs` and `l2/`): the client and its bounded calls (timeouts, the breaker in
//!   `breaker.rs`), connecting (`l2/connect.rs`), the Lua scripts run by hash
//!   (`l2/scripts.rs` and the `.lua` files), a write and its announcement in one round trip
//!   (`l2/pipeline.rs`, numbered by `sequencer.rs`), tags, locks, generations and scans
//!   (`l2/keyspace.rs`, long walks in `walks.rs`).
//! - **Bus** ([`bus`]): the publisher task, the listener (on its own thread by default), the
//!   message format.
//! - **Leaves**, which import nothing above them: the format ([`envelope`], [`codec`],
//!   [`key`], `fingerprint.rs`), L1 (`l1.rs`, `cooldown.rs`), `stats.rs`, `freshness.rs`
//!   (clock and early-refresh maths), `coherence.rs` (flush reasons, instance ids),
//!   `options.rs`, `error.rs`.
//!
//! A `get` that misses L1 and hits Redis: `region/read.rs` → `flight.rs` → `region/fetch.rs` →
//! `l2.rs` → `region/store.rs` (decode: `envelope.rs`, `codec.rs`) → `region/fetch/steps.rs` →
//! `l1.rs`. An `insert`: `region/write.rs` → `region/store.rs` → `l2/pipeline.rs` →
//! `sequencer.rs`, then `l1.rs` and `journal.rs`. The bus reaches the engine only through
//! `bus::Receiver` (implemented in `engine/backplane.rs`), so it imports nothing above the
//! leaves and the Redis tier. No module imports one that imports it back: the facade
//! (`cache`, `builder`, `region`) sits on the engine (with its write repair,
//! `engine/repair.rs`), which sits on the bus, the Redis tier and the leaves (`plan.rs`, the
//! lifetimes and metadata of an entry being written, is one). A remote-store seam and the
//! engine-to-bus half of the backplane seam, each with an in-memory implementation, are the
//! next step, after which a second store (Redis Cluster) or backplane plugs in as one type.
//!
//! ## Keys and format versions
//!
//! Redis keys look like `{cache}:f{format}:{region}:s{schema}:g{generation}:{key}`: see
//! [`key`] for the
//! escaping that keeps any user key distinct, and [`envelope`] for the stored bytes. Bumping a
//! region's [`schema_version`](RegionBuilder::schema_version) or the envelope format turns old
//! entries into misses.
//!
//! ## Consistency and its limits
//!
//! - Read your own writes on one instance; a fetch that began before a write or invalidation
//!   (local, received, or not yet received) never fills either tier afterwards.
//! - Once an instance has applied an invalidation (see [`LayerCache::bus_status`]), it never
//!   serves an older value of that key.
//! - Every way pub/sub can lose a message (disconnect, reconnect, lag, sequence gap, a silent
//!   subscription) is detected and flushes L1 ([`CoherenceLossPolicy`]); until detection, and
//!   during a Redis outage, staleness is bounded by the L1 lifetime
//!   ([`time_to_live`](LayerCacheBuilder::time_to_live)).
//! - Every Redis key has a TTL; every L1 entry lives at most `time_to_live`.
//! - A write that returned `Ok` is never undone: one that Redis did not confirm (failed, timed
//!   out, skipped during an outage) is journaled and repaired — a tombstone or a generation
//!   move, announced — as soon as the instance reaches Redis again, and until then the
//!   instance serves nothing it covers from Redis ([`LayerCache::pending_repairs`]).
//! - Writes made to Redis by other clients are not seen.
//!
//! `docs/CONSISTENCY.md` in the repository spells out each bound.
//!
//! ## Telemetry
//!
//! See [`telemetry`] for the `tracing` spans and events and [`Stats`] for the counters.
//!
//! ## Feature flags
//!
//! - `postcard`: the `Postcard` codec.
//! - `tls`: TLS to Redis with rustls (ring): `rediss://` URLs and
//!   `LayerCacheBuilder::l2_tls_ca_pem`.

mod backplane;
mod breaker;
mod builder;
pub mod bus;
mod cache;
pub mod codec;
mod coherence;
mod cooldown;
mod engine;
pub mod envelope;
mod error;
mod fingerprint;
mod flight;
mod freshness;
mod journal;
pub mod key;
mod l1;
mod l2;
#[cfg(test)]
mod layering;
#[cfg(feature = "memory")]
pub mod memory;
mod options;
mod plan;
mod region;
mod regions;
mod remote;
mod sequencer;
mod stats;
pub mod telemetry;
mod walks;

/// Entry points for the fuzz targets (feature `fuzzing`); not a public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Opens bytes as an envelope (codec 1, 1 MiB cap); `true` when they are accepted.
    pub fn open_envelope(bytes: &[u8]) -> bool {
        crate::envelope::open(bytes, 1, 1 << 20).is_ok()
    }

    /// Like [`open_envelope`], after forcing a valid magic, version and codec and a correct
    /// checksum, so the fuzzer explores the length checks and LZ4 decompression behind them.
    pub fn open_resealed_envelope(bytes: &[u8]) -> bool {
        use crate::envelope::{CHECKED, FORMAT_VERSION, HEADER_LEN, MAGIC};
        if bytes.len() < HEADER_LEN {
            return crate::envelope::open(bytes, 1, 1 << 20).is_ok();
        }
        let mut b = bytes.to_vec();
        b[..4].copy_from_slice(&MAGIC);
        b[4] = FORMAT_VERSION;
        b[5] = 1;
        let crc = crate::envelope::checksum(&b[..CHECKED], &b[HEADER_LEN..]);
        b[CHECKED..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        crate::envelope::open(&b, 1, 1 << 20).is_ok()
    }

    /// Decodes bytes with the bincode codec as a value with strings, vectors, options and maps
    /// (the shapes whose length prefixes could claim huge allocations); `true` when accepted.
    pub fn decode_bincode(bytes: &[u8]) -> bool {
        use crate::codec::{Bincode, Codec};
        type Shape = (
            String,
            Vec<u64>,
            Option<std::collections::BTreeMap<String, Vec<u8>>>,
        );
        Bincode.decode::<Shape>(bytes).is_ok()
    }

    /// Decodes bytes as a bus message; `true` when they are accepted, in which case encoding
    /// the result again must give the same bytes (panics otherwise, for the fuzzer to report).
    pub fn decode_bus_message(bytes: &[u8]) -> bool {
        match crate::bus::message::decode(bytes) {
            Ok(m) => {
                let again = crate::bus::message::encode(&m.sender, m.seq, &m.entries);
                assert_eq!(
                    again, bytes,
                    "a decoded message must encode to the same bytes"
                );
                true
            }
            Err(_) => false,
        }
    }
}

pub use builder::LayerCacheBuilder;
pub use bus::{BusStatus, CoherenceLossPolicy, FlushReason, InstanceId};
pub use cache::LayerCache;
#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Bincode, Codec};
pub use envelope::Corruption;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use key::CacheKey;
pub use options::{
    EntryOptions, L2ErrorPolicy, L2Startup, DEFAULT_L1_WRITE_COOLDOWN, DEFAULT_LOADER_HARD_TIMEOUT,
    MAX_LIFETIME, MAX_QUEUE, MAX_WAIT,
};
pub use region::{EntryRequest, Region, RegionBuilder};
pub use stats::Stats;
