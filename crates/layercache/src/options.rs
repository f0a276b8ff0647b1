//! Per-entry options and policies.

use std::time::Duration;

use crate::error::{Error, Result};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryOptions {
    ttl: Duration,
    l1_ttl: Option<Duration>,
}

impl Default for EntryOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl EntryOptions {
    /// The defaults: `ttl` 5 minutes, `l1_ttl` unset.
    pub const fn new() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            l1_ttl: None,
        }
    }

    /// Lifetime of the entry: the Redis key's expiry (`SET … PX`), and in L1-only mode the
    /// L1 lifetime. Must be at least 1 ms; Redis expiry has millisecond resolution and sub-
    /// millisecond parts are rounded up.
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
    /// Default: unset (follow `ttl`).
    #[must_use]
    pub const fn l1_ttl(mut self, l1_ttl: Duration) -> Self {
        self.l1_ttl = Some(l1_ttl);
        self
    }

    /// The configured `ttl`.
    pub const fn get_ttl(&self) -> Duration {
        self.ttl
    }

    /// The configured `l1_ttl`, if set.
    pub const fn get_l1_ttl(&self) -> Option<Duration> {
        self.l1_ttl
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config("EntryOptions::ttl must be at least 1 ms"));
        }
        if self.l1_ttl.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "EntryOptions::l1_ttl must be greater than zero",
            ));
        }
        Ok(())
    }

    /// The L1 lifetime for a new entry, capped by the cache-wide maximum.
    pub(crate) fn l1_lifetime(&self, max: Duration) -> Duration {
        self.l1_ttl.unwrap_or(self.ttl).min(self.ttl).min(max)
    }

    /// `ttl` in whole milliseconds, rounded up.
    pub(crate) fn ttl_millis(&self) -> u64 {
        let ms = self.ttl.as_millis();
        let ms = if self.ttl.subsec_nanos() % 1_000_000 != 0 {
            ms + 1
        } else {
            ms
        };
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_millis_rounds_up() {
        assert_eq!(
            EntryOptions::new()
                .ttl(Duration::from_micros(1500))
                .ttl_millis(),
            2
        );
        assert_eq!(
            EntryOptions::new()
                .ttl(Duration::from_millis(7))
                .ttl_millis(),
            7
        );
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
    fn validation_rejects_zero() {
        assert!(EntryOptions::new().ttl(Duration::ZERO).validate().is_err());
        assert!(EntryOptions::new()
            .l1_ttl(Duration::ZERO)
            .validate()
            .is_err());
        assert!(EntryOptions::new().validate().is_ok());
    }
}
