//! Per-entry options and policies.

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest lifetime any option accepts (`ttl`, `l1_ttl`, `time_to_live`, `time_to_idle`,
/// `fail_safe_max_age`, …): 10 years. Longer lifetimes mean nothing to a cache, and the bound
/// keeps every sum of lifetimes (a `ttl` plus its fail-safe keep plus jitter) far from
/// overflowing a `Duration`, an `Instant` or Redis's millisecond expiry.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The default [`EntryOptions::loader_hard_timeout`]: 30 seconds.
pub const DEFAULT_LOADER_HARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The default [`LayerCacheBuilder::l1_write_cooldown`](crate::LayerCacheBuilder::l1_write_cooldown):
/// 10 ms.
pub const DEFAULT_L1_WRITE_COOLDOWN: Duration = Duration::from_millis(10);

/// The default [`LayerCacheBuilder::offload_threshold`](crate::LayerCacheBuilder::offload_threshold):
/// 64 KiB.
pub const DEFAULT_OFFLOAD_THRESHOLD: usize = 64 << 10;

/// The default [`LayerCacheBuilder::l2_read_coalescing`](crate::LayerCacheBuilder::l2_read_coalescing):
/// 1 read in flight before the others are coalesced.
pub const DEFAULT_L2_READ_COALESCING: usize = 1;

/// The default [`LayerCacheBuilder::bus_buffer`](crate::LayerCacheBuilder::bus_buffer): 512
/// messages.
///
/// Sized from measurements (`docs/BENCHMARKS.md`, "What a cache costs before its first
/// entry"): the Redis client allocates every slot of this queue up front, ten times over (one
/// queue per kind of client event), ~600 bytes of heap per message of capacity — 2.9 MiB per
/// cache at 4096, 0.7 MiB at 512. Under `loadgen` at 50 % writes (~10,000 bus messages a
/// second reaching each instance, the listener on its own thread or on the service's runtime)
/// 64 messages of room were enough and 16–32 were not: 512 leaves eight times that margin.
pub const DEFAULT_BUS_BUFFER: usize = 512;

/// The longest timeout, wait or interval any option accepts (`l2_command_timeout`,
/// `lock_wait`, `loader_hard_timeout`, `bus_heartbeat_timeout`, …): 1 day.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The most messages or commands a queue option accepts (`bus_buffer`,
/// `l2_max_command_buffer`): 2^20. Queues are allocated (or may grow) to this size.
pub const MAX_QUEUE: usize = 1 << 20;

/// Checks that an optional duration is at most `max`; the error names the option and the bound.
pub(crate) fn check_max(what: &str, value: Option<Duration>, max: Duration) -> Result<()> {
    match value {
        Some(v) if v > max => Err(Error::config(format!(
            "{what} is {v:?}; it must be at most {max:?} ({})",
            if max == MAX_WAIT { "1 day" } else { "10 years" }
        ))),
        _ => Ok(()),
    }
}

/// Options for one entry: how long it lives in each tier.
///
/// Set defaults per cache ([`LayerCacheBuilder::default_entry_options`]) or per region
/// ([`RegionBuilder::entry_options`]), and override them per call (`*_with` methods).
///
/// [`LayerCacheBuilder::default_entry_options`]: crate::LayerCacheBuilder::default_entry_options
/// [`RegionBuilder::entry_options`]: crate::RegionBuilder::entry_options
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use layercache::EntryOptions;
///
/// let opts = EntryOptions::new()
///     .ttl(Duration::from_secs(600))
///     .l1_ttl(Duration::from_secs(30));
/// assert_eq!(opts.get_ttl(), Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryOptions {
    ttl: Duration,
    l1_ttl: Option<Duration>,
    jitter: Duration,
    soft_ttl: Option<Duration>,
    xfetch_beta: f64,
    fail_safe_max_age: Option<Duration>,
    fail_safe_throttle: Duration,
    loader_soft_timeout: Option<Duration>,
    loader_hard_timeout: Option<Duration>,
    negative_ttl: Option<Duration>,
    sliding: Option<Duration>,
    distributed_lock: bool,
}

impl Default for EntryOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl EntryOptions {
    /// The defaults: `ttl` 5 minutes, `loader_hard_timeout` 30 seconds, `fail_safe_throttle`
    /// 30 seconds; every other option off (see each one).
    pub const fn new() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            l1_ttl: None,
            jitter: Duration::ZERO,
            soft_ttl: None,
            xfetch_beta: 0.0,
            fail_safe_max_age: None,
            fail_safe_throttle: Duration::from_secs(30),
            loader_soft_timeout: None,
            loader_hard_timeout: Some(DEFAULT_LOADER_HARD_TIMEOUT),
            negative_ttl: None,
            sliding: None,
            distributed_lock: false,
        }
    }

    /// Lifetime of the entry: the Redis key's expiry (`SET … PX`), and in L1-only mode the
    /// L1 lifetime. Must be at least 1 ms; Redis expiry has millisecond resolution and sub-
    /// millisecond parts are rounded up.
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: 5 minutes.
    #[must_use]
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Lifetime of the entry in the in-process tier. The L1 lifetime is the smallest of this,
    /// `ttl`, the cache's [`time_to_live`](crate::LayerCacheBuilder::time_to_live) (the bound
    /// on any L1 entry) and, for a value read from Redis, the time the Redis entry has left.
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: unset (follow `ttl`).
    #[must_use]
    pub const fn l1_ttl(mut self, l1_ttl: Duration) -> Self {
        self.l1_ttl = Some(l1_ttl);
        self
    }

    /// Adds a random part of up to `jitter` to each entry's `ttl` (both tiers), so that
    /// entries written together do not expire together.
    ///
    /// Default: zero (no jitter).
    #[must_use]
    pub const fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Early refresh (refresh-ahead): once an entry is older than `soft_ttl` (and younger
    /// than `ttl`), `get_or_load` still returns it at once but starts one background refresh
    /// of the key (one per key per instance; with [`distributed_lock`](Self::distributed_lock),
    /// one across instances). Must be less than `ttl`.
    ///
    /// Default: none.
    #[must_use]
    pub const fn soft_ttl(mut self, soft_ttl: Duration) -> Self {
        self.soft_ttl = Some(soft_ttl);
        self
    }

    /// Probabilistic early refresh (XFetch): a `get_or_load` hit on an entry near its expiry
    /// starts a background refresh with a probability that rises as expiry approaches and
    /// with the time the last load took (measured and stored with the value). `beta` scales
    /// how early: 1.0 is the classic choice, larger is earlier, 0 is off.
    ///
    /// Default: 0 (off).
    #[must_use]
    pub const fn xfetch_beta(mut self, beta: f64) -> Self {
        self.xfetch_beta = beta;
        self
    }

    /// Fail-safe: keep an entry for up to `max_age` past its `ttl`, and serve it (stale) when
    /// the loader fails, panics or hits its timeout. After serving a stale value, it is
    /// treated as fresh for [`fail_safe_throttle`](Self::fail_safe_throttle), so a failing
    /// source is not retried on every call. Without a stale value the caller gets the error.
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: none (fail-safe off).
    #[must_use]
    pub const fn fail_safe_max_age(mut self, max_age: Duration) -> Self {
        self.fail_safe_max_age = Some(max_age);
        self
    }

    /// How long a stale value served by fail-safe counts as fresh before the source is tried
    /// again.
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: 30 seconds.
    #[must_use]
    pub const fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// Soft loader timeout: when a stale value is at hand (fail-safe), a load taking longer
    /// than this returns the stale value to the callers; the load keeps running in the
    /// background and updates the cache when it finishes. Without a stale value it has no
    /// effect.
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: none.
    #[must_use]
    pub const fn loader_soft_timeout(mut self, timeout: Duration) -> Self {
        self.loader_soft_timeout = Some(timeout);
        self
    }

    /// Hard loader timeout: a load taking longer is abandoned (its task aborted) and the
    /// callers get the stale value (fail-safe) or an [`ErrorKind::Loader`] error; the next call
    /// loads afresh. This is what keeps a loader that never finishes (a hung connection, a
    /// lost wake-up) from pinning its key: every later caller of that key joins the running
    /// load, so without a bound they would all wait for ever. For loads that legitimately take
    /// longer, raise it (at most [`MAX_WAIT`], 1 day).
    ///
    /// [`ErrorKind::Loader`]: crate::ErrorKind::Loader
    ///
    /// Default: 30 seconds.
    #[must_use]
    pub const fn loader_hard_timeout(mut self, timeout: Duration) -> Self {
        self.loader_hard_timeout = Some(timeout);
        self
    }

    /// Negative caching: when a loader given to
    /// [`EntryRequest::or_load_optional`](crate::EntryRequest::or_load_optional) finds nothing,
    /// remember that for this long (in both tiers), so the source is not asked again.
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: none (not-found is not cached).
    #[must_use]
    pub const fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Sliding expiration: each read extends the entry's lifetime to `ttl` again. In L1 on
    /// every read; in Redis at most once per `interval` per instance (`PEXPIRE` from an L1 hit,
    /// `GETEX … PX` from a Redis read), never a write per read.
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: none (fixed expiry).
    #[must_use]
    pub const fn sliding(mut self, interval: Duration) -> Self {
        self.sliding = Some(interval);
        self
    }

    /// Cross-instance stampede protection: a load runs under a Redis lock (`SET … NX PX` with
    /// a random token, renewed while the load runs, released only by its owner), so one
    /// instance loads while the others wait, re-reading Redis with back-off until the value
    /// appears or their wait runs out (then they load themselves: the holder may have died).
    /// See [`lock_ttl`](crate::LayerCacheBuilder::lock_ttl) and
    /// [`lock_wait`](crate::LayerCacheBuilder::lock_wait). A batch load
    /// ([`Region::get_or_load_many`](crate::Region::get_or_load_many)) takes the locks of all its
    /// keys in one round trip and waits for the others' holders together.
    ///
    /// Default: off (single flight per instance only).
    #[must_use]
    pub const fn distributed_lock(mut self, on: bool) -> Self {
        self.distributed_lock = on;
        self
    }

    /// The configured `ttl`.
    pub const fn get_ttl(&self) -> Duration {
        self.ttl
    }

    /// The configured jitter.
    pub const fn get_jitter(&self) -> Duration {
        self.jitter
    }

    /// The configured soft TTL, if any.
    pub const fn get_soft_ttl(&self) -> Option<Duration> {
        self.soft_ttl
    }

    /// The configured XFetch beta.
    pub const fn get_xfetch_beta(&self) -> f64 {
        self.xfetch_beta
    }

    /// The configured fail-safe maximum age, if any.
    pub const fn get_fail_safe_max_age(&self) -> Option<Duration> {
        self.fail_safe_max_age
    }

    /// The configured fail-safe throttle.
    pub const fn get_fail_safe_throttle(&self) -> Duration {
        self.fail_safe_throttle
    }

    /// The configured soft loader timeout, if any.
    pub const fn get_loader_soft_timeout(&self) -> Option<Duration> {
        self.loader_soft_timeout
    }

    /// The configured hard loader timeout, if any.
    pub const fn get_loader_hard_timeout(&self) -> Option<Duration> {
        self.loader_hard_timeout
    }

    /// The configured negative TTL, if any.
    pub const fn get_negative_ttl(&self) -> Option<Duration> {
        self.negative_ttl
    }

    /// The configured sliding interval, if any.
    pub const fn get_sliding(&self) -> Option<Duration> {
        self.sliding
    }

    /// Whether loads take a distributed lock.
    pub const fn get_distributed_lock(&self) -> bool {
        self.distributed_lock
    }

    /// The configured `l1_ttl`, if set.
    pub const fn get_l1_ttl(&self) -> Option<Duration> {
        self.l1_ttl
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config("EntryOptions::ttl must be at least 1 ms"));
        }
        for (what, value) in [
            ("EntryOptions::ttl", Some(self.ttl)),
            ("EntryOptions::l1_ttl", self.l1_ttl),
            ("EntryOptions::fail_safe_max_age", self.fail_safe_max_age),
            (
                "EntryOptions::fail_safe_throttle",
                Some(self.fail_safe_throttle),
            ),
            ("EntryOptions::negative_ttl", self.negative_ttl),
            ("EntryOptions::sliding", self.sliding),
        ] {
            check_max(what, value, MAX_LIFETIME)?;
        }
        check_max(
            "EntryOptions::loader_soft_timeout",
            self.loader_soft_timeout,
            MAX_WAIT,
        )?;
        check_max(
            "EntryOptions::loader_hard_timeout",
            self.loader_hard_timeout,
            MAX_WAIT,
        )?;
        if self.l1_ttl.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "EntryOptions::l1_ttl must be greater than zero",
            ));
        }
        if self.jitter > self.ttl {
            return Err(Error::config("EntryOptions::jitter must not exceed ttl"));
        }
        if self.soft_ttl.is_some_and(|s| s.is_zero() || s >= self.ttl) {
            return Err(Error::config(
                "EntryOptions::soft_ttl must be between 0 and ttl",
            ));
        }
        if !self.xfetch_beta.is_finite() || self.xfetch_beta < 0.0 {
            return Err(Error::config(
                "EntryOptions::xfetch_beta must be a finite number >= 0",
            ));
        }
        let positive = |d: Option<Duration>| d.is_none_or(|d| !d.is_zero());
        if !positive(self.fail_safe_max_age) {
            return Err(Error::config(
                "EntryOptions::fail_safe_max_age must be greater than zero",
            ));
        }
        if !positive(self.loader_soft_timeout) {
            return Err(Error::config(
                "EntryOptions::loader_soft_timeout must be greater than zero",
            ));
        }
        if !positive(self.loader_hard_timeout) {
            return Err(Error::config(
                "EntryOptions::loader_hard_timeout must be greater than zero",
            ));
        }
        if let (Some(soft), Some(hard)) = (self.loader_soft_timeout, self.loader_hard_timeout) {
            if soft >= hard {
                return Err(Error::config(
                    "EntryOptions::loader_soft_timeout must be less than loader_hard_timeout",
                ));
            }
        }
        if self
            .negative_ttl
            .is_some_and(|d| d < Duration::from_millis(1))
        {
            return Err(Error::config(
                "EntryOptions::negative_ttl must be at least 1 ms",
            ));
        }
        if !positive(self.sliding) {
            return Err(Error::config(
                "EntryOptions::sliding interval must be greater than zero",
            ));
        }
        if self.sliding.is_some()
            && (self.soft_ttl.is_some()
                || self.xfetch_beta > 0.0
                || self.fail_safe_max_age.is_some())
        {
            return Err(Error::config(
                "EntryOptions::sliding cannot be combined with soft_ttl, xfetch_beta or fail_safe_max_age",
            ));
        }
        Ok(())
    }

    /// The L1 lifetime for a new entry, capped by the cache-wide maximum.
    pub(crate) fn l1_lifetime(&self, max: Duration) -> Duration {
        self.l1_ttl.unwrap_or(self.ttl).min(self.ttl).min(max)
    }

    /// How long past its logical expiry an entry is kept as a fail-safe fallback.
    pub(crate) fn keep_after_expiry(&self) -> Duration {
        self.fail_safe_max_age.unwrap_or(Duration::ZERO)
    }
}

/// `d` in whole milliseconds, rounded up.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// What a read does when Redis fails (error reply, lost connection, timeout).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L2ErrorPolicy {
    /// Log (`tracing` at `warn`), count, and carry on as if Redis had missed: reads fall back
    /// to the loader, writes still update L1. Redis trouble never becomes the caller's error.
    #[default]
    Fallback,
    /// Return the Redis error to the caller (after writes have updated L1).
    Propagate,
}

/// What [`build`](crate::LayerCacheBuilder::build) does when Redis cannot be reached.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L2Startup {
    /// Fail: `build()` returns the connection error (after `l2_connect_timeout`). A wrong URL,
    /// password or TLS setting shows up at start.
    #[default]
    FailFast,
    /// Start anyway: `build()` returns after `l2_connect_timeout` with a cache that runs as
    /// during an outage (L1 and the loader; regions bypass Redis until they know their
    /// generation), and joins Redis in the background as soon as it answers — the bus
    /// subscribes, generations are read, and L1 is flushed, as after any reconnect. A service
    /// restarting while Redis is down comes up instead of crash-looping. The connection error
    /// is logged (`warn`) on every attempt rather than returned, so a wrong setting shows in
    /// the logs and in [`LayerCache::l2_connected`](crate::LayerCache::l2_connected) only.
    Degraded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(millis_ceil(Duration::from_millis(7)), 7);
    }

    #[test]
    fn l1_lifetime_is_the_smallest_bound() {
        let max = Duration::from_secs(60);
        let o = EntryOptions::new().ttl(Duration::from_secs(10));
        assert_eq!(o.l1_lifetime(max), Duration::from_secs(10));
        let o = EntryOptions::new().ttl(Duration::from_secs(600));
        assert_eq!(o.l1_lifetime(max), max);
        let o = o.l1_ttl(Duration::from_secs(5));
        assert_eq!(o.l1_lifetime(max), Duration::from_secs(5));
        let o = EntryOptions::new()
            .ttl(Duration::from_secs(2))
            .l1_ttl(Duration::from_secs(30));
        assert_eq!(o.l1_lifetime(max), Duration::from_secs(2));
    }

    #[test]
    fn freshness_options_are_validated() {
        let base = EntryOptions::new().ttl(Duration::from_secs(10));
        assert!(base.soft_ttl(Duration::from_secs(10)).validate().is_err());
        assert!(base.soft_ttl(Duration::from_secs(5)).validate().is_ok());
        assert!(base.jitter(Duration::from_secs(11)).validate().is_err());
        assert!(base.xfetch_beta(-1.0).validate().is_err());
        assert!(base.xfetch_beta(f64::NAN).validate().is_err());
        assert!(base
            .loader_soft_timeout(Duration::from_secs(2))
            .loader_hard_timeout(Duration::from_secs(1))
            .validate()
            .is_err());
        assert!(base.loader_hard_timeout(Duration::ZERO).validate().is_err());
        assert!(base.sliding(Duration::ZERO).validate().is_err());
        assert!(base.negative_ttl(Duration::ZERO).validate().is_err());
        assert!(base.fail_safe_max_age(Duration::ZERO).validate().is_err());
    }

    #[test]
    fn validation_rejects_zero() {
        assert!(EntryOptions::new().ttl(Duration::ZERO).validate().is_err());
        assert!(EntryOptions::new()
            .l1_ttl(Duration::ZERO)
            .validate()
            .is_err());
        assert!(EntryOptions::new().validate().is_ok());
    }
}
