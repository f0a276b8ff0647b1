//! What L1 stores: an entry, its optional extras (tags, freshness, sliding state), and the
//! checks a hit makes on it (its own deadline, its sliding lifetime, its fill's poison flag).

use std::{
    any::Any,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, PoisonError,
    },
    time::{Duration, Instant},
};

use moka::Expiry;

use super::{clock, L1Key};

/// When an entry stops being fresh and when it should be refreshed, for entries that need
/// the clock on a hit (fail-safe, early refresh, XFetch). Plain entries have none: moka's
/// expiry is their whole story and a hit reads no clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Freshness {
    /// Logical expiry: past it the value is stale, kept only as a fail-safe fallback.
    pub(crate) expires: Instant,
    /// Soft expiry: past it a `get_or_load` hit starts a background refresh.
    pub(crate) refresh_at: Option<Instant>,
    /// How long the value took to load (XFetch's delta).
    pub(crate) delta: Duration,
    /// XFetch's beta (0: off).
    pub(crate) beta: f64,
    /// When the value was created (Unix ms): a refresh that finds a newer one in Redis uses
    /// it instead of loading.
    pub(crate) created_ms: u64,
    /// For a stale value re-served by fail-safe: when it first went stale (the fail-safe
    /// maximum age counts from there, not from the throttle).
    pub(crate) stale_since: Option<Instant>,
}

/// Sliding-expiration state shared by the copies of one entry.
#[derive(Debug)]
pub(crate) struct SlidingState {
    /// Redis is told at most once per interval.
    pub(crate) interval: Duration,
    /// The lifetime each extension sets, in ms.
    pub(crate) ttl_ms: u64,
    /// When Redis was last told.
    pub(crate) last: std::sync::Mutex<Instant>,
    /// The L1 lifetime each read starts over (within the cache-wide bound).
    pub(crate) life: Duration,
    /// When the entry goes unless read before ([`clock`] ticks).
    pub(crate) until: AtomicU64,
}

impl SlidingState {
    /// A read: whether the entry is still alive, and if so its lifetime starts over.
    pub(crate) fn read(&self) -> bool {
        if clock::now() >= self.until.load(Ordering::Relaxed) {
            return false;
        }
        self.until
            .store(clock::deadline(self.life), Ordering::Relaxed);
        true
    }

    /// Whether Redis is due an extension now (and if so, records that it is being sent).
    pub(crate) fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.elapsed() >= self.interval {
            *last = Instant::now();
            true
        } else {
            false
        }
    }
}

/// The parts of an L1 entry that most entries do not have, behind one pointer so the common
/// entry stays small (moka clones the entry on every hit).
#[derive(Debug)]
pub(crate) struct EntryExtras {
    /// The entry's tags, if any.
    pub(crate) tags: Option<Arc<[String]>>,
    pub(crate) fresh: Option<Freshness>,
    pub(crate) slide: Option<SlidingState>,
}

/// An L1 value.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    /// Physical lifetime (logical lifetime plus any fail-safe keep).
    pub(crate) ttl: Duration,
    /// For an entry that lives shorter than the cache-wide bound: when it goes ([`clock`]
    /// ticks). [`clock::NEVER`]: the bound ends it (moka's time to live), or sliding state
    /// does. (Not an `Option`: 8 bytes less on every entry.)
    pub(crate) expires: clock::Ticks,
    /// The region generation the value was read or written under.
    pub(crate) generation: u64,
    /// The tag epoch when the read or write that produced the value began: a tag invalidated
    /// after that makes the entry invalid.
    pub(crate) tag_epoch: u64,
    pub(crate) weight: u32,
    /// A cached "not found".
    pub(crate) negative: bool,
    /// The source version the value was written with (`insert_versioned`), if any: a
    /// versioned write never replaces a newer one in L1.
    pub(crate) version: Option<u64>,
    /// Tags, freshness and sliding state, for the entries that have any.
    pub(crate) extra: Option<Arc<EntryExtras>>,
    /// The poison flag of the fill that put the entry in (see
    /// [`insert_guarded`](L1::insert_guarded)): once set, the entry is never served.
    pub(crate) guard: Option<FillGuard>,
}

/// A fill's poison flag, set when a write or invalidation of its key is applied after the
/// fill's read began (the flight's or write ticket's own flag, shared).
pub(crate) type FillGuard = Arc<AtomicBool>;

impl std::fmt::Debug for L1Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1Entry")
            .field("ttl", &self.ttl)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// The kept table's expiry: each entry's own lifetime, started over by each read of a sliding
/// entry.
pub(super) struct PerEntryTtl;

impl Expiry<L1Key, L1Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &L1Key, v: &L1Entry, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _: &L1Key,
        v: &L1Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_read(
        &self,
        _: &L1Key,
        v: &L1Entry,
        _: Instant,
        left: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        // Sliding entries start their lifetime over on every read.
        if v.extra.as_ref().is_some_and(|x| x.slide.is_some()) {
            Some(v.ttl)
        } else {
            left
        }
    }
}

/// Whether the entry's own lifetime is over (it may still be in moka until the bound ends it).
#[inline]
pub(crate) fn expired(entry: &L1Entry) -> bool {
    entry.expires != clock::NEVER && clock::now() >= entry.expires
}

/// Whether a sliding entry went unread for its whole sliding lifetime. Read-only: a hit starts
/// the lifetime over through [`SlidingState::read`] instead.
#[inline]
pub(crate) fn slid_out(entry: &L1Entry) -> bool {
    entry
        .extra
        .as_deref()
        .and_then(|x| x.slide.as_ref())
        .is_some_and(|s| clock::now() >= s.until.load(Ordering::Relaxed))
}

/// Whether the entry's fill was poisoned after it went in (see [`L1::insert_guarded`]).
#[inline]
pub(crate) fn guard_set(entry: &L1Entry) -> bool {
    entry
        .guard
        .as_ref()
        .is_some_and(|g| g.load(Ordering::Acquire))
}
