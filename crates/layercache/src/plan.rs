//! The lifetimes of one value being written (inserted, loaded, or a tombstone), and the
//! envelope metadata they make. A leaf: the region's store and the journal's repair both seal
//! entries with it.

use std::time::Duration;

use crate::{
    envelope::{self, Encoded, Meta, HEADER_LEN},
    freshness::{jittered, rand01, unix_millis},
    journal::Tombstone,
    options::{millis_ceil, EntryOptions},
};

/// The lifetimes of one value being written (inserted or loaded).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WritePlan {
    /// Logical lifetime (jittered `ttl`, or `negative_ttl`).
    pub(crate) ttl: Duration,
    /// How long past `ttl` the value is kept as a fail-safe fallback.
    pub(crate) fail_safe_keep: Duration,
    /// Soft expiry (early refresh), if any.
    pub(crate) soft: Option<Duration>,
    /// How long the load took (zero for inserts).
    pub(crate) load: Duration,
    pub(crate) negative: bool,
    pub(crate) tombstone: bool,
    /// The source version the value carries (`insert_versioned`).
    pub(crate) version: Option<u64>,
}

impl WritePlan {
    pub(crate) fn value(options: &EntryOptions, load: Duration) -> Self {
        Self {
            ttl: jittered(options.get_ttl(), options.get_jitter(), rand01()),
            fail_safe_keep: options.keep_after_expiry(),
            soft: options.get_soft_ttl(),
            load,
            negative: false,
            tombstone: false,
            version: None,
        }
    }

    /// What `invalidate` leaves: a tombstone living as long as a value would.
    pub(crate) fn tombstone(options: &EntryOptions) -> Self {
        Self {
            ttl: options.get_ttl(),
            fail_safe_keep: options.keep_after_expiry(),
            soft: None,
            load: Duration::ZERO,
            negative: false,
            tombstone: true,
            version: None,
        }
    }

    /// A tombstone with the journal's recorded lifetimes (a repair).
    pub(crate) fn of_tombstone(t: &Tombstone) -> Self {
        Self {
            ttl: t.ttl,
            fail_safe_keep: t.retention,
            soft: None,
            load: Duration::ZERO,
            negative: false,
            tombstone: true,
            version: None,
        }
    }

    pub(crate) fn negative(ttl: Duration) -> Self {
        Self {
            ttl,
            fail_safe_keep: Duration::ZERO,
            soft: None,
            load: Duration::ZERO,
            negative: true,
            tombstone: false,
            version: None,
        }
    }

    pub(crate) fn meta(&self, now_ms: u64, key_check: u64, type_check: u64) -> Meta {
        let expires_at_ms = now_ms.saturating_add(millis_ceil(self.ttl));
        Meta {
            created_at_ms: now_ms,
            expires_at_ms,
            // A tombstone has nothing to refresh: the field carries a random nonce instead, so
            // two tombstones of one key written in the same millisecond still differ (a load
            // that saw the first must not replace the second).
            refresh_at_ms: if self.tombstone {
                (rand01() * (1u64 << 53) as f64) as u64
            } else {
                self.soft
                    .map_or(expires_at_ms, |s| now_ms.saturating_add(millis_ceil(s)))
            },
            load_us: u32::try_from(self.load.as_micros()).unwrap_or(u32::MAX),
            negative: self.negative,
            tombstone: self.tombstone,
            key_check,
            // A tombstone is a miss for every type: it carries none.
            type_check: if self.tombstone { 0 } else { type_check },
            version: self.version,
        }
    }

    /// The Redis expiry: logical lifetime plus fail-safe keep.
    pub(crate) fn physical_ms(&self) -> u64 {
        millis_ceil(self.ttl + self.fail_safe_keep)
    }
}

/// Seals a tombstone for the Redis key `rk`, as a region with codec `codec` writes it (a
/// tombstone has no payload and no type, so no typed region is needed: the journal's repair
/// uses this).
pub(crate) fn seal_tombstone(t: &Tombstone, rk: &str) -> Encoded {
    let plan = WritePlan::of_tombstone(t);
    envelope::seal(
        vec![0u8; HEADER_LEN],
        t.codec,
        plan.meta(unix_millis(), envelope::key_check(rk.as_bytes()), 0),
        usize::MAX,
        &[],
    )
}
