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
//! [`Region::insert`] encodes once, writes the key with its TTL (fenced on the region's
//! generation: a `SET` and a read of the generation pipelined, or a script), puts the value in L1 unless something newer touched the key
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
//! Four layers; a module imports only from its own layer or below (a test in `layering.rs`
//! keeps the top-level modules free of cycles, and every file under 500 lines outside tests).
//!
//! 1. **Facade**: [`LayerCache`] (`cache.rs`), [`Region`] (`region.rs`; `region/read.rs`:
//!    `get`, `get_or_load`, keys and L1 hit classification; `region/write.rs`: `insert*`,
//!    `invalidate*`; `region/entry.rs`: [`EntryRequest`], one call with its own options and
//!    tags), the builders (`builder.rs`, `builder/`, `region/builder.rs`), options and errors;
//!    [`Lock`] (`lock.rs`: users' distributed locks with fencing tokens) and [`RateLimiter`]
//!    (`ratelimit.rs`; the algorithms' arithmetic in the leaf `rate.rs`), through the store's
//!    lock and rate-limit operations.
//! 2. **Engine** (`engine.rs`, one per cache, shared by its regions): the tiers, the regions and
//!    their generations (`regions.rs`), running fetches (`flight.rs`), the bus handle, the
//!    write journal (`journal.rs`, repaired by `engine/repair.rs`), and the coherence rules
//!    every path goes through: flushes, remote invalidations (`engine/backplane.rs`),
//!    generation moves, failed calls to the store. A fetch's order of steps is in
//!    `region/fetch.rs` (with the Redis read), the load's steps in `region/fetch/steps.rs`;
//!    encoding, lifetimes and the fenced write in `region/store.rs`. The bus protocol
//!    ([`bus`]: sequence numbers, gaps, heartbeats, acknowledgements, the publisher task and the
//!    listener) belongs here too: it knows no transport.
//! 3. **Seams**, the only way the engine reaches the shared tier:
//!    - the *remote store* (`remote.rs`, the `RemoteStore` trait): about twenty operations in
//!      the engine's terms — read an entry, a conditional fill (mode, tag marks, generation
//!      fence, source version), a fill and its bus announcement as one step, tag marks and
//!      pages, load locks, generations, prefix scans, deletes;
//!    - the *backplane*, receiving half (`backplane.rs`: `Subscriber`, `ListenerHome`); the
//!      sending half is the store's `publish`/`fill_announced`, so that a write and its
//!      announcement travel together and in the sender's order.
//!
//!    Implementations: **Redis** (`l2.rs` and `l2/`: the fred client and its bounded calls
//!    with the breaker in `breaker.rs`; connecting in `l2/connect.rs`; the Lua scripts run by
//!    hash in `l2/scripts.rs` and its `.lua` files; a write and its `PUBLISH` pipelined in
//!    `l2/pipeline.rs`, numbered by `sequencer.rs`; marks, locks, generations, scans in
//!    `l2/keyspace.rs`; pub/sub and the listener's thread in `l2/subscriber.rs`), **Redis
//!    Cluster** (`l2/cluster.rs` wrapping the same client: key placement in buckets in
//!    `l2/cluster/placement.rs`, generation moves, tag walks and scans over every primary in
//!    `l2/cluster/keyspace.rs`, the seam's methods in `l2/cluster/seam.rs`; chosen by the URL
//!    in `l2::connect_store`) and **in memory** (`memory.rs`, the `memory` feature: the same
//!    rules in a `BTreeMap` and a broadcast channel). Sentinel needs no type of its own (the
//!    one-server store on a client that follows the primary). A new store or backplane
//!    (server-assisted tracking, say) is one more type implementing `RemoteStore` and
//!    `Subscriber`, chosen in `builder/build.rs` (`LayerCacheBuilder::remote`); nothing above
//!    the seams changes.
//! 4. **Leaves**, which import nothing above them: the format ([`envelope`], [`codec`],
//!    [`key`], `fingerprint.rs`), L1 (`l1.rs`, `cooldown.rs`), `stats.rs`, `freshness.rs`
//!    (clock and early-refresh maths), `coherence.rs` (flush reasons, instance ids),
//!    `plan.rs` (an entry's lifetimes and metadata), `options.rs`, `error.rs`.
//!
//! **The route of a `get`** that misses L1 and hits Redis, six files: `region/read.rs` (the L1
//! key and lookup, the miss path) → `flight.rs` (join or lead the key's flight) →
//! `region/fetch.rs` (the flight's task: the Redis read, what it found, the L1 fill) →
//! `l2.rs` (`GET`, bounded, through `RemoteStore::get`, declared in `remote.rs`) →
//! `region/store.rs` (decode: the leaves `envelope.rs`, `codec.rs`) → `l1.rs`.
//!
//! **The route of an `insert`**, six files: `region/write.rs` (encode once, fill L1, journal on
//! failure) → `region/store.rs` (the fenced write and its announcement, again under a moved
//! generation) → `l2.rs` (`RemoteStore::fill_announced`) → `l2/pipeline.rs` (`EVALSHA` and
//! `PUBLISH` in one pipeline) → `sequencer.rs` (the message's number, taken with the command) →
//! `l1.rs`; `journal.rs` only when Redis did not confirm.
//!
//! **Batches** take the same steps per key with one store call per chunk of keys:
//! `region/batch.rs` (`get_many`, `get_or_load_many`: L1, then the flights of
//! `region/fetch/batch.rs`: one `RemoteStore::get_many`, one loader call, one
//! `RemoteStore::fill_many`) and `region/write/batch.rs` (`insert_many`, `invalidate_many`:
//! each key's `insert` steps from `region/write/insert.rs` around one
//! `RemoteStore::fill_many_announced` per chunk).
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
//! See [`telemetry`] for the `tracing` spans and events, [`Stats`] for the counters, and
//! [`metrics`] for what the `metrics` feature exports.
//!
//! ## Feature flags
//!
//! - `postcard`: the `Postcard` codec.
//! - `metrics`: counters, gauges and histograms through the `metrics` facade (any exporter:
//!   Prometheus, OpenTelemetry, StatsD); names and labels in [`metrics`].
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
mod doorkeeper;
mod engine;
pub mod envelope;
mod error;
mod fingerprint;
mod flight;
mod freshness;
mod hashing;
mod inventory;
mod journal;
pub mod key;
mod l1;
mod l2;
#[cfg(test)]
mod layering;
pub mod lock;
#[cfg(feature = "memory")]
pub mod memory;
pub mod metrics;
mod options;
mod plan;
mod rate;
pub mod ratelimit;
mod region;
mod regions;
mod remote;
mod sequencer;
pub mod session;
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

pub use builder::{ClusterBus, LayerCacheBuilder};
pub use bus::{BusStatus, CoherenceLossPolicy, FlushReason, InstanceId};
pub use cache::LayerCache;
#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Bincode, Codec};
pub use envelope::Corruption;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use inventory::{InstanceInRedis, RegionInRedis};
pub use key::CacheKey;
pub use lock::{Lock, LockRequest, MAX_LOCK_NAME_BYTES};
pub use options::{
    EntryOptions, L2ErrorPolicy, L2Startup, DEFAULT_BUS_BUFFER, DEFAULT_L1_WRITE_COOLDOWN,
    DEFAULT_L2_READ_COALESCING, DEFAULT_LOADER_HARD_TIMEOUT, DEFAULT_OFFLOAD_THRESHOLD,
    MAX_LIFETIME, MAX_QUEUE, MAX_WAIT,
};
pub use ratelimit::{Decision, RateLimit, RateLimiter, WhenRedisFails};
pub use region::{
    EntryRequest, EntryState, Explanation, Held, LoadContext, ManyRequest, NextGet, Region,
    RegionBuilder,
};
pub use session::{Session, SessionStore, SessionStoreBuilder};
pub use stats::Stats;
