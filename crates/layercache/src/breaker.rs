//! A circuit breaker around Redis: after repeated failures the cache stops calling Redis for
//! a cool-down and serves from L1 and the loader; then one probe is let through, and its
//! success closes the breaker again.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::stats::Counters;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    /// Consecutive failures that open the breaker; 0 disables it.
    pub(crate) threshold: u32,
    /// How long it stays open before a probe.
    pub(crate) cooldown: Duration,
}

/// The breaker's state, shared by every user of one Redis client.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    failures: AtomicU32,
    /// When it opened, in ms since `epoch`.
    opened_ms: AtomicU64,
    epoch: Instant,
    counters: Arc<Counters>,
    cache_name: String,
}

/// Whether a call may go to Redis.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Go ahead.
    Call,
    /// Go ahead: this call is the probe that decides whether the breaker closes.
    Probe,
    /// Do not call Redis now.
    Reject,
}

impl Breaker {
    pub(crate) fn new(
        settings: BreakerSettings,
        counters: Arc<Counters>,
        cache_name: String,
    ) -> Self {
        Self {
            settings,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            counters,
            cache_name,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks to make a call.
    pub(crate) fn permit(&self) -> Permit {
        if self.settings.threshold == 0 {
            return Permit::Call;
        }
        match self.state.load(Ordering::Acquire) {
            CLOSED => Permit::Call,
            OPEN => {
                let since = self
                    .now_ms()
                    .saturating_sub(self.opened_ms.load(Ordering::Acquire));
                let cooled = u128::from(since) >= self.settings.cooldown.as_millis();
                if cooled
                    && self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    Permit::Probe
                } else {
                    self.counters.breaker_rejections.incr();
                    Permit::Reject
                }
            }
            _ => {
                // A probe is in flight: everyone else waits for its verdict.
                self.counters.breaker_rejections.incr();
                Permit::Reject
            }
        }
    }

    /// Records a call's result. `outage` is true for failures that say Redis is unreachable
    /// or overloaded (timeouts, connection errors), false for successes and for error replies
    /// (which prove Redis is there).
    pub(crate) fn record(&self, permit: &Permit, outage: bool) {
        if self.settings.threshold == 0 {
            return;
        }
        if !outage {
            self.failures.store(0, Ordering::Release);
            if *permit == Permit::Probe {
                self.state.store(CLOSED, Ordering::Release);
                tracing::info!(cache.name = %self.cache_name, "redis circuit breaker closed");
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let reopen = *permit == Permit::Probe;
        if reopen || failures >= self.settings.threshold {
            let was = self.state.swap(OPEN, Ordering::AcqRel);
            self.opened_ms.store(self.now_ms(), Ordering::Release);
            if was != OPEN {
                self.counters.breaker_opens.incr();
                tracing::warn!(
                    cache.name = %self.cache_name,
                    failures,
                    cooldown = ?self.settings.cooldown,
                    "redis circuit breaker opened: calls skip redis until a probe succeeds"
                );
            }
        }
    }

    /// Whether the breaker is currently open (or probing).
    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(
            BreakerSettings {
                threshold,
                cooldown: Duration::from_millis(cooldown_ms),
            },
            Arc::new(Counters::default()),
            "t".into(),
        )
    }

    #[test]
    fn opens_after_the_threshold_and_rejects() {
        let b = breaker(3, 60_000);
        for _ in 0..2 {
            let p = b.permit();
            assert_eq!(p, Permit::Call);
            b.record(&p, true);
        }
        assert!(!b.is_open());
        let p = b.permit();
        b.record(&p, true);
        assert!(b.is_open());
        assert_eq!(b.permit(), Permit::Reject);
        assert_eq!(b.counters.breaker_opens.get(), 1);
        assert_eq!(b.counters.breaker_rejections.get(), 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker(2, 60_000);
        let p = b.permit();
        b.record(&p, true);
        b.record(&b.permit(), false);
        b.record(&b.permit(), true);
        assert!(!b.is_open(), "failures were not consecutive");
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_or_reopens() {
        let b = breaker(1, 0);
        b.record(&b.permit(), true);
        assert!(b.is_open());
        let probe = b.permit();
        assert_eq!(probe, Permit::Probe);
        assert_eq!(b.permit(), Permit::Reject, "one probe at a time");
        b.record(&probe, true);
        assert!(b.is_open(), "a failed probe reopens");
        let probe = b.permit();
        assert_eq!(probe, Permit::Probe);
        b.record(&probe, false);
        assert!(!b.is_open());
        assert_eq!(b.permit(), Permit::Call);
    }

    #[test]
    fn threshold_zero_disables_it() {
        let b = breaker(0, 0);
        for _ in 0..10 {
            b.record(&b.permit(), true);
        }
        assert_eq!(b.permit(), Permit::Call);
    }
}
