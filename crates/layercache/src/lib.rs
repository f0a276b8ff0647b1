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
//!    encoded once, written to Redis with a TTL (`SET … PX … NX`, so a concurrent write wins),
//!    put in L1 and returned to every caller.
//!
//! Redis failures along the way are logged, counted and skipped by default
//! ([`L2ErrorPolicy`]); corrupt entries are misses, counted by [`Corruption`] reason.
//!
//! ## How a write flows
//!
//! [`Region::insert`] encodes once, `SET`s the key with its TTL, then puts the value in L1;
//! [`Region::invalidate`] `UNLINK`s the key and drops it from L1. Either one *poisons* fetches
//! of that key already running, so they cannot put an older value back.
//!
//! ## Keys and format versions
//!
//! Redis keys look like `{cache}:f{format}:{region}:s{schema}:{key}`: see [`key`] for the
//! escaping that keeps any user key distinct, and [`envelope`] for the stored bytes. Bumping a
//! region's [`schema_version`](RegionBuilder::schema_version) or the envelope format turns old
//! entries into misses.
//!
//! ## Consistency and its limits (this release)
//!
//! - Read your own writes on one instance; no stale fill after an `insert` or `invalidate`
//!   on the same instance.
//! - Every Redis key has a TTL; every L1 entry lives at most
//!   [`time_to_live`](LayerCacheBuilder::time_to_live).
//! - Other instances' L1s are not yet told of changes (the invalidation bus is the next
//!   step): they may serve a replaced value for up to its L1 lifetime.
//!
//! ## Telemetry
//!
//! See [`telemetry`] for the `tracing` spans and events and [`Stats`] for the counters.
//!
//! ## Feature flags
//!
//! - `postcard`: the [`Postcard`] codec.

mod builder;
pub mod bus;
mod cache;
pub mod codec;
pub mod envelope;
mod error;
mod flight;
pub mod key;
mod l1;
mod l2;
mod options;
mod region;
mod stats;
pub mod telemetry;

pub use builder::LayerCacheBuilder;
pub use bus::{BusStatus, CoherenceLossPolicy, FlushReason, InstanceId};
pub use cache::LayerCache;
#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Bincode, Codec};
pub use envelope::Corruption;
pub use error::{BoxError, Error, ErrorKind, Result};
pub use key::CacheKey;
pub use options::{EntryOptions, L2ErrorPolicy};
pub use region::{Region, RegionBuilder};
pub use stats::Stats;
