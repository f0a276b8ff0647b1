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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go ahead.
    Call,
    /// Go ahead: this call is the probe that decides whether the breaker closes.
    Probe,
    /// Do not call Redis now.
    Reject,
}

/// The right to make one call, from [`Breaker::permit`]. Its result must be handed back with
/// [`record`](Self::record); a permit dropped without a result (the caller's future was
/// cancelled mid-call) records nothing, and a dropped *probe* hands the probe back — the
/// breaker returns to open with its cool-down already over, so the next call probes at once.
/// Without that, a cancelled probe would leave the breaker half-open, rejecting every call
/// for good.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    verdict: Verdict,
    recorded: bool,
}

impl Permit<'_> {
    /// What the breaker said.
    pub(crate) fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Records the call's result. `outage` is true for failures that say Redis is unreachable
    /// or overloaded (timeouts, connection errors), false for successes and for error replies
    /// (which prove Redis is there).
    pub(crate) fn record(mut self, outage: bool) {
        self.recorded = true;
        self.breaker.record(self.verdict, outage);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.verdict == Verdict::Probe {
            // Back to open; `opened_ms` is unchanged, so the cool-down is still over.
            let _ = self.breaker.state.compare_exchange(
                HALF_OPEN,
                OPEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
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
    pub(crate) fn permit(&self) -> Permit<'_> {
        Permit {
            breaker: self,
            verdict: self.decide(),
            recorded: false,
        }
    }

    fn decide(&self) -> Verdict {
        if self.settings.threshold == 0 {
            return Verdict::Call;
        }
        match self.state.load(Ordering::Acquire) {
            CLOSED => Verdict::Call,
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
                    Verdict::Probe
                } else {
                    self.counters.breaker_rejections.incr();
                    Verdict::Reject
                }
            }
            _ => {
                // A probe is in flight: everyone else waits for its verdict.
                self.counters.breaker_rejections.incr();
                Verdict::Reject
            }
        }
    }

    /// Records a call's result (see [`Permit::record`]).
    fn record(&self, verdict: Verdict, outage: bool) {
        if verdict == Verdict::Reject {
            return;
        }
        if self.settings.threshold == 0 {
            return;
        }
        if !outage {
            self.failures.store(0, Ordering::Release);
            if verdict == Verdict::Probe {
                self.state.store(CLOSED, Ordering::Release);
                tracing::info!(cache.name = %self.cache_name, "redis circuit breaker closed");
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let reopen = verdict == Verdict::Probe;
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
            assert_eq!(p.verdict(), Verdict::Call);
            p.record(true);
        }
        assert!(!b.is_open());
        b.permit().record(true);
        assert!(b.is_open());
        assert_eq!(b.permit().verdict(), Verdict::Reject);
        assert_eq!(b.counters.breaker_opens.get(), 1);
        assert_eq!(b.counters.breaker_rejections.get(), 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker(2, 60_000);
        b.permit().record(true);
        b.permit().record(false);
        b.permit().record(true);
        assert!(!b.is_open(), "failures were not consecutive");
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_or_reopens() {
        let b = breaker(1, 0);
        b.permit().record(true);
        assert!(b.is_open());
        let probe = b.permit();
        assert_eq!(probe.verdict(), Verdict::Probe);
        assert_eq!(b.permit().verdict(), Verdict::Reject, "one probe at a time");
        probe.record(true);
        assert!(b.is_open(), "a failed probe reopens");
        let probe = b.permit();
        assert_eq!(probe.verdict(), Verdict::Probe);
        probe.record(false);
        assert!(!b.is_open());
        assert_eq!(b.permit().verdict(), Verdict::Call);
    }

    #[test]
    fn threshold_zero_disables_it() {
        let b = breaker(0, 0);
        for _ in 0..10 {
            b.permit().record(true);
        }
        assert_eq!(b.permit().verdict(), Verdict::Call);
    }

    #[test]
    fn a_probe_dropped_without_a_result_hands_the_probe_back() {
        let b = breaker(1, 0);
        b.permit().record(true);
        let probe = b.permit();
        assert_eq!(probe.verdict(), Verdict::Probe);
        drop(probe); // its caller was cancelled mid-call
        assert!(b.is_open(), "no verdict: still open");
        let probe = b.permit();
        assert_eq!(
            probe.verdict(),
            Verdict::Probe,
            "the next call probes at once"
        );
        probe.record(false);
        assert_eq!(b.permit().verdict(), Verdict::Call);
    }
}
